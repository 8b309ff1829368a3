//! Scenario `black_holed_rail_backs_off` (issue 8 item 11): every packet node a sends on rail 1
//! is lost (n1 puts `netem loss 100%` on rxe0's netdev: one-way loss, both ports stay ACTIVE,
//! no event anywhere) while all three clients stream. Rail 1's link dies; from then on the rail
//! must never count as linked (a new link joins the session only after a LINK_PROBE round trip
//! over it), its status must show `failing`, and node a's re-offers must back off (the old
//! code offered it about once a second, each offer building and fencing queue pairs and rings
//! on both nodes). The clients carry on over rail 2 with no NACK, no Down, no loss. Then the
//! loss is removed and rxe0's netdev bounced (admin down/up: PORT_ACTIVE clears the backoff),
//! and rail 1 is linked again.

use super::super::args::{Hca, Role};
use super::super::clients::{CONFIG, HEARTBEAT, MIRROR};
use super::super::leader::{Figures, Leader};
use super::super::node::{wait_status, RAIL1, RAIL2};
use super::super::since;
use peercm_cm_manager::status::{InterconnectStatus, NodeEvent, NodeStatus, RailState};
use peercm_cm_manager::{InterconnectId, Node};
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the black-holed rail is watched after its link died.
const WINDOW: Duration = Duration::from_secs(12);
/// The most offers node a may make in `WINDOW` with the backoff (about 4 fit with the shortest
/// draws and 1 s attempts; the old code made one about every 1-2 s, 6-12).
const MAX_OFFERS: u64 = 6;

fn ic(s: &NodeStatus, id: InterconnectId) -> Option<&InterconnectStatus> {
    s.interconnects.iter().find(|i| i.id == id)
}

fn state(s: &NodeStatus, id: InterconnectId) -> Option<RailState> {
    ic(s, id).map(|i| i.state)
}

/// Puts (or removes) 100% egress loss on `netdev` with `tc netem`.
fn netem(netdev: &str, on: bool) -> Result<(), String> {
    let args: &[&str] = if on {
        &[
            "qdisc", "add", "dev", netdev, "root", "netem", "loss", "100%",
        ]
    } else {
        &["qdisc", "del", "dev", netdev, "root"]
    };
    let out = Command::new("tc")
        .args(args)
        .output()
        .map_err(|e| format!("running tc {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "tc {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Leader {
    pub(super) async fn black_holed_rail_backs_off(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        let hca0 = self.hcas.first().cloned().ok_or("no HCA0")?;
        if self.rail_down() {
            self.restore_link(&hca0)?;
        }
        let node = self.node()?.clone();
        wait_status(&node, "both rails up", Duration::from_secs(30), |s| {
            state(s, RAIL1) == Some(RailState::Up) && state(s, RAIL2) == Some(RailState::Up)
        })
        .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let streams =
            self.start_streams(&[(MIRROR, None), (CONFIG, None), (HEARTBEAT, None)], &stop)?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t_on = Instant::now();
        let mut problems = Vec::new();
        let watched = match netem(&hca0.netdev, true) {
            Ok(()) => self.watch_black_hole(&node, &hca0, t_on, f).await,
            Err(e) => Err(e),
        };
        let cleared = netem(&hca0.netdev, false);
        // PORT_ERR then PORT_ACTIVE: the backoff is cleared and rail 1 offered at once.
        let t_clear = Instant::now();
        let bounced = self
            .cut_link(&hca0)
            .map(|_| ())
            .and_then(|()| self.restore_link(&hca0));
        let relinked = match (&cleared, &bounced) {
            (Ok(()), Ok(())) => {
                wait_status(
                    &node,
                    "rail 1 linked again after the loss was removed",
                    Duration::from_secs(30),
                    |s| {
                        state(s, RAIL1) == Some(RailState::Up)
                            && ic(s, RAIL1).is_some_and(|i| i.failures == 0)
                    },
                )
                .await
            }
            (Err(e), _) | (_, Err(e)) => Err(e.clone()),
        };
        stop.store(true, Ordering::Relaxed);
        let outs = self.join_streams(streams).await?;
        let summary = watched?;
        match relinked {
            Ok((_, t)) => {
                fig!(f, "cleared_to_rail1_up_ms", since(t, t_clear));
            }
            Err(e) => problems.push(e),
        }
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
        }
        let report = self.report(Role::Partner).await?;
        problems.extend(self.check_receiver(&report, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&report, "node-b", f);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(summary)
    }

    /// Watches rail 1 while it is black-holed; the summary line, or what went wrong.
    async fn watch_black_hole(
        &mut self,
        node: &Arc<Node>,
        hca0: &Hca,
        t_on: Instant,
        f: &mut Figures,
    ) -> Result<String, String> {
        let (s_lost, t_lost) = wait_status(
            node,
            "rail 1's link lost under 100% loss",
            Duration::from_secs(15),
            |s| state(s, RAIL1) != Some(RailState::Up),
        )
        .await?;
        fig!(f, "loss_on_to_rail1_down_ms", since(t_lost, t_on));
        let offers0 = ic(&s_lost, RAIL1).map_or(0, |i| i.offers);
        let mut seen = BTreeSet::new();
        let mut up_at = None;
        let mut failing_at = None;
        let mut last = s_lost;
        while t_lost.elapsed() < WINDOW {
            let s = node.status().await.map_err(|e| e.to_string())?;
            let now = Instant::now();
            if let Some(st) = state(&s, RAIL1) {
                seen.insert(st.to_string());
                if st == RailState::Up && up_at.is_none() {
                    up_at = Some(now);
                }
                if st == RailState::Failing && failing_at.is_none() {
                    failing_at = Some(now);
                }
            }
            last = s;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let r1 = ic(&last, RAIL1).cloned().ok_or("no rail 1 in the status")?;
        let offers = r1.offers.saturating_sub(offers0);
        let attempts: Vec<String> = last
            .timeline
            .iter()
            .filter_map(|e| match &e.event {
                NodeEvent::RailAttemptFailed {
                    rail, retry_in_ms, ..
                } if *rail == RAIL1 => Some(retry_in_ms.to_string()),
                _ => None,
            })
            .collect();
        fig!(
            f,
            "black_hole",
            format!("tc netem loss 100% on {} ({})", hca0.netdev, hca0.device)
        );
        fig!(f, "offers_in_window", offers);
        fig!(f, "failures_in_a_row", r1.failures);
        fig!(
            f,
            "states_seen",
            seen.iter().cloned().collect::<Vec<_>>().join(" ")
        );
        fig!(f, "backoffs_ms", attempts.join(" "));
        if let Some(t) = failing_at {
            fig!(f, "rail1_down_to_failing_ms", since(t, t_lost));
        }
        let mut problems = Vec::new();
        if let Some(t) = up_at {
            problems.push(format!(
                "rail 1 counted as linked at +{:.0} ms while black-holed",
                since(t, t_lost)
            ));
        }
        if failing_at.is_none() {
            problems.push(format!("rail 1 never showed failing (states: {seen:?})"));
        }
        if offers == 0 {
            problems.push("rail 1 was not offered again".into());
        }
        if offers > MAX_OFFERS {
            problems.push(format!(
                "{offers} offers of rail 1 in {} s: no backoff (at most {MAX_OFFERS} expected)",
                WINDOW.as_secs()
            ));
        }
        if last.clients.iter().any(|c| c.interconnect == Some(RAIL1)) {
            problems.push("a client is placed on the black-holed rail".into());
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "100% loss from n1 on {}: rail 1 down +{:.0} ms, then {offers} offers in {} s ({} failed attempts in a row, backoffs {} ms), never linked, shown {}; clients on rail 2 with no NACK, no Down, no loss",
            hca0.netdev,
            since(t_lost, t_on),
            WINDOW.as_secs(),
            r1.failures,
            attempts.join("/"),
            r1.state
        ))
    }
}

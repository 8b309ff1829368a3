//! Scenario `host_cable_pull_under_stream`: a cable pulled from the host side under a streaming
//! mirror. With all three clients streaming, the host runner takes the NIC of the mirror's rail
//! on n1 down with QEMU's `set_link c<k> off`: only PORT_ERR fires on n1, nothing on n2, and
//! rdma_rxe may hold the rail's queue pairs (destroying one can block in the kernel for
//! seconds, issue 8 item 10). Node a must act on the event without stalling: the mirror
//! migrates to the other rail, nothing is NACKed, nothing is lost or duplicated, neither
//! node's session resets and node b's TCP links survive. Then `set_link c<k> on` and both rails
//! are linked again.

use super::super::args::Role;
use super::super::clients::{CONFIG, HEARTBEAT, MIRROR};
use super::super::leader::{CablePull, Figures, Leader};
use super::super::node::{placed, rdma_links, separated, wait_status, RAIL1, RAIL2};
use super::super::{ms, since};
use peercm_cm_manager::status::{NodeEvent, NodeStatus, TransportKind};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Node b's session resets and its clients' `Down` events, from its report.
fn resets_and_downs(report: &Value) -> (u64, u64) {
    let b = &report["nodes"]["node-b"];
    let resets = b["status"]["stats"]["resets"].as_u64().unwrap_or(0);
    let downs = [MIRROR, CONFIG, HEARTBEAT]
        .iter()
        .map(|c| b["clients"][c]["downs"].as_u64().unwrap_or(0))
        .sum();
    (resets, downs)
}

/// TCP links node b declared silent (its liveness verdict on node a), from its report.
fn tcp_silences(report: &Value) -> usize {
    report["nodes"]["node-b"]["status"]["timeline"]
        .as_array()
        .map_or(0, |t| {
            t.iter()
                .filter(|e| e["event"]["kind"] == "link_silent" && e["event"]["transport"] == "tcp")
                .count()
        })
}

impl Leader {
    pub(super) async fn host_cable_pull_under_stream(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        if self.rail_down() {
            // An earlier scenario left HCA0 cut.
            if let Some(h0) = self.hcas.first().cloned() {
                self.restore_link(&h0)?;
            }
        }
        let node = self.node()?.clone();
        let (s0, _) = wait_status(
            &node,
            "both rails linked, the mirror alone on one",
            Duration::from_secs(30),
            |s| rdma_links(s) == [RAIL1, RAIL2] && separated(s),
        )
        .await?;
        let pulled = placed(&s0, MIRROR).ok_or("the mirror is placed nowhere")?;
        let other = if pulled == RAIL1 { RAIL2 } else { RAIL1 };
        let k = pulled.get() - 1; // rail k+1 is HCA k on cable k
        let hca = self
            .hcas
            .get(k as usize)
            .cloned()
            .ok_or("no HCA for the mirror's rail")?;
        let resets_a0 = s0.stats.resets;
        let before = self.report(Role::Partner).await?;
        let (resets_b0, downs_b0) = resets_and_downs(&before);
        let silences_b0 = tcp_silences(&before);

        let n = (self.args.records / 2).max(30);
        let stop = Arc::new(AtomicBool::new(false));
        let streams = self.start_streams(
            &[(MIRROR, Some(n)), (CONFIG, None), (HEARTBEAT, None)],
            &stop,
        )?;
        let mirror_progress = streams[0].2.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while mirror_progress.load(Ordering::Relaxed) < n / 3 {
            if Instant::now() > deadline || streams[0].1.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let acked_at_pull = mirror_progress.load(Ordering::Relaxed);
        let CablePull {
            t_req,
            t_ack,
            pull,
            detect,
            port_err,
        } = self.pull_cable(&node, k, pulled, &hca.device, Ok(())).await;
        let outs = self.join_streams_after_mirror(streams, &stop).await;
        let pull_ack = pull?;
        let outs = outs?;
        let (_, t_detect) = detect?;
        fig!(
            f,
            "pull",
            format!(
                "set_link c{k} off on n1 ({} / {}) at mirror ack {acked_at_pull}/{n}: {pull_ack}",
                hca.device, hca.netdev
            )
        );
        fig!(f, "host_ack_ms", since(t_ack, t_req));
        let mut problems = Vec::new();
        match &port_err {
            Some((t, _)) => {
                fig!(f, "pull_to_port_err_ms", since(*t, t_req));
                fig!(f, "port_err_to_link_dropped_ms", since(t_detect, *t));
            }
            None => problems.push(format!(
                "the event observer saw no PORT_ERR on {} within 5 s of the pull",
                hca.device
            )),
        }
        fig!(f, "pull_to_link_dropped_ms", since(t_detect, t_req));
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            if *name == MIRROR {
                match o.migrations.iter().find(|m| m.0 >= t_req) {
                    Some(m) => {
                        fig!(
                            f,
                            "mirror_migrated",
                            format!(
                                "rail {} -> rail {} at pull +{:.1} ms",
                                m.1,
                                m.2,
                                since(m.0, t_req)
                            )
                        );
                    }
                    None => problems.push(format!(
                        "the mirror was on rail {pulled} and got no Migrated event"
                    )),
                }
            }
            let stall = o.stall(t_req, Duration::from_secs(5));
            if let Some((d, _)) = stall {
                fig!(f, format!("{name}_longest_ack_gap_ms"), ms(d));
            }
            per_client.push(format!(
                "{name} {} recs, longest ack gap {:.0} ms",
                o.acked,
                stall.map_or(0.0, |s| ms(s.0))
            ));
        }
        let (s_end, _) = wait_status(
            &node,
            "every client off the pulled rail",
            Duration::from_secs(15),
            |s| {
                !rdma_links(s).contains(&pulled)
                    && [MIRROR, CONFIG, HEARTBEAT]
                        .iter()
                        .all(|c| placed(s, c) == Some(other))
            },
        )
        .await?;
        problems.extend(session_problems("node a", resets_a0, &s_end));
        let after = self.report(Role::Partner).await?;
        let (resets_b, downs_b) = resets_and_downs(&after);
        if resets_b != resets_b0 || downs_b != downs_b0 {
            problems.push(format!(
                "node b's session reset ({resets_b0} -> {resets_b} resets, {downs_b0} -> {downs_b} client Downs)"
            ));
        }
        let silences_b = tcp_silences(&after);
        if silences_b != silences_b0 {
            problems.push(format!(
                "node b declared {} TCP link(s) silent: node a stopped heartbeating",
                silences_b - silences_b0
            ));
        }
        problems.extend(self.check_receiver(&after, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&after, "node-b", f);

        // Plug it back in: both rails linked again for the scenarios that follow.
        let t_on = Instant::now();
        let restored = self.host_fault(&format!("n1-cable{k}-on")).await;
        let relinked = match restored {
            Ok(_) => {
                wait_status(
                    &node,
                    "both rails linked again after set_link on",
                    Duration::from_secs(30),
                    |s| rdma_links(s) == [RAIL1, RAIL2],
                )
                .await
            }
            Err(e) => Err(e),
        };
        match relinked {
            Ok((s, t)) => {
                fig!(f, "link_on_to_relinked_ms", since(t, t_on));
                let attempts: Vec<String> = s
                    .timeline
                    .iter()
                    .filter(|e| matches!(e.event, NodeEvent::RailAttemptFailed { .. }))
                    .map(|e| e.what.clone())
                    .collect();
                fig!(f, "rail_attempts_failed", attempts.join("; "));
            }
            Err(e) => problems.push(e),
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "set_link c{k} off on n1 (rail {pulled}, the mirror's) at mirror ack {acked_at_pull}/{n}: PORT_ERR +{:.0} ms, link dropped +{:.0} ms, all on rail {other}; {}; no NACK, no Down, no reset on either node, node b got every record once, in order",
            port_err.as_ref().map_or(0.0, |(t, _)| since(*t, t_req)),
            since(t_detect, t_req),
            per_client.join(", ")
        ))
    }
}

/// A session that reset, or lost a TCP link, since `resets0`.
fn session_problems(node: &str, resets0: u64, s: &NodeStatus) -> Vec<String> {
    let mut p = Vec::new();
    if s.stats.resets != resets0 {
        p.push(format!(
            "{node}'s session reset ({resets0} -> {} resets)",
            s.stats.resets
        ));
    }
    if !s.links.iter().any(|l| l.transport == TransportKind::Tcp) {
        p.push(format!("{node} has no TCP link left"));
    }
    p
}

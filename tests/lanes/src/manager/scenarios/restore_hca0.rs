//! Scenario 3, `restore_hca0`: all three clients streaming; n1 brings rxe0's netdev back up
//! (run on its own, it cuts it first). PORT_ACTIVE (watcher and timeline); rail 1 is offered
//! and linked again; after the 2 s failback hold the clients are spread again (mirror alone);
//! no loss, no duplicate.

use super::super::args::Role;
use super::super::clients::{CONFIG, HEARTBEAT, MIRROR};
use super::super::devices::port_state;
use super::super::leader::{Figures, Leader};
use super::super::node::{
    is_port_event, placement, rdma_links, separated, wait_status, RAIL1, RAIL2,
};
use super::super::since;
use peercm_verbs_shim::types::AsyncEvent;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Leader {
    pub(super) async fn restore_hca0(&mut self, f: &mut Figures) -> Result<String, String> {
        let hca0 = self.hcas.first().cloned().ok_or("no HCA0")?;
        if !self.rail_down() && port_state(&hca0.device) == "ACTIVE" {
            // Run on its own (--only): cut first, without traffic.
            self.cut_link(&hca0)?;
            let node = self.node()?;
            wait_status(node, "rail 1 down", Duration::from_secs(15), |s| {
                !rdma_links(s).contains(&RAIL1)
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(1100)).await; // linkwatch spacing
        }
        let stop = Arc::new(AtomicBool::new(false));
        let streams =
            self.start_streams(&[(MIRROR, None), (CONFIG, None), (HEARTBEAT, None)], &stop)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t_up = Instant::now();
        let res = self.restore_link(&hca0);
        // Port ACTIVE (guest clock, polled).
        let mut t_active = None;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if port_state(&hca0.device) == "ACTIVE" {
                t_active = Some(Instant::now());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let node = self.node()?;
        let port_active_ev = match &self.watch {
            Some(w) => {
                w.first_after(&hca0.device, t_up, Duration::from_secs(5), |e| {
                    matches!(e, AsyncEvent::PortActive { .. })
                })
                .await
            }
            None => None,
        };
        let rail = wait_status(
            node,
            "rail 1 re-established",
            Duration::from_secs(20),
            |s| rdma_links(s) == [RAIL1, RAIL2],
        )
        .await;
        let spread = match &rail {
            Ok(_) => Some(
                wait_status(
                    node,
                    "clients spread over both rails again",
                    Duration::from_secs(20),
                    separated,
                )
                .await,
            ),
            Err(_) => None,
        };
        // Keep streaming a little after the spread, then stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let outs = self.join_streams(streams).await;
        res?;
        let t_active =
            t_active.ok_or_else(|| format!("{} not ACTIVE 15 s after link up", hca0.device))?;
        let (s_rail, t_rail) = rail?;
        let (s_spread, t_spread) = spread.ok_or("no spread")??;
        let outs = outs?;
        fig!(f, "up_to_port_active_ms", since(t_active, t_up));
        match port_active_ev {
            Some((t, gids)) => {
                fig!(f, "up_to_port_active_event_ms", since(t, t_up));
                fig!(f, "port_active_event_to_rail1_link_ms", since(t_rail, t));
                fig!(f, "gids_at_port_active", gids);
            }
            None => {
                return Err(format!(
                    "the event observer saw no PORT_ACTIVE on {} within 5 s of link up",
                    hca0.device
                ))
            }
        }
        fig!(f, "up_to_rail1_link_ms", since(t_rail, t_up));
        fig!(f, "up_to_spread_ms", since(t_spread, t_up));
        fig!(f, "rail_to_spread_ms", since(t_spread, t_rail));
        fig!(f, "placement", placement(&s_spread));
        let mut problems = Vec::new();
        let tl = &s_rail.timeline;
        if let Some(pa) = tl
            .iter()
            .rev()
            .find(|t| is_port_event(t, &hca0.device, true))
        {
            fig!(f, "timeline_port_active", pa.what.clone());
        } else {
            problems.push("the manager's timeline shows no PortActive for HCA0".to_string());
        }
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            let moves: Vec<String> = o
                .migrations
                .iter()
                .filter(|m| m.0 >= t_up)
                .map(|m| format!("{}->{} +{:.0} ms", m.1, m.2, since(m.0, t_up)))
                .collect();
            per_client.push(format!(
                "{name} {} recs{}",
                o.acked,
                if moves.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", moves.join(", "))
                }
            ));
        }
        let report = self.report(Role::Partner).await?;
        problems.extend(self.check_receiver(&report, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&report, "node-b", f);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "HCA0 up: port ACTIVE +{:.0} ms, rail 1 link +{:.0} ms, clients spread +{:.0} ms ({}; failback hold 2 s); {}; node b got every record once, in order",
            since(t_active, t_up),
            since(t_rail, t_up),
            since(t_spread, t_up),
            f["placement"].as_str().unwrap_or(""),
            per_client.join(", ")
        ))
    }
}

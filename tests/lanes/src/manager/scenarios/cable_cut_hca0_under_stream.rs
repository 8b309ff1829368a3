//! Scenario 2, `cable_cut_hca0_under_stream`: 1000 mirror records with config and heartbeat
//! streaming; at a third, n1 takes rxe0's netdev admin down. An independent event watcher sees
//! PORT_ERR; the manager's timeline has it; rail 1's link is dropped; a client that was on rail
//! 1 gets `Migrated`; every client ends on rail 2; no NACK, no Down, no loss, no duplicate.

use super::super::args::Role;
use super::super::clients::{CONFIG, HEARTBEAT, MIRROR};
use super::super::devices::{gid_table, port_state};
use super::super::leader::{Figures, Leader};
use super::super::node::{is_port_event, placed, rdma_links, separated, wait_status, RAIL1, RAIL2};
use super::super::{ms, since};
use peercm_cm_manager::status::{NodeEvent, TransportKind};
use peercm_cm_manager::InterconnectId;
use peercm_verbs_shim::types::AsyncEvent;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Leader {
    pub(super) async fn cable_cut_hca0_under_stream(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        let hca0 = self.hcas.first().cloned().ok_or("no HCA0")?;
        let node = self.node()?;
        let (s, _) = wait_status(
            node,
            "the steady placement",
            Duration::from_secs(30),
            separated,
        )
        .await?;
        let placement0: BTreeMap<&str, Option<InterconnectId>> = [MIRROR, CONFIG, HEARTBEAT]
            .iter()
            .map(|c| (*c, placed(&s, c)))
            .collect();
        let n = (self.args.records / 2).max(30);
        let stop = Arc::new(AtomicBool::new(false));
        let streams = self.start_streams(
            &[(MIRROR, Some(n)), (CONFIG, None), (HEARTBEAT, None)],
            &stop,
        )?;
        let mirror_progress = streams[0].2.clone();
        // Cut once a third of the mirror is acknowledged.
        let deadline = Instant::now() + Duration::from_secs(60);
        while mirror_progress.load(Ordering::Relaxed) < n / 3 {
            if Instant::now() > deadline || streams[0].1.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let acked_at_cut = mirror_progress.load(Ordering::Relaxed);
        let t_cut = Instant::now();
        let how = self.cut_link(&hca0);
        let took = t_cut.elapsed();
        // Detection as the manager acts on it: its status no longer lists rail 1's link.
        let node = self.node()?;
        let detect = wait_status(
            node,
            "rail 1's link dropped",
            Duration::from_secs(15),
            |s| !rdma_links(s).contains(&RAIL1),
        )
        .await;
        let port_after = port_state(&hca0.device);
        fig!(f, "gids_after_cut", gid_table(&hca0.device));
        let port_err = match &self.watch {
            Some(w) => {
                w.first_after(&hca0.device, t_cut, Duration::from_secs(5), |e| {
                    matches!(e, AsyncEvent::PortError { .. })
                })
                .await
            }
            None => None,
        };
        let outs_res = self.join_streams_after_mirror(streams, &stop).await;
        let how = how?;
        let outs = outs_res?;
        let (s_detect, t_detect) = detect?;
        fig!(f, "cut", format!(
            "{}/{} admin down via {how} (the write took {:.1} ms) at mirror ack {acked_at_cut}/{n}; port then {port_after}",
            hca0.device, hca0.netdev, ms(took)
        ));
        let mut problems = Vec::new();
        match &port_err {
            Some((t, gids)) => {
                fig!(f, "cut_to_port_err_ms", since(*t, t_cut));
                fig!(f, "port_err_to_link_dropped_ms", since(t_detect, *t));
                fig!(f, "gids_at_port_err", gids.clone());
            }
            None => problems.push(format!(
                "the event observer saw no PORT_ERR on {} within 5 s",
                hca0.device
            )),
        }
        fig!(f, "cut_to_link_dropped_ms", since(t_detect, t_cut));
        // On the manager's own clock: its PORT_ERR note vs. the link being dropped. The link
        // may close on its failed completion (LOC_QP_OP_ERR) before the event is read, so wait
        // (up to 5 s) for the note instead of reading the snapshot taken at the drop.
        let dev = hca0.device.clone();
        let s_noted = match self.node() {
            Ok(node) => wait_status(
                node,
                "the manager's PORT_ERR note",
                Duration::from_secs(5),
                |s| s.timeline.iter().any(|t| is_port_event(t, &dev, false)),
            )
            .await
            .map(|(s, _)| s)
            .unwrap_or_else(|_| s_detect.clone()),
            Err(_) => s_detect.clone(),
        };
        let tl = &s_noted.timeline;
        let m_port_err = tl.iter().find(|t| is_port_event(t, &hca0.device, false));
        let m_lost = tl.iter().rev().find(|t| {
            matches!(
                t.event,
                NodeEvent::LinkLost {
                    transport: TransportKind::Rdma,
                    ..
                }
            )
        });
        if let (Some(pe), Some(l)) = (m_port_err, m_lost) {
            fig!(
                f,
                "manager_port_err_to_link_lost_ms",
                l.at_ms as i64 - pe.at_ms as i64
            );
            fig!(f, "manager_link_lost", l.what.clone());
        }
        if m_port_err.is_none() {
            problems.push("the manager's timeline shows no PortError for HCA0".to_string());
        }
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            let on_rail1 = placement0.get(name).copied().flatten() == Some(RAIL1);
            let mig = o.migrations.iter().find(|m| m.0 >= t_cut);
            if let Some(m) = mig {
                fig!(
                    f,
                    format!("{name}_migrated"),
                    format!(
                        "rail {} -> rail {} at cut +{:.1} ms",
                        m.1,
                        m.2,
                        since(m.0, t_cut)
                    )
                );
            } else if on_rail1 {
                problems.push(format!("{name} was on rail 1 and got no Migrated event"));
            }
            match o.first_ack_after(t_detect) {
                Some(a) => {
                    fig!(
                        f,
                        format!("{name}_detect_to_first_ack_ms"),
                        since(a, t_detect)
                    );
                }
                None => problems.push(format!("{name}: no ack after the link was dropped")),
            }
            let stall = o.stall(t_cut, Duration::from_secs(3));
            if let Some((d, end)) = stall {
                fig!(f, format!("{name}_stall_ms"), ms(d));
                fig!(
                    f,
                    format!("{name}_stall_ends_at_cut_plus_ms"),
                    since(end, t_cut)
                );
            }
            per_client.push(format!(
                "{name}{} {} recs, longest ack gap {:.0} ms",
                if on_rail1 { " (on rail 1)" } else { "" },
                o.acked,
                stall.map_or(0.0, |s| ms(s.0))
            ));
        }
        let node = self.node()?;
        let (s_end, _) = wait_status(
            node,
            "every client on rail 2",
            Duration::from_secs(15),
            |s| {
                rdma_links(s) == [RAIL2]
                    && [MIRROR, CONFIG, HEARTBEAT]
                        .iter()
                        .all(|c| placed(s, c) == Some(RAIL2))
            },
        )
        .await?;
        if s_end.fallback.is_some() {
            problems.push(format!(
                "fallback reported with rail 2 up: {:?}",
                s_end.fallback
            ));
        }
        let report = self.report(Role::Partner).await?;
        problems.extend(self.check_receiver(&report, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&report, "node-b", f);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "HCA0 cut at mirror ack {acked_at_cut}/{n}: PORT_ERR +{:.0} ms, rail-1 link dropped +{:.0} ms; {}; all on rail 2, node b got every record once, in order",
            port_err.as_ref().map_or(0.0, |(t, _)| since(*t, t_cut)),
            since(t_detect, t_cut),
            per_client.join(", ")
        ))
    }
}

//! Scenario 5, `partner_crash_switches_to_backup` (last: the partner is dead afterwards): node a
//! has the backup partner, autoswitch; n2 aborts its process (`abort()`, as `kill -9`) on
//! receiving mirror record k, mid-stream with all three clients. One `PeerSwitched` to
//! node-c-backup per client, no NACK, no Down, no refused send; the backup got exactly the
//! records node b did not acknowledge, in order, once; epoch raised; fallback "the partner
//! offers no RDMA".

use super::super::args::Role;
use super::super::clients::{CONFIG, HEARTBEAT, MIRROR};
use super::super::leader::{Figures, Leader};
use super::super::node::{rdma_links, wait_status, RAIL1, RAIL2};
use super::super::since;
use peercm_cm_manager::status::{FallbackReason, NodeEvent, TransportKind};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Leader {
    pub(super) async fn partner_crash_switches_to_backup(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        let backup = self.backup_addr()?;
        let backup_id = self.backup_id();
        let node = self.node()?;
        let (s0, _) = wait_status(
            node,
            "two RDMA links to node b",
            Duration::from_secs(30),
            |s| rdma_links(s) == [RAIL1, RAIL2] && s.peer.as_deref() == Some("node-b"),
        )
        .await?;
        let epoch0 = s0.epoch;
        let n = (self.args.records / 2).max(30);
        let crash_ix = self.sent_of(MIRROR) + n / 3;
        let first: BTreeMap<&str, u64> = [MIRROR, CONFIG, HEARTBEAT]
            .iter()
            .map(|c| (*c, self.sent_of(c) + 1))
            .collect();
        // From now on the partner may be gone at any moment: ask it nothing more.
        self.arm_partner_crash(crash_ix).await?;
        let stop = Arc::new(AtomicBool::new(false));
        self.keep_sending = true;
        let streams = self.start_streams(
            &[(MIRROR, Some(n)), (CONFIG, None), (HEARTBEAT, None)],
            &stop,
        );
        self.keep_sending = false;
        let streams = streams?;
        // Poll the status while the mirror runs: TCP to b gone, every link gone.
        let mut t_tcp_gone = None;
        let mut t_all_gone = None;
        let t_begin = Instant::now();
        while !streams[0].1.is_finished() && t_begin.elapsed() < Duration::from_secs(60) {
            let node = self.node()?;
            let st = node.status().await.map_err(|e| e.to_string())?;
            let now = Instant::now();
            let to_b = st.peer.as_deref() == Some("node-b");
            if t_tcp_gone.is_none()
                && to_b
                && !st.links.iter().any(|l| l.transport == TransportKind::Tcp)
            {
                t_tcp_gone = Some(now);
            }
            if t_all_gone.is_none() && st.links.is_empty() {
                t_all_gone = Some(now);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outs = self.join_streams_after_mirror(streams, &stop).await?;
        let node = self.node()?;
        let (s_end, _) = wait_status(
            node,
            "the session up with the backup",
            Duration::from_secs(20),
            |s| {
                s.peer.as_deref() == Some(backup_id)
                    && s.session == peercm_cm_manager::SessionState::Up
            },
        )
        .await?;
        let mut problems = Vec::new();
        // Per client: acks from b (before PeerSwitched) and from c (after); c must have got
        // exactly the records b did not acknowledge, in order, once.
        let report = self.report(Role::Backup).await?;
        let c = &report["nodes"][backup_id];
        if c.is_null() {
            problems.push(format!("no report from {backup_id}: {report}"));
        }
        let mut t_switch = None;
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            let sw = match o.switched.as_slice() {
                [(t, node)] if node == backup_id => *t,
                other => {
                    problems.push(format!(
                        "{name}: expected one PeerSwitched to {backup_id}, got {:?}",
                        other.iter().map(|x| x.1.clone()).collect::<Vec<_>>()
                    ));
                    continue;
                }
            };
            t_switch = Some(t_switch.map_or(sw, |t: Instant| t.min(sw)));
            let by_b: BTreeSet<u64> = o
                .ack_times
                .iter()
                .zip(&o.ack_indices)
                .filter(|(t, _)| **t < sw)
                .map(|(_, i)| *i)
                .collect();
            let start = first[name];
            let expected: Vec<u64> = (start..=o.last_sent)
                .filter(|i| !by_b.contains(i))
                .collect();
            // (An earlier scenario may have sent the backup records too.)
            let got: Vec<u64> = c["clients"][name]["indices"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_u64)
                        .filter(|i| *i >= start)
                        .collect()
                })
                .unwrap_or_default();
            let bad: u64 = ["duplicates", "gaps", "bad"]
                .iter()
                .map(|k| c["clients"][name][k].as_u64().unwrap_or(0))
                .sum();
            if got != expected || bad != 0 {
                let head = |v: &[u64]| {
                    v.iter()
                        .take(5)
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                problems.push(format!(
                    "{name}: the backup got {} records [{}..] (errors {}), expected the {} b did not acknowledge [{}..]",
                    got.len(),
                    head(&got),
                    c["clients"][name]["errors"],
                    expected.len(),
                    head(&expected)
                ));
            }
            let first_after = o.first_ack_after(sw);
            if let Some(a) = first_after {
                fig!(f, format!("{name}_switch_to_first_ack_ms"), since(a, sw));
            } else if !expected.is_empty() {
                problems.push(format!("{name}: no ack after the switch"));
            }
            per_client.push(format!(
                "{name}: {} acked by b, {} resent to and acked by c",
                by_b.len(),
                expected.len()
            ));
            fig!(f, format!("{name}_acked_by_b"), by_b.len());
            fig!(f, format!("{name}_resent_to_backup"), expected.len());
        }
        // Timings on this node's clock: the last ack from b, then detection and the switch.
        let last_b = outs
            .values()
            .filter_map(|o| {
                let sw = o.switched.first()?.0;
                o.ack_times.iter().copied().filter(|t| *t < sw).max()
            })
            .max();
        if let Some(lb) = last_b {
            if let Some(t) = t_tcp_gone {
                fig!(f, "last_ack_from_b_to_tcp_links_gone_ms", since(t, lb));
            }
            if let Some(t) = t_all_gone {
                fig!(f, "last_ack_from_b_to_all_links_gone_ms", since(t, lb));
            }
            if let Some(t) = t_switch {
                fig!(f, "last_ack_from_b_to_peer_switched_ms", since(t, lb));
            }
            let first_c = outs
                .values()
                .filter_map(|o| o.first_ack_after(o.switched.first()?.0))
                .min();
            if let Some(t) = first_c {
                fig!(f, "last_ack_from_b_to_first_ack_from_c_ms", since(t, lb));
            }
        }
        // On the manager's clock: what it noted.
        let tl = &s_end.timeline;
        fn unreachable(e: &NodeEvent) -> bool {
            matches!(e, NodeEvent::PartnerUnreachable { .. })
        }
        fn switching(e: &NodeEvent) -> bool {
            matches!(e, NodeEvent::SwitchingPartner { .. })
        }
        type IsEvent = fn(&NodeEvent) -> bool;
        let wanted: [(&str, &str, IsEvent); 2] = [
            ("timeline_unreachable", "partner unreachable", unreachable),
            ("timeline_switching", "switching partner", switching),
        ];
        for (key, needle, is) in wanted {
            if let Some(e) = tl.iter().find(|e| is(&e.event)) {
                fig!(f, key, format!("+{} ms: {}", e.at_ms, e.what));
            } else {
                problems.push(format!("the timeline shows no {needle:?}"));
            }
        }
        let fenced = tl
            .iter()
            .filter(|e| matches!(e.event, NodeEvent::RdmaLinkFenced { .. }))
            .count();
        fig!(f, "fenced_rdma_links", fenced);
        if s_end.epoch <= epoch0 {
            problems.push(format!(
                "epoch {} after the switch, {epoch0} before",
                s_end.epoch
            ));
        }
        if s_end.fallback != Some(FallbackReason::PartnerHasNoRdma) {
            problems.push(format!(
                "fallback {:?} with the backup (no RDMA), expected \"the partner offers no RDMA\"",
                s_end.fallback
            ));
        }
        if !self.sync_marker_exists("mlane.crashed.partner") {
            problems.push("the partner never crashed (no mlane.crashed.partner)".into());
        }
        fig!(f, "crash_at_mirror_record", crash_ix);
        fig!(f, "backup", backup.to_string());
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "node b aborted on receiving mirror record {crash_ix}; switched to {backup_id} {:.0} ms after b's last ack (all links gone +{:.0} ms), first ack from c +{:.0} ms; {}; no NACK, no Down, each record once and in order at c",
            f.get("last_ack_from_b_to_peer_switched_ms").and_then(Value::as_f64).unwrap_or(0.0),
            f.get("last_ack_from_b_to_all_links_gone_ms").and_then(Value::as_f64).unwrap_or(0.0),
            f.get("last_ack_from_b_to_first_ack_from_c_ms").and_then(Value::as_f64).unwrap_or(0.0),
            per_client.join("; ")
        ))
    }
}

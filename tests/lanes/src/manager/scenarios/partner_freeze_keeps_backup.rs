//! Scenario `partner_freeze_keeps_backup`: the partner's whole VM frozen from the host (QEMU
//! `stop` of n2) for 30 s with a backup present, all three clients streaming. Nothing fires
//! anywhere: node a hears silence, closes and fences every link to node b and switches to the
//! backup (node-c-backup on n3). Destroying the frozen partner's queue pairs can block in
//! rdma_rxe until the VM resumes (issue 8 item 10: the manager once blocked there for 50 s and
//! the backup dropped the session); here the backup must keep the session for the whole
//! freeze: one `PeerSwitched` per client, no NACK, no Down, acks from the backup until the end,
//! and the backup got exactly the records node b did not acknowledge. Then `cont`: node b
//! resumes as a zombie and nothing changes on node a, while node b's RDMA WRITEs into node a's
//! fenced rings fail with a remote access error. Node a is then restarted (same configuration)
//! so that it has node b as its partner again for the scenario that follows.

use super::super::args::Role;
use super::super::clients::{client_specs, CONFIG, HEARTBEAT, MIRROR};
use super::super::leader::{connect_client, Figures, Leader};
use super::super::node::{rdma_links, secret, wait_status, RAIL1, RAIL2};
use super::super::since;
use super::super::watch::StallProbe;
use peercm_cm_manager::status::{NodeEvent, NodeStatus};
use peercm_cm_manager::{Node, SessionState, VerbsSource};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long node b's VM stays frozen (issue 8: at least 30 s).
const FREEZE: Duration = Duration::from_secs(30);
/// How long node a is watched after `cont`.
const AFTER_CONT: Duration = Duration::from_secs(5);
const BACKUP: &str = "node-c-backup";

pub(super) fn on_backup(s: &NodeStatus) -> bool {
    s.peer.as_deref() == Some(BACKUP) && s.session == SessionState::Up
}

/// Node b's timeline, from its report.
pub(super) fn timeline_of_b(report: &Value) -> &[Value] {
    report["nodes"]["node-b"]["status"]["timeline"]
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// Node b's RDMA link losses after `after_ms` on its clock (their reasons), from its report.
pub(super) fn rdma_losses(report: &Value, after_ms: u64) -> Vec<String> {
    timeline_of_b(report)
        .iter()
        .filter(|e| e["at_ms"].as_u64().unwrap_or(0) > after_ms)
        .filter(|e| e["event"]["kind"] == "link_lost" && e["event"]["transport"] == "rdma")
        .map(|e| {
            e["event"]["reason"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

impl Leader {
    pub(super) async fn partner_freeze_keeps_backup(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        self.args.backup.ok_or("no --backup given")?;
        let res = self.freeze_and_judge(f).await;
        // Whatever happened, node b runs again (a freeze left in place would be undone at the
        // end of the run, but the next scenario needs node b now).
        let cont = if self.host_fault_in_place("n2-cont") {
            self.host_fault("n2-cont").await.map(|_| ())
        } else {
            Ok(())
        };
        // The longest stall of the node a that lived through the freeze (the restart below
        // gives the new one its own probe).
        fig!(f, "node-a_manager_max_stall_in_freeze", self.probe.take());
        let summary = res?;
        cont?;
        self.restart_with_partner(f).await?;
        Ok(summary)
    }

    async fn freeze_and_judge(&mut self, f: &mut Figures) -> Result<String, String> {
        let node = self.node()?.clone();
        let (s0, _) = wait_status(
            &node,
            "two RDMA links to node b",
            Duration::from_secs(30),
            |s| rdma_links(s) == [RAIL1, RAIL2] && s.peer.as_deref() == Some("node-b"),
        )
        .await?;
        let epoch0 = s0.epoch;
        let n = self.args.records.max(30);
        let first: BTreeMap<&str, u64> = [MIRROR, CONFIG, HEARTBEAT]
            .iter()
            .map(|c| (*c, self.sent_of(c) + 1))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        self.keep_sending = true;
        let streams = self.start_streams(
            &[(MIRROR, Some(n)), (CONFIG, None), (HEARTBEAT, None)],
            &stop,
        );
        self.keep_sending = false;
        let streams = streams?;
        let mirror_progress = streams[0].2.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while mirror_progress.load(Ordering::Relaxed) < n / 4 {
            if Instant::now() > deadline || streams[0].1.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Where node b's timeline stands before the freeze (its losses from earlier
        // scenarios are not this one's).
        let b_before = self.report(Role::Partner).await;
        let acked_at_stop = mirror_progress.load(Ordering::Relaxed);
        let t_stop = Instant::now();
        let stopped = self.host_fault("n2-stop").await;
        // Node a during the freeze: when it is with the backup, and whether it ever leaves it.
        let mut t_switched = None;
        let mut wobbles = Vec::new();
        let mut watch = |st: &NodeStatus, now: Instant, phase: &str| {
            if on_backup(st) {
                t_switched.get_or_insert(now);
            } else if t_switched.is_some() && wobbles.len() < 4 {
                wobbles.push(format!(
                    "{phase} +{:.0} ms: session {:?} with {:?}",
                    since(now, t_stop),
                    st.session,
                    st.peer
                ));
            }
        };
        let mut poll_err = None;
        while stopped.is_ok() && t_stop.elapsed() < FREEZE {
            match node.status().await {
                Ok(st) => watch(&st, Instant::now(), "frozen"),
                Err(e) => {
                    poll_err = Some(e.to_string());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t_cont = Instant::now();
        let cont = match &stopped {
            Ok(_) => self.host_fault("n2-cont").await,
            Err(e) => Err(e.clone()),
        };
        while cont.is_ok() && poll_err.is_none() && t_cont.elapsed() < AFTER_CONT {
            match node.status().await {
                Ok(st) => watch(&st, Instant::now(), "after cont"),
                Err(e) => poll_err = Some(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, Ordering::Relaxed);
        let outs = self.join_streams(streams).await;
        stopped?;
        cont?;
        let outs = outs?;
        let b_before_ms = timeline_of_b(&b_before?)
            .iter()
            .filter_map(|e| e["at_ms"].as_u64())
            .max()
            .unwrap_or(0);
        let mut problems = Vec::new();
        if let Some(e) = poll_err {
            problems.push(format!("node a's status failed: {e}"));
        }
        fig!(f, "stop_at_mirror_ack", format!("{acked_at_stop}/{n}"));
        fig!(f, "frozen_s", since(t_cont, t_stop) / 1000.0);
        let cfg = self.node_a_config()?;
        let window =
            cfg.session.link_timeout_ms + cfg.peer.as_ref().map_or(0, |p| p.switch_after_ms);
        fig!(f, "detection_window_ms", window);
        if let Some(t) = t_switched {
            fig!(f, "stop_to_on_backup_ms", since(t, t_stop));
        } else {
            problems.push(format!(
                "node a never had a session with {BACKUP} during the {} s freeze",
                FREEZE.as_secs()
            ));
        }
        if !wobbles.is_empty() {
            problems.push(format!("node a left the backup: {}", wobbles.join("; ")));
        }
        let (s_end, _) = wait_status(
            &node,
            "the session with the backup",
            Duration::from_secs(5),
            on_backup,
        )
        .await?;
        if s_end.epoch <= epoch0 {
            problems.push(format!(
                "epoch {} after the switch, {epoch0} before",
                s_end.epoch
            ));
        }
        let fenced = s_end
            .timeline
            .iter()
            .filter(|e| matches!(e.event, NodeEvent::RdmaLinkFenced { .. }))
            .count();
        fig!(f, "fenced_rdma_links", fenced);
        if fenced == 0 {
            problems.push("node a fenced no RDMA link to node b".into());
        }
        // The backup got exactly what node b did not acknowledge, and kept acknowledging.
        let report = self.report(Role::Backup).await?;
        let c = &report["nodes"][BACKUP];
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            let sw = match o.switched.as_slice() {
                [(t, to)] if to == BACKUP => *t,
                other => {
                    problems.push(format!(
                        "{name}: expected one PeerSwitched to {BACKUP}, got {:?}",
                        other.iter().map(|x| x.1.clone()).collect::<Vec<_>>()
                    ));
                    continue;
                }
            };
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
            let got: Vec<u64> = c["clients"][name]["indices"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_u64)
                        .filter(|i| *i >= start)
                        .collect()
                })
                .unwrap_or_default();
            if got != expected {
                problems.push(format!(
                    "{name}: the backup got {} records, expected the {} b did not acknowledge",
                    got.len(),
                    expected.len()
                ));
            }
            // Acks from the backup in the freeze's last seconds and after `cont`.
            let late = o
                .ack_times
                .iter()
                .filter(|t| **t >= t_cont - Duration::from_secs(5))
                .count();
            if *name != MIRROR && late == 0 {
                problems.push(format!(
                    "{name}: no ack from the backup in the freeze's last 5 s or after cont"
                ));
            }
            fig!(
                f,
                format!("{name}_switched_at_stop_plus_ms"),
                since(sw, t_stop)
            );
            per_client.push(format!(
                "{name}: {} acked by b, {} by c",
                by_b.len(),
                expected.len()
            ));
        }
        // The zombie: node b resumed; its links die, RDMA ones on a remote access error.
        let deadline = Instant::now() + Duration::from_secs(15);
        let losses = loop {
            let r = self.report(Role::Partner).await?;
            let losses = rdma_losses(&r, b_before_ms);
            let links_left = r["nodes"]["node-b"]["status"]["links"]
                .as_array()
                .map_or(0, Vec::len);
            if (links_left == 0 && losses.len() >= 2) || Instant::now() >= deadline {
                break losses;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        fig!(f, "node-b_rdma_losses", losses.join(" | "));
        if !losses.iter().any(|l| l.contains("RemAccessErr")) {
            problems.push(format!(
                "no RDMA link of the resumed node b failed with a remote access error: {losses:?}"
            ));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "n2 frozen {:.1} s at mirror ack {acked_at_stop}/{n}: node a on {BACKUP} +{:.0} ms (detection window {window} ms), kept it through the freeze and after cont; {}; node b's RDMA WRITEs after cont: {}",
            since(t_cont, t_stop) / 1000.0,
            t_switched.map_or(0.0, |t| since(t, t_stop)),
            per_client.join("; "),
            losses.join(" | ")
        ))
    }

    /// After the switch: node a is restarted (the same configuration) so that node b is its
    /// partner again, node b's receivers forget where each
    /// stream was (the backup took part of it), and both rails are linked.
    pub(super) async fn restart_with_partner(&mut self, f: &mut Figures) -> Result<(), String> {
        self.stop_node_a().await?;
        let r = self.rpc.call(Role::Partner, "resync").await?;
        if r["ok"] != serde_json::json!(true) {
            return Err(format!("node b's receivers did not resync: {r}"));
        }
        // node-c-backup still remembers the session it had with the node a just stopped: the
        // crash scenario's switch to it checks that the new node a is not reset by that
        // session's epoch (docs/softroce-lane.md, "What the lane found").
        let t = Instant::now();
        let node = Node::start_with_verbs(self.node_a_config()?, secret(), VerbsSource::Real)
            .await
            .map_err(|e| format!("restarting node a: {e}"))?;
        let node = Arc::new(node);
        self.probe = StallProbe::spawn(node.clone(), self.t0);
        self.node = Some(node.clone());
        for (name, _, spec) in client_specs() {
            let h = connect_client(&node, name, spec).await?;
            let slot = self
                .handle_mut(name)
                .ok_or_else(|| format!("client {name} was lost in an earlier scenario"))?;
            *slot = h;
        }
        let (_, t_up) = wait_status(
            &node,
            "the restarted node a with two RDMA links to node b",
            Duration::from_secs(30),
            |s| {
                rdma_links(s) == [RAIL1, RAIL2]
                    && s.peer.as_deref() == Some("node-b")
                    && s.clients.iter().all(|c| c.state.is_up())
            },
        )
        .await?;
        fig!(f, "restart_to_rails_linked_ms", since(t_up, t));
        Ok(())
    }
}

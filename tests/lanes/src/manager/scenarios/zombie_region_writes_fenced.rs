//! Scenario `zombie_region_writes_fenced` (issue 9: fencing on real rxe). Node a's mirror client
//! registers a 1 MiB region (on n1's tmpfs); node b's mirror keeps writing 4 KiB chunks into it
//! one-sided (the zombie writer, `receiver::region`). The host runner freezes n2 (QEMU `stop`):
//! node a hears silence, fences its links to node b, switches to its backup and registers its
//! region anew (the old rkeys deregistered through the reaper). Node a's region is digested,
//! then n2 resumes (`cont`) as a zombie that still holds the old rkeys and keeps writing. What
//! must hold: node b's writes landed before the freeze; after `cont` they fail on node b (NACKed
//! or refused with a typed error; the figures say which, and how node b's RDMA links ended); node
//! a's region is byte for byte what it was before `cont`. Node a is then restarted with node b
//! as its partner again (as after `partner_freeze_keeps_backup`).
//!
//! The roles are those of the lane's other switch scenarios: only node a (the leader, n1) has
//! a backup, and the freeze is the host's `stop` of another VM, so the zombie is node b and the
//! fenced region node a's (issue 9's "node a's writes into b's region", mirrored).

use super::super::args::Role;
use super::super::clients::MIRROR;
use super::super::leader::{Figures, Leader};
use super::super::node::{rdma_links, wait_status, RAIL1, RAIL2};
use super::super::region::{
    digest, pattern, zombie_offset, ZOMBIE_CHUNK, ZOMBIE_REGION, ZOMBIE_REGION_LEN,
};
use super::super::since;
use super::partner_freeze_keeps_backup::{on_backup, rdma_losses, timeline_of_b};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The zombie's failures (refused at once + NACKed), by kind, from its stats.
fn failures(stats: &Value) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for (what, key) in [("refused", "refused"), ("NACKed", "nacked")] {
        if let Some(m) = stats[key].as_object() {
            for (k, s) in m {
                v.push((format!("{what}: {k}"), s["count"].as_u64().unwrap_or(0)));
            }
        }
    }
    v
}

/// The failures in `after` beyond those in `before`.
fn new_failures(before: &Value, after: &Value) -> Vec<String> {
    let b = failures(before);
    failures(after)
        .into_iter()
        .filter_map(|(k, n)| {
            let n0 = b.iter().find(|(k0, _)| *k0 == k).map_or(0, |x| x.1);
            (n > n0).then(|| format!("{} x {k}", n - n0))
        })
        .collect()
}

impl Leader {
    async fn zombie_stats(&mut self) -> Result<Value, String> {
        self.partner_region_call("zombie-stats").await
    }

    /// Node a's region `ZOMBIE_REGION`, digested (CRC32C per MiB).
    async fn zombie_digest(&mut self) -> Result<Vec<u32>, String> {
        let h = self
            .handle_mut(MIRROR)
            .ok_or("node a's mirror handle is gone")?;
        let h = &*h;
        digest(ZOMBIE_REGION_LEN, |off, n| async move {
            h.read_region(ZOMBIE_REGION, off, n)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    pub(super) async fn zombie_region_writes_fenced(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        self.args.backup.ok_or("no --backup given")?;
        let res = self.zombie_and_judge(f).await;
        let cont = if self.host_fault_in_place("n2-cont") {
            self.host_fault("n2-cont").await.map(|_| ())
        } else {
            Ok(())
        };
        // Whatever happened: the zombie stops writing, node a gets node b back.
        let stopped = self.partner_region_call("zombie-stop").await;
        let summary = res?;
        cont?;
        let last = stopped?;
        fig!(f, "zombie_final", last);
        self.restart_with_partner(f).await?;
        Ok(summary)
    }

    async fn zombie_and_judge(&mut self, f: &mut Figures) -> Result<String, String> {
        let node = self.node()?.clone();
        wait_status(
            &node,
            "two RDMA links to node b",
            Duration::from_secs(30),
            |s| rdma_links(s) == [RAIL1, RAIL2] && s.peer.as_deref() == Some("node-b"),
        )
        .await?;
        let h = self
            .handle_mut(MIRROR)
            .ok_or("node a's mirror handle is gone")?;
        h.register_region(ZOMBIE_REGION, ZOMBIE_REGION_LEN)
            .await
            .map_err(|e| format!("node a: registering {ZOMBIE_REGION}: {e}"))?;
        self.partner_region_call(&format!("zombie-start {ZOMBIE_REGION}"))
            .await?;
        // Node b's writes land (it learns the region first: refusals until then are not
        // counted against it).
        let deadline = Instant::now() + Duration::from_secs(20);
        let before = loop {
            let s = self.zombie_stats().await?;
            if s["acked"].as_u64().unwrap_or(0) >= 20 {
                break s;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node b's writes into node a's region do not land: {s}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let last = before["last_acked"].as_u64().ok_or("no write acked")?;
        let h = self
            .handle_mut(MIRROR)
            .ok_or("node a's mirror handle is gone")?;
        let got = h
            .read_region(ZOMBIE_REGION, zombie_offset(last), ZOMBIE_CHUNK as usize)
            .await
            .map_err(|e| e.to_string())?;
        if got != pattern(last, ZOMBIE_CHUNK as usize) {
            return Err(format!(
                "node b's acked write {last} is not in node a's region"
            ));
        }
        let b_before = self.report(Role::Partner).await?;
        let b_before_ms = timeline_of_b(&b_before)
            .iter()
            .filter_map(|e| e["at_ms"].as_u64())
            .max()
            .unwrap_or(0);
        fig!(
            f,
            "node-b_writes_landed_before_stop",
            before["acked"].clone()
        );

        let at_stop = self.zombie_stats().await?;
        let t_stop = Instant::now();
        self.host_fault("n2-stop").await?;
        let (_, t_sw) = wait_status(
            &node,
            "node a on its backup",
            Duration::from_secs(20),
            on_backup,
        )
        .await?;
        fig!(f, "stop_to_on_backup_ms", since(t_sw, t_stop));
        // Let the reaper deregister the old registrations, then take the region's picture.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let d1 = self.zombie_digest().await?;
        let t_cont = Instant::now();
        self.host_fault("n2-cont").await?;
        // The zombie runs again and keeps writing with what it knows.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (after, fails) = loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = self.zombie_stats().await?;
            let fails = new_failures(&before, &s);
            if !fails.is_empty() || Instant::now() >= deadline {
                break (s, fails);
            }
        };
        fig!(
            f,
            "cont_to_first_failure_seen_ms",
            since(Instant::now(), t_cont)
        );
        // A moment for anything still in flight, then the region again.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let end = self.zombie_stats().await?;
        let d2 = self.zombie_digest().await?;
        let fails_end = new_failures(&before, &end);
        // Writes acked after the last look before the stop: placed before node a fenced (the
        // region is digested after that), their acks held up by the freeze.
        let acked_after =
            end["acked"].as_u64().unwrap_or(0) - at_stop["acked"].as_u64().unwrap_or(0);
        let report = self.report(Role::Partner).await?;
        let losses = rdma_losses(&report, b_before_ms);
        fig!(f, "zombie_failures", fails_end.join("; "));
        fig!(f, "zombie_stats_at_first_failure", after);
        fig!(f, "zombie_acked_after_stop", acked_after);
        fig!(f, "node-b_rdma_losses", losses.join(" | "));
        let mut problems = Vec::new();
        if fails.is_empty() {
            problems.push(format!("node b's writes did not fail after cont: {end}"));
        }
        if d1 != d2 {
            let bad: Vec<usize> = (0..d1.len()).filter(|i| d1.get(*i) != d2.get(*i)).collect();
            problems.push(format!(
                "node a's region changed after cont (MiB {bad:?}): the zombie's writes landed"
            ));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "node b wrote {} chunks into node a's region, n2 frozen, node a on the backup +{:.0} ms; after cont node b's writes failed ({}), node a's region unchanged; node b's RDMA links: {}",
            before["acked"],
            since(t_sw, t_stop),
            fails_end.join("; "),
            losses.join(" | ")
        ))
    }
}

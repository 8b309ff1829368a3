//! Scenario `region_writes_under_host_cable_pull` (issue 9 on real rxe): node b's mirror
//! client registers a 64 MiB region (its file on n2's tmpfs, registered on both rxe devices and
//! advertised to node a); node a's mirror writes `--region-writes` seeded random chunks
//! (1 B .. 4 KiB) at random offsets into it, one-sided, with a commit notice (a sync send) after
//! every 50 writes (`super::super::writer`). At a third of the writes the host runner pulls the
//! cable of the mirror's rail on n1 (QEMU `set_link c<k> off`: only PORT_ERR fires, as in
//! `host_cable_pull_under_stream`); at two thirds (and at least 1.5 s later) it plugs it back.
//! What must hold: no NACK, no Down, every write completed; every notice was answered 0 (node b
//! found every write it names in its region at delivery); node b's region equals node a's model
//! byte for byte (CRC32C per MiB); the mirror migrated off the pulled rail. Figures: writes/s,
//! the longest completion gap across the pull, and how node b got the writes (placed one-sided
//! by RDMA WRITE, or copied from WRITE frames). The region is released at the end.

use super::super::args::Role;
use super::super::clients::MIRROR;
use super::super::leader::{CablePull, Figures, Leader};
use super::super::node::{placed, rdma_links, separated, wait_status, RAIL1, RAIL2};
use super::super::region::{digest_of, LOG_REGION, LOG_REGION_LEN};
use super::super::writer::{run_writer, WriterCfg};
use super::super::{ms, since};
use peercm_cm_manager::{ClientEvent, ClientHandle};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NOTICE_EVERY: u64 = 50;
const SEED: u64 = 0x9e09;

/// Node b's one-sided write counters (placed, copied from frames, refused), from a report.
fn b_writes(report: &Value) -> (u64, u64, u64) {
    let s = &report["nodes"]["node-b"]["status"]["stats"];
    let g = |k: &str| s[k].as_u64().unwrap_or(0);
    (
        g("writes_placed"),
        g("writes_copied"),
        g("writes_refused_here"),
    )
}

/// Waits for the partner's region `name` on the handle.
async fn wait_partner_region(h: &mut ClientHandle, name: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline.into(), h.next_event()).await {
            Ok(Some(ClientEvent::PartnerRegion {
                name: n,
                available: true,
                ..
            })) if n == name => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => return Err("the mirror's event channel closed".into()),
            Err(_) => return Err(format!("node a never learned node b's region {name}")),
        }
    }
}

impl Leader {
    /// Sends a region request to the partner; its answer, which must say ok.
    pub(super) async fn partner_region_call(&mut self, cmd: &str) -> Result<Value, String> {
        let v = self.rpc.call(Role::Partner, cmd).await?;
        if v["ok"] != json!(true) {
            return Err(format!("node b: {cmd}: {}", v["why"]));
        }
        Ok(v)
    }

    pub(super) async fn region_writes_under_host_cable_pull(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        if self.rail_down() {
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
        let k = pulled.get() - 1;
        let hca = self
            .hcas
            .get(k as usize)
            .cloned()
            .ok_or("no HCA for the mirror's rail")?;
        let open = self
            .partner_region_call(&format!("region-open {LOG_REGION} {LOG_REGION_LEN}"))
            .await?;
        fig!(f, "node-b_region", open["path"].clone());
        fig!(f, "node-b_register_ms", open["register_ms"].clone());
        let mut h = self.take(MIRROR)?;
        let t_adv = Instant::now();
        if let Err(e) = wait_partner_region(&mut h, LOG_REGION).await {
            self.put_handle(MIRROR, h);
            return Err(e);
        }
        fig!(f, "region_advertised_ms", since(Instant::now(), t_adv));
        let b0 = b_writes(&self.report(Role::Partner).await?);

        let n = self.args.region_writes.max(3 * NOTICE_EVERY);
        let cfg = WriterCfg {
            writes: n,
            seed: SEED,
            notice_every: NOTICE_EVERY,
            in_flight: 256,
            max_chunk: 4096,
        };
        let progress = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(run_writer(h, cfg, progress.clone()));
        let wait_for = |at: u64| {
            let (p, w) = (progress.clone(), &writer);
            async move {
                while p.load(Ordering::Relaxed) < at && !w.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                p.load(Ordering::Relaxed)
            }
        };
        let at_pull = wait_for(n / 3).await;
        let go = if writer.is_finished() {
            Err(format!("the writes finished ({at_pull}) before the pull"))
        } else {
            Ok(())
        };
        let CablePull {
            t_req,
            pull,
            detect,
            port_err,
            ..
        } = self.pull_cable(&node, k, pulled, &hca.device, go).await;
        let at_on = wait_for(2 * n / 3).await;
        let min_on = t_req + Duration::from_millis(1500);
        if Instant::now() < min_on {
            tokio::time::sleep_until(min_on.into()).await;
        }
        let t_on = Instant::now();
        let on = self.host_fault(&format!("n1-cable{k}-on")).await;
        // The rail comes back while the writes go on.
        let relinked = match &on {
            Ok(_) => {
                wait_status(
                    &node,
                    "both rails linked again after set_link on",
                    Duration::from_secs(30),
                    |s| rdma_links(s) == [RAIL1, RAIL2],
                )
                .await
            }
            Err(e) => Err(e.clone()),
        };
        let joined = writer.await;
        let (h, out) = joined.map_err(|e| format!("the writer panicked or was cancelled: {e}"))?;
        self.put_handle(MIRROR, h);
        let pull_ack = pull?;
        on?;
        let (_, t_detect) = detect?;
        let took = out
            .finished
            .zip(out.started)
            .map(|(b, a)| b.duration_since(a));
        let secs = took.map_or(0.0, |d| d.as_secs_f64());
        fig!(f, "writes", out.completed);
        fig!(f, "notices", out.notices_ok);
        fig!(f, "writes_s", (secs * 10.0).round() / 10.0);
        fig!(
            f,
            "writes_per_s",
            (out.completed as f64 / secs.max(1e-3)).round()
        );
        fig!(
            f,
            "pull",
            format!(
                "set_link c{k} off on n1 ({}) at write {at_pull}/{n}: {pull_ack}",
                hca.device
            )
        );
        fig!(
            f,
            "plug_in_at_write",
            format!("{at_on}/{n}, pull +{:.0} ms", since(t_on, t_req))
        );
        fig!(f, "pull_to_link_dropped_ms", since(t_detect, t_req));
        let mut problems = out.problems();
        match &port_err {
            Some((t, _)) => fig!(f, "pull_to_port_err_ms", since(*t, t_req)),
            None => {
                problems.push(format!(
                    "no PORT_ERR on {} within 5 s of the pull",
                    hca.device
                ));
                None
            }
        };
        let gap = out.stall(t_req, Duration::from_secs(5)).map_or(0.0, ms);
        fig!(f, "longest_write_gap_at_pull_ms", gap);
        match out
            .migrations
            .iter()
            .find(|m| m.0 >= t_req && m.1 == pulled)
        {
            Some(m) => fig!(
                f,
                "mirror_migrated",
                format!(
                    "rail {} -> rail {} at pull +{:.0} ms",
                    m.1,
                    m.2,
                    since(m.0, t_req)
                )
            ),
            None => {
                problems.push(format!(
                    "the mirror was on rail {pulled} and got no Migrated off it"
                ));
                None
            }
        };
        // Node b's region against the model.
        let d = self
            .partner_region_call(&format!("region-digest {LOG_REGION} {LOG_REGION_LEN}"))
            .await?;
        fig!(f, "digest_ms", d["ms"].clone());
        let want = digest_of(&out.model);
        let got: Vec<u64> = d["digest"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let want64: Vec<u64> = want.iter().map(|x| u64::from(*x)).collect();
        if got != want64 {
            let bad: Vec<usize> = (0..want64.len())
                .filter(|i| got.get(*i) != Some(&want64[*i]))
                .take(8)
                .collect();
            problems.push(format!(
                "node b's region differs from the model (MiB {bad:?} of {})",
                want64.len()
            ));
        }
        let report = self.report(Role::Partner).await?;
        let (p1, c1, r1) = b_writes(&report);
        let (placed_w, copied) = (p1 - b0.0, c1 - b0.1);
        fig!(f, "node-b_writes_placed", placed_w);
        fig!(
            f,
            "node-b_writes_one_sided",
            placed_w.saturating_sub(copied)
        );
        fig!(f, "node-b_writes_copied_from_frames", copied);
        if r1 != b0.2 {
            problems.push(format!("node b refused {} writes", r1 - b0.2));
        }
        if placed_w < out.completed {
            problems.push(format!(
                "node b placed {placed_w} writes, {} completed",
                out.completed
            ));
        }
        let mb = &report["nodes"]["node-b"]["clients"][MIRROR];
        let (checked, bad) = (
            mb["notices"].as_u64().unwrap_or(0),
            mb["notices_bad"].as_u64().unwrap_or(0),
        );
        if checked != out.notices_sent || bad != 0 {
            problems.push(format!(
                "node b checked {checked} notices ({bad} bad: {}), {} were sent",
                mb["errors"], out.notices_sent
            ));
        }
        // Free node b's 64 MiB for the scenarios that follow.
        let released = self
            .partner_region_call(&format!("region-release {LOG_REGION}"))
            .await;
        if let Err(e) = released {
            problems.push(e);
        }
        match relinked {
            Ok((_, t)) => fig!(f, "link_on_to_relinked_ms", since(t, t_on)),
            Err(e) => {
                problems.push(e);
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "{} one-sided writes ({} notices) into node b's 64 MiB region in {secs:.1} s ({:.0}/s), cable of rail {pulled} pulled at {at_pull} and back at {at_on}: longest gap {gap:.0} ms, node b placed {} one-sided + {copied} copied from frames; region equals the model, every notice found its writes",
            out.completed,
            out.notices_ok,
            out.completed as f64 / secs.max(1e-3),
            placed_w.saturating_sub(copied)
        ))
    }
}

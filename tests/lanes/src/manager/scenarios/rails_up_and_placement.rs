//! Scenario 1, `rails_up_and_placement`: node a starts; 2000 mirror records, then 500 config
//! and 50 heartbeat records. Two RDMA links (rails 1 and 2 = rxe0, rxe1) on both nodes; the
//! mirror alone on one rail, config and heartbeat on the other; no fallback; every record acked
//! with its code, received once, in order, intact; the mirror's rxe port sent at least one
//! packet per record. Also the throughput figures (with both VMs' CPU use).

use super::super::args::Role;
use super::super::clients::{CONFIG, HEARTBEAT, MIRROR};
use super::super::devices::{busy_percent, cpu_ticks, pkts};
use super::super::leader::{Figures, Leader};
use super::super::node::{placed, placement, rdma_links, separated, wait_status, RAIL1, RAIL2};
use super::super::since;
use peercm_cm_manager::{ClientEvent, InterconnectId};
use serde_json::Value;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

impl Leader {
    pub(super) async fn rails_up_and_placement(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        let node = self.node()?;
        let (s, t_rails) = wait_status(node, "two RDMA links", Duration::from_secs(30), |s| {
            rdma_links(s) == [RAIL1, RAIL2]
        })
        .await?;
        fig!(f, "start_to_two_rdma_links_ms", since(t_rails, self.t0));
        let (s2, t_sep) = wait_status(
            node,
            "mirror alone on one rail, the others on the other",
            Duration::from_secs(30),
            separated,
        )
        .await?;
        fig!(f, "start_to_separated_ms", since(t_sep, self.t0));
        let _ = s;
        let mut problems = Vec::new();
        if s2.fallback.is_some() || s2.verbs_unavailable.is_some() {
            problems.push(format!(
                "fallback {:?} / verbs_unavailable {:?} with RDMA up",
                s2.fallback, s2.verbs_unavailable
            ));
        }
        let devs: Vec<String> = s2
            .interconnects
            .iter()
            .filter_map(|i| i.device.clone().map(|d| format!("rail {}={d}", i.id)))
            .collect();
        fig!(f, "rails", devs.join(", "));
        let mirror_rail = placed(&s2, MIRROR).unwrap_or(InterconnectId::TCP);
        fig!(f, "placement", placement(&s2));
        // Placement moves while converging are fine; nothing else may have happened yet.
        for name in [MIRROR, CONFIG, HEARTBEAT] {
            if let Some(h) = self.handle_mut(name) {
                while let Some(ev) = h.try_next_event() {
                    if !matches!(ev, ClientEvent::Migrated { .. }) {
                        problems.push(format!("{name}: unexpected early event {ev:?}"));
                    }
                }
            }
        }

        // The mirror streams alone: the throughput figure (with both VMs' CPU use).
        let b_before = self.report(Role::Partner).await?;
        // How long each manager task went unresponsive so far (rail setup at startup).
        fig!(f, "node-a_manager_max_stall_at_startup", self.probe.take());
        fig!(
            f,
            "node-b_manager_max_stall_at_startup",
            b_before["nodes"]["node-b"]["max_status_rtt"].clone()
        );
        let before: Vec<(u64, u64)> = self.hcas.iter().map(|h| pkts(&h.device)).collect();
        let cpu0 = cpu_ticks();
        let stop = Arc::new(AtomicBool::new(false));
        let n = self.args.records;
        let streams = self.start_streams(&[(MIRROR, Some(n))], &stop)?;
        let outs = self.join_streams(streams).await?;
        let cpu1 = cpu_ticks();
        let after: Vec<(u64, u64)> = self.hcas.iter().map(|h| pkts(&h.device)).collect();
        let b_after = self.report(Role::Partner).await?;
        let ticks = |v: &Value| {
            let t = &v["nodes"]["node-b"]["cpu_ticks"];
            (t[0].as_u64().unwrap_or(0), t[1].as_u64().unwrap_or(0))
        };
        fig!(
            f,
            "n1_vcpu_busy_percent_during_mirror",
            busy_percent(cpu0, cpu1)
        );
        fig!(
            f,
            "n2_vcpu_busy_percent_during_mirror",
            busy_percent(ticks(&b_before), ticks(&b_after))
        );
        let m = &outs[MIRROR];
        problems.extend(m.problems().into_iter().map(|p| format!("mirror: {p}")));
        if !m.migrations.is_empty() {
            problems.push(format!(
                "mirror migrated without a fault: {:?}",
                m.migrations.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>()
            ));
        }
        fig!(f, "mirror_records", m.acked);
        fig!(
            f,
            "mirror_mbytes_per_s",
            (m.mbytes_per_s() * 100.0).round() / 100.0
        );
        fig!(
            f,
            "mirror_records_per_s",
            (m.acked as f64
                / m.last_ack
                    .zip(m.started)
                    .map_or(1.0, |(b, a)| b.duration_since(a).as_secs_f64()))
            .round()
        );
        fig!(f, "mirror_ack_latency_p50_ms", m.latency_ms(0.5));
        fig!(f, "mirror_ack_latency_p99_ms", m.latency_ms(0.99));
        let mut per_rail = Vec::new();
        for (i, h) in self.hcas.iter().enumerate() {
            let (s0, r0) = before[i];
            let (s1, r1) = after[i];
            per_rail.push(format!("{}: sent {} rcvd {}", h.device, s1 - s0, r1 - r0));
        }
        fig!(f, "rxe_pkts_during_mirror", per_rail.join(", "));
        // The mirror's rail must have carried its data: at least one packet per record.
        if let Some(k) = mirror_rail.rail_index() {
            if let (Some((s0, _)), Some((s1, _))) = (before.get(k), after.get(k)) {
                if s1 - s0 < n {
                    problems.push(format!(
                        "{} sent {} packets for {n} mirror records: the data did not go over rail {mirror_rail}",
                        self.hcas[k].device,
                        s1 - s0
                    ));
                }
            }
        }

        // Then the light clients, together.
        let streams = self.start_streams(&[(CONFIG, Some(500)), (HEARTBEAT, Some(50))], &stop)?;
        let outs = self.join_streams(streams).await?;
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
        }
        fig!(
            f,
            "heartbeat_latency_p50_ms",
            outs[HEARTBEAT].latency_ms(0.5)
        );

        let report = self.report(Role::Partner).await?;
        problems.extend(self.check_receiver(&report, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&report, "node-b", f);
        let b_rdma = report["nodes"]["node-b"]["status"]["links"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|l| l["transport"] == "rdma").count());
        if b_rdma != 2 {
            problems.push(format!("node b holds {b_rdma} RDMA links, expected 2"));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "rails {} up {:.0} ms after start, {} (mirror alone); mirror {} x {} B sync: {:.2} MB/s, ack p50 {:.1} ms; config 500 + heartbeat 50 async; node b got all in order, CRCs ok",
            devs.join(" "),
            since(t_rails, self.t0),
            f["placement"].as_str().unwrap_or(""),
            n,
            self.args.record_bytes,
            m.mbytes_per_s(),
            m.latency_ms(0.5)
        ))
    }
}

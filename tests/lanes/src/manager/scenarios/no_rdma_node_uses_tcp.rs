//! Scenario 4, `no_rdma_node_uses_tcp`: n1 starts `node-a-tcp` dialing `node-c-nordma` on n3
//! (no rxe). n3 says why it has no RDMA (`verbs_unavailable`); node-a-tcp reports fallback
//! "the partner offers no RDMA", TCP links only, every client on interconnect 0; 1000 mirror +
//! 50 + 50 records checked as on the rails.

use super::super::args::Role;
use super::super::clients::{client_specs, MIRROR};
use super::super::leader::{connect_client, Figures, Leader};
use super::super::node::{brief, node_config, rdma_links, secret, wait_status};
use super::super::since;
use super::super::stream::{run_stream, StreamCfg};
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::{FallbackReason, TransportKind};
use peercm_cm_manager::{InterconnectId, Node, VerbsSource};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Leader {
    pub(super) async fn no_rdma_node_uses_tcp(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        let peer = self.args.no_rdma_peer.ok_or("no --no-rdma-peer given")?;
        let mut cfg = node_config("node-a-tcp", &self.hcas);
        cfg.peer = Some(PeerConfig::new(peer, 2));
        let t_start = Instant::now();
        let a2 = Node::start_with_verbs(cfg, secret(), VerbsSource::Real)
            .await
            .map_err(|e| format!("starting node-a-tcp: {e}"))?;
        let res = self.tcp_scenario(&a2, t_start, f).await;
        a2.shutdown();
        res
    }

    async fn tcp_scenario(
        &mut self,
        a2: &Node,
        t_start: Instant,
        f: &mut Figures,
    ) -> Result<String, String> {
        let mut handles = Vec::new();
        for (name, tag, spec) in client_specs() {
            let h = connect_client(a2, name, spec).await?;
            handles.push((name, tag, h));
        }
        let (s, t_up) = wait_status(
            a2,
            "every client placed on TCP",
            Duration::from_secs(15),
            |s| {
                s.clients.len() == 3
                    && s.clients
                        .iter()
                        .all(|c| c.interconnect == Some(InterconnectId::TCP))
            },
        )
        .await?;
        fig!(f, "start_to_clients_up_on_tcp_ms", since(t_up, t_start));
        let mut problems = Vec::new();
        if s.fallback != Some(FallbackReason::PartnerHasNoRdma) {
            problems.push(format!(
                "fallback reason {:?}, expected \"the partner offers no RDMA\"",
                s.fallback
            ));
        }
        fig!(f, "fallback", s.fallback.clone());
        if s.verbs_unavailable.is_some() {
            problems.push(format!(
                "this node (n1) has rxe but says {:?}",
                s.verbs_unavailable
            ));
        }
        if !rdma_links(&s).is_empty() || s.links.iter().any(|l| l.transport != TransportKind::Tcp) {
            problems.push(format!("non-TCP links: {}", brief(&s)));
        }
        fig!(
            f,
            "links",
            s.links
                .iter()
                .map(|l| format!("{}@{}", l.transport, l.interconnect))
                .collect::<Vec<_>>()
                .join(" ")
        );
        // Mirror records over TCP, checked like on the rails.
        let n = (self.args.records / 2).max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut outs = BTreeMap::new();
        for (name, tag, h) in handles {
            let count = if name == MIRROR { n } else { 50 };
            let cfg = StreamCfg {
                name,
                tag,
                sync: name == MIRROR,
                first: 1,
                count: Some(count),
                window: self.args.window,
                pace: None,
                bytes: self.args.record_bytes,
            };
            let (_h, o) = run_stream(h, cfg, stop.clone(), Arc::new(AtomicU64::new(0))).await;
            outs.insert(name, o);
        }
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            if !o.migrations.is_empty() {
                problems.push(format!(
                    "{name} migrated: {:?}",
                    o.migrations.iter().map(|m| (m.1, m.2)).collect::<Vec<_>>()
                ));
            }
        }
        let m = &outs[MIRROR];
        fig!(
            f,
            "mirror_mbytes_per_s_tcp",
            (m.mbytes_per_s() * 100.0).round() / 100.0
        );
        fig!(f, "mirror_ack_latency_p50_ms_tcp", m.latency_ms(0.5));
        let report = self.report(Role::Backup).await?;
        let c = &report["nodes"]["node-c-nordma"];
        if c.is_null() {
            problems.push(format!("no report from node-c-nordma: {report}"));
        } else {
            for (name, o) in &outs {
                let s = &c["clients"][name];
                let bad: u64 = ["duplicates", "gaps", "bad"]
                    .iter()
                    .map(|k| s[k].as_u64().unwrap_or(0))
                    .sum();
                if s["received"].as_u64() != Some(o.sent)
                    || s["last"].as_u64() != Some(o.last_sent)
                    || bad != 0
                {
                    problems.push(format!("node-c-nordma/{name}: {s} (sent {})", o.sent));
                }
            }
            let vu = &c["status"]["verbs_unavailable"];
            fig!(f, "n3_verbs_unavailable", vu.clone());
            if vu.is_null() {
                problems.push("node-c-nordma (n3, no rxe) does not say why it has no RDMA".into());
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "n3 has no rxe ({}); node-a-tcp on n1 reports fallback \"{}\", links {}; mirror {n} x {} B sync over TCP {:.2} MB/s + config/heartbeat 50 each; n3 got all in order, CRCs ok",
            c["status"]["verbs_unavailable"]["message"]
                .as_str()
                .unwrap_or("?"),
            s.fallback.as_ref().map(ToString::to_string).unwrap_or_default(),
            f["links"].as_str().unwrap_or(""),
            self.args.record_bytes,
            m.mbytes_per_s()
        ))
    }
}

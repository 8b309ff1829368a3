//! Scenario `ports_down_at_start`: node a is stopped, n1 takes both rxe netdevs
//! administratively down (PORT_ERR), and a fresh node a starts with every port down. It must
//! open and watch both devices anyway (no "RDMA unavailable"), list both rails with their ports
//! down, connect its clients over TCP and say why ("ports down"). With all three clients
//! streaming, n1 brings both netdevs up: PORT_ACTIVE (watcher and timeline), both rails are
//! offered and linked, every client moves to RDMA (`Migrated` from TCP) with no NACK, no Down,
//! no loss and no duplicate (node b checks every record). The restarted node a and its clients
//! then serve the scenarios that follow.

use super::super::args::{Hca, Role};
use super::super::clients::{client_specs, CONFIG, HEARTBEAT, MIRROR};
use super::super::devices::{gid_table, port_state};
use super::super::leader::{connect_client, Figures, Leader};
use super::super::node::{
    brief, is_port_event, node_config, placement, rdma_links, secret, wait_status, RAIL1, RAIL2,
};
use super::super::since;
use super::super::watch::StallProbe;
use super::SCENARIOS;
use crate::cli;
use crate::netdev::set_admin_state;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::{FallbackReason, NodeEvent, NodeStatus};
use peercm_cm_manager::{ClientEvent, InterconnectId, Node, VerbsSource};
use peercm_verbs_shim::types::AsyncEvent;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Every client placed, none on TCP, both rails linked, no fallback.
fn all_on_rdma(s: &NodeStatus) -> bool {
    rdma_links(s) == [RAIL1, RAIL2]
        && s.fallback.is_none()
        && s.clients.len() == 3
        && s.clients
            .iter()
            .all(|c| c.interconnect.is_some_and(|i| !i.is_tcp()))
}

/// Sets every HCA's netdev up or down; the first error, after trying them all.
fn set_all(hcas: &[Hca], up: bool) -> Result<(), String> {
    let mut first = None;
    for h in hcas {
        if let Err(e) = set_admin_state(&h.netdev, up) {
            first.get_or_insert(format!("{}: {e}", h.netdev));
        }
    }
    first.map_or(Ok(()), Err)
}

/// Waits (polling sysfs) until every HCA's port is (`active`) or is not ACTIVE; when.
async fn wait_ports(hcas: &[Hca], active: bool, timeout: Duration) -> Result<Instant, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if hcas
            .iter()
            .all(|h| (port_state(&h.device) == "ACTIVE") == active)
        {
            return Ok(Instant::now());
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = hcas
                .iter()
                .map(|h| format!("{} {}", h.device, port_state(&h.device)))
                .collect();
            return Err(format!(
                "ports not {} within {} s: {}",
                if active { "ACTIVE" } else { "down" },
                timeout.as_secs(),
                states.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Leader {
    pub(super) async fn ports_down_at_start(&mut self, f: &mut Figures) -> Result<String, String> {
        let hcas = self.hcas.clone();
        if self.rail_down() {
            // An earlier scenario left HCA0 cut: every port starts ACTIVE here.
            if let Some(h0) = hcas.first() {
                self.restore_link(h0)?;
            }
            wait_ports(&hcas, true, Duration::from_secs(15)).await?;
        }
        self.stop_node_a().await?;
        // Both cables "unplugged" before the node starts. Whatever happens next, they are
        // plugged back before this scenario returns.
        let res = match set_all(&hcas, false) {
            Ok(()) => self.start_with_ports_down(&hcas, f).await,
            Err(e) => Err(format!("taking the netdevs down: {e}")),
        };
        let restored = set_all(&hcas, true);
        let res = match (res, restored) {
            (Ok(summary), Ok(())) => Ok(summary),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(format!("bringing the netdevs up: {e}")),
        };
        if res.is_err() {
            let _ = wait_ports(&hcas, true, Duration::from_secs(15)).await;
        }
        res
    }

    /// Stops node a (the stall probe holds it weakly) and waits until node b has dropped every
    /// link to it, so the new node a meets a partner with no stale link.
    pub(super) async fn stop_node_a(&mut self) -> Result<(), String> {
        let mut node = self.node.take().ok_or("node a is not running")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Arc::try_unwrap(node) {
                Ok(n) => {
                    n.shutdown();
                    break;
                }
                Err(still_shared) if Instant::now() < deadline => {
                    node = still_shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => return Err("node a is still held elsewhere: cannot stop it".into()),
            }
        }
        self.log("node a stopped");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let report = self.report(Role::Partner).await?;
            let links = &report["nodes"]["node-b"]["status"]["links"];
            if links.as_array().is_some_and(Vec::is_empty) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node b still has links 20 s after node a stopped: {links}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Node a's configuration, as the setup made it (with the backup when the switch runs).
    pub(super) fn node_a_config(&self) -> Result<peercm_cm_manager::NodeConfig, String> {
        let mut cfg = node_config("node-a", &self.hcas);
        super::super::node::with_regions(&mut cfg, self.args.region_dir.as_deref(), "node-a");
        let mut pc = PeerConfig::new(self.args.peer.ok_or("no --peer given")?, 2);
        let selected = cli::select(SCENARIOS, &cli::names(&self.args.only))?;
        if super::switches(&selected) {
            pc.backups = vec![self.backup_addr()?];
            pc.autoswitch = true;
        }
        cfg.peer = Some(pc);
        Ok(cfg)
    }

    async fn start_with_ports_down(
        &mut self,
        hcas: &[Hca],
        f: &mut Figures,
    ) -> Result<String, String> {
        let t_down = Instant::now();
        wait_ports(hcas, false, Duration::from_secs(15)).await?;
        fig!(f, "ports_down_ms", since(Instant::now(), t_down));
        fig!(
            f,
            "gids_while_down",
            hcas.iter()
                .map(|h| format!("{}: {}", h.device, gid_table(&h.device)))
                .collect::<Vec<_>>()
                .join("; ")
        );
        let cfg = self.node_a_config()?;
        let t_start = Instant::now();
        let node = Node::start_with_verbs(cfg, secret(), VerbsSource::Real)
            .await
            .map_err(|e| format!("starting node a with its ports down: {e}"))?;
        let node = Arc::new(node);
        self.probe = StallProbe::spawn(node.clone(), self.t0);
        self.node = Some(node.clone());
        let s = node.status().await.map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        if let Some(why) = &s.verbs_unavailable {
            problems.push(format!("node a says RDMA is unavailable: {why}"));
        }
        let rails: Vec<String> = s
            .interconnects
            .iter()
            .filter(|i| !i.id.is_tcp())
            .map(|i| {
                format!(
                    "{}={}",
                    i.device.clone().unwrap_or_default(),
                    match i.port_active {
                        Some(true) => "ACTIVE",
                        Some(false) => "down",
                        None => "?",
                    }
                )
            })
            .collect();
        fig!(f, "rails_at_start", rails.join(" "));
        let inactive = s
            .interconnects
            .iter()
            .filter(|i| i.port_active == Some(false))
            .count();
        if inactive != hcas.len() {
            problems.push(format!(
                "expected {} rails with their ports down at start: {}",
                hcas.len(),
                rails.join(" ")
            ));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        // Its clients connect over TCP; the old handles (of the stopped node) are replaced.
        for (name, _, spec) in client_specs() {
            let h = connect_client(&node, name, spec).await?;
            let slot = self
                .handle_mut(name)
                .ok_or_else(|| format!("client {name} was lost in an earlier scenario"))?;
            *slot = h;
        }
        let (s_tcp, t_tcp) = wait_status(
            &node,
            "every client on TCP with the reason \"ports down\"",
            Duration::from_secs(20),
            |s| {
                s.clients.len() == 3
                    && s.links.len() == 2
                    && rdma_links(s).is_empty()
                    && s.clients
                        .iter()
                        .all(|c| c.interconnect == Some(InterconnectId::TCP))
                    && s.fallback == Some(FallbackReason::PortsDown)
            },
        )
        .await?;
        fig!(f, "start_to_clients_on_tcp_ms", since(t_tcp, t_start));
        fig!(f, "fallback_while_down", s_tcp.fallback.clone());
        // The restart itself, not what this scenario is about: node b may make the new node a
        // reset once right after its second TCP link (a RESET-REQUEST for node b's dropped
        // session, whose epoch the restarted dialer happens to reuse; see docs/softroce-lane.md,
        // "What the lane found"). Let it settle, count it, and stream from a settled session.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut resets = Vec::new();
        for (name, _, _) in client_specs() {
            if let Some(h) = self.handle_mut(name) {
                while let Some(ev) = h.try_next_event() {
                    if let ClientEvent::Down { reason } = ev {
                        resets.push(format!("{name}: Down {reason:?}"));
                    }
                }
            }
        }
        fig!(f, "resets_after_restart", resets.join(", "));
        wait_status(
            &node,
            "every client connected again after the restart settled",
            Duration::from_secs(10),
            |s| s.links.len() == 2 && s.clients.iter().all(|c| c.state.is_up()),
        )
        .await?;

        // Stream over TCP, then plug the cables back in mid-stream.
        let stop = Arc::new(AtomicBool::new(false));
        let streams =
            self.start_streams(&[(MIRROR, None), (CONFIG, None), (HEARTBEAT, None)], &stop)?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let t_up = Instant::now();
        let res = set_all(hcas, true);
        let active = wait_ports(hcas, true, Duration::from_secs(15)).await;
        let mut port_active_events = Vec::new();
        if let Some(w) = &self.watch {
            for h in hcas {
                port_active_events.push(
                    w.first_after(&h.device, t_up, Duration::from_secs(5), |e| {
                        matches!(e, AsyncEvent::PortActive { .. })
                    })
                    .await,
                );
            }
        }
        let rdma = wait_status(
            &node,
            "both rails linked and every client on RDMA",
            Duration::from_secs(30),
            all_on_rdma,
        )
        .await;
        // Keep streaming a little on RDMA, then stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let outs = self.join_streams(streams).await;
        res?;
        let t_active = active?;
        let (s_rdma, t_rdma) = rdma?;
        let outs = outs?;
        fig!(f, "up_to_ports_active_ms", since(t_active, t_up));
        for (h, ev) in hcas.iter().zip(&port_active_events) {
            match ev {
                Some((t, gids)) => {
                    fig!(
                        f,
                        format!("up_to_port_active_event_{}_ms", h.device),
                        since(*t, t_up)
                    );
                    fig!(f, format!("gids_at_port_active_{}", h.device), gids);
                }
                None => problems.push(format!(
                    "the event observer saw no PORT_ACTIVE on {} within 5 s",
                    h.device
                )),
            }
        }
        fig!(f, "up_to_all_clients_on_rdma_ms", since(t_rdma, t_up));
        fig!(f, "placement", placement(&s_rdma));
        for h in hcas {
            if !s_rdma
                .timeline
                .iter()
                .any(|t| is_port_event(t, &h.device, true))
            {
                problems.push(format!(
                    "node a's timeline shows no PortActive for {}",
                    h.device
                ));
            }
        }
        let found_down = s_rdma
            .timeline
            .iter()
            .filter(|t| matches!(t.event, NodeEvent::RailFound { active: false, .. }))
            .count();
        if found_down != hcas.len() {
            problems.push(format!(
                "node a's timeline has {found_down} rails found down, expected {}",
                hcas.len()
            ));
        }
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            let off_tcp: Vec<String> = o
                .migrations
                .iter()
                .filter(|m| m.1.is_tcp() && !m.2.is_tcp())
                .map(|m| format!("{}->{} +{:.0} ms", m.1, m.2, since(m.0, t_up)))
                .collect();
            if off_tcp.is_empty() {
                problems.push(format!(
                    "{name} was never told it moved off TCP: {:?}",
                    o.migrations.iter().map(|m| (m.1, m.2)).collect::<Vec<_>>()
                ));
            }
            per_client.push(format!("{name} {} recs ({})", o.acked, off_tcp.join(", ")));
        }
        let report = self.report(Role::Partner).await?;
        problems.extend(self.check_receiver(&report, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&report, "node-b", f);
        if !problems.is_empty() {
            return Err(format!(
                "{}; node a: {}",
                problems.join("; "),
                brief(&s_rdma)
            ));
        }
        Ok(format!(
            "node a started with both ports down: {} open, clients on TCP (\"{}\") +{:.0} ms; ports up: ACTIVE +{:.0} ms, every client on RDMA +{:.0} ms ({}); {}; node b got every record once, in order",
            f["rails_at_start"].as_str().unwrap_or(""),
            s_tcp.fallback.as_ref().map(ToString::to_string).unwrap_or_default(),
            since(t_tcp, t_start),
            since(t_active, t_up),
            since(t_rdma, t_up),
            f["placement"].as_str().unwrap_or(""),
            per_client.join(", ")
        ))
    }
}

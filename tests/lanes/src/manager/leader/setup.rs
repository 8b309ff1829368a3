//! The leader's setup before the first scenario: its devices and event observer, the other
//! roles ready, node a started (with the backup partner when the switch scenario runs) with a
//! rail on every HCA, and its three clients connected and Up. If any of it fails, every
//! scenario is reported as not run.

use super::super::clients::client_specs;
use super::super::devices::check_devices;
use super::super::node::{brief, node_config, secret, with_regions};
use super::super::watch::{PortWatch, StallProbe};
use super::super::{since, Role};
use super::Leader;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::{ClientEvent, ClientHandle, ClientSpec, Node, VerbsSource};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Registers a client on `node`, connects it and waits (up to 30 s) for its `Up`.
pub async fn connect_client(
    node: &Node,
    name: &'static str,
    spec: ClientSpec,
) -> Result<ClientHandle, String> {
    let mut h = node
        .register(name, spec)
        .await
        .map_err(|e| format!("register {name}: {e}"))?;
    h.connect()
        .await
        .map_err(|e| format!("connect {name}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline.into(), h.next_event()).await {
            Ok(Some(ClientEvent::Up)) => return Ok(h),
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("{name}: channel closed")),
            Err(_) => {
                let s = node.status().await.map_err(|e| e.to_string())?;
                return Err(format!("{name}: not Up within 30 s; {}", brief(&s)));
            }
        }
    }
}

impl Leader {
    /// Everything that must hold before any of `scenarios` can run.
    pub(super) async fn setup(&mut self, scenarios: &[&str]) -> Result<(), String> {
        let switch = super::super::scenarios::switches(scenarios);
        let need_backup = switch || scenarios.contains(&"no_rdma_node_uses_tcp");
        let d = check_devices(&self.hcas)?;
        self.log(&d);
        self.watch = Some(PortWatch::start(&self.hcas)?);
        let mut roles = vec![Role::Partner];
        if need_backup {
            roles.push(Role::Backup);
        }
        self.wait_for_roles(&roles).await?;
        let peer = self.args.peer.ok_or("no --peer given")?;
        let mut cfg = node_config("node-a", &self.hcas);
        with_regions(&mut cfg, self.args.region_dir.as_deref(), "node-a");
        let mut pc = PeerConfig::new(peer, 2);
        if switch {
            pc.backups = vec![self.backup_addr()?];
            pc.autoswitch = true;
        }
        cfg.peer = Some(pc);
        self.t0 = Instant::now();
        let node = Node::start_with_verbs(cfg, secret(), VerbsSource::Real)
            .await
            .map_err(|e| format!("starting node a: {e}"))?;
        let s = node.status().await.map_err(|e| e.to_string())?;
        if let Some(why) = &s.verbs_unavailable {
            return Err(format!("node a has no RDMA: {why}"));
        }
        let rails: Vec<String> = s
            .interconnects
            .iter()
            .filter_map(|i| i.device.clone())
            .collect();
        for h in &self.hcas {
            if !rails
                .iter()
                .any(|r| r.starts_with(&format!("{} ", h.device)))
            {
                return Err(format!(
                    "node a found no rail on {} (rails: {rails:?})",
                    h.device
                ));
            }
        }
        for (name, _, spec) in client_specs() {
            let h = connect_client(&node, name, spec).await?;
            self.put_handle(name, h);
        }
        self.log(format!(
            "node a up, clients connected ({:.0} ms)",
            since(Instant::now(), self.t0)
        ));
        let node = Arc::new(node);
        self.probe = StallProbe::spawn(node.clone(), self.t0);
        self.node = Some(node);
        Ok(())
    }
}

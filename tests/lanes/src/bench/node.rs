//! The benchmark's peercm nodes: their configuration (the product's defaults, with the lane's
//! reconnect and link-timeout settings), a provider that shows the node only one HCA (so the
//! pair has exactly one rail, on the cable being measured), and the waits every role needs.

use super::args::{Args, Transport};
use peercm_cm_manager::status::{NodeStatus, TransportKind};
use peercm_cm_manager::{ClusterSecret, InterconnectId, Node, NodeConfig, VerbsSource};
use peercm_verbs_shim::api::{Device, Provider};
use peercm_verbs_shim::real::RealProvider;
use peercm_verbs_shim::{DeviceInfo, VerbsError, VerbsUnavailable};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"3c9e1a7f5b2d8064e1a9c3f7b5d20486a1f9c3e7d5b2086e4c1a9f7d3b5e2081";
const CLUSTER: &str = "softroce-bench";
/// The one client, on both nodes.
pub const CLIENT: &str = "bench";
/// The receiver's region.
pub const REGION: &str = "bench";
/// The only rail a one-HCA pair has.
pub const RAIL: InterconnectId = InterconnectId::rail(1);

pub fn secret() -> Result<ClusterSecret, String> {
    ClusterSecret::new(SECRET).map_err(|e| format!("the bench secret: {e}"))
}

/// A node's configuration: peercm's defaults (window, rings, staging, payload limit) except
/// the lane's faster reconnects and a 1.5 s link timeout (a TCG vCPU can stall longer than the
/// default 0.5 s; failures are not what is measured here).
pub fn node_config(id: &str, args: &Args) -> Result<NodeConfig, String> {
    let mut cfg = NodeConfig::new(id, CLUSTER);
    cfg.session.reconnect_backoff_min_ms = 20;
    cfg.session.reconnect_backoff_max_ms = 200;
    cfg.session.link_timeout_ms = 1500;
    let largest = args.bw_bytes.max(args.lat_bytes) + 12;
    if largest > cfg.session.max_payload_bytes as usize {
        return Err(format!(
            "a {} byte write with its 12-byte header exceeds session.max_payload_bytes = {}",
            largest - 12,
            cfg.session.max_payload_bytes
        ));
    }
    match args.transport {
        Transport::Rdma | Transport::RawLink => {
            if let Some(h) = &args.hca {
                cfg.verbs.capacity_mbits_per_s.insert(h.clone(), 25_000);
                cfg.verbs.busy_poll_us = args.busy_poll_us;
            }
        }
        Transport::Tcp => cfg.verbs.enabled = false,
    }
    Ok(cfg)
}

/// The verbs the node gets: one real device only, or none.
pub fn verbs_source(args: &Args) -> Result<VerbsSource, String> {
    match (args.transport, &args.hca) {
        (Transport::Rdma, Some(h)) => {
            let inner = RealProvider::load().map_err(|e| format!("no RDMA here: {e}"))?;
            let p = OnlyDevice {
                inner,
                device: h.clone(),
            };
            let devs = p.devices().map_err(|e| format!("no RDMA here: {e}"))?;
            if devs.is_empty() {
                return Err(format!("libibverbs does not list {h}"));
            }
            Ok(VerbsSource::Provider(Arc::new(p)))
        }
        _ => Ok(VerbsSource::Disabled),
    }
}

/// rdma-core's provider restricted to one device: the node discovers one rail only.
struct OnlyDevice {
    inner: RealProvider,
    device: String,
}

impl Provider for OnlyDevice {
    fn devices(&self) -> Result<Vec<DeviceInfo>, VerbsUnavailable> {
        let devs: Vec<DeviceInfo> = self
            .inner
            .devices()?
            .into_iter()
            .filter(|d| d.name == self.device)
            .collect();
        if devs.is_empty() {
            return Err(VerbsUnavailable::NoDevice);
        }
        Ok(devs)
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Device>, VerbsError> {
        if name != self.device {
            return Err(VerbsError::NoSuchDevice(name.to_string()));
        }
        self.inner.open(name)
    }
}

/// Polls the node's status every 10 ms until `pred` holds.
pub async fn wait_status(
    node: &Node,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&NodeStatus) -> bool,
) -> Result<NodeStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = node.status().await.map_err(|e| format!("status: {e}"))?;
        if pred(&s) {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no {what} within {} s (session {:?}, links {:?}, clients {:?})",
                timeout.as_secs(),
                s.session,
                s.links
                    .iter()
                    .map(|l| (l.transport, l.interconnect.to_string()))
                    .collect::<Vec<_>>(),
                s.clients
                    .iter()
                    .map(|c| (c.name.clone(), c.interconnect.map(|i| i.to_string())))
                    .collect::<Vec<_>>()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the node has an RDMA link on the rail and the client is placed there (RDMA), or
/// the client is placed on TCP (TCP).
pub fn ready(s: &NodeStatus, transport: Transport) -> bool {
    let placed = s
        .clients
        .iter()
        .find(|c| c.name == CLIENT)
        .and_then(|c| c.interconnect);
    match transport {
        Transport::Rdma | Transport::RawLink => {
            placed == Some(RAIL)
                && s.links
                    .iter()
                    .any(|l| l.transport == TransportKind::Rdma && l.interconnect == RAIL)
        }
        Transport::Tcp => placed == Some(InterconnectId::TCP),
    }
}

//! The peercm nodes the lane runs (`peercm_cm_manager::Node` on real verbs): their
//! configuration, and the status checks every role and scenario uses (waiting for a status,
//! which rails carry links, where a client is placed, a one-line summary for failures).

use super::args::Hca;
use super::clients::{CONFIG, HEARTBEAT, MIRROR};
use peercm_cm_manager::status::{NodeEvent, NodeStatus, TimelineEntry, TransportKind};
use peercm_cm_manager::{ClusterSecret, InterconnectId, Node, NodeConfig};
use peercm_verbs_shim::types::AsyncEvent;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"e4a19c7f3b2d8065a1f9c3e7b5d20486f1c9e3a7d5b2086e4c1a9f7d3b5e2081";
const CLUSTER: &str = "softroce-lane";
/// The nodes' session link timeout in ms (`--link-timeout-ms`, see `node_config`).
pub static LINK_TIMEOUT_MS: AtomicU64 = AtomicU64::new(1500);

pub fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET).expect("the lane secret is strong enough")
}

pub fn node_config(id: &str, hcas: &[Hca]) -> NodeConfig {
    let mut cfg = NodeConfig::new(id, CLUSTER);
    cfg.session.reconnect_backoff_min_ms = 20;
    cfg.session.reconnect_backoff_max_ms = 200;
    // Heartbeats every 100 ms as by default, but a link is declared dead after 1.5 s of silence
    // instead of 0.5 s: a TCG vCPU shared by three VMs on two host cores can stall for longer
    // than 0.5 s (and setting up a rail blocks the manager task; see docs/softroce-lane.md).
    // Failures in the scenarios are detected by events (PORT_ERR, closed sockets, RDMA
    // completion errors), not by this timeout.
    cfg.session.link_timeout_ms = LINK_TIMEOUT_MS.load(Ordering::Relaxed);
    // Small receive rings (256 KiB instead of 4 MiB): every link's ring wraps every ~240
    // records, and setting a rail up blocks the manager task for less time (registering 2 x
    // 4 MiB under TCG took 0.3-1.2 s, see docs/softroce-lane.md). Frames stay far below the
    // 64 KiB payload limit this needs (a ring must hold two largest frames).
    cfg.session.max_payload_bytes = 64 << 10;
    cfg.verbs.ring_bytes = 256 << 10;
    // rxe reports a nominal port speed; give the rails the capacity the simulated-fabric
    // tests use (25 Gb/s), so that the placement is the same as there.
    for h in hcas {
        cfg.verbs
            .capacity_mbits_per_s
            .insert(h.device.clone(), 25_000);
    }
    cfg
}

/// Gives a node its `[regions] dir` (a directory of its own, `<dir>/<id>`), if `dir` is given
/// (`--region-dir`; the lane puts it on the guest's tmpfs).
pub fn with_regions(cfg: &mut NodeConfig, dir: Option<&std::path::Path>, id: &str) {
    if let Some(d) = dir {
        cfg.regions.dir = Some(d.join(id));
        cfg.regions.max_bytes = 128 << 20;
    }
}

/// Polls the node's status every 10 ms until `pred` holds; the status and when it held.
pub async fn wait_status(
    node: &Node,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&NodeStatus) -> bool,
) -> Result<(NodeStatus, Instant), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = node
            .status()
            .await
            .map_err(|e| format!("{}: status: {e}", node.node_id()))?;
        if pred(&s) {
            return Ok((s, Instant::now()));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: no {what} within {} s; {}",
                node.node_id(),
                timeout.as_secs(),
                brief(&s)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// RDMA rail 1 (HCA0's port) and rail 2 (HCA1's), as interconnect ids.
pub const RAIL1: InterconnectId = InterconnectId::rail(1);
pub const RAIL2: InterconnectId = InterconnectId::rail(2);

/// The interconnects that carry an RDMA link, sorted.
pub fn rdma_links(s: &NodeStatus) -> Vec<InterconnectId> {
    let mut v: Vec<InterconnectId> = s
        .links
        .iter()
        .filter(|l| l.transport == TransportKind::Rdma)
        .map(|l| l.interconnect)
        .collect();
    v.sort_unstable();
    v
}

/// The interconnect a client is placed on.
pub fn placed(s: &NodeStatus, client: &str) -> Option<InterconnectId> {
    s.clients
        .iter()
        .find(|c| c.name == client)
        .and_then(|c| c.interconnect)
}

/// The policy's steady state on two rails: the heavy mirror alone on one rail, the light
/// clients (heartbeat included) on the other.
pub fn separated(s: &NodeStatus) -> bool {
    let m = placed(s, MIRROR);
    rdma_links(s) == [RAIL1, RAIL2]
        && matches!(m, Some(RAIL1 | RAIL2))
        && matches!(placed(s, HEARTBEAT), Some(RAIL1 | RAIL2))
        && placed(s, HEARTBEAT) != m
        && placed(s, CONFIG) != m
}

/// `mirror@<rail> config@<rail> heartbeat@<rail>`.
pub fn placement(s: &NodeStatus) -> String {
    format!(
        "mirror@{} config@{} heartbeat@{}",
        placed(s, MIRROR).unwrap_or(InterconnectId::TCP),
        placed(s, CONFIG).unwrap_or(InterconnectId::TCP),
        placed(s, HEARTBEAT).unwrap_or(InterconnectId::TCP)
    )
}

/// A one-line summary of a status for failure messages.
pub fn brief(s: &NodeStatus) -> String {
    let links: Vec<String> = s
        .links
        .iter()
        .map(|l| format!("{}@{}", l.transport, l.interconnect))
        .collect();
    let clients: Vec<String> = s
        .clients
        .iter()
        .map(|c| {
            format!(
                "{}:{:?}@{}",
                c.name,
                c.state,
                c.interconnect.map_or("-".into(), |i| i.to_string())
            )
        })
        .collect();
    let tail: Vec<&str> = s
        .timeline
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|t| t.what.as_str())
        .collect();
    format!(
        "session {:?}, links [{}], clients [{}], fallback {:?}, verbs_unavailable {:?}, last events: {}",
        s.session,
        links.join(" "),
        clients.join(" "),
        s.fallback,
        s.verbs_unavailable,
        tail.join(" | ")
    )
}

/// Whether `t` is the manager's note of a PORT_ERR (`active` false) or PORT_ACTIVE (`active`
/// true) on `device`.
pub(crate) fn is_port_event(t: &TimelineEntry, device: &str, active: bool) -> bool {
    match &t.event {
        NodeEvent::DeviceEvent {
            device: d, event, ..
        } if d == device => {
            if active {
                matches!(event, AsyncEvent::PortActive { .. })
            } else {
                matches!(event, AsyncEvent::PortError { .. })
            }
        }
        _ => false,
    }
}

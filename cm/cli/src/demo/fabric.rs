//! The demo's simulated RDMA side: the fabric of HCAs and cables, and the placement of the
//! clients on its rails as node-a reports it.

use peercm_cm_manager::status::{NodeStatus, TransportKind};
use peercm_cm_manager::{InterconnectId, Node};
use peercm_verbs_shim::sim::SimFabric;
use std::time::{Duration, Instant};

/// Nodes a and b with one simulated HCA per name each, cabled pairwise.
pub(super) fn demo_fabric(hcas: &[String]) -> anyhow::Result<SimFabric> {
    let f = SimFabric::new(rand::random());
    for node in ["a", "b"] {
        f.add_node(node)?;
        for h in hcas {
            f.add_device(node, h, 25)?;
        }
    }
    for h in hcas {
        f.cable(("a", h, 1), ("b", h, 1))?;
    }
    Ok(f)
}

/// The interconnect `client` is placed on.
pub(super) fn placed(s: &NodeStatus, client: &str) -> Option<InterconnectId> {
    s.clients
        .iter()
        .find(|c| c.name == client)
        .and_then(|c| c.interconnect)
}

/// Waits (up to 15 s) for every rail to be up and the placement to settle: the mirror alone on
/// a rail, the heartbeat elsewhere. Returns the status either way.
pub(super) async fn settle_rails(node: &Node, rails: usize) -> anyhow::Result<NodeStatus> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = node.status().await?;
        let rdma = s
            .links
            .iter()
            .filter(|l| l.transport == TransportKind::Rdma)
            .count();
        let m = placed(&s, "mirror");
        let h = placed(&s, "heartbeat");
        let settled = rdma == rails && m.is_some_and(|r| !r.is_tcp()) && (rails < 2 || h != m);
        if settled || Instant::now() >= deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One line per interconnect: name, device, capacity, up or not, its clients.
pub(super) fn print_placement(s: &NodeStatus) {
    for ic in &s.interconnects {
        println!(
            "          {:<7} {:<12} {:>6} Mb/s  {:<3}  {}",
            ic.name,
            ic.device.as_deref().unwrap_or("loopback"),
            ic.capacity_mbits_per_s,
            if ic.usable { "up" } else { "-" },
            ic.clients.join(", ")
        );
    }
}

//! Shared helpers for the loopback-TCP integration tests: start a pair of real nodes, wait for
//! events with deadlines (a missing event fails the test with a message, never hangs it).

#![allow(dead_code)]

use bytes::Bytes;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::{
    ClientEvent, ClientHandle, ClientSpec, ClusterSecret, LatencyClass, Node, NodeConfig, SendModel,
};
use std::net::SocketAddr;
use std::time::Duration;

/// 32 random bytes as hex, as `peercm secret generate` writes them.
pub const SECRET: &str = "8c2f6e1a9d4b7035e2c8a1f64b9d3e70c5a2f8e1d6b4093c7e5a1f2d8b6c4e09";
pub const WAIT: Duration = Duration::from_secs(30);

pub fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET.as_bytes()).expect("test secret is strong enough")
}

pub fn spec(model: SendModel) -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Normal,
        model,
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn fast_config(mut cfg: NodeConfig) -> NodeConfig {
    cfg.session.reconnect_backoff_min_ms = 20;
    cfg.session.reconnect_backoff_max_ms = 200;
    cfg
}

/// Starts the accepting node b on an ephemeral port.
pub async fn start_b(listen: Option<SocketAddr>) -> Node {
    let mut cfg = fast_config(NodeConfig::new("node-b", "test"));
    cfg.listen = Some(listen.unwrap_or_else(|| "127.0.0.1:0".parse().expect("addr")));
    Node::start(cfg, secret()).await.expect("node-b starts")
}

/// Starts the dialing node a.
pub async fn start_a(peer: SocketAddr, connections: u32) -> Node {
    let mut cfg = fast_config(NodeConfig::new("node-a", "test"));
    cfg.peer = Some(PeerConfig::new(peer, connections));
    Node::start(cfg, secret()).await.expect("node-a starts")
}

pub async fn start_pair(connections: u32) -> (Node, Node) {
    init_tracing();
    let b = start_b(None).await;
    let a = start_a(b.local_addr().expect("b listens"), connections).await;
    (a, b)
}

/// Next event within the deadline, or a test failure naming what was awaited.
pub async fn next(h: &mut ClientHandle, what: &str) -> ClientEvent {
    match tokio::time::timeout(WAIT, h.next_event()).await {
        Ok(Some(ev)) => ev,
        Ok(None) => panic!("{}: channel closed while waiting for {what}", h.name()),
        Err(_) => panic!("{}: timed out waiting for {what}", h.name()),
    }
}

/// Skips events until one matches.
pub async fn wait_for(
    h: &mut ClientHandle,
    what: &str,
    pred: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    loop {
        let ev = next(h, what).await;
        if pred(&ev) {
            return ev;
        }
    }
}

pub async fn wait_up(h: &mut ClientHandle) {
    wait_for(h, "Up", |e| *e == ClientEvent::Up).await;
}

/// Waits until `node` has `n` live links.
pub async fn wait_links(node: &Node, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = node.status().await.expect("status");
        if s.links.len() == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {} links, wanted {n}",
            node.node_id(),
            s.links.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn msg(client: &str, i: u64) -> Bytes {
    Bytes::from(format!("{client}:{i:010}"))
}

/// Waits until `pred` holds on the node's status, or fails naming `what` with the last status.
pub async fn wait_status(
    node: &Node,
    what: &str,
    pred: impl Fn(&peercm_cm_manager::NodeStatus) -> bool,
) -> peercm_cm_manager::NodeStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = node.status().await.expect("status");
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: timed out waiting for {what}; status: {s:#?}",
            node.node_id()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RDMA links a node has.
pub fn rdma_links(s: &peercm_cm_manager::NodeStatus) -> usize {
    s.links
        .iter()
        .filter(|l| l.transport == peercm_cm_manager::status::TransportKind::Rdma)
        .count()
}

/// A simulated fabric of nodes "a" and "b", each with the HCAs `hcas` (25 Gb/s), one cable per
/// HCA pair (a's hcaN to b's hcaN).
pub fn sim_fabric(seed: u64, hcas: &[&str]) -> peercm_verbs_shim::sim::SimFabric {
    let f = peercm_verbs_shim::sim::SimFabric::new(seed);
    for node in ["a", "b"] {
        f.add_node(node).expect("a new node");
        for h in hcas {
            f.add_device(node, h, 25).expect("a new device");
        }
    }
    for h in hcas {
        f.cable(("a", h, 1), ("b", h, 1)).expect("a new cable");
    }
    f
}

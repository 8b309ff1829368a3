//! Nodes whose RDMA ports are down when they start (simulated HCAs, real loopback TCP): the
//! devices are opened and watched anyway, the rails exist with their ports down, clients run
//! on TCP with the reason "ports down", and when the ports come up (PORT_ACTIVE) the rails are
//! set up and the clients move to RDMA mid-stream, without a restart and without losing or
//! repeating a message.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::{FallbackReason, NodeEvent, NodeStatus};
use peercm_cm_manager::{
    ClientEvent, ClientHandle, ClientSpec, InterconnectId, LatencyClass, Node, NodeConfig,
    SendModel, VerbsSource,
};
use peercm_verbs_shim::sim::harness::seed_from_env;
use peercm_verbs_shim::sim::SimFabric;
use peercm_verbs_shim::AsyncEvent;

const HCAS: [&str; 2] = ["hca0", "hca1"];

fn fabric(seed: u64) -> SimFabric {
    sim_fabric(seed, &HCAS)
}

/// Starts b (accepting) and a (dialing), both on the fabric.
async fn start(f: &SimFabric) -> (Node, Node) {
    init_tracing();
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    let b = Node::start_with_verbs(cb, secret(), VerbsSource::Provider(f.provider("b")))
        .await
        .unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 2));
    let a = Node::start_with_verbs(ca, secret(), VerbsSource::Provider(f.provider("a")))
        .await
        .unwrap();
    (a, b)
}

/// A client registered and connected on both nodes.
async fn client(a: &Node, b: &Node, name: &str, spec: ClientSpec) -> (ClientHandle, ClientHandle) {
    let mut ha = a.register(name, spec).await.unwrap();
    let mut hb = b.register(name, spec).await.unwrap();
    ha.connect().await.unwrap();
    wait_up(&mut ha).await;
    wait_up(&mut hb).await;
    (ha, hb)
}

fn on_tcp(s: &NodeStatus) -> bool {
    rdma_links(s) == 0
        && !s.clients.is_empty()
        && s.clients
            .iter()
            .all(|c| c.interconnect == Some(InterconnectId::TCP))
}

fn on_rdma(s: &NodeStatus) -> bool {
    rdma_links(s) == 2
        && !s.clients.is_empty()
        && s.clients
            .iter()
            .all(|c| c.interconnect.is_some_and(|i| !i.is_tcp()))
}

type Moves = Vec<(InterconnectId, InterconnectId)>;

/// Notes one event of the sending mirror: an ack (code 0) or a move; anything else fails.
fn note(ev: ClientEvent, acked: &mut usize, moves: &mut Moves) {
    match ev {
        ClientEvent::Acked { code, .. } => {
            assert_eq!(code, Some(0));
            *acked += 1;
        }
        ClientEvent::Migrated { from, to } => moves.push((from, to)),
        ClientEvent::Nacked { seq, reason } => panic!("seq {seq} nacked: {reason:?}"),
        ClientEvent::Down { reason } => panic!("down: {reason:?}"),
        _ => {}
    }
}

/// Sends messages `range` of the mirror (sync) and waits for their acks; returns the moves
/// the mirror was told about meanwhile.
async fn send_acked(h: &mut ClientHandle, range: std::ops::RangeInclusive<u64>) -> Moves {
    let n = range.clone().count();
    let (mut acked, mut moves) = (0, Vec::new());
    for i in range {
        h.send(msg("mirror", i)).await.unwrap();
    }
    while acked < n {
        note(next(h, "acks").await, &mut acked, &mut moves);
    }
    while let Some(ev) = h.try_next_event() {
        note(ev, &mut acked, &mut moves);
    }
    moves
}

/// Receives messages `range` of the mirror in order, answering each with code 0.
fn receive(
    mut h: ClientHandle,
    range: std::ops::RangeInclusive<u64>,
) -> tokio::task::JoinHandle<ClientHandle> {
    tokio::spawn(async move {
        for i in range {
            loop {
                if let ClientEvent::Data { payload, seq, .. } = next(&mut h, "data").await {
                    assert_eq!(payload, msg("mirror", i), "message {i}");
                    h.reply(seq, 0).await.unwrap();
                    break;
                }
            }
        }
        h
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_started_with_every_port_down_moves_to_rdma_when_the_ports_come_up() {
    let seed = seed_from_env(0x5eed_0041);
    let f = fabric(seed);
    // Every cable is cut before either node starts: every port of both nodes is DOWN.
    for h in HCAS {
        f.cut_cable(("a", h, 1)).unwrap();
    }
    let (a, b) = start(&f).await;
    let spec = ClientSpec {
        bandwidth_mbytes_per_s: 500,
        latency: LatencyClass::Bulk,
        model: SendModel::Sync,
    };
    let (mut mirror, mirror_b) = client(&a, &b, "mirror", spec).await;
    let hb_spec = ClientSpec {
        bandwidth_mbytes_per_s: 1,
        latency: LatencyClass::Critical,
        model: SendModel::Async,
    };
    let _heartbeat = client(&a, &b, "heartbeat", hb_spec).await;

    // On TCP, saying why; the devices are open and their rails exist, with their ports down.
    for node in [&a, &b] {
        let s = wait_status(node, "clients on TCP because the ports are down", |s| {
            on_tcp(s) && s.fallback == Some(FallbackReason::PortsDown)
        })
        .await;
        assert_eq!(
            s.verbs_unavailable, None,
            "ports down is not \"RDMA unavailable\": the devices are opened"
        );
        let rails: Vec<Option<bool>> = s
            .interconnects
            .iter()
            .filter(|i| !i.id.is_tcp())
            .map(|i| i.port_active)
            .collect();
        assert_eq!(rails, [Some(false), Some(false)], "two rails, ports down");
    }
    let rx = receive(mirror_b, 1..=400);
    let moves = send_acked(&mut mirror, 1..=200).await;
    assert!(
        moves.iter().all(|(_, to)| to.is_tcp()),
        "nothing leaves TCP while the ports are down: {moves:?}"
    );

    // The cables come back: PORT_ACTIVE brings the rails up and the clients move to RDMA.
    for h in HCAS {
        f.restore_cable(("a", h, 1)).unwrap();
    }
    let s = wait_status(&a, "both rails linked, every client on RDMA", |s| {
        on_rdma(s) && s.fallback.is_none()
    })
    .await;
    assert!(
        s.timeline.iter().any(|t| matches!(
            t.event,
            NodeEvent::DeviceEvent {
                event: AsyncEvent::PortActive { .. },
                ..
            }
        )),
        "the timeline records PORT_ACTIVE"
    );
    wait_status(&b, "b holds both rails", |s| rdma_links(s) == 2).await;
    let moves = send_acked(&mut mirror, 201..=400).await;
    rx.await.unwrap();
    eprintln!("sim ports down at start: mirror moves after the restore: {moves:?}");
    assert!(
        moves.iter().any(|(from, to)| from.is_tcp() && !to.is_tcp()),
        "the mirror was told it moved from TCP to a rail: {moves:?}"
    );
    let sb = b.status().await.unwrap();
    assert_eq!(sb.stats.delivered, 400, "every message exactly once");
}

//! Rail faults on simulated HCAs (real loopback TCP beside them): a verbs teardown that hangs
//! in the "kernel" (issue 8, item 10) costs resources, never the manager's liveness -- the
//! heartbeats, the healthy rail and the clients carry on.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::{NodeEvent, NodeStatus, RailState, TransportKind};
use peercm_cm_manager::{
    ClientEvent, ClientHandle, ClientSpec, InterconnectId, LatencyClass, Node, NodeConfig,
    SendModel, VerbsSource,
};
use peercm_verbs_shim::sim::harness::seed_from_env;
use peercm_verbs_shim::sim::SimFabric;
use std::time::Duration;

const HCAS: [&str; 2] = ["hca0", "hca1"];

fn fabric(seed: u64) -> SimFabric {
    sim_fabric(seed, &HCAS)
}

/// The nodes' own runtime, apart from the test's: a manager blocked in a verbs call (the bug
/// this file guards against) blocks a worker thread of the runtime it runs on, and the test
/// must still be able to time out and fail rather than hang with it.
struct NodesRuntime(Option<tokio::runtime::Runtime>);

impl NodesRuntime {
    fn new() -> Self {
        NodesRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        ))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().unwrap().handle().clone()
    }
}

impl Drop for NodesRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts b (accepting) and a (dialing), both on the fabric, on `rt`.
async fn start(f: &SimFabric, rt: &NodesRuntime) -> (Node, Node) {
    init_tracing();
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    let pb = VerbsSource::Provider(f.provider("b"));
    let b = rt
        .handle()
        .spawn(async move { Node::start_with_verbs(cb, secret(), pb).await })
        .await
        .unwrap()
        .unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 2));
    let pa = VerbsSource::Provider(f.provider("a"));
    let a = rt
        .handle()
        .spawn(async move { Node::start_with_verbs(ca, secret(), pa).await })
        .await
        .unwrap()
        .unwrap();
    (a, b)
}

/// The node's status; a manager that does not answer within [`WAIT`] fails the test (a
/// manager blocked in a verbs call answers nothing).
async fn status(node: &Node, what: &str) -> NodeStatus {
    match tokio::time::timeout(WAIT, node.status()).await {
        Ok(s) => s.unwrap(),
        Err(_) => panic!(
            "{}: the manager did not answer a status request ({what}): it is stalled",
            node.node_id()
        ),
    }
}

/// Waits until `pred` holds on the node's status (each request bounded, see [`status`]).
async fn until(node: &Node, what: &str, pred: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = status(node, what).await;
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

/// Sends messages `range` of the mirror (sync) and waits for their acks; any NACK or Down
/// fails the test.
async fn send_acked(h: &mut ClientHandle, range: std::ops::RangeInclusive<u64>) {
    let n = range.clone().count();
    for i in range {
        h.send(msg("mirror", i)).await.unwrap();
    }
    let mut acked = 0;
    while acked < n {
        match next(h, "acks").await {
            ClientEvent::Acked { code, .. } => {
                assert_eq!(code, Some(0));
                acked += 1;
            }
            ClientEvent::Nacked { seq, reason } => panic!("seq {seq} nacked: {reason:?}"),
            ClientEvent::Down { reason } => panic!("mirror down: {reason:?}"),
            _ => {}
        }
    }
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

/// Whether the node's timeline holds a silence verdict on a TCP link or a client going Down:
/// what a manager that stopped heartbeating causes at its partner.
fn liveness_lost(s: &NodeStatus) -> Option<String> {
    s.timeline.iter().find_map(|t| match &t.event {
        NodeEvent::LinkSilent {
            transport: TransportKind::Tcp,
            ..
        }
        | NodeEvent::ClientDown { .. } => Some(format!("{:?}", t.event)),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teardown_that_hangs_stalls_neither_the_manager_nor_the_other_rail() {
    let seed = seed_from_env(0x5eed_0100);
    let f = fabric(seed);
    let rt = NodesRuntime::new();
    let (a, b) = start(&f, &rt).await;
    let spec = ClientSpec {
        bandwidth_mbytes_per_s: 500,
        latency: LatencyClass::Bulk,
        model: SendModel::Sync,
    };
    let mut mirror = a.register("mirror", spec).await.unwrap();
    let mut mirror_b = b.register("mirror", spec).await.unwrap();
    mirror.connect().await.unwrap();
    wait_up(&mut mirror).await;
    wait_up(&mut mirror_b).await;
    until(&a, "both rails linked", |s| rdma_links(s) == 2).await;
    until(&b, "both rails linked", |s| rdma_links(s) == 2).await;
    let rx = receive(mirror_b, 1..=300);
    send_acked(&mut mirror, 1..=100).await;

    // Every destroy and deregistration on a now blocks (as rxe_destroy_qp does while packets
    // of the QP are held up), and rail 1's cable goes: its link on a closes and its teardown
    // hangs.
    f.hang_teardowns("a", true).unwrap();
    f.cut_cable(("a", "hca0", 1)).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.hung_teardowns("a").unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no teardown on a ever started after the cable cut"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The manager answers, rail 2 carries on, nothing is NACKed, and b -- which would judge a
    // silent manager dead after 500 ms -- keeps every link and client.
    until(&a, "rail 1 gone, rail 2 linked", |s| rdma_links(s) == 1).await;
    send_acked(&mut mirror, 101..=200).await;
    // Longer than the 500 ms link timeout, with heartbeats due all along.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sa = status(&a, "during the hang").await;
    assert_eq!(rdma_links(&sa), 1, "rail 2 stays linked: {:#?}", sa.links);
    assert!(
        f.hung_teardowns("a").unwrap() > 0,
        "the teardown is still hanging"
    );
    let sb = status(&b, "during the hang").await;
    assert_eq!(liveness_lost(&sb), None, "b lost a: {:#?}", sb.timeline);
    assert_eq!(liveness_lost(&sa), None, "a lost b: {:#?}", sa.timeline);
    assert_eq!(rdma_links(&sb), 1);

    // Released and restored: the rail comes back and the stream goes on.
    f.hang_teardowns("a", false).unwrap();
    f.restore_cable(("a", "hca0", 1)).unwrap();
    until(&a, "both rails linked again", |s| rdma_links(s) == 2).await;
    send_acked(&mut mirror, 201..=300).await;
    rx.await.unwrap();
    let sb = status(&b, "at the end").await;
    assert_eq!(sb.stats.delivered, 300, "every message exactly once");
    assert_eq!(liveness_lost(&sb), None, "b lost a: {:#?}", sb.timeline);
}

/// How long the black-holed rail is watched: the old code offered it about once a second (a
/// link handed over at once, dead when the hardware gave up retrying 0.94 s later, offered
/// again at the next 1 s round); with the backoff (1 s doubling, jitter in [0.5, 1)), at most
/// 5 offers fit in this window even with the shortest draws (0, 1.44, 3.38, 6.32, 11.26 s).
const BLACK_HOLE_WINDOW: Duration = Duration::from_secs(16);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_rail_never_counts_as_linked_and_its_offers_back_off() {
    let seed = seed_from_env(0x5eed_0111);
    let f = fabric(seed);
    // Everything a sends on rail 1 is lost; what b sends still arrives.
    f.set_loss_from(("a", "hca0", 1), 1.0).unwrap();
    let rt = NodesRuntime::new();
    // The window starts before the nodes do, so every offer a makes falls inside it.
    let started = tokio::time::Instant::now();
    let (a, b) = start(&f, &rt).await;
    let spec = ClientSpec {
        bandwidth_mbytes_per_s: 500,
        latency: LatencyClass::Bulk,
        model: SendModel::Sync,
    };
    let mut mirror = a.register("mirror", spec).await.unwrap();
    let mut mirror_b = b.register("mirror", spec).await.unwrap();
    mirror.connect().await.unwrap();
    wait_up(&mut mirror).await;
    wait_up(&mut mirror_b).await;
    let rx = receive(mirror_b, 1..=100);
    until(&a, "rail 2 linked", |s| rdma_links(s) == 1).await;

    let rail1 = |s: &NodeStatus| {
        s.interconnects
            .iter()
            .find(|i| i.id == InterconnectId::rail(1))
            .cloned()
            .unwrap()
    };
    let sa = until(&a, "rail 1 failing on a", |s| {
        rail1(s).state == RailState::Failing
    })
    .await;
    eprintln!("a: rail 1 {:?}", rail1(&sa));
    send_acked(&mut mirror, 1..=50).await;
    tokio::time::sleep_until(started + BLACK_HOLE_WINDOW).await;
    let sa = status(&a, "after the window").await;
    let r = rail1(&sa);
    eprintln!(
        "sim black-holed rail: {} offers, {} failures in a row over {:?}; state {}",
        r.offers, r.failures, BLACK_HOLE_WINDOW, r.state
    );
    assert!(r.offers >= 2, "the rail is retried: {r:?}");
    assert!(
        r.offers <= 5,
        "offers back off (the old code made about one a second): {r:?}"
    );
    assert!(!r.usable, "never linked: {r:?}");
    let linked_on_rail1 = |s: &NodeStatus| {
        s.timeline.iter().any(|t| {
            matches!(t.event, NodeEvent::RdmaLinkUp { rail, .. } if rail == InterconnectId::rail(1))
        })
    };
    assert!(
        !linked_on_rail1(&sa),
        "a never linked rail 1: {:#?}",
        sa.timeline
    );
    let sb = until(&b, "rail 1 failing on b too", |s| {
        rail1(s).state == RailState::Failing
    })
    .await;
    assert!(
        !linked_on_rail1(&sb),
        "b never linked rail 1: {:#?}",
        sb.timeline
    );

    // The healthy rail carried the stream all along.
    send_acked(&mut mirror, 51..=100).await;
    rx.await.unwrap();
    assert_eq!(liveness_lost(&sb), None, "b lost a: {:#?}", sb.timeline);
}

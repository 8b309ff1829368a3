//! A client asks for a queue pair of its own [CCM] (issue 9), on the simulated HCA fabric
//! (two nodes, two HCAs each) plus loopback TCP:
//!
//! - the queue pair comes up on the rail the client is placed on, reserved for it on both
//!   nodes; its messages travel on it and nobody else's do;
//! - a cable cut moves the client to the other rail, and its queue pair is set up again there;
//!   nothing is lost or reordered;
//! - releasing it closes it; the client's traffic goes back to the shared queue pair;
//! - requests beyond `[verbs] max_client_qps` get a typed refusal.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::NodeStatus;
use peercm_cm_manager::{
    ClientEvent, ClientHandle, ClientSpec, CmError, InterconnectId, LatencyClass, Node, NodeConfig,
    SendModel, VerbsSource,
};
use peercm_verbs_shim::sim::harness::seed_from_env;
use peercm_verbs_shim::sim::SimFabric;

const HCAS: [&str; 2] = ["hca0", "hca1"];

fn fabric(seed: u64) -> SimFabric {
    sim_fabric(seed, &HCAS)
}

async fn start(f: &SimFabric, max_qps_a: usize) -> (Node, Node) {
    init_tracing();
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    let b = Node::start_with_verbs(cb, secret(), VerbsSource::Provider(f.provider("b")))
        .await
        .unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 2));
    ca.verbs.max_client_qps = max_qps_a;
    let a = Node::start_with_verbs(ca, secret(), VerbsSource::Provider(f.provider("a")))
        .await
        .unwrap();
    wait_status(&a, "both rails up", |s| rdma_links(s) == 2).await;
    (a, b)
}

fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Bulk,
        model: SendModel::Async,
    }
}

/// Client `name` on both nodes, connected.
async fn pair(a: &Node, b: &Node, name: &str) -> (ClientHandle, ClientHandle) {
    let mut ha = a.register(name, spec()).await.unwrap();
    let mut hb = b.register(name, spec()).await.unwrap();
    ha.connect().await.unwrap();
    hb.connect().await.unwrap();
    wait_up(&mut ha).await;
    wait_up(&mut hb).await;
    (ha, hb)
}

fn client<'s>(s: &'s NodeStatus, name: &str) -> &'s peercm_cm_manager::status::ClientStatus {
    s.clients.iter().find(|c| c.name == name).unwrap()
}

/// Data frames the node put on the link reserved for `name`, and on every other link.
fn frames(s: &NodeStatus, name: &str) -> (u64, u64) {
    let mut own = 0;
    let mut rest = 0;
    for l in &s.links {
        let n = l.data_frames_out.unwrap_or(0);
        if l.reserved_for.as_deref() == Some(name) {
            own += n;
        } else {
            rest += n;
        }
    }
    (own, rest)
}

/// `from` sends messages `range` of client `name`; `to` takes them and checks order.
async fn stream(from: &mut ClientHandle, to: &mut ClientHandle, range: std::ops::Range<u64>) {
    let name = from.name().to_string();
    for i in range.clone() {
        from.send(msg(&name, i)).await.unwrap();
    }
    for i in range.clone() {
        let ev = wait_for(to, "a message", |e| matches!(e, ClientEvent::Data { .. })).await;
        let ClientEvent::Data { payload, .. } = ev else {
            unreachable!()
        };
        assert_eq!(payload, msg(&name, i), "{name}: in order, each once");
    }
    let mut acked = 0;
    while acked < range.end - range.start {
        if let ClientEvent::Acked { .. } = next(from, "an ack").await {
            acked += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_queue_pair_carries_its_traffic_follows_a_migration_and_is_released() {
    let f = fabric(seed_from_env(0x51));
    let (a, b) = start(&f, 4).await;
    let (mut heavy_a, mut heavy_b) = pair(&a, &b, "heavy").await;
    let (mut light_a, mut light_b) = pair(&a, &b, "light").await;
    let placed = wait_status(&a, "heavy placed on a rail", |s| {
        client(s, "heavy")
            .interconnect
            .is_some_and(|i| i != InterconnectId::TCP)
    })
    .await;
    let rail = client(&placed, "heavy").interconnect.unwrap();

    heavy_a.request_queue_pair().await.unwrap();
    heavy_a.request_queue_pair().await.unwrap(); // one request
    wait_status(&a, "heavy's own queue pair", |s| {
        client(s, "heavy").own_queue_pair == Some(rail)
    })
    .await;
    let sb = wait_status(&b, "reserved on b too", |s| {
        client(s, "heavy").own_queue_pair == Some(rail)
    })
    .await;
    assert_eq!(client(&sb, "light").own_queue_pair, None);
    let s = a.status().await.unwrap();
    assert_eq!(rdma_links(&s), 3, "two rail links and heavy's own");

    let before = frames(&s, "heavy");
    stream(&mut heavy_a, &mut heavy_b, 0..200).await;
    stream(&mut light_a, &mut light_b, 0..200).await;
    let after = frames(&a.status().await.unwrap(), "heavy");
    assert_eq!(
        after.0 - before.0,
        200,
        "heavy's 200 messages went on its own queue pair, and nothing else did"
    );
    assert_eq!(after.1 - before.1, 200, "light's went on shared links");

    // Cut heavy's cable: it migrates, and its queue pair is set up on the other rail.
    let hca = if rail == InterconnectId::rail(1) {
        "hca0"
    } else {
        "hca1"
    };
    f.cut_cable(("a", hca, 1)).unwrap();
    let moved = wait_status(&a, "heavy's queue pair on the other rail", |s| {
        let c = client(s, "heavy");
        c.interconnect
            .is_some_and(|i| i != rail && i != InterconnectId::TCP)
            && c.own_queue_pair == c.interconnect
    })
    .await;
    let other = client(&moved, "heavy").own_queue_pair;
    // b holds one for heavy, on the new rail: the old one went when the new one was offered.
    wait_status(&b, "b's queue pair for heavy on the new rail only", |s| {
        client(s, "heavy").own_queue_pair == other
            && s.links
                .iter()
                .filter(|l| l.reserved_for.as_deref() == Some("heavy"))
                .count()
                == 1
    })
    .await;
    stream(&mut heavy_a, &mut heavy_b, 200..300).await;
    stream(&mut light_a, &mut light_b, 200..300).await;

    // Release: closed on both nodes; traffic on the shared queue pairs.
    heavy_a.release_queue_pair().await.unwrap();
    heavy_a.release_queue_pair().await.unwrap(); // holding none is not an error
    let s = wait_status(&a, "heavy's queue pair closed", |s| {
        client(s, "heavy").own_queue_pair.is_none()
    })
    .await;
    assert!(s.links.iter().all(|l| l.reserved_for.is_none()));
    wait_status(&b, "closed on b too", |s| {
        client(s, "heavy").own_queue_pair.is_none()
    })
    .await;
    stream(&mut heavy_a, &mut heavy_b, 300..350).await;
    println!("heavy's queue pair on {rail:?}, then {other:?} after the cut; released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_node_limit_are_refused() {
    let f = fabric(seed_from_env(0x52));
    let (a, b) = start(&f, 1).await;
    let (heavy_a, _heavy_b) = pair(&a, &b, "heavy").await;
    let (light_a, _light_b) = pair(&a, &b, "light").await;
    heavy_a.request_queue_pair().await.unwrap();
    let e = light_a.request_queue_pair().await.unwrap_err();
    assert!(
        matches!(&e, CmError::QueuePairLimit { client, max: 1 } if client == "light"),
        "{e}"
    );
    assert!(e.to_string().contains("max_client_qps"), "{e}");
    // Releasing makes room.
    heavy_a.release_queue_pair().await.unwrap();
    light_a.request_queue_pair().await.unwrap();
    wait_status(&a, "light's own queue pair", |s| {
        client(s, "light").own_queue_pair.is_some()
    })
    .await;
    // A node that allows none refuses at once.
    let (a0, b0) = start(&fabric(seed_from_env(0x53)), 0).await;
    let (h0, _hb0) = pair(&a0, &b0, "heavy").await;
    assert!(matches!(
        h0.request_queue_pair().await,
        Err(CmError::QueuePairLimit { max: 0, .. })
    ));
}

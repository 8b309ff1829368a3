//! Partner failure on real nodes over loopback TCP plus the simulated HCA fabric: with
//! autoswitch the dialer connects the backup partner and resends every unacknowledged message
//! there (the client sees no NACK and keeps its sequence numbers); with autoswitch off the
//! client is told the partner is down and switches itself; and a partner declared dead is
//! fenced: its later RDMA WRITEs into this node fail with a remote access error.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::{FallbackReason, NodeEvent};
use peercm_cm_manager::{
    ClientEvent, ClientHandle, ClientSpec, LatencyClass, Node, NodeConfig, SendModel, VerbsSource,
};
use peercm_verbs_shim::sim::harness::seed_from_env;
use peercm_verbs_shim::sim::SimFabric;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const MIRROR: ClientSpec = ClientSpec {
    bandwidth_mbytes_per_s: 500,
    latency: LatencyClass::Bulk,
    model: SendModel::Sync,
};

/// Nodes a (dialer) and b (partner) with two HCAs each, cabled; c is a backup without RDMA.
fn fabric(seed: u64) -> SimFabric {
    let f = SimFabric::new(seed);
    for node in ["a", "b"] {
        f.add_node(node).unwrap();
        for h in ["hca0", "hca1"] {
            f.add_device(node, h, 25).unwrap();
        }
    }
    for h in ["hca0", "hca1"] {
        f.cable(("a", h, 1), ("b", h, 1)).unwrap();
    }
    f
}

async fn listener(id: &str, verbs: VerbsSource) -> Node {
    let mut cfg = fast_config(NodeConfig::new(id, "test"));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    Node::start_with_verbs(cfg, secret(), verbs).await.unwrap()
}

struct Trio {
    a: Node,
    b: Node,
    c: Node,
}

async fn trio(f: &SimFabric, autoswitch: bool) -> Trio {
    init_tracing();
    let b = listener("node-b", VerbsSource::Provider(f.provider("b"))).await;
    let c = listener("node-c", VerbsSource::Disabled).await;
    let mut cfg = fast_config(NodeConfig::new("node-a", "test"));
    let mut peer = PeerConfig::new(b.local_addr().unwrap(), 2);
    peer.backups = vec![c.local_addr().unwrap()];
    peer.autoswitch = autoswitch;
    cfg.peer = Some(peer);
    let a = Node::start_with_verbs(cfg, secret(), VerbsSource::Provider(f.provider("a")))
        .await
        .unwrap();
    Trio { a, b, c }
}

/// A receiving namesake that answers every sync message with code 0 and records the message
/// numbers it got, in order.
fn answer(mut h: ClientHandle) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(ev) = h.next_event().await {
            if let ClientEvent::Data {
                payload,
                seq,
                reply_needed,
            } = ev
            {
                let text = String::from_utf8(payload.to_vec()).unwrap();
                let n: u64 = text.rsplit(':').next().unwrap().parse().unwrap();
                got.push(n);
                if reply_needed && h.reply(seq, 0).await.is_err() {
                    break;
                }
            }
        }
        got
    })
}

/// Asserts a receiver got strictly increasing message numbers (in order, no duplicate).
fn assert_increasing(name: &str, got: &[u64]) {
    for w in got.windows(2) {
        assert!(
            w[0] < w[1],
            "{name}: {} then {} (out of order or twice)",
            w[0],
            w[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_crash_autoswitches_to_the_backup_and_resends_everything_unacknowledged() {
    let seed = seed_from_env(0x5717_0001);
    let f = fabric(seed);
    let t = trio(&f, true).await;
    let mut ma = t.a.register("mirror", MIRROR).await.unwrap();
    let mb = t.b.register("mirror", MIRROR).await.unwrap();
    let mc = t.c.register("mirror", MIRROR).await.unwrap();
    ma.connect().await.unwrap();
    wait_up(&mut ma).await;
    wait_status(&t.a, "RDMA rails to b", |s| rdma_links(s) == 2).await;
    let epoch_before = t.a.status().await.unwrap().epoch;
    let rb = answer(mb);
    let rc = answer(mc);

    const N: u64 = 4000;
    let mut acked = BTreeSet::new();
    let mut switched_at = None;
    let mut crash_at = None;
    let mut first_ack_after = None;
    let b = Some(t.b);
    let mut b = b;
    for i in 1..=N {
        assert_eq!(
            ma.send(msg("mirror", i)).await.unwrap(),
            i,
            "stable numbers"
        );
        if i == N / 2 {
            // The partner dies mid-stream, with messages in flight.
            b.take().unwrap().shutdown();
            crash_at = Some(Instant::now());
        }
        while let Some(ev) = ma.try_next_event() {
            note(&ev, &mut acked, &mut switched_at, &mut first_ack_after);
        }
    }
    while (acked.len() as u64) < N {
        let ev = next(&mut ma, "acks from the backup").await;
        note(&ev, &mut acked, &mut switched_at, &mut first_ack_after);
    }
    assert_eq!(
        acked,
        (1..=N).collect(),
        "every message acknowledged exactly once"
    );
    let crash_at = crash_at.unwrap();
    let switched = switched_at.expect("PeerSwitched event");
    let after = first_ack_after.expect("acks after the switch");
    eprintln!(
        "sim failover: crash -> switched {:?}, -> first ack after {:?}",
        switched.duration_since(crash_at),
        after.duration_since(crash_at)
    );
    let s = t.a.status().await.unwrap();
    assert_eq!(s.peer.as_deref(), Some("node-c"));
    assert!(s.epoch > epoch_before, "the switch carries a higher epoch");
    assert_eq!(
        s.fallback,
        Some(FallbackReason::PartnerHasNoRdma),
        "c has no RDMA: TCP"
    );
    drop(ma);
    t.c.shutdown();
    let got_b = rb.await.unwrap();
    let got_c = rc.await.unwrap();
    assert_increasing("b", &got_b);
    assert_increasing("c", &got_c);
    let all: BTreeSet<u64> = got_b.iter().chain(got_c.iter()).copied().collect();
    assert_eq!(
        all,
        (1..=N).collect(),
        "b and c together hold every message"
    );
    assert!(!got_c.is_empty(), "c got the unacknowledged tail");
    assert!(got_c.contains(&N), "c got the last message");
}

fn note(
    ev: &ClientEvent,
    acked: &mut BTreeSet<u64>,
    switched_at: &mut Option<Instant>,
    first_ack_after: &mut Option<Instant>,
) {
    match ev {
        ClientEvent::Acked { seq, code } => {
            assert_eq!(*code, Some(0));
            assert!(acked.insert(*seq), "seq {seq} acked twice");
            if switched_at.is_some() && first_ack_after.is_none() {
                *first_ack_after = Some(Instant::now());
            }
        }
        ClientEvent::PeerSwitched { node, .. } => {
            assert_eq!(node, "node-c");
            assert!(switched_at.is_none(), "one switch");
            *switched_at = Some(Instant::now());
        }
        ClientEvent::Nacked { seq, reason } => panic!("seq {seq} NACKed: {reason:?}"),
        ClientEvent::Down { reason } => panic!("down: {reason:?}"),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_autoswitch_the_client_is_told_and_switches_itself() {
    let seed = seed_from_env(0x5717_0002);
    let f = fabric(seed);
    let t = trio(&f, false).await;
    let mut ma = t.a.register("mirror", MIRROR).await.unwrap();
    let mb = t.b.register("mirror", MIRROR).await.unwrap();
    let mc = t.c.register("mirror", MIRROR).await.unwrap();
    ma.connect().await.unwrap();
    wait_up(&mut ma).await;
    let rb = answer(mb);
    let rc = answer(mc);
    const N: u64 = 1000;
    let mut acked = BTreeSet::new();
    for i in 1..=N {
        ma.send(msg("mirror", i)).await.unwrap();
    }
    t.b.shutdown();
    // The client hears of it: NACKs for what was outstanding, then Down.
    let mut nacked = BTreeSet::new();
    loop {
        match next(&mut ma, "Down").await {
            ClientEvent::Acked { seq, .. } => {
                acked.insert(seq);
            }
            ClientEvent::Nacked { seq, .. } => {
                nacked.insert(seq);
            }
            ClientEvent::Down { .. } => break,
            _ => {}
        }
    }
    assert!(ma.send(msg("mirror", 0)).await.is_err(), "sends fail fast");
    let to = ma.switch_peer().await.unwrap();
    assert_eq!(to, t.c.local_addr().unwrap().to_string());
    wait_up(&mut ma).await;
    // The client resends what was NACKed, in order (the new session numbers from 1).
    let resend: Vec<u64> = nacked.iter().copied().collect();
    for &n in &resend {
        ma.send(msg("mirror", n)).await.unwrap();
    }
    let mut acked_after = 0;
    while acked_after < resend.len() {
        match next(&mut ma, "acks from c").await {
            ClientEvent::Acked { .. } => acked_after += 1,
            ClientEvent::Nacked { seq, reason } => panic!("seq {seq} NACKed by c: {reason:?}"),
            _ => {}
        }
    }
    let s = t.a.status().await.unwrap();
    assert_eq!(s.peer.as_deref(), Some("node-c"));
    drop(ma);
    t.c.shutdown();
    let got_c = rc.await.unwrap();
    let got_b = rb.await.unwrap();
    assert_eq!(got_c, resend, "c got exactly what was resent, in order");
    let all: BTreeSet<u64> = acked.iter().chain(got_c.iter()).copied().collect();
    assert_eq!(all, (1..=N).collect(), "acked by b or resent to c");
    assert!(got_b.len() as u64 >= acked.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_declared_dead_is_fenced_and_its_rdma_writes_fail() {
    let seed = seed_from_env(0x5717_0003);
    let f = fabric(seed);
    let t = trio(&f, true).await;
    let mut ma = t.a.register("mirror", MIRROR).await.unwrap();
    let mb = t.b.register("mirror", MIRROR).await.unwrap();
    let _mc = t.c.register("mirror", MIRROR).await.unwrap();
    ma.connect().await.unwrap();
    wait_up(&mut ma).await;
    wait_status(&t.a, "RDMA rails to b", |s| rdma_links(s) == 2).await;
    let _rb = answer(mb);
    // b hangs (its manager stops; its process and HCAs live on): a declares it dead within
    // the detection window, fences the rings b could write into, and switches to c.
    t.b.freeze(Duration::from_millis(2500)).await.unwrap();
    let frozen_at = Instant::now();
    wait_status(&t.a, "switched to c", |s| {
        s.peer.as_deref() == Some("node-c")
    })
    .await;
    eprintln!(
        "sim: hung partner -> switched after {:?}",
        frozen_at.elapsed()
    );
    // Fencing runs on the reaper's threads (item 10) and is noted when it is done, which may be
    // just after the switch.
    wait_status(&t.a, "both RDMA links to b fenced", |s| {
        s.timeline
            .iter()
            .filter(|e| matches!(e.event, NodeEvent::RdmaLinkFenced { .. }))
            .count()
            >= 2
    })
    .await;
    // b wakes up and, still believing in its links, writes into a's fenced rings.
    // Its links then fail: the first WRITE into a fenced ring gets a remote access error.
    wait_status(&t.b, "b's RDMA writes refused and its rails gone", |s| {
        rdma_links(s) == 0
            && s.timeline.iter().any(|e| {
                matches!(&e.event, NodeEvent::LinkLost { reason, .. } | NodeEvent::FencedLinkClosed { reason, .. } if reason.contains("RemAccessErr"))
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backup_is_skipped_for_the_next_one_in_order() {
    let seed = seed_from_env(0x5717_0004);
    let f = fabric(seed);
    init_tracing();
    let b = listener("node-b", VerbsSource::Provider(f.provider("b"))).await;
    let c = listener("node-c", VerbsSource::Disabled).await;
    // A backup address where nothing listens, ahead of c.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = fast_config(NodeConfig::new("node-a", "test"));
    let mut peer = PeerConfig::new(b.local_addr().unwrap(), 2);
    peer.backups = vec![dead, c.local_addr().unwrap()];
    cfg.peer = Some(peer);
    let a = Node::start_with_verbs(cfg, secret(), VerbsSource::Provider(f.provider("a")))
        .await
        .unwrap();
    let mut ma = a.register("mirror", MIRROR).await.unwrap();
    let mb = b.register("mirror", MIRROR).await.unwrap();
    let mc = c.register("mirror", MIRROR).await.unwrap();
    ma.connect().await.unwrap();
    wait_up(&mut ma).await;
    let rb = answer(mb);
    let rc = answer(mc);
    for i in 1..=200 {
        ma.send(msg("mirror", i)).await.unwrap();
    }
    b.shutdown();
    for i in 201..=400 {
        ma.send(msg("mirror", i)).await.unwrap();
    }
    let mut acked = BTreeSet::new();
    let (mut sw, mut first) = (None, None);
    while acked.len() < 400 {
        let ev = next(&mut ma, "acks via the second backup").await;
        note(&ev, &mut acked, &mut sw, &mut first);
    }
    let s = a.status().await.unwrap();
    assert_eq!(s.peer.as_deref(), Some("node-c"));
    assert!(
        s.timeline
            .iter()
            .any(|e| matches!(&e.event, NodeEvent::SwitchingPartner { to, .. } if *to == dead.to_string())),
        "tried the dead backup first: {:#?}",
        s.timeline
    );
    drop(ma);
    c.shutdown();
    let got_b = rb.await.unwrap();
    let got_c = rc.await.unwrap();
    assert_increasing("c", &got_c);
    let all: BTreeSet<u64> = got_b.iter().chain(got_c.iter()).copied().collect();
    assert_eq!(all, (1..=400).collect());
}

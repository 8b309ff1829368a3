//! The manager over several interconnects, on the simulated HCA fabric (two nodes, two HCAs
//! each, one cable per HCA pair) plus real loopback TCP: rails come up over the bootstrap
//! session, clients are placed by bandwidth, a cable cut migrates clients to the surviving rail,
//! losing every rail continues on TCP mid-stream and comes back, and a partner without RDMA
//! means TCP from the start. Every scenario checks message-level outcomes: counts, order and
//! content.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::{FallbackReason, NodeEvent, NodeStatus};
use peercm_cm_manager::{
    ClientEvent, ClientHandle, ClientSpec, InterconnectId, LatencyClass, Node, NodeConfig,
    SendModel, VerbsSource,
};
use peercm_cm_proto::placement::MoveReason;
use peercm_verbs_shim::sim::harness::seed_from_env;
use peercm_verbs_shim::sim::SimFabric;
use std::time::Duration;

const HCAS: [&str; 2] = ["hca0", "hca1"];
/// The rails of `HCAS` (and of a third HCA), as interconnect ids; TCP is `InterconnectId::TCP`.
const RAIL1: InterconnectId = InterconnectId::rail(1);
const RAIL2: InterconnectId = InterconnectId::rail(2);
const RAIL3: InterconnectId = InterconnectId::rail(3);

fn fabric(seed: u64) -> SimFabric {
    fabric_with(seed, &HCAS)
}

/// Nodes a and b with the given HCAs (25 Gb/s each), one cable per HCA pair.
fn fabric_with(seed: u64, hcas: &[&str]) -> SimFabric {
    sim_fabric(seed, hcas)
}

async fn start(f: &SimFabric, b_verbs: bool) -> (Node, Node) {
    start_with(f, b_verbs, |_| {}).await
}

/// Like [`start`], with `tune` applied to both nodes' configurations.
async fn start_with(f: &SimFabric, b_verbs: bool, tune: impl Fn(&mut NodeConfig)) -> (Node, Node) {
    init_tracing();
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    tune(&mut cb);
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    let vb = if b_verbs {
        VerbsSource::Provider(f.provider("b"))
    } else {
        VerbsSource::Disabled
    };
    let b = Node::start_with_verbs(cb, secret(), vb).await.unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 2));
    tune(&mut ca);
    let a = Node::start_with_verbs(ca, secret(), VerbsSource::Provider(f.provider("a")))
        .await
        .unwrap();
    (a, b)
}

fn client_spec(mbytes: u32, latency: LatencyClass, model: SendModel) -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: mbytes,
        latency,
        model,
    }
}

fn placed(s: &NodeStatus, client: &str) -> Option<InterconnectId> {
    s.clients
        .iter()
        .find(|c| c.name == client)
        .and_then(|c| c.interconnect)
}

/// Drops the events a handle has queued so far (placement moves while converging).
fn settle(h: &mut ClientHandle) -> Vec<ClientEvent> {
    std::iter::from_fn(|| h.try_next_event()).collect()
}

/// The policy's steady state on two rails: the heavy mirror alone on one rail, the light
/// clients (heartbeat included) on the other. Reached once both rails have been usable for the
/// failback hold (the first rail up takes everyone at first).
fn separated(s: &NodeStatus) -> bool {
    let m = placed(s, "mirror");
    rdma_links(s) == 2
        && matches!(m, Some(RAIL1 | RAIL2))
        && matches!(placed(s, "heartbeat"), Some(RAIL1 | RAIL2))
        && placed(s, "heartbeat") != m
        && placed(s, "config") != m
}

/// The three clients of a storage pair, registered and connected on both nodes.
struct Clients {
    mirror: (ClientHandle, ClientHandle),
    config: (ClientHandle, ClientHandle),
    heartbeat: (ClientHandle, ClientHandle),
}

async fn clients(a: &Node, b: &Node) -> Clients {
    let mut out = Vec::new();
    for (name, spec) in [
        (
            "mirror",
            client_spec(2000, LatencyClass::Bulk, SendModel::Sync),
        ),
        (
            "config",
            client_spec(50, LatencyClass::Normal, SendModel::Async),
        ),
        (
            "heartbeat",
            client_spec(1, LatencyClass::Critical, SendModel::Async),
        ),
    ] {
        let mut ha = a.register(name, spec).await.unwrap();
        let mut hb = b.register(name, spec).await.unwrap();
        ha.connect().await.unwrap();
        wait_up(&mut ha).await;
        wait_up(&mut hb).await;
        out.push((ha, hb));
    }
    let heartbeat = out.pop().unwrap();
    let config = out.pop().unwrap();
    let mirror = out.pop().unwrap();
    Clients {
        mirror,
        config,
        heartbeat,
    }
}

/// The receiving half: takes `n` messages of `name` in order, answering sync ones with code 0.
/// Panics on a gap, a duplicate or corrupted content.
fn receive(h: ClientHandle, name: &'static str, n: u64) -> tokio::task::JoinHandle<ClientHandle> {
    receive_from(h, name, 1, n)
}

/// Like [`receive`], for messages `first..=n`.
fn receive_from(
    mut h: ClientHandle,
    name: &'static str,
    first: u64,
    n: u64,
) -> tokio::task::JoinHandle<ClientHandle> {
    tokio::spawn(async move {
        let mut expected = first;
        while expected <= n {
            if let ClientEvent::Data {
                payload,
                seq,
                reply_needed,
            } = next(&mut h, "data").await
            {
                assert_eq!(payload, msg(name, expected), "{name}: message {expected}");
                if reply_needed {
                    h.reply(seq, 0).await.unwrap();
                }
                expected += 1;
            }
        }
        h
    })
}

/// Sends `range` of `name` and waits for all their acks. Returns the Migrated events seen.
async fn send_all(
    h: &mut ClientHandle,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Vec<(InterconnectId, InterconnectId)> {
    let n = range.clone().count() as u64;
    let mut migrated = Vec::new();
    let mut acked = 0u64;
    let mut note = |ev: ClientEvent, acked: &mut u64| match ev {
        ClientEvent::Acked { code, .. } => {
            assert!(matches!(code, None | Some(0)), "{name}: ack code {code:?}");
            *acked += 1;
        }
        ClientEvent::Migrated { from, to } => migrated.push((from, to)),
        ClientEvent::Nacked { seq, reason } => panic!("{name}: seq {seq} nacked: {reason:?}"),
        ClientEvent::Down { reason } => panic!("{name}: down: {reason:?}"),
        _ => {}
    };
    for i in range {
        h.send(msg(name, i)).await.unwrap();
        while let Some(ev) = h.try_next_event() {
            note(ev, &mut acked);
        }
    }
    while acked < n {
        let ev = next(h, "acks").await;
        note(ev, &mut acked);
    }
    migrated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rails_come_up_and_clients_are_placed_by_bandwidth() {
    let seed = seed_from_env(0x5eed_0001);
    let f = fabric(seed);
    let (a, b) = start(&f, true).await;
    let mut c = clients(&a, &b).await;
    let s = wait_status(
        &a,
        "mirror alone on one rail, the others on the other",
        separated,
    )
    .await;
    let early = settle(&mut c.mirror.0);
    assert!(
        early
            .iter()
            .all(|e| matches!(e, ClientEvent::Migrated { .. })),
        "only placement moves before traffic: {early:?}"
    );
    assert_eq!(s.fallback, None, "RDMA in use: no fallback reason");
    let mirror = placed(&s, "mirror").unwrap();
    let hb = placed(&s, "heartbeat").unwrap();
    let config = placed(&s, "config").unwrap();
    assert_ne!(mirror, hb, "heartbeat never shares the heavy client's HCA");
    assert_ne!(mirror, config, "the heavy client gets its rail to itself");

    // Traffic flows over the rails, in order, acknowledged with the partner's code.
    const N: u64 = 3000;
    let rx = receive(c.mirror.1, "mirror", N);
    let moved = send_all(&mut c.mirror.0, "mirror", 1..=N).await;
    let _ = rx.await.unwrap();
    assert!(moved.is_empty(), "no migration without a fault: {moved:?}");
    let rx = receive(c.config.1, "config", 500);
    send_all(&mut c.config.0, "config", 1..=500).await;
    rx.await.unwrap();
    let rx = receive(c.heartbeat.1, "heartbeat", 50);
    send_all(&mut c.heartbeat.0, "heartbeat", 1..=50).await;
    rx.await.unwrap();
    let sb = b.status().await.unwrap();
    assert_eq!(sb.stats.delivered, N + 550);
    assert_eq!(rdma_links(&sb), 2, "the partner holds both rails too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cable_cut_under_load_migrates_to_the_surviving_rail_then_fails_back() {
    let seed = seed_from_env(0x5eed_0002);
    let f = fabric(seed);
    let (a, b) = start(&f, true).await;
    let mut c = clients(&a, &b).await;
    let s = wait_status(&a, "the steady placement", separated).await;
    settle(&mut c.mirror.0);
    let rail = placed(&s, "mirror").unwrap();
    let hca = HCAS[rail.rail_index().unwrap()];
    let other = InterconnectId::rail(3 - rail.get());

    const N: u64 = 4000;
    let rx = receive(c.mirror.1, "mirror", N);
    let first = send_all(&mut c.mirror.0, "mirror", 1..=N / 2).await;
    assert!(first.is_empty());
    f.cut_cable(("a", hca, 1)).unwrap();
    let cut_at = std::time::Instant::now();
    let mut moved = send_all(&mut c.mirror.0, "mirror", N / 2 + 1..=N).await;
    let h = rx.await.unwrap();
    assert!(
        moved.contains(&(rail, other)) || moved.iter().any(|m| m.0 == rail),
        "mirror told it migrated off rail {rail}: {moved:?}"
    );
    let s = wait_status(&a, "mirror off the cut rail", |s| {
        rdma_links(s) == 1 && placed(s, "mirror") == Some(other)
    })
    .await;
    eprintln!(
        "sim: cable cut -> mirror on rail {} after {:?}",
        other,
        cut_at.elapsed()
    );
    assert!(s.fallback.is_none());

    // Restore: the rail comes back and the light clients spread out again.
    f.restore_cable(("a", hca, 1)).unwrap();
    wait_status(&a, "rail restored", |s| rdma_links(s) == 2).await;
    let rx = receive_from(h, "mirror", N + 1, 2 * N);
    moved.extend(send_all(&mut c.mirror.0, "mirror", N + 1..=2 * N).await);
    rx.await.unwrap();
    wait_status(&a, "clients spread over both rails again", separated).await;
    let sb = b.status().await.unwrap();
    assert_eq!(sb.stats.delivered, 2 * N, "every message exactly once");
    drop(c.config);
    drop(c.heartbeat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_rails_down_continues_on_tcp_mid_stream_and_returns_to_rdma() {
    let seed = seed_from_env(0x5eed_0003);
    let f = fabric(seed);
    let (a, b) = start(&f, true).await;
    let mut c = clients(&a, &b).await;
    wait_status(&a, "two rails", |s| {
        rdma_links(s) == 2 && matches!(placed(s, "mirror"), Some(RAIL1 | RAIL2))
    })
    .await;
    const N: u64 = 3000;
    let rx = receive(c.mirror.1, "mirror", 3 * N);
    send_all(&mut c.mirror.0, "mirror", 1..=N).await;
    for h in HCAS {
        f.cut_cable(("a", h, 1)).unwrap();
    }
    let moved = send_all(&mut c.mirror.0, "mirror", N + 1..=2 * N).await;
    // Every port of a is down: that is the reason given (once the PORT_ERRs are handled).
    let s = wait_status(&a, "everything on TCP, ports down", |s| {
        rdma_links(s) == 0
            && s.clients
                .iter()
                .all(|c| c.interconnect == Some(InterconnectId::TCP))
            && s.fallback == Some(FallbackReason::PortsDown)
    })
    .await;
    assert!(
        moved.iter().any(|m| m.1.is_tcp()) || placed(&s, "mirror") == Some(InterconnectId::TCP),
        "mirror moved to TCP: {moved:?}"
    );
    for h in HCAS {
        f.restore_cable(("a", h, 1)).unwrap();
    }
    let s = wait_status(&a, "back on RDMA", |s| {
        rdma_links(s) == 2 && matches!(placed(s, "mirror"), Some(RAIL1 | RAIL2))
    })
    .await;
    assert!(s.fallback.is_none(), "no fallback once RDMA is back");
    send_all(&mut c.mirror.0, "mirror", 2 * N + 1..=3 * N).await;
    rx.await.unwrap();
    let sb = b.status().await.unwrap();
    assert_eq!(sb.stats.delivered, 3 * N, "every message exactly once");
    assert!(
        s.timeline.iter().any(|t| matches!(
            t.event,
            NodeEvent::ClientMoved {
                reason: MoveReason::FallbackToTcp,
                ..
            }
        )),
        "the timeline records the fallback"
    );
    drop(c.config);
    drop(c.heartbeat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_without_rdma_means_tcp_with_the_reason_reported() {
    let seed = seed_from_env(0x5eed_0004);
    let f = fabric(seed);
    let (a, b) = start(&f, false).await;
    let mut c = clients(&a, &b).await;
    let s = wait_status(&a, "clients placed on TCP", |s| {
        s.clients
            .iter()
            .all(|c| c.interconnect == Some(InterconnectId::TCP))
    })
    .await;
    assert_eq!(rdma_links(&s), 0);
    assert_eq!(
        s.fallback,
        Some(FallbackReason::PartnerHasNoRdma),
        "reason reported"
    );
    let sb = b.status().await.unwrap();
    assert!(sb.verbs_unavailable.is_some(), "b says why it has no RDMA");
    let rx = receive(c.mirror.1, "mirror", 1000);
    send_all(&mut c.mirror.0, "mirror", 1..=1000).await;
    rx.await.unwrap();
    drop(c.config);
    drop(c.heartbeat);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_rails_heavy_client_alone_light_clients_spread_heartbeat_apart() {
    let seed = seed_from_env(0x5eed_0005);
    let f = fabric_with(seed, &["hca0", "hca1", "hca2"]);
    let (a, b) = start(&f, true).await;
    let mut c = clients(&a, &b).await;
    // Steady state on three rails: the mirror alone; config and heartbeat on the other two
    // rails (neither with the mirror). Reached once every rail has been usable for the hold.
    let s = wait_status(
        &a,
        "mirror alone, the light clients on the other rails",
        |s| {
            let m = placed(s, "mirror");
            let h = placed(s, "heartbeat");
            let k = placed(s, "config");
            rdma_links(s) == 3
                && matches!(m, Some(RAIL1 | RAIL2 | RAIL3))
                && matches!(h, Some(RAIL1 | RAIL2 | RAIL3))
                && matches!(k, Some(RAIL1 | RAIL2 | RAIL3))
                && h != m
                && k != m
        },
    )
    .await;
    let loads: Vec<(InterconnectId, Vec<String>)> = s
        .interconnects
        .iter()
        .map(|i| (i.id, i.clients.clone()))
        .collect();
    eprintln!("sim 3 rails: {loads:?}");
    settle(&mut c.mirror.0);
    let rx = receive(c.mirror.1, "mirror", 2000);
    let moved = send_all(&mut c.mirror.0, "mirror", 1..=2000).await;
    rx.await.unwrap();
    assert!(moved.is_empty(), "no migration without a fault: {moved:?}");
    let sb = b.status().await.unwrap();
    assert_eq!(rdma_links(&sb), 3);
    assert_eq!(sb.stats.delivered, 2000);
    drop(c.config);
    drop(c.heartbeat);
}

/// Demand grows past what was declared: the mirror was declared light, then streams as fast as
/// it can on rails configured small (16 Mb/s = 2 MB/s each). The measured rate makes its rail
/// hot, so the policy moves the other clients off it, once, and then leaves things alone
/// (hysteresis and the per-client rate limit: no flapping while the load stays high).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_demand_growth_moves_the_light_clients_off_without_flapping() {
    let seed = seed_from_env(0x5eed_0006);
    let f = fabric(seed);
    let (a, b) = start_with(&f, true, |c| {
        for h in HCAS {
            c.verbs.capacity_mbits_per_s.insert(h.to_string(), 16);
        }
    })
    .await;
    // Declared: config is the heaviest (1 MB/s) and the heartbeat keeps off its HCA, so the
    // mirror (0) shares a rail with one of them at first.
    let mut handles = Vec::new();
    for (name, mbytes, latency) in [
        ("mirror", 0, LatencyClass::Bulk),
        ("config", 1, LatencyClass::Normal),
        ("heartbeat", 0, LatencyClass::Critical),
    ] {
        let spec = client_spec(mbytes, latency, SendModel::Async);
        let mut ha = a.register(name, spec).await.unwrap();
        let mut hb = b.register(name, spec).await.unwrap();
        ha.connect().await.unwrap();
        wait_up(&mut ha).await;
        wait_up(&mut hb).await;
        handles.push((ha, hb));
    }
    // The initial placement has settled once the heartbeat keeps off the config client's rail
    // (rule 4; the first rail up takes every client, the second gets the heartbeat after the
    // failback hold): nothing moves after that until the load changes.
    wait_status(
        &a,
        "two rails, every client on one, the heartbeat apart from config",
        |s| {
            rdma_links(s) == 2
                && s.clients
                    .iter()
                    .all(|c| matches!(c.interconnect, Some(RAIL1 | RAIL2)))
                && placed(s, "heartbeat") != placed(s, "config")
        },
    )
    .await;
    for (ha, _) in handles.iter_mut() {
        settle(ha);
    }
    let before = a.status().await.unwrap();
    let m0 = placed(&before, "mirror");
    let sharing: Vec<String> = ["config", "heartbeat"]
        .into_iter()
        .filter(|c| placed(&before, c) == m0)
        .map(str::to_string)
        .collect();
    assert_eq!(
        sharing.len(),
        1,
        "precondition: the mirror shares its rail with one client: {:?}",
        before.interconnects
    );
    let (mut mirror, mirror_b) = handles.remove(0);
    let payload = Bytes::from(vec![0x5a; 32 * 1024]);
    // The partner's mirror drains everything.
    let drain = tokio::spawn(async move {
        let mut h = mirror_b;
        let mut n = 0u64;
        while let Some(ev) = h.next_event().await {
            if matches!(ev, ClientEvent::Data { .. }) {
                n += 1;
            }
        }
        n
    });
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut mirror_moves = 0;
    while started.elapsed() < Duration::from_secs(5) {
        mirror.send(payload.clone()).await.unwrap();
        sent += 1;
        while let Some(ev) = mirror.try_next_event() {
            match ev {
                ClientEvent::Acked { .. } => acked += 1,
                ClientEvent::Migrated { .. } => mirror_moves += 1,
                ClientEvent::Nacked { seq, reason } => panic!("seq {seq} NACKed: {reason:?}"),
                _ => {}
            }
        }
        if sent - acked > 64 {
            match next(&mut mirror, "acks").await {
                ClientEvent::Acked { .. } => acked += 1,
                ClientEvent::Migrated { .. } => mirror_moves += 1,
                _ => {}
            }
        }
    }
    let s = a.status().await.unwrap();
    let m = placed(&s, "mirror").unwrap();
    let mirror_ic = s.interconnects.iter().find(|i| i.id == m).unwrap();
    eprintln!(
        "sim demand growth: mirror {} MB/s measured on rail {m}, utilization {:.2}, {sent} x 32 KiB sent",
        mirror_ic.measured_mbytes_per_s, mirror_ic.utilization
    );
    assert!(
        mirror_ic.utilization > 0.85,
        "the mirror's measured demand makes its rail hot: {mirror_ic:?}"
    );
    assert_eq!(
        mirror_ic.clients,
        vec!["mirror".to_string()],
        "the light clients were moved off the mirror's rail: {:?}",
        s.interconnects
    );
    assert!(
        mirror_moves <= 1,
        "the heavy client itself barely moves: {mirror_moves}"
    );
    // The client that shared the mirror's rail really moved, and nobody flapped: each light
    // client moved at most twice in the whole run.
    for (ha, _) in handles.iter_mut() {
        let moves = settle(ha)
            .iter()
            .filter(|e| matches!(e, ClientEvent::Migrated { .. }))
            .count();
        assert!(moves <= 2, "{} moved {moves} times", ha.name());
        if sharing.iter().any(|c| c == ha.name()) {
            assert!(moves >= 1, "{} was moved off the mirror's rail", ha.name());
        }
    }
    drain.abort();
    drop((mirror, handles, a, b));
}

//! A client asks for a larger region [CCM] (issue 9): `ClientHandle::grow_region`.
//!
//! - Over simulated rails, while the partner streams one-sided writes into the region: the
//!   region grows, the writes in flight with the old keys keep landing (the old registration is
//!   kept until the partner has the new one), the partner learns the new length and writes
//!   beyond the old end one-sided, and the region and its file equal the writer's model.
//! - Over TCP only: the typed refusals (not larger, beyond `[regions] max_bytes`, unknown
//!   region), the file's new size, the node's region bytes in its status, and WRITE frames
//!   placed beyond the old end once the partner has the new length.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::{
    ClientEvent, ClientHandle, CmError, LatencyClass, Node, NodeConfig, SendModel, VerbsSource,
};
use peercm_verbs_shim::sim::SimFabric;
use std::collections::BTreeSet;

const SMALL: u64 = 64 << 10;
const LARGE: u64 = 256 << 10;
const CHUNK: usize = 512;
/// Writes in flight at most.
const IN_FLIGHT: usize = 64;

/// The bytes of write `i`.
fn pattern(i: u64) -> Vec<u8> {
    (0..CHUNK)
        .map(|j| (i.wrapping_mul(0x9e37_79b9).wrapping_add(j as u64 * 13) >> 2) as u8)
        .collect()
}

fn regions_config(cfg: &mut NodeConfig, dir: &std::path::Path, max_bytes: u64) {
    cfg.regions.dir = Some(dir.to_path_buf());
    cfg.regions.max_bytes = max_bytes;
}

/// The two mirror clients, connected.
async fn mirrors(a: &Node, b: &Node) -> (ClientHandle, ClientHandle) {
    let spec = peercm_cm_manager::ClientSpec {
        bandwidth_mbytes_per_s: 500,
        latency: LatencyClass::Bulk,
        model: SendModel::Async,
    };
    let mut ma = a.register("mirror", spec).await.unwrap();
    let mut mb = b.register("mirror", spec).await.unwrap();
    ma.connect().await.unwrap();
    mb.connect().await.unwrap();
    wait_up(&mut ma).await;
    wait_up(&mut mb).await;
    (ma, mb)
}

/// Waits until `h` learns that its partner's region `log` has `len` bytes.
async fn wait_partner_len(h: &mut ClientHandle, len: u64) {
    wait_for(h, "the partner's region at its new length", |e| {
        matches!(e, ClientEvent::PartnerRegion { name, len: l, available: true } if name == "log" && *l == len)
    })
    .await;
}

/// Takes completions until fewer than `keep` writes are outstanding; any NACK fails.
async fn settle(h: &mut ClientHandle, outstanding: &mut BTreeSet<u64>, keep: usize) {
    while outstanding.len() >= keep.max(1) {
        match next(h, "a write's completion").await {
            ClientEvent::Acked { seq, code: None } => {
                assert!(outstanding.remove(&seq), "completion of {seq} twice");
            }
            ClientEvent::Nacked { seq, reason } => panic!("write {seq} NACKed: {reason:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_grows_under_one_sided_writes_and_nothing_in_flight_fails() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let f = SimFabric::new(peercm_verbs_shim::sim::harness::seed_from_env(91));
    for node in ["a", "b"] {
        f.add_node(node).unwrap();
        f.add_device(node, "hca0", 25).unwrap();
    }
    f.cable(("a", "hca0", 1), ("b", "hca0", 1)).unwrap();
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    regions_config(&mut cb, dir.path(), 1 << 20);
    let b = Node::start_with_verbs(cb, secret(), VerbsSource::Provider(f.provider("b")))
        .await
        .unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 1));
    let a = Node::start_with_verbs(ca, secret(), VerbsSource::Provider(f.provider("a")))
        .await
        .unwrap();
    wait_status(&a, "the rail up", |s| rdma_links(s) == 1).await;
    let (mut ma, mb) = mirrors(&a, &b).await;
    mb.register_region("log", SMALL).await.unwrap();
    wait_partner_len(&mut ma, SMALL).await;

    let mut model = vec![0u8; LARGE as usize];
    let mut outstanding = BTreeSet::new();
    let slots_small = SMALL / CHUNK as u64;
    let mut copied_before = 0;
    // Phase 1: fill the small region over and over; grow it while writes are in flight.
    for i in 0..2000u64 {
        let off = (i % slots_small) * CHUNK as u64;
        let data = pattern(i);
        model[off as usize..off as usize + CHUNK].copy_from_slice(&data);
        outstanding.insert(
            ma.write_remote("log", off, Bytes::from(data))
                .await
                .unwrap(),
        );
        if i == 1000 {
            copied_before = b.status().await.unwrap().stats.writes_copied;
            let info = mb.grow_region("log", LARGE).await.unwrap();
            assert_eq!(info.len, LARGE);
        }
        settle(&mut ma, &mut outstanding, IN_FLIGHT).await;
    }
    // (settle took the PartnerRegion event of the growth along with the completions)
    let deadline = std::time::Instant::now() + WAIT;
    while ma.partner_regions().await.unwrap() != vec![("log".to_string(), LARGE)] {
        assert!(
            std::time::Instant::now() < deadline,
            "the partner's region never reached its new length"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Phase 2: the whole grown region, the new part included, one-sided.
    for i in 2000..3000u64 {
        let off = ((i * 7) % (LARGE / CHUNK as u64)) * CHUNK as u64;
        let data = pattern(i);
        model[off as usize..off as usize + CHUNK].copy_from_slice(&data);
        outstanding.insert(
            ma.write_remote("log", off, Bytes::from(data))
                .await
                .unwrap(),
        );
        settle(&mut ma, &mut outstanding, IN_FLIGHT).await;
    }
    settle(&mut ma, &mut outstanding, 1).await;
    let region = mb.read_region("log", 0, LARGE as usize).await.unwrap();
    assert_eq!(
        region.iter().zip(&model).position(|(x, y)| x != y),
        None,
        "b's region differs from the model"
    );
    let disk = std::fs::read(dir.path().join("mirror").join("log.region")).unwrap();
    assert!(disk == model, "the file differs from the model");
    let s = b.status().await.unwrap();
    println!(
        "grown under load: b placed {} writes, {} copied from frames ({copied_before} before \
         the growth), {} refused",
        s.stats.writes_placed, s.stats.writes_copied, s.stats.writes_refused_here
    );
    assert_eq!(s.stats.writes_refused_here, 0);
    assert!(s.stats.writes_placed >= 3000);
    // Had the growth invalidated the keys in use, the writes in flight would have failed
    // one-sided (the link closed, every unacknowledged write replayed as a frame, and the
    // ones after them framed until those completed): hundreds of copies. Kept keys: none.
    assert!(
        s.stats.writes_copied - copied_before < IN_FLIGHT as u64,
        "the writes went one-sided across the growth, old keys and new: {} copied after it",
        s.stats.writes_copied - copied_before
    );
    assert_eq!((s.regions.open, s.regions.bytes), (1, LARGE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growth_requests_get_typed_refusals_and_frames_reach_the_new_bytes() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    regions_config(&mut cb, dir.path(), 128 << 10);
    let b = Node::start_with_verbs(cb, secret(), VerbsSource::Disabled)
        .await
        .unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 1));
    let a = Node::start_with_verbs(ca, secret(), VerbsSource::Disabled)
        .await
        .unwrap();
    let (mut ma, mb) = mirrors(&a, &b).await;
    mb.register_region("log", SMALL).await.unwrap();
    mb.register_region("other", 32 << 10).await.unwrap();
    wait_partner_len(&mut ma, SMALL).await;
    let path = dir.path().join("mirror").join("log.region");

    let not_larger = mb.grow_region("log", SMALL).await.unwrap_err();
    assert!(
        not_larger.to_string().contains("can only grow"),
        "{not_larger}"
    );
    assert!(mb.grow_region("log", 4096).await.is_err());
    let too_large = mb.grow_region("log", 128 << 10).await.unwrap_err();
    assert!(
        matches!(&too_large, CmError::Region(_)) && too_large.to_string().contains("max_bytes"),
        "{too_large}"
    );
    let unknown = mb.grow_region("nope", LARGE).await.unwrap_err();
    assert!(unknown.to_string().contains("no open region"), "{unknown}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), SMALL, "unchanged");
    let s = b.status().await.unwrap();
    assert_eq!(s.regions.bytes, SMALL + (32 << 10), "refusals hold nothing");

    // Once the partner has the new length, its writes beyond the old end go as WRITE frames
    // and land.
    let grown = 96 << 10;
    mb.release_region("other").await.unwrap();
    let info = mb.grow_region("log", grown).await.unwrap();
    assert_eq!((info.len, info.path.clone()), (grown, path.clone()));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), grown);
    wait_partner_len(&mut ma, grown).await;
    let id = ma
        .write_remote("log", grown - 5, Bytes::from_static(b"tail!"))
        .await
        .unwrap();
    wait_for(&mut ma, "the write beyond the old end", |e| {
        *e == ClientEvent::Acked {
            seq: id,
            code: None,
        }
    })
    .await;
    assert_eq!(mb.read_region("log", grown - 5, 5).await.unwrap(), b"tail!");
    let s = b.status().await.unwrap();
    assert_eq!((s.regions.open, s.regions.bytes), (1, grown));
}

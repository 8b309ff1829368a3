//! Client regions and one-sided writes between two real nodes (issue 9): a client writes
//! 100,000 random-sized chunks at random offsets of its partner's 64 MiB region, with commit
//! notices (sends) between them, while the path fails and comes back; the partner client checks
//! at each notice that the write the notice follows is in its region, and at the end the
//! region (and its file on disk) equals the writer's model byte for byte. Over the simulated
//! HCA fabric (one-sided RDMA WRITE on the client's rail, a cable cut migrating it) and over
//! TCP only (WRITE frames the partner's manager places, links killed under the stream). Also:
//! typed refusals on the writer, a release seen by the writer, region requests beyond the
//! node's limits.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::{
    ClientEvent, ClientHandle, CmError, LatencyClass, Node, NodeConfig, SendModel, SessionError,
    VerbsSource,
};
use peercm_cm_proto::region::WriteError;
use peercm_verbs_shim::sim::SimFabric;
use std::collections::BTreeMap;

const REGION: &str = "log";
const REGION_LEN: u64 = 64 << 20;
const WRITES: usize = 100_000;
const MAX_CHUNK: u64 = 2048;
/// A commit notice after every this many writes.
const NOTICE_EVERY: usize = 50;
/// Writes and notices in flight at most (the writer then waits for completions).
const IN_FLIGHT: usize = 2000;

/// The bytes of write `i`: a pattern the checker can recompute from `i` alone.
fn pattern(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(2_654_435_761).wrapping_add(j as u64 * 7) >> 3) as u8)
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn regions_config(cfg: &mut NodeConfig, dir: &std::path::Path) {
    cfg.regions.dir = Some(dir.to_path_buf());
    cfg.regions.max_bytes = 256 << 20;
}

/// b's client: takes events; at each commit notice `commit <i> <offset> <len>` reads that range
/// of its region and checks it holds write `i`. Returns how many notices it checked once the
/// notice `done` arrives.
async fn checker(mut h: ClientHandle) -> (ClientHandle, usize) {
    let mut checked = 0;
    loop {
        let ev = next(&mut h, "a commit notice").await;
        let ClientEvent::Data { payload, .. } = ev else {
            continue;
        };
        let text = std::str::from_utf8(&payload).unwrap().to_string();
        if text == "done" {
            return (h, checked);
        }
        let f: Vec<u64> = text
            .strip_prefix("commit ")
            .unwrap()
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        let (i, off, len) = (f[0], f[1], f[2] as usize);
        let got = h.read_region(REGION, off, len).await.unwrap();
        assert!(
            got == pattern(i, len),
            "commit notice for write {i} delivered before the write was placed ({len} bytes at {off})"
        );
        checked += 1;
    }
}

/// What kind of completion an id awaits.
enum Pending {
    Write,
    /// A notice; its write's range stays untouched until it completes (the checker reads it).
    Notice {
        off: u64,
        len: u64,
    },
}

/// a's client writes [`WRITES`] chunks with notices; `fault(k)` runs at k = 1 and 2 (a third
/// and two thirds of the way). Returns the writer's model of the region.
async fn write_stream<F, Fut>(h: &mut ClientHandle, seed: u64, mut fault: F) -> Vec<u8>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut rng = Rng(seed | 1);
    let mut model = vec![0u8; REGION_LEN as usize];
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut protected: Vec<(u64, u64)> = Vec::new();
    let overlaps =
        |p: &[(u64, u64)], off: u64, len: u64| p.iter().any(|&(o, l)| off < o + l && o < off + len);
    for i in 0..WRITES as u64 {
        if i as usize == WRITES / 3 {
            fault(1).await;
        }
        if i as usize == 2 * WRITES / 3 {
            fault(2).await;
        }
        while pending.len() >= IN_FLIGHT {
            settle_one(h, &mut pending, &mut protected).await;
        }
        while let Some(ev) = h.try_next_event() {
            complete(ev, &mut pending, &mut protected);
        }
        let len = 1 + rng.below(MAX_CHUNK);
        let mut off = rng.below(REGION_LEN - len);
        while overlaps(&protected, off, len) {
            off = rng.below(REGION_LEN - len);
        }
        let data = pattern(i, len as usize);
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        let id = h
            .write_remote(REGION, off, Bytes::from(data))
            .await
            .unwrap();
        pending.insert(id, Pending::Write);
        if (i as usize + 1).is_multiple_of(NOTICE_EVERY) {
            let notice = Bytes::from(format!("commit {i} {off} {len}"));
            let id = h.send_with(notice, SendModel::Async).await.unwrap();
            pending.insert(id, Pending::Notice { off, len });
            protected.push((off, len));
        }
    }
    while !pending.is_empty() {
        settle_one(h, &mut pending, &mut protected).await;
    }
    model
}

async fn settle_one(
    h: &mut ClientHandle,
    pending: &mut BTreeMap<u64, Pending>,
    protected: &mut Vec<(u64, u64)>,
) {
    let ev = next(h, "a write or notice completion").await;
    complete(ev, pending, protected);
}

fn complete(
    ev: ClientEvent,
    pending: &mut BTreeMap<u64, Pending>,
    protected: &mut Vec<(u64, u64)>,
) {
    match ev {
        ClientEvent::Acked { seq, code: None } => match pending.remove(&seq) {
            Some(Pending::Notice { off, len }) => {
                if let Some(p) = protected.iter().position(|&r| r == (off, len)) {
                    protected.swap_remove(p);
                }
            }
            Some(Pending::Write) => {}
            None => panic!("completion of {seq}, which is not outstanding (twice?)"),
        },
        ClientEvent::Nacked { seq, reason } => panic!("{seq} NACKed: {reason:?}"),
        _ => {}
    }
}

async fn wait_partner_region(h: &mut ClientHandle) {
    wait_for(h, "the partner's region", |e| {
        matches!(e, ClientEvent::PartnerRegion { name, len: REGION_LEN, available: true } if name == REGION)
    })
    .await;
}

/// The two mirror clients, connected, b holding the 64 MiB region and a having learned it.
async fn mirrors(a: &Node, b: &Node) -> (ClientHandle, ClientHandle) {
    let spec = peercm_cm_manager::ClientSpec {
        bandwidth_mbytes_per_s: 2000,
        latency: LatencyClass::Bulk,
        model: SendModel::Async,
    };
    let mut ma = a.register("mirror", spec).await.unwrap();
    let mut mb = b.register("mirror", spec).await.unwrap();
    ma.connect().await.unwrap();
    mb.connect().await.unwrap();
    wait_up(&mut ma).await;
    wait_up(&mut mb).await;
    let info = mb.register_region(REGION, REGION_LEN).await.unwrap();
    assert_eq!(info.len, REGION_LEN);
    wait_partner_region(&mut ma).await;
    (ma, mb)
}

/// Runs the stream and checks the outcome; returns b's status at the end.
async fn stream_and_check<F, Fut>(
    a: &Node,
    b: &Node,
    dir: &std::path::Path,
    seed: u64,
    fault: F,
) -> peercm_cm_manager::NodeStatus
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut ma, mb) = mirrors(a, b).await;
    let check = tokio::spawn(checker(mb));
    let started = std::time::Instant::now();
    let model = write_stream(&mut ma, seed, fault).await;
    ma.send_with(Bytes::from_static(b"done"), SendModel::Async)
        .await
        .unwrap();
    let (mb, checked) = tokio::time::timeout(WAIT, check).await.unwrap().unwrap();
    assert_eq!(
        checked,
        WRITES / NOTICE_EVERY,
        "every commit notice checked"
    );
    let region = mb
        .read_region(REGION, 0, REGION_LEN as usize)
        .await
        .unwrap();
    let diff = region.iter().zip(&model).position(|(x, y)| x != y);
    assert_eq!(diff, None, "b's region differs from the writer's model");
    let s = b.status().await.unwrap();
    println!(
        "{WRITES} writes in {:?}: b placed {} ({} copied from frames), refused {}",
        started.elapsed(),
        s.stats.writes_placed,
        s.stats.writes_copied,
        s.stats.writes_refused_here
    );
    assert!(s.stats.writes_placed >= WRITES as u64);
    assert_eq!(s.stats.writes_refused_here, 0);
    assert_eq!(s.regions.open, 1);
    // The bytes are in the file, not only in this process's mapping.
    let path = dir.join("mirror").join("log.region");
    let disk = std::fs::read(&path).unwrap();
    assert!(
        disk == model,
        "the region file differs from the writer's model"
    );
    drop(mb);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_only_100k_writes_with_commit_notices_through_link_kills() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    regions_config(&mut cb, dir.path());
    let b = Node::start_with_verbs(cb, secret(), VerbsSource::Disabled)
        .await
        .unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 2));
    let a = Node::start_with_verbs(ca, secret(), VerbsSource::Disabled)
        .await
        .unwrap();
    let s = stream_and_check(&a, &b, dir.path(), 7, |_| async {
        // One of the two TCP links dies under the stream (its in-flight writes are replayed
        // on the other), and the dialer connects a new one.
        a.kill_link(None).await.unwrap();
    })
    .await;
    assert_eq!(
        s.stats.writes_copied, s.stats.writes_placed,
        "TCP: every write copied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_rails_100k_one_sided_writes_with_commit_notices_through_a_cable_cut() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let f = SimFabric::new(peercm_verbs_shim::sim::harness::seed_from_env(9));
    for node in ["a", "b"] {
        f.add_node(node).unwrap();
        for h in ["hca0", "hca1"] {
            f.add_device(node, h, 25).unwrap();
        }
    }
    for h in ["hca0", "hca1"] {
        f.cable(("a", h, 1), ("b", h, 1)).unwrap();
    }
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    regions_config(&mut cb, dir.path());
    let b = Node::start_with_verbs(cb, secret(), VerbsSource::Provider(f.provider("b")))
        .await
        .unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 2));
    let a = Node::start_with_verbs(ca, secret(), VerbsSource::Provider(f.provider("a")))
        .await
        .unwrap();
    wait_status(&a, "both rails up", |s| rdma_links(s) == 2).await;
    let cut: std::cell::Cell<Option<&str>> = std::cell::Cell::new(None);
    let s = stream_and_check(&a, &b, dir.path(), 11, |k| {
        let (a, f, cut) = (&a, &f, &cut);
        async move {
            if k == 1 {
                // Cut the cable of the rail the mirror is on: its writes migrate.
                let s = a.status().await.unwrap();
                let rail = s
                    .clients
                    .iter()
                    .find(|c| c.name == "mirror")
                    .and_then(|c| c.interconnect)
                    .unwrap();
                let hca = if rail.get() == 2 { "hca1" } else { "hca0" };
                f.cut_cable(("a", hca, 1)).unwrap();
                cut.set(Some(hca));
            } else if let Some(hca) = cut.get() {
                f.restore_cable(("a", hca, 1)).unwrap();
            }
        }
    })
    .await;
    assert!(
        s.stats.writes_copied < s.stats.writes_placed / 2,
        "most writes went one-sided: {} of {} copied",
        s.stats.writes_copied,
        s.stats.writes_placed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_writes_and_region_requests_get_typed_errors() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cb = fast_config(NodeConfig::new("node-b", "test"));
    cb.listen = Some("127.0.0.1:0".parse().unwrap());
    regions_config(&mut cb, dir.path());
    cb.regions.max_bytes = 1 << 20;
    let b = Node::start_with_verbs(cb, secret(), VerbsSource::Disabled)
        .await
        .unwrap();
    let mut ca = fast_config(NodeConfig::new("node-a", "test"));
    ca.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 1));
    let a = Node::start_with_verbs(ca, secret(), VerbsSource::Disabled)
        .await
        .unwrap();
    let spec = spec(SendModel::Async);
    let mut ma = a.register("mirror", spec).await.unwrap();
    let mb = b.register("mirror", spec).await.unwrap();
    ma.connect().await.unwrap();
    mb.connect().await.unwrap();
    wait_up(&mut ma).await;
    // Requests beyond the node's limits, a bad name, a node without regions.
    let e = mb.register_region("huge", 2 << 20).await.unwrap_err();
    assert!(matches!(e, CmError::Region(_)), "{e}");
    let e = mb.register_region("../x", 4096).await.unwrap_err();
    assert!(matches!(e, CmError::Region(_)), "{e}");
    let e = ma.register_region("x", 4096).await.unwrap_err();
    assert!(e.to_string().contains("[regions] dir"), "{e}");
    mb.register_region("small", 4096).await.unwrap();
    let e = mb.register_region("small", 4096).await.unwrap_err();
    assert!(e.to_string().contains("open already"), "{e}");
    wait_for(&mut ma, "the partner's region", |e| {
        matches!(
            e,
            ClientEvent::PartnerRegion {
                available: true,
                ..
            }
        )
    })
    .await;
    assert_eq!(
        ma.partner_regions().await.unwrap(),
        vec![("small".to_string(), 4096)]
    );
    // Writer-side refusals: nothing reaches b.
    let oob = ma
        .write_remote("small", 4090, Bytes::from_static(b"too long"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            oob,
            CmError::Session(SessionError::Write(WriteError::OutOfBounds { .. }))
        ),
        "{oob}"
    );
    let unknown = ma
        .write_remote("nope", 0, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, CmError::Session(SessionError::NoSuchRegion { .. })),
        "{unknown}"
    );
    let empty = ma.write_remote("small", 0, Bytes::new()).await.unwrap_err();
    assert!(
        matches!(
            empty,
            CmError::Session(SessionError::Write(WriteError::Empty))
        ),
        "{empty}"
    );
    // A good write lands; read back on b.
    let id = ma
        .write_remote("small", 10, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    wait_for(&mut ma, "the write's completion", |e| {
        *e == ClientEvent::Acked {
            seq: id,
            code: None,
        }
    })
    .await;
    assert_eq!(mb.read_region("small", 10, 5).await.unwrap(), b"hello");
    // Released: the writer learns it and its writes are refused as released.
    mb.release_region("small").await.unwrap();
    wait_for(&mut ma, "the release", |e| {
        matches!(
            e,
            ClientEvent::PartnerRegion {
                available: false,
                ..
            }
        )
    })
    .await;
    let gone = ma
        .write_remote("small", 0, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(gone, CmError::Session(SessionError::NoSuchRegion { .. })),
        "{gone}"
    );
    let e = mb.read_region("small", 0, 1).await.unwrap_err();
    assert!(matches!(e, CmError::Region(_)), "{e}");
    // The file stays with its contents; registering it again reopens it.
    mb.register_region("small", 4096).await.unwrap();
    assert_eq!(mb.read_region("small", 10, 5).await.unwrap(), b"hello");
    let s = b.status().await.unwrap();
    assert_eq!((s.regions.open, s.regions.bytes), (1, 4096));
}

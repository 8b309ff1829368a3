//! One-sided writes on the simulated fabric ([`RdmaLink::send_with_write`]): the data lands in
//! the partner's registered region before the marker frame is delivered; many writes
//! interleaved with plain frames keep the frame order and leave the region equal to a model;
//! a full write-staging region makes frames wait, never reorders or loses them; bad writes are
//! refused before anything is posted; a bad rkey closes the writer's link with a remote access
//! error; links prepared in one shared protection domain all reach a region registered once.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{data_frame, device, fabric, over_the_wire, payload, test_cfg};
use crossbeam_channel::{unbounded, Receiver, Sender};
use peercm_cm_proto::frame::{Flags, MsgType};
use peercm_cm_proto::session::LocalDone;
use peercm_cm_proto::{Frame, Header};
use peercm_cm_rdma_link::{
    LinkCloseReason, LinkSink, OneSided, PreparedLink, RdmaLink, RdmaLinkConfig, RequestKind,
    SendError,
};
use peercm_verbs_shim::sim::SimFabric;
use peercm_verbs_shim::{Access, MemoryRegion, ProtectionDomain, RemoteMr, WcStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Direction (frame `client` field) of marker frames; plain frames use [`PLAIN`].
const MARKER: u32 = 7;
const PLAIN: u32 = 1;

/// What the receiving sink saw.
#[derive(Debug)]
enum Ev {
    /// A frame; for a marker, whether the region held the write's bytes when it arrived
    /// (checked only when the test asks for it).
    Frame {
        frame: Frame,
        placed: Option<bool>,
    },
    /// `local_done` marks of our own frames whose WRITE completed.
    Written(Vec<LocalDone>),
    Closed(LinkCloseReason),
}

/// A sink that, on each marker frame, reads the region where the marker says the write went
/// and compares it with the bytes written (`payload(MARKER, seq, len)`).
struct RegionSink {
    tx: Sender<Ev>,
    region: Option<Arc<dyn MemoryRegion>>,
}

/// A marker: 8 bytes offset, 4 bytes length (the 12-byte write header's size).
fn marker(seq: u64, offset: u64, len: u32) -> Frame {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&offset.to_be_bytes());
    p.extend_from_slice(&len.to_be_bytes());
    Frame::new(
        MsgType::Data,
        Flags::empty(),
        MARKER,
        seq,
        0,
        Bytes::from(p),
    )
}

fn parse_marker(f: &Frame) -> (u64, usize) {
    let p = &f.payload;
    let offset = u64::from_be_bytes(p[0..8].try_into().unwrap());
    let len = u32::from_be_bytes(p[8..12].try_into().unwrap());
    (offset, len as usize)
}

impl LinkSink for RegionSink {
    fn frame(&mut self, frame: Frame) -> bool {
        let placed = match (&self.region, frame.header.client) {
            (Some(mr), MARKER) => {
                let (offset, len) = parse_marker(&frame);
                let now = mr.read(offset as usize, len).unwrap();
                Some(now[..] == payload(MARKER, frame.header.seq, len)[..])
            }
            _ => None,
        };
        self.tx.send(Ev::Frame { frame, placed }).is_ok()
    }
    fn oversize(&mut self, header: Header) -> bool {
        panic!("no oversize frame here: {header:?}")
    }
    fn written(&mut self, _bytes: u64, local_done: Vec<LocalDone>) {
        let _ = self.tx.send(Ev::Written(local_done));
    }
    fn closed(&mut self, reason: LinkCloseReason) {
        let _ = self.tx.send(Ev::Closed(reason));
    }
}

/// A writer on n1 and a receiver on n2 whose link lives in `pd` (n2's shared domain).
struct Pair {
    writer: RdmaLink,
    writer_events: Receiver<Ev>,
    receiver: RdmaLink,
    receiver_events: Receiver<Ev>,
}

fn connect(
    f: &SimFabric,
    wcfg: RdmaLinkConfig,
    rcfg: RdmaLinkConfig,
    pd: Arc<dyn ProtectionDomain>,
    check_in: Option<Arc<dyn MemoryRegion>>,
) -> Pair {
    let (pw, ew) = PreparedLink::new(device(f, "n1"), wcfg).unwrap();
    let (pr, er) = PreparedLink::new_in(pd, device(f, "n2"), rcfg).unwrap();
    let (tw, rw) = unbounded();
    let (tr, rr) = unbounded();
    let writer = pw
        .connect(
            &over_the_wire(&er),
            Box::new(RegionSink {
                tx: tw,
                region: None,
            }),
        )
        .unwrap();
    let receiver = pr
        .connect(
            &over_the_wire(&ew),
            Box::new(RegionSink {
                tx: tr,
                region: check_in,
            }),
        )
        .unwrap();
    Pair {
        writer,
        writer_events: rw,
        receiver,
        receiver_events: rr,
    }
}

fn shared_pd(f: &SimFabric) -> Arc<dyn ProtectionDomain> {
    device(f, "n2").alloc_pd().unwrap()
}

fn region(pd: &Arc<dyn ProtectionDomain>, len: usize) -> Arc<dyn MemoryRegion> {
    pd.clone()
        .reg_mr(len, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
        .unwrap()
}

fn write(seq: u64, remote: RemoteMr, offset: u64, len: usize) -> OneSided {
    OneSided {
        data: payload(MARKER, seq, len),
        remote,
        remote_offset: offset,
    }
}

/// Receives frames until `n` have arrived, checking they come in `seq` order 0, 1, ... and
/// that each marker found its bytes placed when `placed` was checked. Returns the frames.
fn receive(events: &Receiver<Ev>, n: u64, within: Duration) -> Vec<Frame> {
    let end = Instant::now() + within;
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        let left = end.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Ev::Frame { frame, placed }) => {
                assert_eq!(frame.header.seq, got.len() as u64, "frames out of order");
                assert_ne!(
                    placed,
                    Some(false),
                    "marker {} arrived before its write's bytes",
                    frame.header.seq
                );
                got.push(frame);
            }
            Ok(Ev::Written(_)) => {}
            Ok(Ev::Closed(r)) => panic!("receiver closed after {} frames: {r}", got.len()),
            Err(e) => panic!("{} of {n} frames within {within:?}: {e}", got.len()),
        }
    }
    got
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Waits until fewer than `max` frames are queued on `link`.
fn throttle(link: &RdmaLink, max: u64) {
    while link.stats().frames_queued >= max {
        assert!(
            !link.is_closed(),
            "the writer closed: {:?}",
            link.close_reason()
        );
        std::thread::sleep(Duration::from_micros(50));
    }
}

#[test]
fn the_data_is_in_the_partners_region_when_the_marker_arrives() {
    let f = fabric(91);
    let pd = shared_pd(&f);
    let mr = region(&pd, 1 << 20);
    let p = connect(&f, test_cfg(1), test_cfg(2), pd, Some(mr.clone()));
    // 64 non-overlapping writes of 1..=16 KiB: every marker checks its own bytes.
    let mut offset = 0u64;
    let mut expect = Vec::new();
    for i in 0..64u64 {
        let len = 1 + (i as usize * 257) % (16 << 10);
        p.writer
            .try_send_with_write(
                marker(i, offset, len as u32),
                write(i, mr.remote(), offset, len),
                Some(common::mark(MARKER, i)),
            )
            .unwrap();
        expect.push((offset, len));
        offset += len as u64;
    }
    let frames = receive(&p.receiver_events, 64, Duration::from_secs(20));
    for (i, fr) in frames.iter().enumerate() {
        assert_eq!(parse_marker(fr), expect[i]);
    }
    for (i, (o, l)) in expect.iter().enumerate() {
        assert!(mr.read(*o as usize, *l).unwrap()[..] == payload(MARKER, i as u64, *l)[..]);
    }
    // local_done as for `send`: every mark, in order, once the frame's WRITE (and so the data's,
    // before it on the queue pair) completed. The stats are counted before `written` is called.
    let mut marks = Vec::new();
    while marks.len() < 64 {
        match p.writer_events.recv_timeout(Duration::from_secs(20)) {
            Ok(Ev::Written(m)) => marks.extend(m),
            Ok(Ev::Frame { frame, .. }) => panic!("the writer got a frame: {:?}", frame.header),
            other => panic!("after {} marks: {other:?}", marks.len()),
        }
    }
    let want: Vec<LocalDone> = (0..64).map(|i| common::mark(MARKER, i)).collect();
    assert_eq!(marks, want);
    let s = p.writer.stats();
    assert_eq!(s.writes_sent, 64);
    assert_eq!(
        s.write_bytes_sent,
        expect.iter().map(|e| e.1 as u64).sum::<u64>()
    );
    assert_eq!(s.frames_sent, 64);
}

#[test]
fn thousands_of_writes_among_frames_keep_order_and_match_a_model() {
    let f = fabric(92);
    let pd = shared_pd(&f);
    const REGION: usize = 1 << 20;
    let mr = region(&pd, REGION);
    let p = connect(&f, test_cfg(1), test_cfg(2), pd, None);
    let mut model = vec![0u8; REGION];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    const N: u64 = 2000;
    let mut writes = 0u64;
    for seq in 0..N {
        throttle(&p.writer, 64);
        if rng.below(3) == 0 {
            let fr = data_frame(PLAIN, seq, 1 + rng.below(2000) as usize);
            assert!(p.writer.send(fr, None));
        } else {
            let len = 1 + rng.below(64 << 10) as usize;
            let offset = rng.below((REGION - len) as u64 + 1);
            let w = write(seq, mr.remote(), offset, len);
            model[offset as usize..offset as usize + len].copy_from_slice(&w.data);
            p.writer
                .try_send_with_write(marker(seq, offset, len as u32), w, None)
                .unwrap();
            writes += 1;
        }
    }
    let frames = receive(&p.receiver_events, N, Duration::from_secs(120));
    assert_eq!(
        frames.iter().filter(|f| f.header.client == MARKER).count() as u64,
        writes
    );
    assert!(
        mr.read(0, REGION).unwrap() == model,
        "the region differs from the model"
    );
    // Every write completes before its marker frame's completion; the marker was delivered,
    // so wait for the writer's books to catch up.
    let end = Instant::now() + Duration::from_secs(10);
    while p.writer.stats().writes_sent < writes {
        assert!(Instant::now() < end, "{:?}", p.writer.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_write_staging_region_makes_frames_wait_in_order() {
    let f = fabric(93);
    let pd = shared_pd(&f);
    let mr = region(&pd, 1 << 20);
    let wcfg = RdmaLinkConfig {
        write_staging_bytes: 100 << 10,
        qp: peercm_verbs_shim::QpParams {
            retry_count: 7, // retransmit forever while the responder is stalled
            ..test_cfg(1).qp
        },
        probe_interval_ms: 0,
        ..test_cfg(1)
    };
    // Writes overlap here, so markers are not checked against the region on arrival (a later
    // write may already have overwritten the bytes); the final content is.
    let p = connect(&f, wcfg, test_cfg(2), pd, None);
    f.stall_responder("n2").unwrap();
    // 40 writes of 40..64 KiB (over 1.6 MB) and plain frames between them, all queued while
    // nothing can complete: at most two writes fit the 100 KiB staging region.
    let mut model = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    let mut seq = 0u64;
    for i in 0..40u64 {
        let len = (40 << 10) + (i as usize * 613) % (24 << 10);
        let w = write(seq, mr.remote(), offset, len);
        model[offset as usize..offset as usize + len].copy_from_slice(&w.data);
        p.writer
            .try_send_with_write(marker(seq, offset, len as u32), w, None)
            .unwrap();
        seq += 1;
        assert!(p.writer.send(data_frame(PLAIN, seq, 100), None));
        seq += 1;
        offset = (offset + len as u64) % ((1 << 20) - (64 << 10));
    }
    let s = p.writer.stats();
    assert_eq!(
        s.writes_sent, 0,
        "nothing completes while the responder is stalled"
    );
    assert!(s.write_stalls >= 1, "{s:?}");
    assert!(
        s.frames_queued >= 70,
        "frames wait behind the staged writes: {s:?}"
    );
    f.release_responder("n2").unwrap();
    receive(&p.receiver_events, seq, Duration::from_secs(60));
    assert!(mr.read(0, 1 << 20).unwrap() == model);
    assert_eq!(p.writer.stats().frames_queued, 0);
}

#[test]
fn bad_writes_are_refused_with_typed_errors_and_nothing_is_posted() {
    let f = fabric(94);
    let pd = shared_pd(&f);
    let mr = region(&pd, 4096);
    let wcfg = RdmaLinkConfig {
        write_staging_bytes: 1000,
        ..test_cfg(1)
    };
    let p = connect(&f, wcfg, test_cfg(2), pd, Some(mr.clone()));
    assert_eq!(p.writer.write_staging_bytes(), 1000);
    let m = |seq| marker(seq, 0, 1);
    assert_eq!(
        p.writer
            .try_send_with_write(m(0), write(0, mr.remote(), 0, 1001), None),
        Err(SendError::WriteTooLarge {
            write_bytes: 1001,
            staging_bytes: 1000
        })
    );
    assert_eq!(
        p.writer
            .try_send_with_write(m(0), write(0, mr.remote(), 3097, 1000), None),
        Err(SendError::WriteOutOfBounds {
            remote_offset: 3097,
            write_bytes: 1000,
            region_bytes: 4096
        })
    );
    assert_eq!(
        p.writer
            .try_send_with_write(m(0), write(0, mr.remote(), u64::MAX, 1), None),
        Err(SendError::WriteOutOfBounds {
            remote_offset: u64::MAX,
            write_bytes: 1,
            region_bytes: 4096
        })
    );
    assert_eq!(
        p.writer
            .try_send_with_write(m(0), write(0, mr.remote(), 0, 0), None),
        Err(SendError::EmptyWrite)
    );
    assert!(!p
        .writer
        .send_with_write(m(0), write(0, mr.remote(), 0, 1001), None));
    let s = p.writer.stats();
    assert_eq!((s.writes_sent, s.frames_sent, s.frames_queued), (0, 0, 0));
    // The region is untouched, and the next write's marker is the first frame the partner
    // sees (the sink checks its bytes were placed).
    assert!(mr.read(0, 4096).unwrap().iter().all(|b| *b == 0));
    p.writer
        .try_send_with_write(
            marker(0, 3096, 1000),
            write(0, mr.remote(), 3096, 1000),
            None,
        )
        .unwrap();
    receive(&p.receiver_events, 1, Duration::from_secs(10));
    assert!(mr.read(0, 3096).unwrap().iter().all(|b| *b == 0));
}

#[test]
fn one_sided_writes_are_off_with_a_zero_staging_size() {
    let f = fabric(95);
    let pd = shared_pd(&f);
    let mr = region(&pd, 4096);
    let wcfg = RdmaLinkConfig {
        write_staging_bytes: 0,
        ..test_cfg(1)
    };
    let p = connect(&f, wcfg, test_cfg(2), pd, None);
    assert_eq!(p.writer.write_staging_bytes(), 0);
    assert_eq!(
        p.writer
            .try_send_with_write(marker(0, 0, 1), write(0, mr.remote(), 0, 1), None),
        Err(SendError::WriteTooLarge {
            write_bytes: 1,
            staging_bytes: 0
        })
    );
    // Plain frames still go.
    assert!(p.writer.send(data_frame(PLAIN, 0, 10), None));
    receive(&p.receiver_events, 1, Duration::from_secs(10));
}

/// Waits for the writer's close reason.
fn writer_closed(p: &Pair) -> LinkCloseReason {
    p.writer
        .wait_closed(Duration::from_secs(20))
        .expect("the writer's link closes")
}

fn assert_remote_access_error(reason: &LinkCloseReason) {
    match reason {
        LinkCloseReason::Completion {
            status: WcStatus::RemAccessErr,
            request: RequestKind::OneSidedWrite,
            ..
        } => {}
        other => panic!("expected a one-sided write's RemAccessErr, got {other}"),
    }
    assert!(
        reason.to_string().contains("OneSidedWrite") && reason.to_string().contains("RemAccessErr"),
        "{reason}"
    );
}

#[test]
fn a_write_to_a_deregistered_region_closes_the_writer_with_a_remote_access_error() {
    let f = fabric(96);
    let pd = shared_pd(&f);
    let mr = region(&pd, 4096);
    let p = connect(&f, test_cfg(1), test_cfg(2), pd, None);
    // One good write first: the rkey works.
    p.writer
        .try_send_with_write(marker(0, 0, 100), write(0, mr.remote(), 0, 100), None)
        .unwrap();
    receive(&p.receiver_events, 1, Duration::from_secs(10));
    let remote = mr.remote();
    mr.deregister().unwrap();
    p.writer
        .try_send_with_write(marker(1, 200, 100), write(1, remote, 200, 100), None)
        .unwrap();
    assert_remote_access_error(&writer_closed(&p));
    // The marker never arrived and the bytes never landed.
    assert!(mr.read(200, 100).unwrap().iter().all(|b| *b == 0));
    // The receiver's queue pair went to ERR too (rxe's class C handling): it closes, having
    // seen nothing.
    match p.receiver_events.recv_timeout(Duration::from_secs(20)) {
        Ok(Ev::Closed(_)) => {}
        Ok(Ev::Frame { frame, .. }) => panic!("unexpected frame {:?}", frame.header),
        Ok(Ev::Written(m)) => panic!("the receiver sent nothing, yet: {m:?}"),
        Err(e) => panic!("the receiver did not close: {e}"),
    }
    drop(p.writer_events);
}

#[test]
fn a_region_of_another_protection_domain_is_a_remote_access_error() {
    let f = fabric(97);
    let pd = shared_pd(&f);
    let other = shared_pd(&f);
    let foreign = region(&other, 4096);
    let p = connect(&f, test_cfg(1), test_cfg(2), pd, None);
    p.writer
        .try_send_with_write(marker(0, 0, 10), write(0, foreign.remote(), 0, 10), None)
        .unwrap();
    assert_remote_access_error(&writer_closed(&p));
    assert!(foreign.read(0, 10).unwrap().iter().all(|b| *b == 0));
    drop(p.receiver);
}

#[test]
fn links_prepared_in_one_domain_all_reach_a_region_registered_once() {
    let f = fabric(98);
    let pd = shared_pd(&f);
    let mr = region(&pd, 8192);
    let a = connect(&f, test_cfg(1), test_cfg(2), pd.clone(), Some(mr.clone()));
    let b = connect(&f, test_cfg(3), test_cfg(4), pd, Some(mr.clone()));
    a.writer
        .try_send_with_write(marker(0, 0, 4096), write(0, mr.remote(), 0, 4096), None)
        .unwrap();
    // The second writer's bytes are those of write 0 of its own sequence: use seq 0 at 4096.
    b.writer
        .try_send_with_write(
            marker(0, 4096, 4096),
            write(0, mr.remote(), 4096, 4096),
            None,
        )
        .unwrap();
    receive(&a.receiver_events, 1, Duration::from_secs(10));
    receive(&b.receiver_events, 1, Duration::from_secs(10));
    let want = payload(MARKER, 0, 4096);
    assert!(mr.read(0, 4096).unwrap()[..] == want[..]);
    assert!(mr.read(4096, 4096).unwrap()[..] == want[..]);
    // Both links stay up and carry plain frames both ways.
    for (i, l) in [&a.writer, &a.receiver, &b.writer, &b.receiver]
        .into_iter()
        .enumerate()
    {
        assert!(!l.is_closed(), "link {i} closed: {:?}", l.close_reason());
    }
    let _ = (a.writer_events, b.writer_events);
}

//! Shared helpers for the link tests on the simulated fabric: a channel-backed sink, a
//! connected pair of links on nodes n1 and n2 (device rxe0 each, one cable), deterministic
//! frame contents, and event collection with bounded waits.

#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender};
use peercm_cm_proto::frame::{Flags, MsgType};
use peercm_cm_proto::session::{ClientId, LinkId, LocalDone};
use peercm_cm_proto::Frame;
use peercm_cm_rdma_link::{
    LinkCloseReason, LinkSink, LocalEndpoint, PreparedLink, RdmaLink, RdmaLinkConfig,
};
use peercm_verbs_shim::sim::harness::{fast_params, standard_fabric};
use peercm_verbs_shim::sim::SimFabric;
use peercm_verbs_shim::Device;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a sink saw, in order.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    Oversize(peercm_cm_proto::Header),
    Written {
        bytes: u64,
        local_done: Vec<LocalDone>,
    },
    Closed(LinkCloseReason),
}

/// A sink forwarding everything to a channel.
pub struct ChanSink(pub Sender<Event>);

impl LinkSink for ChanSink {
    fn frame(&mut self, frame: Frame) -> bool {
        self.0.send(Event::Frame(frame)).is_ok()
    }
    fn oversize(&mut self, header: peercm_cm_proto::Header) -> bool {
        self.0.send(Event::Oversize(header)).is_ok()
    }
    fn written(&mut self, bytes: u64, local_done: Vec<LocalDone>) {
        let _ = self.0.send(Event::Written { bytes, local_done });
    }
    fn closed(&mut self, reason: LinkCloseReason) {
        let _ = self.0.send(Event::Closed(reason));
    }
}

/// One side: the link and what its sink saw. The channel disconnects when the link thread
/// ends (it owns the sink).
pub struct Node {
    pub link: RdmaLink,
    pub events: Receiver<Event>,
}

/// The standard two-node fabric (cables n1/rxe0 <-> n2/rxe0 and rxe1 <-> rxe1).
pub fn fabric(seed: u64) -> SimFabric {
    standard_fabric(seed).unwrap()
}

/// rxe0 of `node`.
pub fn device(f: &SimFabric, node: &str) -> Arc<dyn Device> {
    f.provider(node).open("rxe0").unwrap()
}

/// A test config: fast failure detection (1 ms ACK timeout, 3 retries), the RoCEv2 GID,
/// short waits and probes.
pub fn test_cfg(link_id: u64) -> RdmaLinkConfig {
    RdmaLinkConfig {
        link_id: LinkId::new(link_id),
        gid_index: 1,
        qp: fast_params(),
        cq_wait_timeout_ms: 20,
        probe_interval_ms: 50,
        ..RdmaLinkConfig::default()
    }
}

/// As the manager does over the bootstrap session: serialize, send, deserialize.
pub fn over_the_wire(e: &LocalEndpoint) -> LocalEndpoint {
    serde_json::from_str(&serde_json::to_string(e).unwrap()).unwrap()
}

/// Prepares both sides, swaps endpoints and connects both.
pub fn connect_pair(f: &SimFabric, a: RdmaLinkConfig, b: RdmaLinkConfig) -> (Node, Node) {
    let (pa, ea) = PreparedLink::new(device(f, "n1"), a).unwrap();
    let (pb, eb) = PreparedLink::new(device(f, "n2"), b).unwrap();
    let (ea, eb) = (over_the_wire(&ea), over_the_wire(&eb));
    let (ta, ra) = unbounded();
    let (tb, rb) = unbounded();
    let a = pa.connect(&eb, Box::new(ChanSink(ta))).unwrap();
    let b = pb.connect(&ea, Box::new(ChanSink(tb))).unwrap();
    (
        Node {
            link: a,
            events: ra,
        },
        Node {
            link: b,
            events: rb,
        },
    )
}

/// Deterministic bytes for frame `i` of direction `dir`.
pub fn payload(dir: u32, i: u64, len: usize) -> Bytes {
    let mut x = ((u64::from(dir) << 56) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (len as u64)) | 1;
    let mut v = vec![0u8; len];
    let mut chunks = v.chunks_exact_mut(8);
    for c in &mut chunks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    let rem = chunks.into_remainder();
    let n = rem.len();
    rem.copy_from_slice(&x.rotate_left(29).to_le_bytes()[..n]);
    Bytes::from(v)
}

/// A word-wise checksum of a payload (carried in the frame's `ack` field).
pub fn checksum(p: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ p.len() as u64;
    let mut chunks = p.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w))
            .wrapping_mul(0x0000_0100_0000_01B3)
            .rotate_left(5);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Frame `i` of direction `dir`: DATA to client `dir`, seq `i`, ack = payload checksum.
pub fn data_frame(dir: u32, i: u64, len: usize) -> Frame {
    let p = payload(dir, i, len);
    let sum = checksum(&p);
    Frame::new(MsgType::Data, Flags::empty(), dir, i, sum, p)
}

/// Checks a received frame is frame `i` of direction `dir`, intact.
pub fn check_frame(f: &Frame, dir: u32, i: u64) {
    assert_eq!(f.header.client, dir, "frame from the wrong direction");
    assert_eq!(f.header.seq, i, "frame out of order (dir {dir})");
    assert_eq!(
        checksum(&f.payload),
        f.header.ack,
        "checksum of frame {i} (dir {dir})"
    );
    assert!(
        f.payload == payload(dir, i, f.payload.len()),
        "content of frame {i} (dir {dir}, {} bytes)",
        f.payload.len()
    );
}

/// Payload size of frame `i` in 1 B ..= `max`: half small (<= 256 B), 3/8 medium
/// (<= 16 KiB), 1/8 large, plus the exact extremes now and then.
pub fn size_for(seed: u64, dir: u32, i: u64, max: usize) -> usize {
    let mut x = seed ^ (u64::from(dir) << 40) ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    match i % 997 {
        3 => return max,
        5 => return 1,
        _ => {}
    }
    let r = (x >> 8) as usize;
    match x % 8 {
        0..=3 => 1 + r % 256,
        4..=6 => 1 + r % (16 << 10).min(max),
        _ => 1 + r % max,
    }
}

/// Sends frames `0..n` of `dir`, keeping at most `max_queued` waiting for credit (so memory
/// stays bounded); stops early if the link refuses (closed). Returns how many were accepted.
pub fn send_stream(link: &RdmaLink, seed: u64, dir: u32, n: u64, max_payload: usize) -> u64 {
    for i in 0..n {
        while link.stats().frames_queued >= 64 {
            if link.is_closed() {
                return i;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        let len = size_for(seed, dir, i, max_payload);
        if !link.send(data_frame(dir, i, len), Some(mark(dir, i))) {
            return i;
        }
    }
    n
}

/// The local-done mark of frame `i` in direction `dir` (the direction stands in for a client).
pub fn mark(dir: u32, i: u64) -> LocalDone {
    LocalDone {
        client: ClientId::new(dir),
        seq: i,
    }
}

/// The next event within `timeout`, or a panic naming `what`.
pub fn next(events: &Receiver<Event>, timeout: Duration, what: &str) -> Option<Event> {
    match events.recv_timeout(timeout) {
        Ok(e) => Some(e),
        Err(RecvTimeoutError::Disconnected) => None,
        Err(RecvTimeoutError::Timeout) => panic!("no event within {timeout:?} while {what}"),
    }
}

/// What one sink saw until its link thread ended.
#[derive(Debug, Default)]
pub struct Seen {
    /// Frames received (checked in order against `peer_dir`).
    pub frames: u64,
    /// Local-done marks of our own sends, in order.
    pub written_marks: u64,
    pub written_bytes: u64,
    pub closed: Vec<LinkCloseReason>,
    /// Events after `closed` (must stay 0).
    pub after_closed: u64,
}

/// Consumes events until the link thread ends (channel disconnected), checking frames
/// (direction `peer_dir`, in order, intact) and written marks (direction `my_dir`, in
/// order). Gives up after `deadline`.
pub fn drain(events: &Receiver<Event>, peer_dir: u32, my_dir: u32, deadline: Duration) -> Seen {
    let end = Instant::now() + deadline;
    let mut seen = Seen::default();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let Some(ev) = next(events, left, "waiting for the link to close") else {
            return seen;
        };
        if !seen.closed.is_empty() {
            seen.after_closed += 1;
        }
        match ev {
            Event::Frame(f) => {
                check_frame(&f, peer_dir, seen.frames);
                seen.frames += 1;
            }
            Event::Oversize(h) => panic!("no frame is above the limit here: {h:?}"),
            Event::Written { bytes, local_done } => {
                seen.written_bytes += bytes;
                for d in local_done {
                    assert_eq!(
                        d,
                        mark(my_dir, seen.written_marks),
                        "written marks in order"
                    );
                    seen.written_marks += 1;
                }
            }
            Event::Closed(r) => seen.closed.push(r),
        }
    }
}

//! What the link refuses, with typed errors: oversize frames (before posting), unusable
//! configurations and partner endpoints, and -- from a hand-driven raw verbs partner --
//! undecodable frames, nonsense immediates and plain SENDs, each closing the link with a
//! reason that names the problem and never panicking.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use crossbeam_channel::unbounded;
use peercm_cm_proto::frame::FrameError;
use peercm_cm_rdma_link::{
    EndpointError, LinkCloseReason, LocalEndpoint, PreparedLink, RdmaLinkConfig, RdmaLinkError,
    SendError,
};
use peercm_verbs_shim::sim::harness::seed_from_env;
use peercm_verbs_shim::{Access, QpCaps, RecvWr, RemoteMr, SendWr, Sge};
use std::time::Duration;

fn small_cfg(link_id: u64) -> RdmaLinkConfig {
    RdmaLinkConfig {
        ring_bytes: 64 << 10,
        recv_depth: 16,
        max_payload_bytes: 4096,
        ..test_cfg(link_id)
    }
}

#[test]
fn a_frame_above_the_maximum_is_refused_before_posting() {
    let seed = seed_from_env(0xEF_0001);
    let f = fabric(seed);
    let (a, b) = connect_pair(&f, small_cfg(1), small_cfg(2));
    assert_eq!(a.link.max_frame_bytes(), 36 + 4096);
    let err = a
        .link
        .try_send(data_frame(1, 0, 4097), Some(mark(1, 0)))
        .unwrap_err();
    assert_eq!(
        err,
        SendError::TooLarge {
            frame_bytes: 36 + 4097,
            max_frame_bytes: 36 + 4096
        }
    );
    assert!(err.to_string().contains("exceeds"), "{err}");
    assert!(!a.link.send(data_frame(1, 0, 100_000), None));
    // Nothing was posted, the link is still up and the largest frame goes through.
    assert!(!a.link.is_closed());
    a.link
        .try_send(data_frame(1, 0, 4096), Some(mark(1, 0)))
        .unwrap();
    match next(&b.events, Duration::from_secs(5), "the largest frame") {
        Some(Event::Frame(fr)) => check_frame(&fr, 1, 0),
        other => panic!("{other:?}"),
    }
    // `frames_sent` counts completed WRITEs: the sender's thread may see its completion a
    // moment after the partner already has the frame.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut st = a.link.stats();
    while st.frames_sent == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        st = a.link.stats();
    }
    assert_eq!((st.frames_sent, st.bytes_sent), (1, 36 + 4096));
}

#[test]
fn unusable_configs_and_partner_endpoints_are_typed_errors() {
    let seed = seed_from_env(0xEF_0002);
    let f = fabric(seed);
    let bad = RdmaLinkConfig {
        ring_bytes: 1000,
        ..small_cfg(1)
    };
    match PreparedLink::new(device(&f, "n1"), bad) {
        Err(RdmaLinkError::Config(why)) => assert!(why.contains("ring_bytes 1000"), "{why}"),
        other => panic!("{other:?}"),
    }
    let (pa, ea) = PreparedLink::new(device(&f, "n1"), test_cfg(1)).unwrap();
    let (pb, eb) = PreparedLink::new(device(&f, "n2"), small_cfg(2)).unwrap();
    let (tx, _rx) = unbounded();
    // A forged endpoint whose ring cannot take two of the largest frames a would send it
    // (b accepts 4 KiB payloads, so a sends at most 36 + 4096 bytes).
    let forged = LocalEndpoint {
        ring_bytes: 8000,
        ring: RemoteMr {
            len: 8000,
            ..eb.ring
        },
        ..eb
    };
    match pa.connect(&forged, Box::new(ChanSink(tx.clone()))) {
        Err(RdmaLinkError::RemoteEndpoint(EndpointError::RingTooSmall {
            ring_bytes: 8000,
            max_frame_bytes: 4132,
            need: 8264,
        })) => {}
        other => panic!("{other:?}"),
    }
    // A forged endpoint whose region does not match its announced size.
    let forged = LocalEndpoint {
        ring_bytes: ea.ring_bytes * 2,
        ..ea
    };
    match pb.connect(&forged, Box::new(ChanSink(tx))) {
        Err(RdmaLinkError::RemoteEndpoint(EndpointError::RingLengthMismatch { .. })) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_side_sends_at_most_what_the_other_accepts() {
    let seed = seed_from_env(0xEF_0007);
    let f = fabric(seed);
    // a accepts 1 MiB payloads, b only 4 KiB: a may send b at most 4 KiB payloads.
    let (a, b) = connect_pair(&f, test_cfg(1), small_cfg(2));
    assert_eq!(a.link.max_frame_bytes(), 36 + 4096);
    assert_eq!(b.link.max_frame_bytes(), 36 + 4096);
    assert!(matches!(
        a.link.try_send(data_frame(1, 0, 4097), None),
        Err(SendError::TooLarge { .. })
    ));
    a.link.try_send(data_frame(1, 0, 4096), None).unwrap();
    b.link.try_send(data_frame(2, 0, 4096), None).unwrap();
    for (node, peer) in [(&a, 2), (&b, 1)] {
        loop {
            match next(&node.events, Duration::from_secs(5), "one frame each way") {
                Some(Event::Frame(fr)) => {
                    check_frame(&fr, peer, 0);
                    break;
                }
                Some(Event::Written { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
    }
}

/// What the raw partner does to the link under test.
enum Abuse {
    /// WRITE_WITH_IMM of a frame whose payload was corrupted after encoding.
    CorruptFrame,
    /// WRITE_WITH_IMM of a frame with a wrong magic.
    BadMagic,
    /// A message of more than half the ring (announced and carried).
    HugeLength,
    /// A plain SEND instead of a WRITE_WITH_IMM.
    Send,
}

/// Connects link a (n1) to a hand-driven raw RC queue pair on n2, lets the raw side abuse
/// it, and returns what a's sink saw.
fn abused(abuse: Abuse, seed: u64) -> Seen {
    let f = fabric(seed);
    let cfg = small_cfg(1);
    let (pa, ea) = PreparedLink::new(device(&f, "n1"), cfg.clone()).unwrap();
    // The raw partner: PD, CQ, QP in INIT with receives, a ring of its own, a source buffer.
    let dev = device(&f, "n2");
    let params = cfg.qp_params();
    let pd = dev.clone().alloc_pd().unwrap();
    let cq = dev.clone().create_cq(256).unwrap();
    let mut qp = pd
        .clone()
        .create_qp(cq.clone(), cq.clone(), QpCaps::default())
        .unwrap();
    qp.to_init(&params).unwrap();
    let ring = pd
        .clone()
        .reg_mr(cfg.ring_bytes, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
        .unwrap();
    let src = pd
        .clone()
        .reg_mr(cfg.ring_bytes, Access::LOCAL_WRITE)
        .unwrap();
    let rbuf = pd.clone().reg_mr(64, Access::LOCAL_WRITE).unwrap();
    for i in 0..16 {
        qp.post_recv(RecvWr {
            wr_id: 100 + i,
            local: Sge {
                mr: rbuf.clone(),
                offset: 0,
                len: 64,
            },
        })
        .unwrap();
    }
    let raw = LocalEndpoint {
        qp: qp.endpoint(&params, 0x77).unwrap(),
        ring: ring.remote(),
        ring_bytes: cfg.ring_bytes as u64,
        recv_depth: 16,
        max_payload_bytes: cfg.max_payload_bytes,
    };
    let (tx, rx) = unbounded();
    let a = pa.connect(&raw, Box::new(ChanSink(tx))).unwrap();
    qp.to_rtr(&params, &ea.qp).unwrap();
    qp.to_rts(&params, 0x77).unwrap();

    let mut bytes = data_frame(2, 0, 300).to_bytes().to_vec();
    let (len, imm, send) = match abuse {
        Abuse::CorruptFrame => {
            bytes[100] ^= 0x40;
            (bytes.len(), bytes.len() as u32, false)
        }
        Abuse::BadMagic => {
            bytes[0] = b'X';
            (bytes.len(), bytes.len() as u32, false)
        }
        Abuse::HugeLength => (
            cfg.ring_bytes / 2 + 1,
            (cfg.ring_bytes / 2 + 1) as u32,
            false,
        ),
        Abuse::Send => (8, 8, true),
    };
    src.write(0, &bytes).unwrap();
    let local = Sge {
        mr: src.clone(),
        offset: 0,
        len: len as u32,
    };
    let wr = if send {
        SendWr::Send {
            wr_id: 1,
            local,
            imm: None,
        }
    } else {
        SendWr::Write {
            wr_id: 1,
            local,
            remote: ea.ring,
            remote_offset: 0,
            imm: Some(imm),
        }
    };
    qp.post_send(wr).unwrap();
    let seen = drain(&rx, 2, 1, Duration::from_secs(10));
    assert!(a.is_closed());
    seen
}

fn one_close(seen: &Seen) -> &LinkCloseReason {
    assert_eq!(seen.frames, 0, "nothing delivered");
    assert_eq!(seen.after_closed, 0);
    assert_eq!(seen.closed.len(), 1, "{:?}", seen.closed);
    &seen.closed[0]
}

#[test]
fn an_undecodable_frame_closes_the_link_naming_the_error() {
    let seen = abused(Abuse::CorruptFrame, seed_from_env(0xEF_0003));
    let r = one_close(&seen);
    assert!(
        matches!(r, LinkCloseReason::Decode(FrameError::BadCrc { .. })),
        "{r:?}"
    );
    assert!(r.to_string().contains("CRC32C mismatch"), "{r}");

    let seen = abused(Abuse::BadMagic, seed_from_env(0xEF_0004));
    let r = one_close(&seen);
    assert!(
        matches!(r, LinkCloseReason::Decode(FrameError::BadMagic { .. })),
        "{r:?}"
    );
}

#[test]
fn nonsense_immediates_and_sends_are_protocol_violations() {
    let seen = abused(Abuse::HugeLength, seed_from_env(0xEF_0005));
    match one_close(&seen) {
        LinkCloseReason::Protocol(why) => assert!(why.contains("does not fit"), "{why}"),
        other => panic!("{other:?}"),
    }
    let seen = abused(Abuse::Send, seed_from_env(0xEF_0006));
    match one_close(&seen) {
        LinkCloseReason::Protocol(why) => assert!(why.contains("WRITE_WITH_IMM"), "{why}"),
        other => panic!("{other:?}"),
    }
}

//! RC delivery and its failure modes: in-order SENDs with contents and immediates, RNR NAKs
//! and their retries, receive-buffer and local-buffer errors, RDMA WRITE / WRITE_WITH_IMM /
//! READ, remote access rights, and memory-region rules.

use crate::common::{expect, fabric, nothing, one, pair, params, End};
use peercm_verbs_shim::types::{Access, QpParams, QpState, RemoteMr, SendWr, WcOpcode, WcStatus};
use peercm_verbs_shim::VerbsError;
use std::time::{Duration, Instant};

#[test]
fn sends_deliver_in_order_with_contents_and_immediates() {
    let f = fabric(0x54);
    let (a, b) = pair(&f, params(), params());
    for i in 0..20u64 {
        b.recv(i, i * 64, 64);
    }
    for i in 0..20u64 {
        a.mr.write(i as usize * 64, &[i as u8; 48]).unwrap();
        a.qp.post_send(SendWr::Send {
            wr_id: i,
            local: a.sge(i * 64, 48),
            imm: (i % 2 == 0).then_some(i as u32 + 7),
        })
        .unwrap();
    }
    for i in 0..20u64 {
        let s = expect(&a.scq, i, WcStatus::Success);
        assert_eq!(s.opcode, WcOpcode::Send);
        let r = expect(&b.rcq, i, WcStatus::Success);
        assert_eq!(
            (r.opcode, r.byte_len, r.imm),
            (WcOpcode::Recv, 48, (i % 2 == 0).then_some(i as u32 + 7))
        );
        assert_eq!(b.mr.read(i as usize * 64, 48).unwrap(), vec![i as u8; 48]);
        assert_eq!(r.qpn, b.qp.qpn());
    }
}

#[test]
fn rnr_retries_then_fails_with_rnr_retry_exceeded() {
    let f = fabric(0x55);
    let pa = QpParams {
        rnr_retry_count: 2,
        ..params()
    };
    let pb = QpParams {
        min_rnr_timer_code: 14, // 1.28 ms
        ..params()
    };
    let (a, _b) = pair(&f, pa, pb);
    let t = Instant::now();
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    expect(&a.scq, 1, WcStatus::RnrRetryExcErr);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_micros(2 * 1280),
        "RNR retries ran out after {took:?}"
    );
    expect(&a.scq, 2, WcStatus::WrFlushErr);
    assert_eq!(a.qp.state(), QpState::Err);
}

#[test]
fn rnr_retry_seven_waits_for_a_receive() {
    let f = fabric(0x56);
    let (a, b) = pair(&f, params(), params());
    a.send(1, 0, 8);
    nothing(&a.scq, Duration::from_millis(20));
    b.recv(9, 0, 64);
    expect(&a.scq, 1, WcStatus::Success);
    expect(&b.rcq, 9, WcStatus::Success);
}

#[test]
fn a_short_receive_buffer_is_a_length_error_on_both_sides() {
    let f = fabric(0x57);
    let (a, b) = pair(&f, params(), params());
    b.recv(1, 0, 16);
    b.recv(2, 16, 16);
    a.send(5, 0, 64);
    expect(&b.rcq, 1, WcStatus::LocLenErr);
    expect(&b.rcq, 2, WcStatus::WrFlushErr);
    expect(&a.scq, 5, WcStatus::RemInvReqErr);
    assert_eq!((a.qp.state(), b.qp.state()), (QpState::Err, QpState::Err));
}

#[test]
fn local_buffers_are_checked_when_the_request_runs() {
    let f = fabric(0x58);
    let (a, b) = pair(&f, params(), params());
    b.recv(1, 0, 64);
    // Beyond the 64 KiB region: the post succeeds, the completion is LocProtErr.
    a.send(7, 64 * 1024 - 8, 64);
    expect(&a.scq, 7, WcStatus::LocProtErr);
    assert_eq!(a.qp.state(), QpState::Err);
    assert_eq!(
        b.rcq.poll(4).unwrap(),
        vec![],
        "nothing reached the responder"
    );
}

#[test]
fn write_and_write_with_imm_land_in_the_remote_region() {
    let f = fabric(0x59);
    let (a, b) = pair(&f, params(), params());
    a.mr.write(0, b"hello, fabric").unwrap();
    a.write(1, b.mr.remote(), 100, 13);
    expect(&a.scq, 1, WcStatus::Success);
    assert_eq!(b.mr.read(100, 13).unwrap(), b"hello, fabric");
    assert_eq!(b.mr.read(99, 1).unwrap(), [0]);
    b.recv(50, 0, 0);
    a.qp.post_send(SendWr::Write {
        wr_id: 2,
        local: a.sge(0, 5),
        remote: b.mr.remote(),
        remote_offset: 4000,
        imm: Some(0xfeed),
    })
    .unwrap();
    assert_eq!(
        expect(&a.scq, 2, WcStatus::Success).opcode,
        WcOpcode::RdmaWrite
    );
    let r = expect(&b.rcq, 50, WcStatus::Success);
    assert_eq!(
        (r.opcode, r.imm, r.byte_len),
        (WcOpcode::RecvRdmaWithImm, Some(0xfeed), 5)
    );
    assert_eq!(b.mr.read(4000, 5).unwrap(), b"hello");
}

#[test]
fn read_brings_remote_bytes_back() {
    let f = fabric(0x5a);
    let (a, b) = pair(&f, params(), params());
    b.mr.write(0, &[0xab; 300]).unwrap();
    a.read(3, b.mr.remote(), 300);
    let wc = expect(&a.scq, 3, WcStatus::Success);
    assert_eq!((wc.opcode, wc.byte_len), (WcOpcode::RdmaRead, 300));
    assert_eq!(a.mr.read(0, 300).unwrap(), vec![0xab; 300]);
}

/// One WRITE from a fresh pair; returns (requester status, responder QP state, responder bytes).
fn one_write(
    access_b_mr: Access,
    access_b_qp: Access,
    tweak: impl Fn(RemoteMr) -> (RemoteMr, u64),
    read: bool,
) -> (WcStatus, QpState, Vec<u8>) {
    let f = fabric(0x5b);
    let pb = QpParams {
        access: access_b_qp,
        ..params()
    };
    let (a, b) = pair(&f, params(), pb);
    let target = b.pd.clone().reg_mr(4096, access_b_mr).unwrap();
    a.mr.write(0, &[0x77; 64]).unwrap();
    let (remote, off) = tweak(target.remote());
    if read {
        a.read(1, remote, 64);
    } else {
        a.write(1, remote, off, 64);
    }
    let wc = one(&a.scq);
    assert_eq!(wc.wr_id, 1);
    (wc.status, b.qp.state(), target.read(0, 4096).unwrap())
}

/// How a case changes the remote region and offset it writes to.
type Tweak = Box<dyn Fn(RemoteMr) -> (RemoteMr, u64)>;

#[test]
fn remote_access_needs_key_bounds_and_rights() {
    let rw = Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ;
    let same = |r: RemoteMr| (r, 0);
    // The good case.
    let (s, st, bytes) = one_write(rw, rw, same, false);
    assert_eq!((s, st), (WcStatus::Success, QpState::Rts));
    assert_eq!(&bytes[..64], &[0x77; 64]);
    // Wrong rkey, out of bounds (end and start), no REMOTE_WRITE on the MR, none on the QP.
    let cases: Vec<(&str, Access, Access, Tweak, bool)> = vec![
        (
            "bad rkey",
            rw,
            rw,
            Box::new(|r: RemoteMr| {
                (
                    RemoteMr {
                        rkey: r.rkey ^ 0x100,
                        ..r
                    },
                    0,
                )
            }),
            false,
        ),
        (
            "past the end",
            rw,
            rw,
            Box::new(|r: RemoteMr| (r, 4096 - 32)),
            false,
        ),
        (
            "before the start",
            rw,
            rw,
            Box::new(|r: RemoteMr| {
                (
                    RemoteMr {
                        addr: r.addr - 8,
                        ..r
                    },
                    0,
                )
            }),
            false,
        ),
        (
            "MR without REMOTE_WRITE",
            Access::LOCAL_WRITE | Access::REMOTE_READ,
            rw,
            Box::new(same),
            false,
        ),
        (
            "QP without REMOTE_WRITE",
            rw,
            Access::LOCAL_WRITE | Access::REMOTE_READ,
            Box::new(same),
            false,
        ),
        (
            "READ of an MR without REMOTE_READ",
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            rw,
            Box::new(same),
            true,
        ),
    ];
    for (what, mr_access, qp_access, tweak, read) in cases {
        let (s, st, bytes) = one_write(mr_access, qp_access, tweak, read);
        assert_eq!(s, WcStatus::RemAccessErr, "{what}");
        assert_eq!(
            st,
            QpState::Err,
            "{what}: rxe moves the responder to ERR (class C)"
        );
        assert!(
            bytes.iter().all(|b| *b == 0),
            "{what}: the responder's memory must be untouched"
        );
    }
}

#[test]
fn deregistered_and_dropped_regions_lose_their_rkey() {
    let f = fabric(0x5c);
    for drop_it in [false, true] {
        let (a, b) = pair(&f, params(), params());
        let target =
            b.pd.clone()
                .reg_mr(4096, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
                .unwrap();
        let remote = target.remote();
        a.mr.write(0, &[1; 16]).unwrap();
        a.write(1, remote, 0, 16);
        expect(&a.scq, 1, WcStatus::Success);
        let kept = if drop_it {
            drop(target);
            None
        } else {
            target.deregister().unwrap();
            target.deregister().unwrap(); // idempotent
            Some(target)
        };
        a.mr.write(0, &[9; 16]).unwrap();
        a.write(2, remote, 0, 16);
        a.write(3, remote, 0, 16);
        expect(&a.scq, 2, WcStatus::RemAccessErr);
        expect(&a.scq, 3, WcStatus::WrFlushErr);
        if let Some(target) = kept {
            // The object still owns its buffer: readable, holding only the write before the fence.
            assert_eq!(target.read(0, 16).unwrap(), vec![1; 16]);
        }
    }
}

#[test]
fn memory_region_rules() {
    let f = fabric(0x5d);
    let a = End::on(&f, "n1", "rxe0", params());
    assert!(matches!(
        a.pd.clone().reg_mr(64, Access::REMOTE_WRITE),
        Err(VerbsError::InvalidArgument(_))
    ));
    let mr = a.pd.clone().reg_mr(64, Access::LOCAL_WRITE).unwrap();
    assert_eq!(
        (mr.len(), mr.lkey(), mr.read(0, 64).unwrap()),
        (64, mr.rkey(), vec![0; 64])
    );
    assert!(matches!(
        mr.write(60, &[1; 8]),
        Err(VerbsError::InvalidArgument(_))
    ));
    assert!(matches!(
        mr.read(0, 65),
        Err(VerbsError::InvalidArgument(_))
    ));
    mr.write(0, &[5; 4]).unwrap();
    mr.deregister().unwrap();
    assert_eq!(
        mr.read(0, 4).unwrap(),
        vec![5; 4],
        "a deregistered region stays readable locally"
    );
    let other = a.pd.clone().reg_mr(64, Access::LOCAL_WRITE).unwrap();
    assert_ne!(other.rkey(), mr.rkey());
    assert!(other.addr() >= mr.addr() + 64, "regions do not overlap");
}

//! The simulator's own semantics: the kernel's QP state table, posting rules, RC delivery and
//! its failure modes (RNR, retries, access errors), faults, completion fds, and determinism.
//! Each test prints its seed (override with PEERCM_SIM_SEED).

#![allow(clippy::unwrap_used)]

use peercm_verbs_shim::api::{CompletionQueue, Device, MemoryRegion, ProtectionDomain, QueuePair};
use peercm_verbs_shim::qp_state;
use peercm_verbs_shim::sim::harness::{
    fast_params, seed_from_env, standard_fabric, STANDARD_CAPACITY_GBPS,
};
use peercm_verbs_shim::sim::{SimFabric, TraceEvent};
use peercm_verbs_shim::types::{
    Access, AsyncEvent, LinkLayer, PortState, QpCaps, QpEndpoint, QpParams, QpState, RecvWr,
    RemoteMr, SendWr, Sge, VerbsUnavailable, WcOpcode, WcStatus, WorkCompletion,
};
use peercm_verbs_shim::VerbsError;
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(2);

fn fabric(default_seed: u64) -> SimFabric {
    standard_fabric(seed_from_env(default_seed)).unwrap()
}

/// Fast timers (1 ms ACK timeout, 3 retries) over the IPv4-mapped GID.
fn params() -> QpParams {
    QpParams {
        gid_index: 1,
        ..fast_params()
    }
}

/// ACK timeout of `params()`: exponent 8, 4.096 us * 256.
const ACK_TIMEOUT: Duration = Duration::from_nanos(4096 * 256);

struct End {
    dev: Arc<dyn Device>,
    pd: Arc<dyn ProtectionDomain>,
    scq: Arc<dyn CompletionQueue>,
    rcq: Arc<dyn CompletionQueue>,
    qp: Box<dyn QueuePair>,
    mr: Arc<dyn MemoryRegion>,
    params: QpParams,
}

impl End {
    fn on(f: &SimFabric, node: &str, dev: &str, params: QpParams) -> End {
        let dev = f.provider(node).open(dev).unwrap();
        let pd = dev.clone().alloc_pd().unwrap();
        let scq = dev.clone().create_cq(256).unwrap();
        let rcq = dev.clone().create_cq(256).unwrap();
        let qp = pd
            .clone()
            .create_qp(scq.clone(), rcq.clone(), QpCaps::default())
            .unwrap();
        let mr = pd.clone().reg_mr(64 * 1024, Access::all()).unwrap();
        End {
            dev,
            pd,
            scq,
            rcq,
            qp,
            mr,
            params,
        }
    }

    fn sge(&self, offset: u64, len: u32) -> Sge {
        Sge {
            mr: self.mr.clone(),
            offset,
            len,
        }
    }

    fn send(&self, wr_id: u64, offset: u64, len: u32) {
        let wr = SendWr::Send {
            wr_id,
            local: self.sge(offset, len),
            imm: None,
        };
        self.qp.post_send(wr).unwrap();
    }

    fn recv(&self, wr_id: u64, offset: u64, len: u32) {
        self.qp
            .post_recv(RecvWr {
                wr_id,
                local: self.sge(offset, len),
            })
            .unwrap();
    }

    fn write(&self, wr_id: u64, remote: RemoteMr, remote_offset: u64, len: u32) {
        let wr = SendWr::Write {
            wr_id,
            local: self.sge(0, len),
            remote,
            remote_offset,
            imm: None,
        };
        self.qp.post_send(wr).unwrap();
    }

    fn read(&self, wr_id: u64, remote: RemoteMr, len: u32) {
        let wr = SendWr::Read {
            wr_id,
            local: self.sge(0, len),
            remote,
            remote_offset: 0,
        };
        self.qp.post_send(wr).unwrap();
    }

    fn endpoint(&self, psn: u32) -> QpEndpoint {
        self.qp.endpoint(&self.params, psn).unwrap()
    }
}

fn connect(a: &mut End, b: &mut End) {
    a.qp.to_init(&a.params).unwrap();
    b.qp.to_init(&b.params).unwrap();
    let (ea, eb) = (a.endpoint(100), b.endpoint(200));
    a.qp.to_rtr(&a.params, &eb).unwrap();
    b.qp.to_rtr(&b.params, &ea).unwrap();
    a.qp.to_rts(&a.params, 100).unwrap();
    b.qp.to_rts(&b.params, 200).unwrap();
}

/// A connected QP pair n1/rxe0 (a) <-> n2/rxe0 (b).
fn pair(f: &SimFabric, pa: QpParams, pb: QpParams) -> (End, End) {
    let mut a = End::on(f, "n1", "rxe0", pa);
    let mut b = End::on(f, "n2", "rxe0", pb);
    connect(&mut a, &mut b);
    (a, b)
}

fn one(cq: &Arc<dyn CompletionQueue>) -> WorkCompletion {
    let v = cq.wait(1, WAIT).unwrap();
    assert_eq!(
        v.len(),
        1,
        "expected one completion within {WAIT:?}, got none"
    );
    v[0]
}

fn expect(cq: &Arc<dyn CompletionQueue>, wr_id: u64, status: WcStatus) -> WorkCompletion {
    let wc = one(cq);
    assert_eq!((wc.wr_id, wc.status), (wr_id, status), "completion {wc:?}");
    wc
}

fn nothing(cq: &Arc<dyn CompletionQueue>, for_: Duration) {
    let v = cq.wait(1, for_).unwrap();
    assert!(
        v.is_empty(),
        "expected no completion for {for_:?}, got {v:?}"
    );
}

fn event(dev: &Arc<dyn Device>) -> Option<AsyncEvent> {
    dev.next_async_event(WAIT).unwrap()
}

// ------------------------------------------------------------------------- state machine

#[test]
fn transitions_follow_the_kernel_table() {
    use QpState::*;
    let f = fabric(0x51);
    for from in [Reset, Init, Rtr, Rts, Err] {
        for to in [Init, Rtr, Rts, Err] {
            let mut a = End::on(&f, "n1", "rxe0", params());
            let b = End::on(&f, "n2", "rxe0", params());
            let eb = b.endpoint(1);
            let p = a.params;
            match from {
                Reset => {}
                Init => a.qp.to_init(&p).unwrap(),
                Rtr => {
                    a.qp.to_init(&p).unwrap();
                    a.qp.to_rtr(&p, &eb).unwrap();
                }
                Rts => {
                    a.qp.to_init(&p).unwrap();
                    a.qp.to_rtr(&p, &eb).unwrap();
                    a.qp.to_rts(&p, 1).unwrap();
                }
                Err => a.qp.to_error().unwrap(),
                _ => unreachable!(),
            }
            assert_eq!(a.qp.state(), from);
            let r = match to {
                Init => a.qp.to_init(&p),
                Rtr => a.qp.to_rtr(&p, &eb),
                Rts => a.qp.to_rts(&p, 1),
                Err => a.qp.to_error(),
                _ => unreachable!(),
            };
            if qp_state::allowed(from, to) {
                assert_eq!(r, Ok(()), "{from:?} -> {to:?} is in the kernel table");
                assert_eq!(a.qp.state(), to);
            } else {
                assert_eq!(
                    r,
                    Result::Err(VerbsError::InvalidTransition { from, to }),
                    "{from:?} -> {to:?}"
                );
                assert_eq!(
                    a.qp.state(),
                    from,
                    "a rejected transition leaves the state alone"
                );
            }
        }
    }
}

#[test]
fn posts_in_wrong_states_are_rejected_like_the_real_backend() {
    let f = fabric(0x52);
    let mut a = End::on(&f, "n1", "rxe0", params());
    let b = End::on(&f, "n2", "rxe0", params());
    let send = |a: &End| {
        a.qp.post_send(SendWr::Send {
            wr_id: 1,
            local: a.sge(0, 8),
            imm: None,
        })
    };
    let recv = |a: &End| {
        a.qp.post_recv(RecvWr {
            wr_id: 2,
            local: a.sge(0, 8),
        })
    };
    let wrong = |what, state| Err(VerbsError::WrongState { what, state });
    assert_eq!(send(&a), wrong("send", QpState::Reset));
    assert_eq!(recv(&a), wrong("recv", QpState::Reset));
    a.qp.to_init(&a.params).unwrap();
    assert_eq!(send(&a), wrong("send", QpState::Init));
    assert_eq!(recv(&a), Ok(()), "receives may be posted in INIT");
    a.qp.to_rtr(&a.params, &b.endpoint(0)).unwrap();
    assert_eq!(send(&a), wrong("send", QpState::Rtr));
    a.qp.to_error().unwrap();
    // The receive posted in INIT flushes on the way to ERR.
    expect(&a.rcq, 2, WcStatus::WrFlushErr);
    // In ERR posts are accepted and complete flushed at once.
    assert_eq!(send(&a), Ok(()));
    expect(&a.scq, 1, WcStatus::WrFlushErr);
    assert_eq!(recv(&a), Ok(()));
    expect(&a.rcq, 2, WcStatus::WrFlushErr);
    for s in [
        QpState::Reset,
        QpState::Init,
        QpState::Rtr,
        QpState::Rts,
        QpState::Err,
    ] {
        assert_eq!(
            qp_state::accepts_send(s),
            s != QpState::Reset && s != QpState::Init && s != QpState::Rtr
        );
    }
}

#[test]
fn queues_have_their_depth() {
    let f = fabric(0x53);
    let a = End::on(&f, "n1", "rxe0", params());
    let scq = a.dev.clone().create_cq(16).unwrap();
    let mut qp =
        a.pd.clone()
            .create_qp(
                scq.clone(),
                scq,
                QpCaps {
                    max_send_wr: 2,
                    max_recv_wr: 1,
                    max_sge: 1,
                },
            )
            .unwrap();
    qp.to_init(&params()).unwrap();
    let wr = |id| RecvWr {
        wr_id: id,
        local: a.sge(0, 8),
    };
    qp.post_recv(wr(1)).unwrap();
    assert_eq!(qp.post_recv(wr(2)), Err(VerbsError::QueueFull("recv")));
    // Sends queue up while the partner is stalled.
    let mut b = End::on(&f, "n2", "rxe0", params());
    b.qp.to_init(&b.params).unwrap();
    b.qp.to_rtr(&b.params, &qp.endpoint(&params(), 0).unwrap())
        .unwrap();
    qp.to_rtr(&params(), &b.endpoint(0)).unwrap();
    qp.to_rts(&params(), 0).unwrap();
    f.stall_responder("n2").unwrap();
    let send = |id| SendWr::Send {
        wr_id: id,
        local: a.sge(0, 8),
        imm: None,
    };
    qp.post_send(send(1)).unwrap();
    qp.post_send(send(2)).unwrap();
    assert_eq!(qp.post_send(send(3)), Err(VerbsError::QueueFull("send")));
}

// ------------------------------------------------------------------------- RC delivery

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

// ------------------------------------------------------------------------- addressing

#[test]
fn gid_tables_look_like_rxe() {
    let f = fabric(0x5e);
    let p1 = f.provider("n1");
    let n1r0 = p1.open("rxe0").unwrap();
    let n2r1 = f.provider("n2").open("rxe1").unwrap();
    let g0 = n1r0.gid(1, 0).unwrap();
    assert_eq!(&g0[..2], &[0xfe, 0x80], "index 0 is link-local");
    assert_eq!(n1r0.gid(1, 1).unwrap()[10..], [0xff, 0xff, 10, 77, 1, 1]);
    assert_eq!(n2r1.gid(1, 1).unwrap()[10..], [0xff, 0xff, 10, 77, 2, 2]);
    assert!(matches!(
        n1r0.gid(1, 2),
        Err(VerbsError::InvalidArgument(_))
    ));
    assert!(matches!(
        n1r0.gid(2, 0),
        Err(VerbsError::InvalidArgument(_))
    ));
    let mut all = Vec::new();
    for n in ["n1", "n2"] {
        for d in ["rxe0", "rxe1"] {
            let dev = f.provider(n).open(d).unwrap();
            all.extend(dev.query_port(1).unwrap().gids);
        }
    }
    let mut dedup = all.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(dedup.len(), all.len(), "every GID is distinct");
    // An uncabled device has only its link-local GID and a DOWN port.
    f.add_device("n1", "rxe9", 10).unwrap();
    let lone = p1.open("rxe9").unwrap();
    let port = lone.query_port(1).unwrap();
    assert_eq!((port.gids.len(), port.state), (1, PortState::Down));
}

#[test]
fn unreachable_gid_is_accepted_at_rtr_and_then_times_out() {
    let f = fabric(0x5f);
    let mut a = End::on(&f, "n1", "rxe0", params());
    let b = End::on(&f, "n2", "rxe0", params());
    let mut nowhere = b.endpoint(0);
    nowhere.gid[12..].copy_from_slice(&[10, 99, 0, 9]);
    a.qp.to_init(&a.params).unwrap();
    a.qp.to_rtr(&a.params, &nowhere).unwrap();
    a.qp.to_rts(&a.params, 0).unwrap();
    let t = Instant::now();
    a.send(1, 0, 8);
    expect(&a.scq, 1, WcStatus::RetryExcErr);
    assert!(
        t.elapsed() >= ACK_TIMEOUT * 4,
        "retries took only {:?}",
        t.elapsed()
    );
}

#[test]
fn gid_index_selects_the_address_family() {
    let f = fabric(0x60);
    // Link-local on both sides works.
    let ll = QpParams {
        gid_index: 0,
        ..params()
    };
    let (a, b) = pair(&f, ll, ll);
    b.recv(1, 0, 8);
    a.send(1, 0, 8);
    expect(&a.scq, 1, WcStatus::Success);
    // Link-local source to an IPv4-mapped destination does not.
    let (a, b) = pair(&f, ll, params());
    b.recv(1, 0, 8);
    a.send(2, 0, 8);
    expect(&a.scq, 2, WcStatus::RetryExcErr);
}

#[test]
fn a_wrong_psn_is_dropped_until_retries_run_out() {
    let f = fabric(0x61);
    let mut a = End::on(&f, "n1", "rxe0", params());
    let mut b = End::on(&f, "n2", "rxe0", params());
    a.qp.to_init(&a.params).unwrap();
    b.qp.to_init(&b.params).unwrap();
    let mut ea = a.endpoint(100);
    ea.psn = 105; // b expects a different first PSN than a will send
    a.qp.to_rtr(&a.params, &b.endpoint(200)).unwrap();
    b.qp.to_rtr(&b.params, &ea).unwrap();
    a.qp.to_rts(&a.params, 100).unwrap();
    b.qp.to_rts(&b.params, 200).unwrap();
    b.recv(1, 0, 8);
    a.send(1, 0, 8);
    expect(&a.scq, 1, WcStatus::RetryExcErr);
    nothing(&b.rcq, Duration::ZERO);
}

#[test]
fn cqs_of_another_device_are_rejected() {
    let f = fabric(0x62);
    let a = End::on(&f, "n1", "rxe0", params());
    let other = f.provider("n1").open("rxe1").unwrap();
    let foreign = other.create_cq(8).unwrap();
    let r =
        a.pd.clone()
            .create_qp(foreign, a.rcq.clone(), QpCaps::default());
    assert!(matches!(r, Err(VerbsError::InvalidArgument(_))));
}

// ------------------------------------------------------------------------- devices and ports

#[test]
fn devices_report_ports_capacity_and_state() {
    let f = fabric(0x63);
    let devs = f.provider("n1").devices().unwrap();
    let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["rxe0", "rxe1"]);
    for (d, cap) in devs.iter().zip(STANDARD_CAPACITY_GBPS) {
        assert_eq!(d.ports.len(), 1);
        let p = &d.ports[0];
        assert_eq!(
            (p.port, p.state, p.link_layer, p.capacity_mbps),
            (1, PortState::Active, LinkLayer::Ethernet, cap * 1000)
        );
        assert_eq!(p.gids.len(), 2);
    }
    assert_ne!(devs[0].guid, devs[1].guid);
    // Multi-port device: capacity per port.
    f.add_node("n3").unwrap();
    f.add_device_ports("n3", "mlx5_0", &[100, 200]).unwrap();
    f.cable(("n3", "mlx5_0", 2), ("n2", "rxe1", 1)).unwrap_err(); // rxe1 already cabled
    f.add_device("n2", "rxe2", 40).unwrap();
    f.cable(("n3", "mlx5_0", 2), ("n2", "rxe2", 1)).unwrap();
    let d = f.provider("n3").open("mlx5_0").unwrap().info();
    let caps: Vec<(u8, u32, PortState)> = d
        .ports
        .iter()
        .map(|p| (p.port, p.capacity_mbps, p.state))
        .collect();
    assert_eq!(
        caps,
        [
            (1, 100_000, PortState::Down),
            (2, 200_000, PortState::Active)
        ]
    );
    // Cabling rules and unknown names.
    assert!(f.cable(("n1", "rxe0", 1), ("n1", "rxe1", 1)).is_err());
    assert!(f.add_node("n1").is_err());
    assert_eq!(
        f.provider("nowhere").devices(),
        Err(VerbsUnavailable::NoDevice)
    );
    assert!(matches!(
        f.provider("n1").open("mlx9"),
        Err(VerbsError::NoSuchDevice(_))
    ));
}

#[test]
fn cable_cut_downs_both_ends_and_restore_brings_them_back() {
    let f = SimFabric::new(seed_from_env(0x64));
    for n in ["n1", "n2"] {
        f.add_node(n).unwrap();
        f.add_device(n, "rxe0", 25).unwrap();
    }
    f.cable(("n1", "rxe0", 1), ("n2", "rxe0", 1)).unwrap();
    f.set_latency(("n1", "rxe0", 1), Duration::from_millis(2), Duration::ZERO)
        .unwrap();
    let (a, b) = pair(&f, params(), params());
    for i in 0..3 {
        b.recv(i, 0, 8);
    }
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    let t = Instant::now();
    f.cut_cable(("n2", "rxe0", 1)).unwrap();
    assert_eq!(event(&a.dev), Some(AsyncEvent::PortError { port: 1 }));
    assert_eq!(event(&b.dev), Some(AsyncEvent::PortError { port: 1 }));
    expect(&a.scq, 1, WcStatus::LocQpOpErr);
    expect(&a.scq, 2, WcStatus::WrFlushErr);
    assert!(
        t.elapsed() < Duration::from_millis(2),
        "the in-flight request failed at once"
    );
    for i in 0..3 {
        expect(&b.rcq, i, WcStatus::WrFlushErr);
    }
    assert_eq!(
        f.provider("n1").devices(),
        Err(VerbsUnavailable::NoActivePort)
    );
    assert_eq!(f.port_state(("n1", "rxe0", 1)).unwrap(), PortState::Down);
    f.restore_cable(("n1", "rxe0", 1)).unwrap();
    assert_eq!(event(&a.dev), Some(AsyncEvent::PortActive { port: 1 }));
    assert_eq!(event(&b.dev), Some(AsyncEvent::PortActive { port: 1 }));
    assert!(f.provider("n1").devices().is_ok());
    // Errored QPs stay errored; new ones work.
    let mut a = a;
    assert_eq!(a.qp.state(), QpState::Err);
    assert_eq!(
        a.qp.to_rts(&params(), 0),
        Err(VerbsError::InvalidTransition {
            from: QpState::Err,
            to: QpState::Rts
        })
    );
    let (a2, b2) = pair(&f, params(), params());
    b2.recv(1, 0, 8);
    a2.send(1, 0, 8);
    expect(&a2.scq, 1, WcStatus::Success);
}

#[test]
fn one_sided_port_down_times_out_the_partner() {
    let f = fabric(0x65);
    let (a, b) = pair(&f, params(), params());
    for i in 0..2 {
        b.recv(i, 0, 8);
    }
    f.set_port_down("n1", "rxe0", 1).unwrap();
    assert_eq!(event(&a.dev), Some(AsyncEvent::PortError { port: 1 }));
    assert_eq!(a.qp.state(), QpState::Err);
    // The partner's port stays up and it hears nothing...
    assert_eq!(f.port_state(("n2", "rxe0", 1)).unwrap(), PortState::Active);
    assert_eq!(
        b.dev.next_async_event(Duration::from_millis(5)).unwrap(),
        None
    );
    assert_eq!(b.qp.state(), QpState::Rts);
    // ...until it sends: (retry_count + 1) ACK timeouts later, RETRY_EXC_ERR.
    let t = Instant::now();
    b.send(7, 0, 8);
    expect(&b.scq, 7, WcStatus::RetryExcErr);
    let took = t.elapsed();
    assert!(took >= ACK_TIMEOUT * 4, "timed out after {took:?}");
    for i in 0..2 {
        expect(&b.rcq, i, WcStatus::WrFlushErr);
    }
    // A send on the local side's QP (now ERR) flushes.
    a.send(8, 0, 8);
    expect(&a.scq, 8, WcStatus::WrFlushErr);
    f.set_port_up("n1", "rxe0", 1).unwrap();
    assert_eq!(event(&a.dev), Some(AsyncEvent::PortActive { port: 1 }));
    assert_eq!(a.qp.state(), QpState::Err);
}

#[test]
fn a_qp_connected_on_a_down_port_fails_its_first_request() {
    let f = fabric(0x66);
    f.set_port_down("n1", "rxe0", 1).unwrap();
    let (a, _b) = pair(&f, params(), params());
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    expect(&a.scq, 1, WcStatus::LocQpOpErr);
    expect(&a.scq, 2, WcStatus::WrFlushErr);
}

#[test]
fn fail_qp_raises_qp_fatal_and_flushes() {
    let f = fabric(0x67);
    let (a, b) = pair(&f, params(), params());
    b.recv(1, 0, 8);
    b.recv(2, 0, 8);
    f.fail_qp("n2", b.qp.qpn()).unwrap();
    assert_eq!(event(&b.dev), Some(AsyncEvent::QpFatal { qpn: b.qp.qpn() }));
    assert_eq!(
        a.dev.next_async_event(Duration::ZERO).unwrap(),
        None,
        "only the owner's context hears it"
    );
    expect(&b.rcq, 1, WcStatus::WrFlushErr);
    expect(&b.rcq, 2, WcStatus::WrFlushErr);
    assert_eq!(b.qp.state(), QpState::Err);
    assert!(f.fail_qp("n1", b.qp.qpn()).is_err(), "that QP is not on n1");
}

#[test]
fn a_stalled_responder_gives_retry_exceeded() {
    let f = fabric(0x68);
    let (a, b) = pair(&f, params(), params());
    b.recv(1, 0, 8);
    f.stall_responder("n2").unwrap();
    let t = Instant::now();
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    expect(&a.scq, 1, WcStatus::RetryExcErr);
    let took = t.elapsed();
    assert!(
        took >= ACK_TIMEOUT * 4,
        "gave up after {took:?}, expected (3 + 1) x {ACK_TIMEOUT:?}"
    );
    assert!(took < Duration::from_secs(1), "took {took:?}");
    expect(&a.scq, 2, WcStatus::WrFlushErr);
    nothing(&b.rcq, Duration::ZERO);
}

#[test]
fn a_released_responder_resumes_when_retrying_forever() {
    let f = fabric(0x69);
    let forever = QpParams {
        retry_count: 7,
        ..params()
    };
    let (a, b) = pair(&f, forever, params());
    b.recv(1, 0, 8);
    f.stall_responder("n2").unwrap();
    a.send(1, 0, 8);
    nothing(&a.scq, ACK_TIMEOUT * 12);
    f.release_responder("n2").unwrap();
    expect(&a.scq, 1, WcStatus::Success);
    expect(&b.rcq, 1, WcStatus::Success);
}

#[test]
fn latency_delays_completions() {
    let f = fabric(0x6a);
    f.set_latency(("n1", "rxe0", 1), Duration::from_millis(3), Duration::ZERO)
        .unwrap();
    let (a, b) = pair(&f, params(), params());
    b.recv(1, 0, 8);
    let t = Instant::now();
    a.send(1, 0, 8);
    expect(&a.scq, 1, WcStatus::Success);
    assert!(
        t.elapsed() >= Duration::from_millis(6),
        "a round trip took {:?}",
        t.elapsed()
    );
}

// ------------------------------------------------------------------------- completion fd

#[allow(unsafe_code)]
fn readable(fd: std::os::fd::RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n == 1 && p.revents & libc::POLLIN != 0
}

#[test]
fn the_completion_fd_is_readable_while_completions_wait() {
    let f = fabric(0x6b);
    f.set_latency(("n1", "rxe0", 1), Duration::from_millis(2), Duration::ZERO)
        .unwrap();
    let (a, b) = pair(&f, params(), params());
    let fd = a
        .scq
        .completion_fd()
        .expect("the simulator offers an eventfd");
    assert_eq!(a.scq.completion_fd(), Some(fd), "the same fd every time");
    assert!(!readable(fd, 0));
    b.recv(1, 0, 8);
    b.recv(2, 0, 8);
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    // Nobody calls into the fabric: the engine thread must deliver and signal.
    assert!(readable(fd, 2000), "the fd did not fire");
    let first = a.scq.poll(1).unwrap();
    assert_eq!(first.len(), 1);
    if first[0].wr_id == 1 && a.scq.poll(0).unwrap().is_empty() {
        // One may remain (or arrive): the fd stays readable while it does.
        assert!(readable(fd, 2000));
        assert_eq!(a.scq.poll(8).unwrap().len(), 1);
    }
    assert!(!readable(fd, 0), "drained by poll");
}

// ------------------------------------------------------------------------- determinism

fn workload(seed: u64) -> Vec<TraceEvent> {
    let f = standard_fabric(seed).unwrap();
    f.set_latency(
        ("n1", "rxe0", 1),
        Duration::from_micros(30),
        Duration::from_micros(60),
    )
    .unwrap();
    f.set_loss(("n1", "rxe0", 1), 0.2).unwrap();
    let forever = QpParams {
        retry_count: 7,
        ..params()
    };
    let (a, b) = pair(&f, forever, forever);
    for i in 0..30 {
        b.recv(i, i * 64, 64);
    }
    for i in 0..30 {
        a.send(i, 0, 64);
        expect(&a.scq, i, WcStatus::Success);
        expect(&b.rcq, i, WcStatus::Success);
    }
    let bad = RemoteMr {
        rkey: !b.mr.rkey(),
        ..b.mr.remote()
    };
    a.write(100, bad, 0, 64);
    expect(&a.scq, 100, WcStatus::RemAccessErr);
    let (c, _d) = {
        let mut c = End::on(&f, "n1", "rxe1", params());
        let mut d = End::on(&f, "n2", "rxe1", params());
        connect(&mut c, &mut d);
        (c, d)
    };
    c.send(1, 0, 8);
    f.cut_cable(("n1", "rxe1", 1)).unwrap();
    f.restore_cable(("n1", "rxe1", 1)).unwrap();
    let _ = one(&c.scq);
    f.trace()
}

#[test]
fn same_seed_same_trace() {
    let seed = seed_from_env(0xD5EED);
    let t1 = workload(seed);
    let t2 = workload(seed);
    let completions = t1
        .iter()
        .filter(|t| matches!(t, TraceEvent::Completion { .. }))
        .count();
    assert!(
        completions >= 62,
        "trace too short: {completions} completions"
    );
    assert!(t1.iter().any(|t| matches!(
        t,
        TraceEvent::Async {
            event: AsyncEvent::PortError { .. },
            ..
        }
    )));
    if t1 != t2 {
        let at = t1
            .iter()
            .zip(&t2)
            .position(|(x, y)| x != y)
            .unwrap_or(t1.len().min(t2.len()));
        panic!(
            "seed {seed:#x}: traces differ at entry {at}: {:?} vs {:?}",
            t1.get(at),
            t2.get(at)
        );
    }
    let t3 = workload(seed ^ 0xFFFF);
    assert_ne!(t1, t3, "a different seed should change QPNs and keys");
}

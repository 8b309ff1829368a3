//! The kernel's QP state table and the posting rules that follow from it (wrong states,
//! queue depths), as the real backend enforces them.

use crate::common::{expect, fabric, params, End};
use peercm_verbs_shim::qp_state;
use peercm_verbs_shim::types::{QpCaps, QpState, RecvWr, SendWr, WcStatus};
use peercm_verbs_shim::VerbsError;

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

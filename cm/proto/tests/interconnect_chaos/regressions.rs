//! Deterministic regression tests for two bugs the randomized test found.

use super::*;

/// Regression (found by this test, seed 1): the acceptor loses
/// its last link on its side only (it judged the link dead, or its QP failed; the dialer has not
/// noticed yet), goes DOWN, and a new link comes up before the dialer's stale link times out.
/// The dialer, still UP, takes the new link as one more link; the acceptor waits in RESETTING
/// for a RESET only the dialer can send, drops the dialer's DATA, and its heartbeats keep the
/// new link alive: neither side ever recovered. Fixed: the acceptor's heartbeats carry
/// RESET-REQUEST while it has no session, and a dialer up in that epoch resets.
#[test]
fn acceptor_down_alone_comes_back_when_a_new_link_arrives() {
    let spec = ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Normal,
        model: SendModel::Async,
    };
    let mut p = Pair::new(1);
    let ca = p.a.register("m", spec).expect("register");
    let cb = p.b.register("m", spec).expect("register");
    p.a.connect(ca).expect("connect");
    let old = p.add_link();
    p.drive();
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up)
    );
    p.fail_link_on_one_side(old, false); // b drops its only link; a still has it
    p.add_link(); // a (UP) redials before its stale link times out
    p.drive();
    let seq = p.a.send(ca, msg(1), SendModel::Async).expect("a is up");
    for _ in 0..50 {
        p.advance(Duration::from_millis(100)); // a's stale link times out on the way
        p.drive();
    }
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up),
        "both sides up again"
    );
    assert_eq!(delivered(&p.b_events, cb), vec![msg(1)]);
    assert!(p
        .a_events
        .contains(&(ca, ClientEvent::Acked { seq, code: None })));
}

/// Regression (found by this test, e.g. seed 115): the return
/// code of a synchronous message goes, in an ACK, on a link the sender of the message has
/// already dropped (it saw the link fail first; the other end has not noticed yet). The ACK is
/// lost, and nothing sends it again: the end that lost the link replayed before the code
/// existed, and the answering end, when it judges the link dead in turn, re-announces
/// cumulative acks and credit but not return codes. The sync send never completes (and its
/// window stalled) until some later link change made the sender replay. Fixed: a link loss
/// re-sends the remembered codes.
#[test]
fn return_code_lost_on_a_link_the_partner_dropped_is_sent_again() {
    let spec = ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Normal,
        model: SendModel::Sync,
    };
    let mut p = Pair::new(2);
    let ca = p.a.register("m", spec).expect("register");
    let cb = p.b.register("m", spec).expect("register");
    p.a.connect(ca).expect("connect");
    let l1 = p.add_link();
    let l2 = p.add_link();
    p.drive();
    let seq = p.a.send(ca, msg(1), SendModel::Sync).expect("send");
    p.drive();
    let (_, ev) = p
        .b_events
        .iter()
        .rev()
        .find(|(c, _)| *c == cb)
        .expect("delivered");
    let ClientEvent::Data { seq: rseq, .. } = ev.clone() else {
        panic!("setup: message 1 delivered to b, got {ev:?}");
    };
    p.fail_link_on_one_side(l1, true); // a sees l1 fail; b does not know yet
    p.drive();
    // b's link choice rotates: TRANSPORT messages until one went on l2 make its ACK go on l1.
    for _ in 0..4 {
        p.b.send_transport(bytes::Bytes::from_static(b"x"))
            .expect("b is up");
        p.flush();
        if p.queued(l2, false).last().map(|(t, _)| *t) == Some(MsgType::Transport) {
            break;
        }
    }
    p.b.reply(cb, rseq, 7).expect("reply");
    p.flush();
    assert!(
        p.queued(l1, false).iter().any(|(t, _)| *t == MsgType::Ack),
        "setup: b's ACK with the code went on l1 (queued: l1 {:?}, l2 {:?})",
        p.queued(l1, false),
        p.queued(l2, false)
    );
    for _ in 0..50 {
        p.advance(Duration::from_millis(100)); // b judges l1 dead on the way
        p.drive();
    }
    assert_eq!(p.link_ids(), vec![l2], "l1 is gone on both sides");
    assert!(
        p.a_events
            .contains(&(ca, ClientEvent::Acked { seq, code: Some(7) })),
        "the sync send never completed: a still has {} unacknowledged",
        p.a.unacked(ca)
    );
}

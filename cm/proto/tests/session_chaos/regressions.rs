//! Deterministic tests: a dialer restart after several resets, and one regression per bug the
//! randomized test and the session fuzz target found.

use super::*;

fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 10,
        latency: LatencyClass::Normal,
        model: SendModel::Async,
    }
}

/// The acceptor must follow a restarted dialer, whose epochs start again from 1, even after
/// several resets of the old incarnation.
#[test]
fn dialer_restart_after_several_resets_comes_back_up() {
    let mut p = Pair::new(5);
    let ca = p.a.register("mirror", spec()).expect("register");
    let cb = p.b.register("mirror", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    for _ in 0..3 {
        let l = p.add_link();
        p.drive();
        assert_eq!(p.a.state(), SessionState::Up);
        p.kill_link(l);
        p.drive();
    }
    assert!(p.b.epoch() > 1);
    p.restart_a(SessionConfig::default());
    let ca = p.a.register("mirror", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    p.add_link();
    p.drive();
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up),
        "both sides up after the dialer restarted"
    );
    p.a.send(ca, msg(1), SendModel::Async).expect("send");
    p.drive();
    assert_eq!(delivered(&p.b_events, cb).last(), Some(&msg(1)));
}

// ----- Deterministic regressions for what the randomized test (and the fuzzer) found -----

fn up(p: &mut Pair) {
    p.drive();
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up)
    );
}

/// A sync ACK also carries the cumulative ack, and its return code means the partner client took
/// every message before it: the async sends it completes must be reported.
#[test]
fn sync_ack_completes_the_async_sends_it_acknowledges() {
    let mut p = Pair::new(3);
    let ca = p.a.register("m", spec()).expect("register");
    p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    let l = p.add_link();
    up(&mut p);
    let s1 = p.a.send(ca, msg(1), SendModel::Async).expect("send");
    let s2 = p.a.send(ca, msg(2), SendModel::Sync).expect("send");
    p.flush();
    // The partner's answer to the sync send arrives before any cumulative ACK.
    let ack = Frame::new(
        MsgType::Ack,
        Flags::empty(),
        ca.get(),
        s2,
        s2,
        peercm_cm_proto::control::encode_code(5),
    );
    p.a.handle_frame(l, ack, p.now).expect("valid ACK");
    p.flush();
    let acked: Vec<_> = p
        .a_events
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::Acked { seq, code } => Some((*seq, *code)),
            _ => None,
        })
        .collect();
    assert_eq!(acked, vec![(s1, None), (s2, Some(5))]);
}

/// A RESET carrying the largest epoch must not overflow the dialer's next epoch.
#[test]
fn reset_with_the_largest_epoch_does_not_overflow() {
    let mut p = Pair::new(4);
    let l = p.add_link();
    up(&mut p);
    let reset = Frame::new(MsgType::Reset, Flags::empty(), 0, u64::MAX, 0, Bytes::new());
    p.a.handle_frame(l, reset, p.now).expect("RESET is valid");
    p.kill_link(l);
    p.add_link(); // the dialer starts a new reset: epoch + 1
    up(&mut p);
    assert_eq!(p.a.epoch(), u64::MAX);
}

/// DATA sent right after the sender came up may overtake, on another link, the READY that lets
/// the receiver come up. It must be kept, not dropped (nothing would ever replay it).
#[test]
fn data_overtaking_ready_is_kept_until_ready_arrives() {
    let mut p = Pair::new(6);
    let ca = p.a.register("m", spec()).expect("register");
    let cb = p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    let l1 = p.add_link();
    let l2 = p.add_link();
    p.deliver_all_on(l1, true); // RESET
    assert!(p.deliver_until(l1, false, MsgType::Ready)); // RESET-ACK, CLIENT-UP, READY
    assert_eq!(p.a.state(), SessionState::Up);
    assert_eq!(p.b.state(), SessionState::AwaitingReady);
    for i in 0..4 {
        p.a.send(ca, msg(i), SendModel::Async).expect("send");
    }
    p.flush();
    assert!(
        p.queued(l2, true).iter().any(|(t, _)| *t == MsgType::Data),
        "setup: some DATA goes on the second link"
    );
    p.deliver_all_on(l2, true); // DATA before a's READY
    assert_eq!(p.b.state(), SessionState::AwaitingReady);
    p.deliver_all_on(l1, true); // a's CLIENT-UP and READY
    p.drive();
    assert_eq!(
        delivered(&p.b_events, cb),
        (0..4).map(msg).collect::<Vec<_>>()
    );
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(e, ClientEvent::Acked { .. })),
        4
    );
}

/// The control link dies after the dialer came up but before the acceptor got the dialer's
/// READY. The acceptor must not fall back to RESETTING (the up dialer would never reset it
/// again), and the dialer must repeat its READY.
#[test]
fn losing_the_control_link_before_the_last_ready_recovers() {
    let mut p = Pair::new(7);
    let ca = p.a.register("m", spec()).expect("register");
    let cb = p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    let l1 = p.add_link();
    let l2 = p.add_link();
    p.deliver_all_on(l1, true);
    assert!(p.deliver_until(l1, false, MsgType::Ready));
    assert_eq!(p.a.state(), SessionState::Up);
    assert_eq!(p.b.state(), SessionState::AwaitingReady);
    p.kill_link(l1); // a's READY dies with it
    p.drive();
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up)
    );
    p.a.send(ca, msg(1), SendModel::Async).expect("send");
    p.drive();
    assert_eq!(delivered(&p.b_events, cb), vec![msg(1)]);
    assert!(p.link_ids() == vec![l2]);
}

/// The dialer restarts a reset (new epoch) on a survivor while the acceptor, already up, has
/// DATA of the old epoch in flight on a third link. That DATA must not be taken as the new
/// epoch's (same sequence numbers, different messages).
#[test]
fn stale_data_from_before_a_reset_is_not_delivered() {
    let mut p = Pair::new(8);
    let ca = p.a.register("m", spec()).expect("register");
    let cb = p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    let l1 = p.add_link();
    let l2 = p.add_link();
    let l3 = p.add_link();
    p.deliver_all_on(l1, true); // RESET (epoch 1)
    assert!(p.deliver_until(l1, false, MsgType::ResetAck));
    assert_eq!(p.a.state(), SessionState::AwaitingReady);
    for l in [l2, l3] {
        p.deliver_all_on(l, true);
        p.deliver_all_on(l, false);
    }
    p.deliver_all_on(l1, true); // a's CLIENT-UP and READY: b is up, b's READY still queued
    assert_eq!(p.b.state(), SessionState::Up);
    assert_eq!(p.a.state(), SessionState::AwaitingReady);
    for i in 0..6 {
        p.b.send(cb, msg(i), SendModel::Async).expect("send");
    }
    p.flush();
    assert!(
        p.queued(l3, false).iter().any(|(t, _)| *t == MsgType::Data),
        "setup: some DATA of epoch 1 goes on the third link"
    );
    p.kill_link(l1); // a restarts the reset (epoch 2) on l2
    p.deliver_all_on(l2, true); // RESET(2): b goes down (NACKs its sends) and resets
    p.deliver_all_on(l2, false); // RESET-ACK(2), CLIENT-UP, READY: a is up
    p.deliver_all_on(l2, true); // a's READY: b is up
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up)
    );
    p.deliver_all_on(l3, false); // the old DATA arrives at last
    assert!(
        delivered(&p.a_events, ca).is_empty(),
        "DATA of the old epoch was delivered: {:?}",
        delivered(&p.a_events, ca)
    );
    let seq = p.b.send(cb, msg(100), SendModel::Async).expect("send");
    p.drive();
    assert_eq!(delivered(&p.a_events, ca), vec![msg(100)]);
    assert!(p
        .b_events
        .iter()
        .any(|(_, e)| *e == ClientEvent::Acked { seq, code: None }));
    assert_eq!(
        count(&p.b_events, cb, |e| matches!(e, ClientEvent::Nacked { .. })),
        6
    );
}

/// Sync answers given out of order must still be re-sent for a replayed message whose first
/// ACK died with a link, however many other answers came after it.
#[test]
fn answer_lost_with_a_link_is_resent_after_out_of_order_answers() {
    let cfg = SessionConfig {
        window: 2,
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(9, cfg);
    let ca = p.a.register("m", spec()).expect("register");
    let cb = p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    for _ in 0..3 {
        p.add_link();
    }
    up(&mut p);
    let s1 = p.a.send(ca, msg(1), SendModel::Sync).expect("send");
    let s2 = p.a.send(ca, msg(2), SendModel::Sync).expect("send");
    p.drive();
    assert_eq!(delivered(&p.b_events, cb).len(), 2);
    // b answers 2 first; that ACK is held on its link (which later dies).
    p.b.reply(cb, s2, 22).expect("reply");
    p.flush();
    let held = p
        .link_ids()
        .into_iter()
        .find(|l| p.queued(*l, false).contains(&(MsgType::Ack, s2)))
        .expect("ACK of 2 queued");
    p.b.reply(cb, s1, 11).expect("reply");
    p.drive_except(held);
    assert!(p.a_events.contains(&(
        ca,
        ClientEvent::Acked {
            seq: s1,
            code: Some(11)
        }
    )));
    // The window moves on by one; b answers the next message too.
    let s3 = p.a.send(ca, msg(3), SendModel::Sync).expect("send");
    p.drive_except(held);
    assert_eq!(
        delivered(&p.b_events, cb).len(),
        3,
        "setup: message 3 avoided the held link"
    );
    p.b.reply(cb, s3, 33).expect("reply");
    p.drive_except(held);
    p.kill_link(held); // the ACK of 2 is lost; a replays 2
    p.drive();
    assert!(
        p.a_events.contains(&(
            ca,
            ClientEvent::Acked {
                seq: s2,
                code: Some(22)
            }
        )),
        "the answer to 2 was never re-sent: {:?}",
        p.a_events
    );
}

//! Autoswitch at the session level: when every link to the partner is lost the dialer holds
//! its unacknowledged messages (and accepts new sends); a backup partner connecting then gets
//! every one of them, renumbered for its fresh stream while the client keeps its own numbers,
//! under a higher epoch. The old partner returning instead ends the hold the classic way
//! (NACK + reset), and so does the hold time running out.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_proto::control::NackReason;
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, DownReason, LatencyClass, SessionConfig, SessionState,
};
use peercm_cm_proto::stream::SendModel;
use std::collections::BTreeSet;
use std::time::Duration;

fn hold_cfg() -> SessionConfig {
    SessionConfig {
        hold_on_partner_loss: Some(Duration::from_secs(5)),
        ..SessionConfig::default()
    }
}

fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 500,
        latency: LatencyClass::Bulk,
        model: SendModel::Sync,
    }
}

fn code(payload: &bytes::Bytes) -> i32 {
    payload.len() as i32
}

/// (client seq -> code) of every Acked event of `client` on a; panics on a duplicate.
fn acked(p: &Pair, client: ClientId) -> std::collections::BTreeMap<u64, Option<i32>> {
    let mut out = std::collections::BTreeMap::new();
    for (c, e) in &p.a_events {
        if let (true, ClientEvent::Acked { seq, code }) = (*c == client, e) {
            assert!(out.insert(*seq, *code).is_none(), "seq {seq} acked twice");
        }
    }
    out
}

#[test]
fn backup_partner_gets_every_unacknowledged_message_and_the_client_keeps_its_numbers() {
    for seed in 1..=25 {
        let mut p = Pair::with_config(seed, hold_cfg());
        let ca = p.a.register("mirror", spec()).unwrap();
        let cb = p.b.register("mirror", spec()).unwrap();
        p.a.connect(ca).unwrap();
        for _ in 0..2 {
            p.add_link();
        }
        p.drive();
        let epoch_before = p.a.epoch();
        let mut sent = 0u64;
        for _ in 0..300 {
            sent += 1;
            assert_eq!(p.a.send(ca, msg(sent), SendModel::Sync).unwrap(), sent);
        }
        // The partner gets part of the stream and answers part of what it got, then dies.
        let partial = (seed as usize * 37) % 250;
        for _ in 0..partial {
            p.step();
        }
        p.b_reply_all(code);
        for _ in 0..(seed as usize * 11) % 60 {
            p.step();
        }
        let b_got = delivered(&p.b_events, cb).len();
        for l in p.link_ids() {
            p.kill_link(l);
        }
        p.flush();
        let acked_by_b: BTreeSet<u64> = acked(&p, ca).keys().copied().collect();
        assert_eq!(p.a.state(), SessionState::Down, "seed {seed}");
        assert!(p.a.holding_since().is_some(), "seed {seed}: holding");
        assert_eq!(
            count(&p.a_events, ca, |e| matches!(
                e,
                ClientEvent::Nacked { .. } | ClientEvent::Down { .. }
            )),
            0,
            "seed {seed}: nothing NACKed, no Down while holding"
        );
        // Sends keep being accepted during the hold.
        for _ in 0..100 {
            sent += 1;
            assert_eq!(p.a.send(ca, msg(sent), SendModel::Sync).unwrap(), sent);
        }
        // The backup partner comes up.
        p.replace_b_with("c", SessionConfig::default());
        let cc = p.b.register("mirror", spec()).unwrap();
        p.add_link();
        p.add_link();
        for _ in 0..50 {
            p.drive();
            p.b_reply_all(code);
        }
        p.drive();
        assert_eq!(p.a.state(), SessionState::Up, "seed {seed}");
        assert!(p.a.epoch() > epoch_before, "seed {seed}: a higher epoch");
        let got_c = delivered(&p.b_events, cc);
        // c got exactly the messages whose answer a never had from b, in order, each once.
        let expect: Vec<_> = (1..=sent)
            .filter(|s| !acked_by_b.contains(s))
            .map(msg)
            .collect();
        assert_eq!(
            got_c,
            expect,
            "seed {seed}: b got {b_got}, answered {}; c must get the rest in order",
            acked_by_b.len()
        );
        // The client saw every one of its numbers acked exactly once, with the right code.
        let acks = acked(&p, ca);
        assert_eq!(
            acks.keys().copied().collect::<BTreeSet<_>>(),
            (1..=sent).collect::<BTreeSet<_>>(),
            "seed {seed}"
        );
        for (seq, c) in acks {
            assert_eq!(c, Some(code(&msg(seq))), "seed {seed}: seq {seq}");
        }
        assert_eq!(
            count(
                &p.a_events,
                ca,
                |e| matches!(e, ClientEvent::PeerSwitched { node, .. } if node == "c")
            ),
            1,
            "seed {seed}: told once"
        );
        assert_eq!(
            count(&p.a_events, ca, |e| matches!(e, ClientEvent::Nacked { .. })),
            0,
            "seed {seed}"
        );
        assert_eq!(p.a.unacked(ca), 0, "seed {seed}");
    }
}

#[test]
fn the_same_partner_returning_ends_the_hold_with_nacks_and_a_reset() {
    let mut p = Pair::with_config(3, hold_cfg());
    let ca = p.a.register("mirror", spec()).unwrap();
    let _cb = p.b.register("mirror", spec()).unwrap();
    p.a.connect(ca).unwrap();
    let l = p.add_link();
    p.drive();
    for i in 1..=20 {
        p.a.send(ca, msg(i), SendModel::Sync).unwrap();
    }
    p.flush();
    p.kill_link(l);
    assert!(p.a.holding_since().is_some());
    p.add_link();
    p.drive();
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(
            e,
            ClientEvent::Nacked {
                reason: NackReason::ConnectionLost,
                ..
            }
        )),
        20
    );
    assert_eq!(
        count(&p.a_events, ca, |e| *e
            == ClientEvent::Down {
                reason: DownReason::ConnectionLost
            }),
        1
    );
    assert_eq!(p.a.state(), SessionState::Up);
    assert!(p.a.holding_since().is_none());
    assert_eq!(
        count(&p.a_events, ca, |e| *e == ClientEvent::Up),
        2,
        "up again after the reset"
    );
}

#[test]
fn no_partner_within_the_hold_time_nacks_what_was_held() {
    let mut p = Pair::with_config(4, hold_cfg());
    let ca = p.a.register("mirror", spec()).unwrap();
    let _cb = p.b.register("mirror", spec()).unwrap();
    p.a.connect(ca).unwrap();
    let l = p.add_link();
    p.drive();
    for i in 1..=10 {
        p.a.send(ca, msg(i), SendModel::Sync).unwrap();
    }
    p.flush();
    p.kill_link(l);
    p.advance(Duration::from_secs(4));
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(e, ClientEvent::Nacked { .. })),
        0
    );
    let deadline = p.a.poll_timeout().expect("the hold has a deadline");
    p.advance(Duration::from_secs(2));
    p.flush();
    assert!(deadline <= p.now);
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(e, ClientEvent::Nacked { .. })),
        10
    );
    assert!(
        p.a.send(ca, msg(11), SendModel::Sync).is_err(),
        "fails fast now"
    );
}

#[test]
fn without_autoswitch_losing_every_link_nacks_at_once() {
    let mut p = Pair::new(5);
    let ca = p.a.register("mirror", spec()).unwrap();
    let _cb = p.b.register("mirror", spec()).unwrap();
    p.a.connect(ca).unwrap();
    let l = p.add_link();
    p.drive();
    for i in 1..=10 {
        p.a.send(ca, msg(i), SendModel::Sync).unwrap();
    }
    p.flush();
    p.kill_link(l);
    p.flush();
    assert!(p.a.holding_since().is_none());
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(e, ClientEvent::Nacked { .. })),
        10
    );
}

#[test]
fn sends_are_accepted_between_the_backups_first_link_and_its_ready() {
    let mut p = Pair::with_config(1, hold_cfg());
    let ca = p.a.register("mirror", spec()).unwrap();
    let _cb = p.b.register("mirror", spec()).unwrap();
    p.a.connect(ca).unwrap();
    p.add_link();
    p.drive();
    for l in p.link_ids() {
        p.kill_link(l);
    }
    p.flush();
    p.a.send(ca, msg(1), SendModel::Sync)
        .expect("accepted while holding");
    p.replace_b_with("c", SessionConfig::default());
    let cc = p.b.register("mirror", spec()).unwrap();
    p.add_link();
    // The switch's reset is under way (no READY from c yet): still accepted, never refused.
    assert_ne!(p.a.state(), SessionState::Up);
    p.a.send(ca, msg(2), SendModel::Sync)
        .expect("accepted while switching");
    for _ in 0..10 {
        p.drive();
        p.b_reply_all(code);
    }
    assert_eq!(delivered(&p.b_events, cc), vec![msg(1), msg(2)]);
    assert_eq!(acked(&p, ca).len(), 2);
}

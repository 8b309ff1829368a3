//! Acknowledgement timeouts (issue 8, item 3), on the in-memory pair with a fake clock: a sync
//! send whose partner client never replies is `Nacked { Timeout }` once its timeout passes (the
//! client's default, or the send's own), its late reply is dropped and counted, and nothing else
//! is disturbed (other sends complete, links and session stay up, no reset). Without a timeout a
//! send waits for ever, as before.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_proto::control::NackReason;
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, LatencyClass, SendOptions, SessionState,
};
use peercm_cm_proto::stream::SendModel;
use std::time::Duration;

fn spec(model: SendModel) -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Normal,
        model,
    }
}

fn pair(model: SendModel) -> (Pair, ClientId, ClientId) {
    let mut p = Pair::new(21);
    let ca = p.a.register("app", spec(model)).unwrap();
    let cb = p.b.register("app", spec(model)).unwrap();
    p.a.connect(ca).unwrap();
    p.b.connect(cb).unwrap();
    p.add_link();
    p.add_link();
    p.drive();
    (p, ca, cb)
}

/// a's completion events for client `c`: (send id, Some(code) if Acked / None if Nacked, reason).
fn completions(p: &Pair, c: ClientId) -> Vec<(u64, Result<Option<i32>, NackReason>)> {
    p.a_events
        .iter()
        .filter(|(id, _)| *id == c)
        .filter_map(|(_, e)| match e {
            ClientEvent::Acked { seq, code } => Some((*seq, Ok(*code))),
            ClientEvent::Nacked { seq, reason } => Some((*seq, Err(*reason))),
            _ => None,
        })
        .collect()
}

fn data_seqs(p: &Pair, c: ClientId) -> Vec<u64> {
    p.b_events
        .iter()
        .filter(|(id, _)| *id == c)
        .filter_map(|(_, e)| match e {
            ClientEvent::Data { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn an_unanswered_sync_send_is_nacked_on_timeout_and_its_late_reply_only_counted() {
    let (mut p, ca, cb) = pair(SendModel::Sync);
    p.a.set_ack_timeout(ca, Some(Duration::from_millis(300)))
        .unwrap();
    let links = p.link_ids();
    let epoch = p.a.epoch();
    let s1 = p.a.send(ca, msg(1), SendModel::Sync).unwrap();
    let s2 = p.a.send(ca, msg(2), SendModel::Sync).unwrap();
    p.drive();
    let seqs = data_seqs(&p, cb);
    assert_eq!(seqs.len(), 2, "both delivered");
    // b's client answers the second only.
    p.b.reply(cb, seqs[1], 7).unwrap();
    p.drive();
    assert_eq!(completions(&p, ca), vec![(s2, Ok(Some(7)))]);
    assert!(
        p.a.poll_timeout().unwrap() <= p.now + Duration::from_millis(300),
        "the deadline is part of the session's timer"
    );
    // Heartbeats flow meanwhile; the timeout passes.
    for _ in 0..4 {
        p.advance(Duration::from_millis(100));
        p.drive();
    }
    assert_eq!(
        completions(&p, ca),
        vec![(s2, Ok(Some(7))), (s1, Err(NackReason::Timeout))],
        "Nacked{{Timeout}} once, carrying the send id"
    );
    assert_eq!(p.a.stats().ack_timeouts, 1);
    assert_eq!(p.a.unacked(ca), 0, "the pending entry is released");
    // The reply comes after all: dropped and counted, no event.
    p.b.reply(cb, seqs[0], 9).unwrap();
    p.drive();
    assert_eq!(completions(&p, ca).len(), 2, "no second completion");
    assert_eq!(p.a.stats().late_completions, 1);
    // Nothing else was disturbed.
    assert_eq!(p.link_ids(), links);
    assert_eq!((p.a.state(), p.a.epoch()), (SessionState::Up, epoch));
    assert_eq!(p.a.stats().resets, 1, "only the first reset");
    assert!(!p
        .a_events
        .iter()
        .any(|(_, e)| matches!(e, ClientEvent::Down { .. })));
    let s3 = p.a.send(ca, msg(3), SendModel::Sync).unwrap();
    p.drive();
    p.b.reply(cb, *data_seqs(&p, cb).last().unwrap(), 0)
        .unwrap();
    p.drive();
    assert_eq!(completions(&p, ca).last(), Some(&(s3, Ok(Some(0)))));
}

#[test]
fn a_send_s_own_timeout_overrides_the_client_default_and_none_waits_for_ever() {
    let (mut p, ca, _cb) = pair(SendModel::Sync);
    let now = p.now;
    let forever = p.a.send(ca, msg(1), SendModel::Sync).unwrap();
    let short =
        p.a.send_with(
            ca,
            msg(2),
            SendOptions {
                model: SendModel::Sync,
                ack_timeout: Some(Duration::from_millis(50)),
            },
            now,
        )
        .unwrap();
    p.a.set_ack_timeout(ca, Some(Duration::from_millis(200)))
        .unwrap();
    let default = p.a.send(ca, msg(3), SendModel::Sync).unwrap();
    p.drive();
    p.advance(Duration::from_millis(50));
    p.drive();
    assert_eq!(completions(&p, ca), vec![(short, Err(NackReason::Timeout))]);
    for _ in 0..10 {
        p.advance(Duration::from_millis(100));
        p.drive();
    }
    assert_eq!(
        completions(&p, ca),
        vec![
            (short, Err(NackReason::Timeout)),
            (default, Err(NackReason::Timeout))
        ],
        "the first send had no timeout: it still waits"
    );
    assert_eq!(p.a.unacked(ca), 1);
    let _ = forever;
}

#[test]
fn an_async_send_the_partner_client_never_takes_times_out() {
    let (mut p, ca, cb) = pair(SendModel::Async);
    p.auto_consume = false;
    p.a.set_ack_timeout(ca, Some(Duration::from_millis(100)))
        .unwrap();
    let s1 = p.a.send(ca, msg(1), SendModel::Async).unwrap();
    p.drive();
    assert_eq!(data_seqs(&p, cb).len(), 1, "delivered, not taken");
    p.advance(Duration::from_millis(100));
    p.drive();
    assert_eq!(completions(&p, ca), vec![(s1, Err(NackReason::Timeout))]);
    p.b.consumed(cb, 1);
    p.drive();
    assert_eq!(completions(&p, ca).len(), 1);
    assert_eq!(p.a.stats().late_completions, 1, "the late take is counted");
}

/// A send that times out before it was transmitted (the partner client's window is full of
/// unanswered messages) still goes when the window opens: the receiver delivers in sequence,
/// so later sends would otherwise wait for ever behind the gap.
#[test]
fn a_send_timed_out_before_transmission_leaves_no_gap() {
    let cfg = peercm_cm_proto::session::SessionConfig {
        window: 2,
        ..Default::default()
    };
    let mut p = Pair::with_config(22, cfg);
    let ca = p.a.register("app", spec(SendModel::Sync)).unwrap();
    let cb = p.b.register("app", spec(SendModel::Sync)).unwrap();
    p.a.connect(ca).unwrap();
    p.b.connect(cb).unwrap();
    p.add_link();
    p.drive();
    p.a.set_ack_timeout(ca, Some(Duration::from_millis(100)))
        .unwrap();
    let ids: Vec<u64> = (1..=4)
        .map(|i| p.a.send(ca, msg(i), SendModel::Sync).unwrap())
        .collect();
    p.drive();
    assert_eq!(data_seqs(&p, cb), vec![1, 2], "a window of two");
    p.advance(Duration::from_millis(100));
    p.drive();
    assert_eq!(
        completions(&p, ca),
        ids.iter()
            .map(|id| (*id, Err(NackReason::Timeout)))
            .collect::<Vec<_>>(),
        "all four timed out, two of them never sent"
    );
    // The partner client answers late; the window opens, 3 and 4 still go, in order.
    for seq in [1, 2] {
        p.b.reply(cb, seq, 0).unwrap();
    }
    p.drive();
    assert_eq!(data_seqs(&p, cb), vec![1, 2, 3, 4]);
    for seq in [3, 4] {
        p.b.reply(cb, seq, 0).unwrap();
    }
    let s5 = p.a.send(ca, msg(5), SendModel::Sync).unwrap();
    p.drive();
    p.b.reply(cb, 5, 1).unwrap();
    p.drive();
    assert_eq!(completions(&p, ca).last(), Some(&(s5, Ok(Some(1)))));
    assert_eq!(p.a.stats().late_completions, 4);
    assert_eq!(p.a.unacked(ca), 0);
}

/// A send that timed out is not NACKed a second time when the session goes down.
#[test]
fn a_timed_out_send_is_not_nacked_again_by_a_reset() {
    let (mut p, ca, _cb) = pair(SendModel::Sync);
    let now = p.now;
    let s1 =
        p.a.send_with(
            ca,
            msg(1),
            SendOptions {
                model: SendModel::Sync,
                ack_timeout: Some(Duration::from_millis(10)),
            },
            now,
        )
        .unwrap();
    let s2 = p.a.send(ca, msg(2), SendModel::Sync).unwrap();
    p.drive();
    p.advance(Duration::from_millis(10));
    p.drive();
    for l in p.link_ids() {
        p.kill_link(l);
    }
    p.drive();
    assert_eq!(
        completions(&p, ca),
        vec![
            (s1, Err(NackReason::Timeout)),
            (s2, Err(NackReason::ConnectionLost))
        ]
    );
}

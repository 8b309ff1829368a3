//! Async acknowledgement (issue 8, item 8): an async send is `Acked` only once the partner's
//! client has taken the message from its queue (the consumed mark carried by FLOW frames), not
//! when it reached the partner's process. A partner that dies with messages delivered to its
//! process but not taken by its client leaves them NACKed, never acknowledged.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_proto::session::{ClientEvent, ClientId, ClientSpec, LatencyClass, SessionConfig};
use peercm_cm_proto::stream::SendModel;
use peercm_cm_proto::MsgType;
use std::collections::BTreeSet;
use std::time::Duration;

fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Normal,
        model: SendModel::Async,
    }
}

fn acked(p: &Pair, client: ClientId) -> BTreeSet<u64> {
    p.a_events
        .iter()
        .filter_map(|(c, e)| match e {
            ClientEvent::Acked { seq, code: None } if *c == client => Some(*seq),
            _ => None,
        })
        .collect()
}

fn nacked(p: &Pair, client: ClientId) -> BTreeSet<u64> {
    p.a_events
        .iter()
        .filter_map(|(c, e)| match e {
            ClientEvent::Nacked { seq, .. } if *c == client => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn async_acked_only_once_the_partner_client_took_it_and_a_partner_crash_nacks_the_rest() {
    let mut p = Pair::new(11);
    p.auto_consume = false;
    let ca = p.a.register("app", spec()).unwrap();
    let cb = p.b.register("app", spec()).unwrap();
    p.a.connect(ca).unwrap();
    p.b.connect(cb).unwrap();
    p.add_link();
    p.add_link();
    p.drive();
    let ids: Vec<u64> = (1..=6)
        .map(|i| p.a.send(ca, msg(i), SendModel::Async).unwrap())
        .collect();
    p.drive();
    assert_eq!(delivered(&p.b_events, cb).len(), 6, "all in b's queue");
    assert!(
        acked(&p, ca).is_empty(),
        "in the partner's queue is not taken: nothing may be Acked yet"
    );
    // b's client takes the first four.
    let seq4 = p
        .b_events
        .iter()
        .filter_map(|(c, e)| match e {
            ClientEvent::Data { seq, .. } if *c == cb => Some(*seq),
            _ => None,
        })
        .nth(3)
        .unwrap();
    p.b.consumed(cb, seq4);
    p.drive();
    assert_eq!(acked(&p, ca), ids[..4].iter().copied().collect());
    // b dies with two messages delivered to its process but never taken by its client.
    p.restart_b(SessionConfig::default());
    p.drive();
    assert_eq!(
        nacked(&p, ca),
        ids[4..].iter().copied().collect(),
        "what the partner client never took is NACKed"
    );
    assert_eq!(acked(&p, ca).len(), 4, "and never Acked");
}

/// The consumed mark must not cost a frame per message: on a busy stream it rides on the
/// cumulative ACKs and the credit FLOWs (one per quarter window), and a FLOW of its own goes at
/// most once per `consumed_report_interval` per client. (Reporting every take at once answered
/// each of these 1,000 messages with a FLOW.)
#[test]
fn a_busy_stream_taken_message_by_message_is_not_answered_with_a_flow_per_message() {
    let mut p = Pair::new(12);
    let ca = p.a.register("app", spec()).unwrap();
    let cb = p.b.register("app", spec()).unwrap();
    p.a.connect(ca).unwrap();
    p.b.connect(cb).unwrap();
    p.add_link();
    p.drive();
    let flows_before = p.sent_count(false, MsgType::Flow);
    let ids: BTreeSet<u64> = (1..=1000)
        .map(|i| p.a.send(ca, msg(i), SendModel::Async).unwrap())
        .collect();
    // The harness's client takes each message as soon as it is delivered (auto_consume).
    p.drive();
    assert_eq!(delivered(&p.b_events, cb).len(), 1000);
    assert_eq!(acked(&p, ca), ids, "every message taken, every send Acked");
    let flows = p.sent_count(false, MsgType::Flow) - flows_before;
    eprintln!("FLOW frames from b for 1,000 async messages taken one by one: {flows}");
    assert!(
        flows <= 1000 / 64 + 8,
        "{flows} FLOW frames for 1,000 messages taken one by one (window 256: a credit FLOW \
         every 64, plus a few rate-limited mark reports)"
    );
}

/// A mark that no other frame carries goes in a FLOW of its own once the report interval
/// since the client's last report has passed (the session's timer asks for it), not never.
#[test]
fn a_lone_mark_goes_when_its_report_interval_passed() {
    let cfg = SessionConfig {
        consumed_report_interval: Duration::from_millis(5),
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(13, cfg);
    p.auto_consume = false;
    let ca = p.a.register("app", spec()).unwrap();
    let cb = p.b.register("app", spec()).unwrap();
    p.a.connect(ca).unwrap();
    p.b.connect(cb).unwrap();
    p.add_link();
    p.drive();
    let t0 = p.now;
    let id = p.a.send(ca, msg(1), SendModel::Async).unwrap();
    p.drive();
    assert_eq!(p.now, t0, "nothing waited for time");
    p.b.consumed(cb, 1);
    p.flush();
    assert_eq!(
        p.b.next_mark_report(),
        Some(t0 + Duration::from_millis(5)),
        "a FLOW went at link-up: the mark waits for the interval"
    );
    assert!(p.b.poll_timeout().unwrap() <= t0 + Duration::from_millis(5));
    p.drive(); // time goes on to the report, as the runtime's timer would
    assert_eq!(p.now, t0 + Duration::from_millis(5));
    assert_eq!(acked(&p, ca), BTreeSet::from([id]));
    assert_eq!(p.b.next_mark_report(), None);
}

/// A partner client that never takes its messages cannot make its partner's memory grow: the
/// sender transmits at most a window of messages (the credit is the consumed mark plus the
/// window), nothing is Acked, and the sender's own queue raises flow control. Once the client
/// takes them, everything flows and completes.
#[test]
fn a_partner_client_that_never_takes_bounds_what_is_sent_to_it() {
    let cfg = SessionConfig {
        window: 8,
        flow_high_water: 20,
        flow_low_water: 4,
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(14, cfg);
    p.auto_consume = false;
    let ca = p.a.register("app", spec()).unwrap();
    let cb = p.b.register("app", spec()).unwrap();
    p.a.connect(ca).unwrap();
    p.b.connect(cb).unwrap();
    p.add_link();
    p.drive();
    let data_before = p.sent_count(true, MsgType::Data);
    for i in 1..=40 {
        p.a.send(ca, msg(i), SendModel::Async).unwrap();
    }
    p.drive();
    assert_eq!(
        p.sent_count(true, MsgType::Data) - data_before,
        8,
        "one window transmitted"
    );
    assert_eq!(delivered(&p.b_events, cb).len(), 8);
    assert!(acked(&p, ca).is_empty());
    assert_eq!(p.a.unacked(ca), 40, "the rest waits at the sender");
    assert!(p
        .a_events
        .contains(&(ca, ClientEvent::FlowControl { on: true })));
    // b's client takes what it has, again and again: everything flows.
    for _ in 0..10 {
        let last = p
            .b_events
            .iter()
            .filter_map(|(c, e)| match e {
                ClientEvent::Data { seq, .. } if *c == cb => Some(*seq),
                _ => None,
            })
            .max()
            .unwrap();
        p.b.consumed(cb, last);
        p.drive();
    }
    assert_eq!(delivered(&p.b_events, cb).len(), 40);
    assert_eq!(acked(&p, ca).len(), 40);
    assert_eq!(p.a.unacked(ca), 0);
}

//! Session behaviour over an in-memory pair: ordering, exactly-once delivery across link loss,
//! send models, NACKs on total loss, partner restart, unknown clients, flow control.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_proto::control::NackReason;
use peercm_cm_proto::port::PortState;
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, DownReason, LatencyClass, SessionConfig, SessionState,
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

fn up_pair(seed: u64, links: usize, model: SendModel) -> (Pair, ClientId, ClientId) {
    let mut p = Pair::new(seed);
    let ca = p.a.register("mirror", spec(model)).unwrap();
    let cb = p.b.register("mirror", spec(model)).unwrap();
    p.a.connect(ca).unwrap();
    for _ in 0..links {
        p.add_link();
    }
    p.drive();
    assert_eq!(p.a.state(), SessionState::Up, "seed {seed}");
    assert_eq!(p.b.state(), SessionState::Up, "seed {seed}");
    assert_eq!(p.a.port_state(ca), Some(PortState::Connected));
    assert_eq!(p.b.port_state(cb), Some(PortState::ConnectedTo));
    (p, ca, cb)
}

#[test]
fn ports_come_up_on_both_sides_with_up_events() {
    let (p, ca, cb) = up_pair(1, 1, SendModel::Async);
    assert_eq!(count(&p.a_events, ca, |e| *e == ClientEvent::Up), 1);
    assert_eq!(count(&p.b_events, cb, |e| *e == ClientEvent::Up), 1);
}

#[test]
fn many_messages_over_four_links_arrive_in_order_exactly_once() {
    for seed in 1..=5 {
        let (mut p, ca, cb) = up_pair(seed, 4, SendModel::Async);
        for i in 0..2000 {
            p.a.send(ca, msg(i), SendModel::Async).unwrap();
            if i % 97 == 0 {
                p.drive();
            }
        }
        p.drive();
        let got = delivered(&p.b_events, cb);
        assert_eq!(got.len(), 2000, "seed {seed}");
        assert!(
            got.iter().enumerate().all(|(i, m)| *m == msg(i as u64)),
            "order, seed {seed}"
        );
        assert_eq!(
            count(&p.a_events, ca, |e| matches!(
                e,
                ClientEvent::Acked { code: None, .. }
            )),
            2000
        );
    }
}

#[test]
fn sync_ack_carries_partner_return_code() {
    let (mut p, ca, _cb) = up_pair(3, 2, SendModel::Sync);
    for i in 0..50 {
        p.a.send(ca, msg(i), SendModel::Sync).unwrap();
    }
    p.drive();
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(e, ClientEvent::Acked { .. })),
        0,
        "no code yet"
    );
    p.b_reply_all(|m| i32::from(m[m.len() - 1]));
    p.drive();
    for i in 0..50u64 {
        let want = i32::from(msg(i)[msg(i).len() - 1]);
        assert!(
            p.a_events.iter().any(|(id, e)| *id == ca
                && *e
                    == ClientEvent::Acked {
                        seq: i + 1,
                        code: Some(want)
                    }),
            "seq {} code {want}",
            i + 1
        );
    }
}

#[test]
fn local_model_completes_on_transmission() {
    let (mut p, ca, cb) = up_pair(4, 1, SendModel::Local);
    for i in 0..10 {
        p.a.send(ca, msg(i), SendModel::Local).unwrap();
    }
    p.drive();
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(
            e,
            ClientEvent::Transmitted { .. }
        )),
        10
    );
    assert_eq!(delivered(&p.b_events, cb).len(), 10);
}

#[test]
fn killing_one_link_mid_stream_loses_and_duplicates_nothing() {
    for seed in 1..=20 {
        let (mut p, ca, cb) = up_pair(seed, 4, SendModel::Sync);
        let mut killed = false;
        for i in 0..1000u64 {
            p.a.send(ca, msg(i), SendModel::Sync).unwrap();
            // deliver a few frames, leaving others in flight on every link
            for _ in 0..p.rng.below(4) {
                p.deliver_one();
            }
            if i == 500 && !killed {
                let victim = p.link_ids()[p.rng.below(4) as usize];
                p.kill_link(victim);
                killed = true;
            }
            if i % 50 == 0 {
                p.b_reply_all(|_| 0);
            }
        }
        // Sync sends hold the window until answered: answer in rounds until nothing moves.
        loop {
            p.drive();
            let before = p.b_events.len();
            p.b_reply_all(|_| 0);
            p.drive();
            if p.b_events.len() == before {
                break;
            }
        }
        let got = delivered(&p.b_events, cb);
        assert_eq!(got.len(), 1000, "seed {seed}: every message delivered once");
        assert!(
            got.iter().enumerate().all(|(i, m)| *m == msg(i as u64)),
            "seed {seed}: order"
        );
        assert_eq!(
            count(&p.a_events, ca, |e| matches!(e, ClientEvent::Acked { .. })),
            1000,
            "seed {seed}"
        );
        assert_eq!(
            count(&p.a_events, ca, |e| matches!(e, ClientEvent::Nacked { .. })),
            0,
            "seed {seed}"
        );
        assert_eq!(p.a.state(), SessionState::Up);
    }
}

#[test]
fn losing_every_link_nacks_outstanding_then_reset_brings_clients_back() {
    let (mut p, ca, cb) = up_pair(7, 2, SendModel::Sync);
    for i in 0..20 {
        p.a.send(ca, msg(i), SendModel::Sync).unwrap();
    }
    p.drive(); // delivered, but b has not replied: all 20 outstanding
    for l in p.link_ids() {
        p.kill_link(l);
    }
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
    assert!(p.a_events.iter().any(|(id, e)| *id == ca
        && *e
            == ClientEvent::Down {
                reason: DownReason::ConnectionLost
            }));
    assert_eq!(p.a.port_state(ca), Some(PortState::Stopped));
    assert!(
        p.a.send(ca, msg(0), SendModel::Sync).is_err(),
        "fails fast while down"
    );
    let resets = p.a.stats().resets;
    p.add_link();
    p.drive();
    assert_eq!(p.a.stats().resets, resets + 1);
    assert_eq!(p.a.port_state(ca), Some(PortState::Connected));
    assert_eq!(count(&p.a_events, ca, |e| *e == ClientEvent::Up), 2);
    let before = delivered(&p.b_events, cb).len();
    // The send id goes on after the reset (the wire sequence number restarts at 1).
    let id = p.a.send(ca, msg(99), SendModel::Sync).unwrap();
    assert!(id > 20, "send id {id} reused after the reset");
    p.drive();
    p.b_reply_all(|_| 5);
    p.drive();
    assert_eq!(delivered(&p.b_events, cb)[before..], [msg(99)]);
    assert!(p.a_events.iter().any(|(_, e)| *e
        == ClientEvent::Acked {
            seq: id,
            code: Some(5)
        }));
}

#[test]
fn partner_restart_is_detected_by_new_instance() {
    let (mut p, ca, _cb) = up_pair(8, 1, SendModel::Async);
    p.a.send(ca, msg(1), SendModel::Async).unwrap();
    // b restarts before anything is delivered
    p.restart_b(SessionConfig::default());
    let cb = p.b.register("mirror", spec(SendModel::Async)).unwrap();
    p.add_link();
    p.drive();
    assert!(p
        .a_events
        .iter()
        .any(|(_, e)| matches!(e, ClientEvent::Nacked { .. })));
    assert_eq!(p.a.state(), SessionState::Up);
    p.a.send(ca, msg(2), SendModel::Async).unwrap();
    p.drive();
    assert_eq!(delivered(&p.b_events, cb), vec![msg(2)]);
}

#[test]
fn silent_link_is_closed_by_timeout_and_heartbeats_keep_live_ones() {
    let cfg = SessionConfig {
        heartbeat_interval: Duration::from_millis(100),
        link_timeout: Duration::from_millis(500),
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(9, cfg);
    p.add_link();
    p.drive();
    for _ in 0..20 {
        p.advance(Duration::from_millis(100));
        p.drive(); // heartbeats flow
    }
    assert_eq!(
        p.a.state(),
        SessionState::Up,
        "heartbeats keep the link alive"
    );
    // Now nothing is delivered for 600 ms: both sides time the link out.
    p.advance(Duration::from_millis(600));
    assert_eq!(p.a.state(), SessionState::Down);
    assert!(p.a.poll_close_link().is_some());
}

#[test]
fn data_for_unknown_client_is_nacked_to_the_sender() {
    let (mut p, ca, _cb) = up_pair(10, 1, SendModel::Async);
    // b closes its client; a sends before learning of it
    let cb = p.b.client_ids().next().unwrap();
    p.b.close(cb, true).unwrap();
    p.a.send(ca, msg(1), SendModel::Async).unwrap();
    p.drive();
    let nacked = count(&p.a_events, ca, |e| {
        matches!(
            e,
            ClientEvent::Nacked {
                reason: NackReason::UnknownClient,
                ..
            }
        )
    });
    assert_eq!(nacked, 1);
    assert!(p.a_events.iter().any(|(_, e)| matches!(
        e,
        ClientEvent::Down {
            reason: DownReason::PeerClientClosed
        }
    )));
}

#[test]
fn slow_receiver_bounds_the_sender_and_flow_control_signals() {
    let cfg = SessionConfig {
        window: 16,
        flow_high_water: 64,
        flow_low_water: 8,
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(11, cfg);
    p.auto_consume = false;
    let ca = p.a.register("bulk", spec(SendModel::Async)).unwrap();
    let cb = p.b.register("bulk", spec(SendModel::Async)).unwrap();
    p.a.connect(ca).unwrap();
    p.add_link();
    p.drive();
    for i in 0..100 {
        p.a.send(ca, msg(i), SendModel::Async).unwrap();
    }
    p.drive();
    assert_eq!(
        delivered(&p.b_events, cb).len(),
        16,
        "credit stops the sender at the window"
    );
    assert_eq!(
        count(&p.a_events, ca, |e| *e
            == ClientEvent::FlowControl { on: true }),
        1
    );
    // the client now consumes everything, repeatedly, until the stream drains
    for _ in 0..20 {
        let n = delivered(&p.b_events, cb).len() as u64;
        p.b.consumed(cb, n);
        p.drive();
    }
    let got = delivered(&p.b_events, cb);
    assert_eq!(got.len(), 100);
    assert!(got.iter().enumerate().all(|(i, m)| *m == msg(i as u64)));
    assert_eq!(
        count(&p.a_events, ca, |e| *e
            == ClientEvent::FlowControl { on: false }),
        1
    );
}

#[test]
fn bidirectional_two_clients() {
    let mut p = Pair::new(12);
    let a1 = p.a.register("mirror", spec(SendModel::Async)).unwrap();
    let a2 = p.a.register("heartbeat", spec(SendModel::Async)).unwrap();
    let b1 = p.b.register("mirror", spec(SendModel::Async)).unwrap();
    let b2 = p.b.register("heartbeat", spec(SendModel::Async)).unwrap();
    p.add_link();
    p.add_link();
    p.drive();
    for i in 0..300 {
        p.a.send(a1, msg(i), SendModel::Async).unwrap();
        p.b.send(b1, msg(i + 1000), SendModel::Async).unwrap();
        p.a.send(a2, msg(i + 2000), SendModel::Async).unwrap();
        p.b.send(b2, msg(i + 3000), SendModel::Async).unwrap();
    }
    p.drive();
    assert_eq!(
        delivered(&p.b_events, b1),
        (0..300).map(msg).collect::<Vec<_>>()
    );
    assert_eq!(
        delivered(&p.a_events, a1),
        (1000..1300).map(msg).collect::<Vec<_>>()
    );
    assert_eq!(
        delivered(&p.b_events, b2),
        (2000..2300).map(msg).collect::<Vec<_>>()
    );
    assert_eq!(
        delivered(&p.a_events, a2),
        (3000..3300).map(msg).collect::<Vec<_>>()
    );
}

/// A client registered while the session is up starts sending at once; over 4 links its DATA
/// must never overtake its CLIENT-UP (which goes on every link, ahead of any DATA).
#[test]
fn client_registered_while_up_never_has_data_overtake_its_announcement() {
    for seed in 1..=100 {
        let mut p = Pair::new(seed);
        for _ in 0..4 {
            p.add_link();
        }
        p.drive();
        let cb = p.b.register("late", spec(SendModel::Async)).unwrap();
        p.drive();
        let ca = p.a.register("late", spec(SendModel::Async)).unwrap();
        assert_eq!(
            p.a.port_state(ca),
            Some(PortState::ConnectedTo),
            "seed {seed}"
        );
        for i in 0..50 {
            p.a.send(ca, msg(i), SendModel::Async).unwrap();
        }
        p.drive();
        assert_eq!(
            delivered(&p.b_events, cb),
            (0..50).map(msg).collect::<Vec<_>>(),
            "seed {seed}"
        );
        assert_eq!(
            count(&p.a_events, ca, |e| matches!(e, ClientEvent::Acked { .. })),
            50,
            "seed {seed}"
        );
        assert_eq!(
            count(&p.a_events, ca, |e| matches!(e, ClientEvent::Nacked { .. })),
            0,
            "seed {seed}"
        );
    }
}

/// A client closed and registered again while its old DATA is still in flight: nothing of the
/// old incarnation is ever delivered as part of the new one's stream.
#[test]
fn reincarnated_client_never_receives_the_old_incarnations_data() {
    for seed in 1..=100 {
        let (mut p, ca, cb) = up_pair(seed, 3, SendModel::Async);
        for l in 0..3 {
            let _ = l;
            p.add_link();
        }
        p.drive();
        for i in 0..30 {
            p.a.send(ca, msg(i), SendModel::Async).unwrap();
        }
        for _ in 0..p.rng.below(20) {
            p.deliver_one();
        }
        p.a.close(ca, true).unwrap();
        let ca2 = p.a.register("mirror", spec(SendModel::Async)).unwrap();
        p.a.connect(ca2).unwrap();
        let mut sent_new = 0;
        for i in 1000..1040 {
            if p.a.send(ca2, msg(i), SendModel::Async).is_ok() {
                sent_new += 1;
            }
            p.deliver_one();
        }
        p.drive();
        while p.a.port_state(ca2).is_some_and(|s| s.is_up()) && sent_new < 40 {
            p.a.send(ca2, msg(1000 + sent_new), SendModel::Async)
                .unwrap();
            sent_new += 1;
            p.drive();
        }
        let got = delivered(&p.b_events, cb);
        // Old messages form an in-order prefix of 0..30; new ones are exactly 1000.. in order.
        let old: Vec<_> = got.iter().filter(|m| **m < msg(1000)).cloned().collect();
        let new: Vec<_> = got.iter().filter(|m| **m >= msg(1000)).cloned().collect();
        assert_eq!(
            old,
            (0..old.len() as u64).map(msg).collect::<Vec<_>>(),
            "seed {seed}: old prefix"
        );
        assert_eq!(
            new,
            (1000..1000 + sent_new).map(msg).collect::<Vec<_>>(),
            "seed {seed}: new stream"
        );
        let pos_first_new = got
            .iter()
            .position(|m| *m >= msg(1000))
            .unwrap_or(got.len());
        assert!(
            got[pos_first_new..].iter().all(|m| *m >= msg(1000)),
            "seed {seed}: old after new"
        );
        assert_eq!(
            count(&p.a_events, ca2, |e| matches!(e, ClientEvent::Acked { .. })),
            sent_new as usize,
            "seed {seed}"
        );
    }
}

/// A client registered while its session is AWAITING-READY announces itself on the control
/// link only (behind READY). Once up, its DATA on another link must still not overtake that
/// announcement: a side going UP re-announces every client on every link first. (This stalled
/// a loopback-TCP test under load: the receiver dropped the DATA as coming from an unknown
/// namesake, and nothing replayed it.)
#[test]
fn client_registered_during_the_reset_is_announced_on_every_link() {
    for seed in 1..=300 {
        let mut p = Pair::new(seed);
        p.a.register("mirror", spec(SendModel::Async)).unwrap();
        p.b.register("mirror", spec(SendModel::Async)).unwrap();
        for _ in 0..3 {
            p.add_link();
        }
        let (mut ca, mut cb) = (None, None);
        let (mut sent_a, mut sent_b) = (0u64, 0u64);
        for _ in 0..100_000 {
            if ca.is_none() && p.a.state() == SessionState::AwaitingReady {
                ca = Some(p.a.register("config", spec(SendModel::Async)).unwrap());
            }
            if cb.is_none() && p.b.state() == SessionState::AwaitingReady {
                cb = Some(p.b.register("config", spec(SendModel::Async)).unwrap());
            }
            // Send the moment a port is up, as a real client does on its Up event.
            if let Some(id) = ca.filter(|&id| p.a.port_state(id).is_some_and(|s| s.is_up())) {
                if sent_a < 20 && p.a.send(id, msg(sent_a), SendModel::Async).is_ok() {
                    sent_a += 1;
                }
            }
            if let Some(id) = cb.filter(|&id| p.b.port_state(id).is_some_and(|s| s.is_up())) {
                if sent_b < 20 && p.b.send(id, msg(100 + sent_b), SendModel::Async).is_ok() {
                    sent_b += 1;
                }
            }
            if !p.step() && sent_a == 20 && sent_b == 20 {
                break;
            }
        }
        let ca = ca.expect("a registered config during AWAITING-READY");
        let cb = cb.expect("b registered config during AWAITING-READY");
        assert_eq!(
            (sent_a, sent_b),
            (20, 20),
            "seed {seed}: config never came up"
        );
        p.drive();
        assert_eq!(
            delivered(&p.b_events, cb),
            (0..20).map(msg).collect::<Vec<_>>(),
            "seed {seed}: a->b"
        );
        assert_eq!(
            delivered(&p.a_events, ca),
            (100..120).map(msg).collect::<Vec<_>>(),
            "seed {seed}: b->a"
        );
    }
}

/// The restart bug found in the soft-RoCE lane: a dialer restarted with the same node id counts
/// its epochs from 1 again, and the acceptor's RESET-REQUEST heartbeats (sent while it has no
/// session) carried the acceptor's old epoch, the very number of the new dialer's first
/// session. A RESET-REQUEST arriving on a second link after the new session came up reset it:
/// the client saw `Up`, `Down{PeerReset}`, `Up` right after connecting.
#[test]
fn a_restarted_dialer_is_not_reset_by_the_old_sessions_epoch() {
    let (mut p, _ca, _cb) = up_pair(31, 1, SendModel::Async);
    assert_eq!(p.b.epoch(), 1);
    p.restart_a(SessionConfig::default());
    let ca = p.a.register("mirror", spec(SendModel::Async)).unwrap();
    p.a.connect(ca).unwrap();
    // Two links come up; the new session's reset runs on the first while the second's frames
    // (the acceptor's fence among them) are held back.
    let first = p.add_link();
    let second = p.add_link();
    for _ in 0..10 {
        p.deliver_all_on(first, true);
        p.deliver_all_on(first, false);
    }
    assert_eq!(p.a.state(), SessionState::Up);
    assert_eq!(p.b.state(), SessionState::Up);
    assert_eq!(p.a.epoch(), 1, "the restarted dialer's first session");
    // Now the second link's frames arrive, the acceptor's early fence first.
    let stale: Vec<_> = p
        .queued_headers(second, false)
        .into_iter()
        .filter(|h| {
            h.flags
                .contains(peercm_cm_proto::frame::Flags::RESET_REQUEST)
        })
        .map(|h| h.seq)
        .collect();
    assert!(
        stale.iter().all(|&epoch| epoch != p.a.epoch()),
        "a RESET-REQUEST naming the new session's epoch {stale:?} is queued"
    );
    p.drive();
    assert_eq!(p.a.state(), SessionState::Up);
    assert_eq!(p.a.epoch(), 1, "no second reset");
    let downs = count(&p.a_events, ca, |e| matches!(e, ClientEvent::Down { .. }));
    assert_eq!(downs, 0, "the new client went down: {:?}", p.a_events);
    assert_eq!(count(&p.a_events, ca, |e| *e == ClientEvent::Up), 1);
}

//! Payload limits (issue 8, item 2), IO-free: partners learn each other's `max_payload_bytes`
//! from their node descriptions; `send` above the partner's limit fails at once naming both
//! limits; a message above the receiver's limit that still arrives is refused alone (NACK
//! `TooLarge`), the messages after it are delivered and no link closes; a switch to a partner
//! with a smaller limit NACKs what it would refuse instead of sending it.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use peercm_cm_proto::control::NackReason;
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, LatencyClass, SessionConfig, SessionError, SessionState,
};
use peercm_cm_proto::stream::SendModel;

const B_MAX: u32 = 1000;

fn spec(model: SendModel) -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 1,
        latency: LatencyClass::Normal,
        model,
    }
}

/// a (limit 1 MiB) and b (limit 1000 bytes, its readers skip larger frames), one client pair
/// per model plus a bystander, session up.
fn pair(model: SendModel) -> (Pair, ClientId, ClientId, ClientId) {
    let mut p = Pair::new(11);
    p.b_info.max_payload_bytes = B_MAX;
    p.b_reader_max = B_MAX;
    let ca = p.a.register("app", spec(model)).unwrap();
    let cb = p.b.register("app", spec(model)).unwrap();
    let by = p.a.register("bystander", spec(SendModel::Async)).unwrap();
    p.b.register("bystander", spec(SendModel::Async)).unwrap();
    p.a.connect(ca).unwrap();
    p.a.connect(by).unwrap();
    p.add_link();
    p.add_link();
    p.drive();
    assert_eq!(p.a.state(), SessionState::Up);
    (p, ca, cb, by)
}

fn data(n: usize) -> Bytes {
    Bytes::from(vec![7u8; n])
}

#[test]
fn send_above_the_partners_limit_fails_at_once_naming_both_limits() {
    let (mut p, ca, _, _) = pair(SendModel::Async);
    assert_eq!(p.a.partner_max_payload_bytes(), Some(B_MAX));
    let err = p.a.send(ca, data(2000), SendModel::Async).unwrap_err();
    assert_eq!(
        err,
        SessionError::PayloadTooLarge {
            len: 2000,
            ours: 1 << 20,
            partner: Some(B_MAX)
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("2000") && text.contains("1048576") && text.contains("1000"),
        "{text}"
    );
    // Above our own limit too.
    let err = p.a.send(ca, data(2 << 20), SendModel::Async).unwrap_err();
    assert!(matches!(err, SessionError::PayloadTooLarge { .. }), "{err}");
    // At the limit it goes.
    p.a.send(ca, data(B_MAX as usize), SendModel::Async)
        .unwrap();
}

#[test]
fn an_oversize_message_that_arrives_is_refused_alone_and_the_stream_goes_on() {
    for model in [SendModel::Sync, SendModel::Async] {
        let (mut p, ca, cb, by) = pair(model);
        let links = p.link_ids();
        let first = p.a.send(ca, data(10), model).unwrap();
        let big =
            p.a.send_past_partner_limit(ca, data(5000), model, p.now)
                .unwrap();
        let after = p.a.send(ca, data(20), model).unwrap();
        let other = p.a.send(by, data(30), SendModel::Async).unwrap();
        for _ in 0..20 {
            p.drive();
            let replies: Vec<u64> = p
                .b_events
                .iter()
                .filter(|(c, _)| *c == cb)
                .filter_map(|(_, e)| match e {
                    ClientEvent::Data {
                        seq,
                        reply_needed: true,
                        ..
                    } => Some(*seq),
                    _ => None,
                })
                .collect();
            for seq in replies {
                let _ = p.b.reply(cb, seq, 0);
            }
            p.drive();
        }
        // b got the messages before and after the refused one, in order, and not it.
        let got: Vec<usize> = p
            .b_events
            .iter()
            .filter(|(c, _)| *c == cb)
            .filter_map(|(_, e)| match e {
                ClientEvent::Data { payload, .. } => Some(payload.len()),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![10, 20], "{model:?}");
        // a: the big one NACKed TooLarge, exactly once; the others acknowledged.
        let nacks: Vec<(u64, NackReason)> = p
            .a_events
            .iter()
            .filter(|(c, _)| *c == ca)
            .filter_map(|(_, e)| match e {
                ClientEvent::Nacked { seq, reason } => Some((*seq, *reason)),
                _ => None,
            })
            .collect();
        assert_eq!(nacks, vec![(big, NackReason::TooLarge)], "{model:?}");
        let acked: Vec<u64> = p
            .a_events
            .iter()
            .filter_map(|(c, e)| match e {
                ClientEvent::Acked { seq, .. } if *c == ca || *c == by => Some(*seq),
                _ => None,
            })
            .collect();
        assert!(
            acked.contains(&first) && acked.contains(&after) && acked.contains(&other),
            "{model:?}: {acked:?}"
        );
        // Nothing went down, no link closed.
        assert_eq!(p.link_ids(), links);
        assert_eq!(p.a.state(), SessionState::Up);
        assert!(p
            .a_events
            .iter()
            .all(|(_, e)| !matches!(e, ClientEvent::Down { .. })));
        assert!(p
            .b_events
            .iter()
            .all(|(_, e)| !matches!(e, ClientEvent::Down { .. })));
        assert_eq!(p.b.stats().oversize_refused, 1);
        assert_eq!(p.b.stats().violations, 0);
    }
}

#[test]
fn a_switch_to_a_partner_with_a_smaller_limit_nacks_what_it_would_refuse() {
    let cfg = SessionConfig {
        hold_on_partner_loss: Some(std::time::Duration::from_secs(10)),
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(5, cfg.clone());
    let ca = p.a.register("app", spec(SendModel::Async)).unwrap();
    p.b.register("app", spec(SendModel::Async)).unwrap();
    p.a.connect(ca).unwrap();
    p.add_link();
    p.drive();
    assert_eq!(p.a.state(), SessionState::Up);
    // The partner dies with both messages unacknowledged; the backup accepts 1000 bytes.
    let small = p.a.send(ca, data(100), SendModel::Async).unwrap();
    let big = p.a.send(ca, data(5000), SendModel::Async).unwrap();
    p.replace_b_with("backup", cfg);
    p.b_info.max_payload_bytes = B_MAX;
    p.b_reader_max = B_MAX;
    p.b.register("app", spec(SendModel::Async)).unwrap();
    p.add_link();
    p.drive();
    let nacks: Vec<(u64, NackReason)> = p
        .a_events
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::Nacked { seq, reason } => Some((*seq, *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(nacks, vec![(big, NackReason::TooLarge)]);
    assert!(p.a_events.iter().any(|(_, e)| *e
        == ClientEvent::Acked {
            seq: small,
            code: None
        }));
    assert_eq!(p.b.stats().oversize_refused, 0, "never sent to the backup");
}

//! Send identities (issue 8, item 7): the id `send` returns is unique for the life of the
//! client, across session resets (the partner restarted) and partner switches (autoswitch), and
//! every `Acked` / `Nacked` carries the id of the send it completes, so a client can match each
//! completion to its send without relying on queue order.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, LatencyClass, SessionConfig, SessionState,
};
use peercm_cm_proto::stream::SendModel;
use std::collections::BTreeSet;
use std::time::Duration;

fn spec(model: SendModel) -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Normal,
        model,
    }
}

/// Every completion id of `client` on node a, each checked to appear at most once.
fn completions(p: &Pair, client: ClientId) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (c, e) in &p.a_events {
        if *c != client {
            continue;
        }
        let id = match e {
            ClientEvent::Acked { seq, .. } | ClientEvent::Nacked { seq, .. } => *seq,
            _ => continue,
        };
        assert!(seen.insert(id), "send id {id} completed twice");
        out.push(id);
    }
    out
}

fn send_batch(p: &mut Pair, client: ClientId, n: u64, ids: &mut Vec<u64>, model: SendModel) {
    for i in 0..n {
        let id = p.a.send(client, msg(i), model).unwrap();
        assert!(!ids.contains(&id), "send id {id} handed out twice");
        ids.push(id);
    }
}

#[test]
fn send_ids_are_unique_across_a_partner_restart_and_match_their_completions() {
    for model in [SendModel::Sync, SendModel::Async] {
        let mut p = Pair::new(7);
        let ca = p.a.register("app", spec(model)).unwrap();
        let cb = p.b.register("app", spec(model)).unwrap();
        p.a.connect(ca).unwrap();
        p.b.connect(cb).unwrap();
        p.add_link();
        p.drive();
        let mut ids = Vec::new();
        // Epoch 1: some messages complete, then the partner restarts with the rest in flight.
        send_batch(&mut p, ca, 5, &mut ids, model);
        p.drive();
        p.b_reply_all(|_| 1);
        p.drive();
        send_batch(&mut p, ca, 5, &mut ids, model);
        p.flush();
        p.restart_b(SessionConfig::default());
        let cb = p.b.register("app", spec(model)).unwrap();
        p.b.connect(cb).unwrap();
        p.add_link();
        p.drive();
        assert_eq!(p.a.state(), SessionState::Up);
        // Epoch 2: new sends must not reuse the ids of epoch 1 (old code restarted at 1).
        send_batch(&mut p, ca, 5, &mut ids, model);
        p.drive();
        p.b_reply_all(|_| 2);
        p.drive();
        let done = completions(&p, ca);
        assert_eq!(
            done.iter().copied().collect::<BTreeSet<_>>(),
            ids.iter().copied().collect::<BTreeSet<_>>(),
            "{model:?}: every send completed exactly once, under the id send returned"
        );
    }
}

#[test]
fn send_ids_are_unique_across_a_partner_switch() {
    let cfg = SessionConfig {
        hold_on_partner_loss: Some(Duration::from_secs(5)),
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(3, cfg);
    let ca = p.a.register("app", spec(SendModel::Sync)).unwrap();
    let cb = p.b.register("app", spec(SendModel::Sync)).unwrap();
    p.a.connect(ca).unwrap();
    p.b.connect(cb).unwrap();
    p.add_link();
    p.drive();
    let mut ids = Vec::new();
    send_batch(&mut p, ca, 4, &mut ids, SendModel::Sync);
    p.drive();
    p.b_reply_all(|_| 1);
    p.drive();
    send_batch(&mut p, ca, 4, &mut ids, SendModel::Sync);
    p.flush();
    p.replace_b_with("c", SessionConfig::default());
    let cc = p.b.register("app", spec(SendModel::Sync)).unwrap();
    p.b.connect(cc).unwrap();
    p.add_link();
    for _ in 0..10 {
        p.drive();
        p.b_reply_all(|_| 3);
    }
    send_batch(&mut p, ca, 4, &mut ids, SendModel::Sync);
    for _ in 0..10 {
        p.drive();
        p.b_reply_all(|_| 3);
    }
    let done = completions(&p, ca);
    assert_eq!(
        done.iter().copied().collect::<BTreeSet<_>>(),
        ids.iter().copied().collect::<BTreeSet<_>>()
    );
}

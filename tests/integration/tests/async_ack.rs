//! Async acknowledgement over real sockets (issue 8, item 8): an async send is `Acked` only once
//! the partner's client has taken the message from its handle. The partner process dies (its
//! node stops at once, every socket closes, as with `kill -9`) with messages delivered to it
//! but not taken: those are NACKed, never Acked.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::{ClientEvent, SendModel};
use std::collections::BTreeSet;

/// Collects a's completions until its `Down`: (Acked ids, Nacked ids), each id at most once.
async fn completions_until_down(ca: &mut peercm_cm_manager::ClientHandle) -> (Vec<u64>, Vec<u64>) {
    let (mut acked, mut nacked) = (Vec::new(), Vec::new());
    loop {
        match next(ca, "completions, then Down").await {
            ClientEvent::Acked { seq, code } => {
                assert_eq!(code, None, "async Acked carries no code");
                acked.push(seq);
            }
            ClientEvent::Nacked { seq, .. } => nacked.push(seq),
            ClientEvent::Down { .. } => return (acked, nacked),
            ClientEvent::FlowControl { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_killed_partner_never_took_are_nacked_never_acked() {
    let (a, b) = start_pair(2).await;
    let mut ca = a.register("m", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("m", spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    let mut ids = Vec::new();
    for i in 1..=10 {
        ids.push(ca.send(msg("m", i)).await.unwrap());
    }
    // b's client takes four; the others stay in its queue (or on their way to it).
    for i in 1..=4 {
        let ev = wait_for(&mut cb, "data", |e| matches!(e, ClientEvent::Data { .. })).await;
        assert!(matches!(ev, ClientEvent::Data { payload, .. } if payload == msg("m", i)));
    }
    // Exactly those four complete.
    let mut acked = Vec::new();
    while acked.len() < 4 {
        match next(&mut ca, "Acked of the four taken").await {
            ClientEvent::Acked { seq, code: None } => acked.push(seq),
            ClientEvent::FlowControl { .. } => {}
            other => panic!("unexpected {other:?} before the four Acked"),
        }
    }
    assert_eq!(acked, ids[..4]);
    // b's process dies with six messages it never gave its client.
    b.shutdown();
    let (late_acked, nacked) = completions_until_down(&mut ca).await;
    assert!(
        late_acked.is_empty(),
        "Acked {late_acked:?}, which b's client never took"
    );
    assert_eq!(nacked, ids[4..], "every untaken message NACKed, in order");
    drop(cb);
}

/// The outside test's shape: a stream, the partner's client taking messages as they come, the
/// partner killed mid-stream. Every send completes exactly once, and every Acked one was taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_killed_mid_stream_acked_only_what_its_client_took() {
    let (a, b) = start_pair(2).await;
    let mut ca = a.register("m", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("m", spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    const N: u64 = 2000;
    const TAKEN: u64 = 700;
    // b's client takes the first TAKEN messages, then stops taking.
    let taker = tokio::spawn(async move {
        let mut taken = BTreeSet::new();
        while (taken.len() as u64) < TAKEN {
            if let ClientEvent::Data { payload, .. } =
                wait_for(&mut cb, "data", |e| matches!(e, ClientEvent::Data { .. })).await
            {
                taken.insert(payload);
            }
        }
        (cb, taken)
    });
    let mut sent = Vec::new();
    for i in 1..=N {
        sent.push((ca.send(msg("m", i)).await.unwrap(), msg("m", i)));
    }
    let (cb, taken) = taker.await.unwrap();
    b.shutdown();
    let (acked, nacked) = completions_until_down(&mut ca).await;
    let (acked_set, nacked_set): (BTreeSet<u64>, BTreeSet<u64>) = (
        acked.iter().copied().collect(),
        nacked.iter().copied().collect(),
    );
    assert_eq!(acked_set.len(), acked.len(), "an Acked twice");
    assert_eq!(nacked_set.len(), nacked.len(), "a Nacked twice");
    assert!(acked_set.is_disjoint(&nacked_set), "Acked and Nacked");
    assert_eq!(
        acked_set.len() + nacked_set.len(),
        N as usize,
        "every send completes"
    );
    for (id, payload) in &sent {
        if acked_set.contains(id) {
            assert!(
                taken.contains(payload),
                "send {id} Acked, never taken by b's client"
            );
        }
    }
    assert!(!acked.is_empty(), "what b's client took is acknowledged");
    drop(cb);
}

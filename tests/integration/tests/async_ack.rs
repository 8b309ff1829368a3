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

/// A take reported after a reset names a message of the old session: it must not mark the new
/// session's messages as taken. b's client takes five old messages only once the connection was
/// lost and re-established and three new ones wait behind them, then takes the first new one:
/// only that one may be Acked (reading the old report as a take of the new stream Acked all
/// three), and when b dies the other two are NACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_of_an_old_session_acknowledges_nothing_in_the_new_one() {
    let (a, b) = start_pair(1).await;
    let mut ca = a.register("m", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("m", spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    wait_links(&a, 1).await;
    for i in 1..=5 {
        ca.send(msg("m", i)).await.unwrap();
    }
    wait_status(&b, "the five in b's queue", |s| s.stats.delivered == 5).await;
    // The only connection drops: both sessions go down (a NACKs the five), then reset.
    assert!(a.kill_link(None).await.unwrap().is_some());
    let (acked, nacked) = completions_until_down(&mut ca).await;
    assert!(acked.is_empty());
    assert_eq!(nacked.len(), 5);
    wait_up(&mut ca).await;
    let new: Vec<u64> = {
        let mut v = Vec::new();
        for i in 6..=8 {
            v.push(ca.send(msg("m", i)).await.unwrap());
        }
        v
    };
    wait_status(&b, "the three new ones in b's queue", |s| {
        s.stats.delivered == 8
    })
    .await;
    // b's client takes the five old ones now (its reports name the old session), then the
    // Down and Up, then the first new one.
    for i in 1..=5 {
        let ev = wait_for(&mut cb, "old data", |e| {
            matches!(e, ClientEvent::Data { .. })
        })
        .await;
        assert!(matches!(ev, ClientEvent::Data { payload, .. } if payload == msg("m", i)));
    }
    // b's manager has handled that report before it answers (one command queue, in order).
    b.status().await.unwrap();
    let ev = wait_for(&mut cb, "the first new message", |e| {
        matches!(e, ClientEvent::Data { .. })
    })
    .await;
    assert!(matches!(ev, ClientEvent::Data { payload, .. } if payload == msg("m", 6)));
    match next(&mut ca, "the Acked of the first new message").await {
        ClientEvent::Acked { seq, code: None } => assert_eq!(seq, new[0]),
        other => panic!("unexpected {other:?}"),
    }
    b.shutdown();
    let (late_acked, nacked) = completions_until_down(&mut ca).await;
    assert!(
        late_acked.is_empty(),
        "Acked {late_acked:?}, which b's client never took"
    );
    assert_eq!(nacked, new[1..]);
    drop(cb);
}

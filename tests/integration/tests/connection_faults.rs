//! Losing connections: one of several mid-stream (nothing lost or duplicated), and the partner
//! process restarting (NACKs, Down, reset, Up, resend succeeds).

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::{ClientEvent, DownReason, NackReason, PortState, SendModel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_connection_mid_stream_loses_and_duplicates_nothing() {
    const N: u64 = 20_000;
    let (a, b) = start_pair(4).await;
    let mut ca = a.register("mirror", spec(SendModel::Sync)).await.unwrap();
    let mut cb = b.register("mirror", spec(SendModel::Sync)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    wait_links(&a, 4).await;
    let receiver = tokio::spawn(async move {
        let mut got = 0u64;
        while got < N {
            if let ClientEvent::Data { seq, payload, .. } = next(&mut cb, "data").await {
                got += 1;
                assert_eq!(
                    payload,
                    msg("m", got),
                    "delivery {got}: lost, duplicated or reordered"
                );
                cb.reply(seq, 0).await.unwrap();
            }
        }
        // The sender sends one more message once every one of the N is acknowledged: it comes
        // next, after anything the session could still deliver twice, and nothing follows it.
        match wait_for(&mut cb, "the final message", |e| {
            matches!(e, ClientEvent::Data { .. })
        })
        .await
        {
            ClientEvent::Data { seq, payload, .. } => {
                assert_eq!(
                    payload,
                    msg("m", N + 1),
                    "a duplicate was delivered after the last message"
                );
                cb.reply(seq, 0).await.unwrap();
            }
            _ => unreachable!(),
        }
        assert!(
            cb.try_next_event().is_none(),
            "a duplicate was delivered after the last message"
        );
    });
    let mut acked = 0u64;
    let mut killed = 0;
    for i in 1..=N {
        ca.send(msg("m", i)).await.unwrap();
        if i % 5000 == 0 {
            // Kill a different connection each time while thousands of messages are in flight.
            assert!(a.kill_link(None).await.unwrap().is_some());
            killed += 1;
        }
        while let Some(ev) = ca.try_next_event() {
            match ev {
                ClientEvent::Acked { code: Some(0), .. } => acked += 1,
                ClientEvent::Nacked { .. } | ClientEvent::Down { .. } => {
                    panic!("unexpected {ev:?}")
                }
                _ => {}
            }
        }
    }
    while acked < N {
        match next(&mut ca, "acks").await {
            ClientEvent::Acked { code: Some(0), .. } => acked += 1,
            ev @ (ClientEvent::Nacked { .. } | ClientEvent::Down { .. }) => {
                panic!("unexpected {ev:?}")
            }
            _ => {}
        }
    }
    ca.send(msg("m", N + 1)).await.unwrap();
    let ev = wait_for(&mut ca, "the final ack", |e| {
        matches!(
            e,
            ClientEvent::Acked { .. } | ClientEvent::Nacked { .. } | ClientEvent::Down { .. }
        )
    })
    .await;
    assert!(
        matches!(ev, ClientEvent::Acked { code: Some(0), .. }),
        "{ev:?}"
    );
    receiver.await.unwrap();
    let sa = a.status().await.unwrap();
    assert_eq!(killed, 4);
    assert!(
        sa.stats.links_lost >= 4,
        "links lost: {}",
        sa.stats.links_lost
    );
    assert_eq!(
        sa.stats.resets, 1,
        "the session never reset: the client never saw a gap"
    );
    wait_links(&a, 4).await; // the dialer restored the killed connections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_restart_nacks_then_reset_and_resend_succeeds() {
    let (a, b) = start_pair(2).await;
    let b_addr = b.local_addr().unwrap();
    let mut ca = a.register("mirror", spec(SendModel::Sync)).await.unwrap();
    let mut cb = b.register("mirror", spec(SendModel::Sync)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;

    // 10 sync messages reach b's client, which never answers: all are outstanding.
    let mut seqs = Vec::new();
    for i in 1..=10 {
        seqs.push(ca.send(msg("m", i)).await.unwrap());
    }
    for _ in 0..10 {
        wait_for(&mut cb, "data", |e| matches!(e, ClientEvent::Data { .. })).await;
    }
    // b's process dies.
    drop(cb);
    b.shutdown();

    // a: every outstanding message NACKed, then Down; sends fail fast.
    let mut nacked = Vec::new();
    loop {
        match next(&mut ca, "nacks then down").await {
            ClientEvent::Nacked { seq, reason } => {
                assert_eq!(reason, NackReason::ConnectionLost);
                nacked.push(seq);
            }
            ClientEvent::Down { reason } => {
                assert_eq!(reason, DownReason::ConnectionLost);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        nacked, seqs,
        "every outstanding message NACKed, in order, before Down"
    );
    let err = ca.send(msg("m", 11)).await.unwrap_err().to_string();
    assert!(err.contains("not connected"), "{err}");
    assert_eq!(
        a.status().await.unwrap().clients[0].state,
        PortState::Stopped
    );

    // b restarts on the same address; a redials, the session resets, the client sees Up.
    let epoch_before = a.status().await.unwrap().epoch;
    let b2 = start_b(Some(b_addr)).await;
    let mut cb2 = b2.register("mirror", spec(SendModel::Sync)).await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb2).await;
    let sa = a.status().await.unwrap();
    assert!(sa.epoch > epoch_before, "a RESET bumped the epoch");
    assert_eq!(sa.clients[0].state, PortState::Connected);

    // The client resends what was NACKed; the new partner gets it, numbered from 1 again.
    for i in 1..=10 {
        ca.send(msg("m", i)).await.unwrap();
    }
    for i in 1..=10u64 {
        match wait_for(&mut cb2, "resent data", |e| {
            matches!(e, ClientEvent::Data { .. })
        })
        .await
        {
            ClientEvent::Data { seq, payload, .. } => {
                assert_eq!((seq, payload), (i, msg("m", i)));
                cb2.reply(seq, 0).await.unwrap();
            }
            _ => unreachable!(),
        }
    }
    for _ in 0..10 {
        let ev = wait_for(&mut ca, "acks", |e| matches!(e, ClientEvent::Acked { .. })).await;
        assert!(matches!(ev, ClientEvent::Acked { code: Some(0), .. }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_follow_the_state_machine_with_use_counted_close() {
    let (a, b) = start_pair(1).await;
    let mut ca = a.register("p", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("p", spec(SendModel::Async)).await.unwrap();
    // CONNECTING, or already CONNECTED if b's announcement arrived first: both are right.
    let first = ca.connect().await.unwrap();
    assert!(
        matches!(first, PortState::Connecting | PortState::Connected),
        "{first}"
    );
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    let s = b.status().await.unwrap();
    assert_eq!(s.clients[0].state, PortState::ConnectedTo, "target side");
    assert_eq!(
        ca.connect().await.unwrap(),
        PortState::Connected,
        "second connect bumps the count"
    );
    assert_eq!(
        ca.close().await.unwrap(),
        PortState::Connected,
        "one close is not enough"
    );
    assert_eq!(ca.close().await.unwrap(), PortState::Destroyed);
    // b's client is told its namesake went away
    let ev = wait_for(&mut cb, "down", |e| matches!(e, ClientEvent::Down { .. })).await;
    assert_eq!(
        ev,
        ClientEvent::Down {
            reason: DownReason::PeerClientClosed
        }
    );
    // The name is free again on a.
    let cc = a.register("p", spec(SendModel::Async)).await.unwrap();
    assert_eq!(cc.close_immediate().await.unwrap(), PortState::Destroyed);
}

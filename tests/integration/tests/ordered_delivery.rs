//! Ordering and exactly-once delivery over real loopback TCP with several connections.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::{ClientEvent, SendModel};

/// 100,000 messages spread over 4 TCP connections arrive in order, each exactly once, and every
/// send is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_over_four_connections_arrive_in_order() {
    const N: u64 = 100_000;
    let (a, b) = start_pair(4).await;
    let mut ca = a.register("bulk", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("bulk", spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    wait_links(&a, 4).await;

    let receiver = tokio::spawn(async move {
        let mut expected = 1u64;
        while expected <= N {
            match next(&mut cb, "data").await {
                ClientEvent::Data { payload, seq, .. } => {
                    assert_eq!(
                        payload,
                        msg("bulk", expected),
                        "message {expected} out of order or corrupted"
                    );
                    assert_eq!(seq, expected);
                    expected += 1;
                }
                ClientEvent::Down { reason } => panic!("connection went down: {reason:?}"),
                _ => {}
            }
        }
        cb
    });
    let mut acked = 0u64;
    for i in 1..=N {
        ca.send(msg("bulk", i)).await.unwrap();
        while let Some(ev) = ca.try_next_event() {
            if matches!(ev, ClientEvent::Acked { .. }) {
                acked += 1;
            }
        }
    }
    while acked < N {
        if let ClientEvent::Acked { .. } = next(&mut ca, "acks").await {
            acked += 1;
        }
    }
    let mut cb = receiver.await.unwrap();
    assert!(
        cb.try_next_event().is_none(),
        "no extra (duplicate) delivery"
    );
    let s = b.status().await.unwrap();
    assert_eq!(s.stats.delivered, N);
    assert_eq!(s.links.len(), 4, "all four connections carried traffic");
}

/// Two clients on each node, traffic in both directions at once, each stream in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_in_both_directions_at_once() {
    const N: u64 = 5_000;
    let (a, b) = start_pair(3).await;
    let mut handles = Vec::new();
    for name in ["mirror", "config"] {
        let ha = a.register(name, spec(SendModel::Async)).await.unwrap();
        let hb = b.register(name, spec(SendModel::Async)).await.unwrap();
        ha.connect().await.unwrap();
        hb.connect().await.unwrap();
        handles.push((name, ha, "a"));
        handles.push((name, hb, "b"));
    }
    let mut tasks = Vec::new();
    for (name, mut h, side) in handles {
        tasks.push(tokio::spawn(async move {
            wait_up(&mut h).await;
            let tag = format!("{name}-{side}");
            let other = format!("{name}-{}", if side == "a" { "b" } else { "a" });
            let (mut sent, mut got, mut acked) = (0u64, 0u64, 0u64);
            while got < N || acked < N {
                if sent < N {
                    sent += 1;
                    h.send(msg(&tag, sent)).await.unwrap();
                }
                while let Some(ev) = if sent < N {
                    h.try_next_event()
                } else {
                    Some(next(&mut h, "traffic").await)
                } {
                    match ev {
                        ClientEvent::Data { payload, .. } => {
                            got += 1;
                            assert_eq!(
                                payload,
                                msg(&other, got),
                                "{tag}: stream from {other} out of order"
                            );
                        }
                        ClientEvent::Acked { .. } => acked += 1,
                        ClientEvent::Down { .. } | ClientEvent::Nacked { .. } => {
                            panic!("{tag}: unexpected {ev:?}")
                        }
                        _ => {}
                    }
                    if sent >= N && got >= N && acked >= N {
                        break;
                    }
                }
            }
            (tag, got, acked)
        }));
    }
    for t in tasks {
        let (tag, got, acked) = t.await.unwrap();
        assert_eq!((got, acked), (N, N), "{tag}");
    }
}

/// Sync sends complete with the return code the partner's client chose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_ack_carries_the_partner_clients_return_code() {
    let (a, b) = start_pair(2).await;
    let mut ca = a.register("rpc", spec(SendModel::Sync)).await.unwrap();
    let mut cb = b.register("rpc", spec(SendModel::Sync)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    // The partner answers each message with a code derived from its content.
    let server = tokio::spawn(async move {
        for _ in 0..200 {
            match wait_for(&mut cb, "data", |e| matches!(e, ClientEvent::Data { .. })).await {
                ClientEvent::Data {
                    seq,
                    payload,
                    reply_needed,
                } => {
                    assert!(reply_needed, "sync sends need a reply");
                    let n: i32 = std::str::from_utf8(&payload[4..]).unwrap().parse().unwrap();
                    cb.reply(seq, -n).await.unwrap();
                }
                _ => unreachable!(),
            }
        }
        // Replying twice to the same message is refused with a clear error.
        let err = cb.reply(1, 0).await.unwrap_err().to_string();
        assert!(err.contains("awaiting a reply"), "{err}");
    });
    let mut seq_to_n = std::collections::HashMap::new();
    for n in 1..=200i32 {
        let seq = ca
            .send(bytes::Bytes::from(format!("rpc:{n}")))
            .await
            .unwrap();
        seq_to_n.insert(seq, n);
    }
    let mut seen = 0;
    while seen < 200 {
        if let ClientEvent::Acked { seq, code } = next(&mut ca, "acks").await {
            let n = seq_to_n[&seq];
            assert_eq!(code, Some(-n), "seq {seq}");
            seen += 1;
        }
    }
    server.await.unwrap();
}

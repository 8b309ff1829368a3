//! Acknowledgement timeout over real sockets (issue 8, item 3): a sync send whose partner client
//! takes it but never replies is `Nacked { Timeout }` after the client's default timeout (from
//! the node's `[[clients]] ack_timeout_ms`), while a send with its own longer timeout completes
//! normally; the late reply is dropped and counted; the links, the session and the client's
//! later sends are undisturbed.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::config::{ClientConfig, PeerConfig};
use peercm_cm_manager::{ClientEvent, NackReason, Node, NodeConfig, SendModel, SendOptions};
use std::time::Duration;

async fn take_data(h: &mut peercm_cm_manager::ClientHandle) -> u64 {
    match wait_for(h, "data", |e| matches!(e, ClientEvent::Data { .. })).await {
        ClientEvent::Data { seq, .. } => seq,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_sync_send_times_out_and_nothing_else_is_disturbed() {
    init_tracing();
    let b = start_b(None).await;
    let mut cfg = fast_config(NodeConfig::new("node-a", "test"));
    cfg.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 2));
    let client: ClientConfig = toml::from_str("name = \"m\"\nack_timeout_ms = 300").unwrap();
    cfg.clients.push(client);
    let a = Node::start(cfg, secret()).await.unwrap();
    let mut ca = a.register("m", spec(SendModel::Sync)).await.unwrap();
    let mut cb = b.register("m", spec(SendModel::Sync)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    wait_links(&a, 2).await;
    let before = a.status().await.unwrap();

    // 1: the client's default timeout (300 ms, from the configuration); 2: its own, long one.
    let s1 = ca.send(msg("m", 1)).await.unwrap();
    let long = SendOptions {
        model: SendModel::Sync,
        ack_timeout: Some(Duration::from_secs(600)),
    };
    let s2 = ca.send_with(msg("m", 2), long).await.unwrap();
    // b's client takes both and answers the second only.
    let seq1 = take_data(&mut cb).await;
    let seq2 = take_data(&mut cb).await;
    cb.reply(seq2, 5).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match next(&mut ca, "the two completions").await {
            ClientEvent::Acked { seq, code } => got.push((seq, Ok(code))),
            ClientEvent::Nacked { seq, reason } => got.push((seq, Err(reason))),
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort_by_key(|(seq, _)| *seq);
    assert_eq!(
        got,
        vec![(s1, Err(NackReason::Timeout)), (s2, Ok(Some(5)))],
        "the unanswered send timed out; the answered one completed"
    );

    // The reply comes after all: dropped and counted, no event.
    cb.reply(seq1, 6).await.unwrap();
    let after = wait_status(&a, "the late reply counted", |s| {
        s.stats.late_completions == 1
    })
    .await;
    assert_eq!(after.stats.ack_timeouts, 1);
    assert_eq!(after.epoch, before.epoch, "no reset");
    assert_eq!(after.stats.resets, before.stats.resets);
    assert_eq!(
        after.stats.links_lost, before.stats.links_lost,
        "no link lost"
    );
    assert_eq!(after.links.len(), before.links.len());

    // The client goes on: the next send completes normally, and nothing else was reported.
    let s3 = ca.send(msg("m", 3)).await.unwrap();
    let seq3 = take_data(&mut cb).await;
    cb.reply(seq3, 0).await.unwrap();
    assert_eq!(
        next(&mut ca, "the third completion").await,
        ClientEvent::Acked {
            seq: s3,
            code: Some(0)
        }
    );
}

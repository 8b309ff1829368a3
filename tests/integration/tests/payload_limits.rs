//! Item 2 (issue 8): partners exchange their `max_payload_bytes`. Over real loopback TCP, a
//! node allowing 4 MiB and a partner allowing 1 MiB: `send` of 2 MiB fails at once with a
//! typed error naming both limits (it used to be sent, and the partner closed every link in
//! turn, reset the session and took every client down); a 2 MiB message that still goes out
//! (fault injection: sent past the partner's limit) is refused alone with NACK `TooLarge`,
//! while the messages around it, and a bystander client, carry on with no link closed.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::timeline::NodeEvent;
use peercm_cm_manager::{
    ClientEvent, ClientHandle, CmError, NackReason, Node, NodeConfig, SendModel, SessionError,
};

const A_MAX: u32 = 4 << 20;
const B_MAX: u32 = 1 << 20;
const BIG: usize = 2 << 20;

fn limits(mut cfg: NodeConfig, max: u32) -> NodeConfig {
    cfg.session.max_payload_bytes = max;
    cfg.verbs.ring_bytes = 16 << 20;
    fast_config(cfg)
}

/// b (1 MiB) listens, a (4 MiB) dials with two connections.
async fn pair() -> (Node, Node) {
    init_tracing();
    let mut bc = limits(NodeConfig::new("node-b", "test"), B_MAX);
    bc.listen = Some("127.0.0.1:0".parse().unwrap());
    let b = Node::start(bc, secret()).await.unwrap();
    let mut ac = limits(NodeConfig::new("node-a", "test"), A_MAX);
    ac.peer = Some(PeerConfig::new(b.local_addr().unwrap(), 2));
    let a = Node::start(ac, secret()).await.unwrap();
    (a, b)
}

async fn client_pair(a: &Node, b: &Node, name: &str) -> (ClientHandle, ClientHandle) {
    let mut ca = a.register(name, spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register(name, spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    (ca, cb)
}

async fn next_data(h: &mut ClientHandle) -> Bytes {
    match wait_for(h, "a message", |e| matches!(e, ClientEvent::Data { .. })).await {
        ClientEvent::Data { payload, .. } => payload,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_above_the_partners_limit_fails_at_once_naming_both_limits() {
    let (a, b) = pair().await;
    let (ca, cb) = client_pair(&a, &b, "app").await;
    let err = ca.send(Bytes::from(vec![1u8; BIG])).await.unwrap_err();
    match &err {
        CmError::Session(SessionError::PayloadTooLarge { len, ours, partner }) => {
            assert_eq!((*len, *ours, *partner), (BIG, A_MAX, Some(B_MAX)));
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("4194304") && text.contains("1048576"),
        "{text}"
    );
    // The other way, above the sender's own limit.
    let err = cb.send(Bytes::from(vec![1u8; BIG])).await.unwrap_err();
    assert!(
        matches!(
            err,
            CmError::Session(SessionError::PayloadTooLarge {
                ours: B_MAX,
                partner: Some(A_MAX),
                ..
            })
        ),
        "{err:?}"
    );
    // Within both limits it goes through.
    ca.send(Bytes::from(vec![2u8; B_MAX as usize]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_that_arrives_is_refused_alone_and_no_link_closes() {
    let (a, b) = pair().await;
    let (mut app_a, mut app_b) = client_pair(&a, &b, "app").await;
    let (mut by_a, mut by_b) = client_pair(&a, &b, "bystander").await;
    wait_links(&a, 2).await;
    let links_before: Vec<_> = a
        .status()
        .await
        .unwrap()
        .links
        .iter()
        .map(|l| l.id)
        .collect();

    let first = app_a.send(msg("app", 1)).await.unwrap();
    let big = app_a
        .send_past_partner_limit(Bytes::from(vec![3u8; BIG]), SendModel::Async)
        .await
        .unwrap();
    let after = app_a.send(msg("app", 2)).await.unwrap();
    by_a.send(msg("bystander", 1)).await.unwrap();

    // b's namesake gets the messages around the refused one, in order.
    assert_eq!(next_data(&mut app_b).await, msg("app", 1));
    assert_eq!(next_data(&mut app_b).await, msg("app", 2));
    assert_eq!(next_data(&mut by_b).await, msg("bystander", 1));
    // a: the big one NACKed TooLarge; the others acknowledged; nobody went down.
    let mut acked = Vec::new();
    let mut nacked = Vec::new();
    while acked.len() < 2 || nacked.is_empty() {
        match next(&mut app_a, "completions").await {
            ClientEvent::Acked { seq, .. } => acked.push(seq),
            ClientEvent::Nacked { seq, reason } => nacked.push((seq, reason)),
            ClientEvent::Down { reason } => panic!("app went down: {reason:?}"),
            _ => {}
        }
    }
    assert_eq!(nacked, vec![(big, NackReason::TooLarge)]);
    acked.sort();
    assert_eq!(acked, vec![first, after]);
    match wait_for(&mut by_a, "the bystander's ack", |e| {
        matches!(e, ClientEvent::Acked { .. } | ClientEvent::Down { .. })
    })
    .await
    {
        ClientEvent::Acked { .. } => {}
        other => panic!("bystander: {other:?}"),
    }
    // And it goes on: another round both ways.
    app_a.send(msg("app", 3)).await.unwrap();
    assert_eq!(next_data(&mut app_b).await, msg("app", 3));
    by_b.send(msg("bystander", 2)).await.unwrap();
    assert_eq!(next_data(&mut by_a).await, msg("bystander", 2));

    for node in [&a, &b] {
        let s = node.status().await.unwrap();
        assert!(
            s.timeline.iter().all(|e| !matches!(
                e.event,
                NodeEvent::LinkClosed { .. }
                    | NodeEvent::LinkLost { .. }
                    | NodeEvent::LinkSilent { .. }
                    | NodeEvent::ClientDown { .. }
            )),
            "{}: no link closed, no client down: {:#?}",
            node.node_id(),
            s.timeline
        );
        assert_eq!(
            s.stats.resets,
            1,
            "{}: one reset (the first)",
            node.node_id()
        );
    }
    let s = a.status().await.unwrap();
    let links_after: Vec<_> = s.links.iter().map(|l| l.id).collect();
    assert_eq!(links_after, links_before, "the same links");
    assert_eq!(b.status().await.unwrap().stats.oversize_refused, 1);
}

//! Issue 8, item 12 with real nodes: a node whose whole process stalls past its link timeout
//! (manager and TCP readers off the CPU, `Node::stall`) while its partner keeps the link fed
//! does not judge that link dead when it resumes: its timer fires late, the link gets a grace
//! period, the frames waiting in the socket arrive and the session stays up.

mod common;

use bytes::Bytes;
use common::*;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::timeline::NodeEvent;
use peercm_cm_manager::{ClientEvent, Node, NodeConfig, SendModel, SessionState};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_keeps_the_link_its_partner_kept_feeding() {
    init_tracing();
    // b is patient (only a's verdict is under test) and keeps sending heartbeats.
    let mut cfg_b = fast_config(NodeConfig::new("node-b", "test"));
    cfg_b.listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg_b.session.link_timeout_ms = 60_000;
    let b = Node::start(cfg_b, secret()).await.expect("node-b starts");
    // a: a 2 s link timeout, a 400 ms heartbeat interval (and so a 400 ms grace).
    let mut cfg_a = fast_config(NodeConfig::new("node-a", "test"));
    cfg_a.peer = Some(PeerConfig::new(b.local_addr().expect("b listens"), 1));
    cfg_a.session.heartbeat_interval_ms = 400;
    cfg_a.session.link_timeout_ms = 2_000;
    let a = Node::start(cfg_a, secret()).await.expect("node-a starts");
    let mut ca = a.register("c", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("c", spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    wait_links(&a, 1).await;

    // The stall outlasts a's link timeout, so a's silence deadline passes while it is stalled.
    a.stall(Duration::from_millis(3_000)).await.unwrap();
    // Answered only once a's manager runs again; acknowledged only through the link's reader.
    let seq = ca
        .send(Bytes::from_static(b"after the stall"))
        .await
        .unwrap();
    // b's client takes it (an async send is acknowledged once taken).
    wait_for(&mut cb, "the message sent after the stall", |e| {
        matches!(e, ClientEvent::Data { .. })
    })
    .await;
    loop {
        match next(&mut ca, "the ack of the message sent after the stall").await {
            ClientEvent::Acked { seq: s, .. } if s == seq => break,
            ClientEvent::Down { reason } => panic!("the session went down: {reason:?}"),
            ClientEvent::Nacked { reason, .. } => panic!("the message was NACKed: {reason:?}"),
            _ => {}
        }
    }
    let s = a.status().await.unwrap();
    let lost: Vec<_> = s
        .timeline
        .iter()
        .filter(|e| matches!(e.event, NodeEvent::LinkLost { .. }))
        .map(|e| e.what.clone())
        .collect();
    assert!(lost.is_empty(), "a link was judged dead: {lost:?}");
    assert_eq!(s.session, SessionState::Up);
    assert_eq!(s.links.len(), 1);
}

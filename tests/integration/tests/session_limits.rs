//! Limits on what an unauthenticated peer can make a node hold (issue 8, item 5): handshakes in
//! progress are capped overall and per source address (the excess is closed unread and counted
//! in status), and a handshake frame larger than 64 KiB is refused from its header whatever the
//! session's `max_payload_bytes`.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_manager::{Node, NodeConfig, SendModel};
use peercm_cm_proto::frame::{MAGIC, PROTOCOL_VERSION};
use std::net::{Ipv4Addr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(source: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((source, 0))).unwrap();
    sock.connect(to).await.unwrap()
}

/// Whether the node closes `s` (within the test deadline) without sending anything.
async fn closed_unanswered(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(WAIT, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_handshakes_are_capped_overall_and_per_source() {
    init_tracing();
    let mut cfg = fast_config(NodeConfig::new("node-b", "test"));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.session.handshake_timeout_ms = 120_000;
    cfg.session.max_pending_handshakes = 4;
    cfg.session.max_pending_handshakes_per_source = 2;
    let b = Node::start(cfg, secret()).await.unwrap();
    let addr = b.local_addr().unwrap();
    let (s2, s3, s4) = (
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
        Ipv4Addr::new(127, 0, 0, 4),
    );

    // Two silent connections from one source: both held, as handshakes in progress.
    let mut idle = vec![connect_from(s2, addr).await, connect_from(s2, addr).await];
    wait_status(&b, "2 pending", |s| s.handshakes.pending == 2).await;
    // A third from the same source is closed unread.
    let mut third = connect_from(s2, addr).await;
    assert!(
        closed_unanswered(&mut third).await,
        "per-source cap not enforced"
    );
    let s = wait_status(&b, "refused per source", |s| {
        s.handshakes.refused_source_busy == 1
    })
    .await;
    assert_eq!(s.handshakes.pending, 2);

    // Two more from another source fill the overall cap; a fifth, from a third source, is closed.
    idle.push(connect_from(s3, addr).await);
    idle.push(connect_from(s3, addr).await);
    wait_status(&b, "4 pending", |s| s.handshakes.pending == 4).await;
    let mut fifth = connect_from(s4, addr).await;
    assert!(
        closed_unanswered(&mut fifth).await,
        "overall cap not enforced"
    );
    let s = wait_status(&b, "refused busy", |s| s.handshakes.refused_busy == 1).await;
    assert_eq!((s.handshakes.pending, s.handshakes.accepted), (4, 0));

    // A slot freed (a peer closing midway), the real partner gets in (and its handshake leaves the slot again).
    drop(idle.pop());
    wait_status(&b, "3 pending", |s| s.handshakes.pending == 3).await;
    let a = start_a(addr, 1).await;
    let mut ca = a.register("c", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("c", spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    let s = wait_status(&b, "partner accepted", |s| {
        s.handshakes.accepted == 1 && s.handshakes.pending == 3
    })
    .await;
    // The connection dropped above counts as a failed handshake (closed midway), nothing else.
    assert_eq!(
        (s.handshakes.failed, s.handshakes.auth_failed),
        (1, 0),
        "{:?}",
        s.handshakes
    );
    drop(idle);
    wait_status(&b, "0 pending", |s| s.handshakes.pending == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_frame_over_64_kib_is_refused_from_its_header() {
    init_tracing();
    let mut cfg = fast_config(NodeConfig::new("node-b", "test"));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.session.handshake_timeout_ms = 120_000;
    cfg.session.max_payload_bytes = 1 << 20;
    let b = Node::start(cfg, secret()).await.unwrap();
    let addr = b.local_addr().unwrap();
    // A HELLO header claiming 64 KiB + 1 (well under max_payload_bytes), and no payload.
    let mut header = Vec::new();
    header.extend_from_slice(&MAGIC);
    header.push(PROTOCOL_VERSION);
    header.push(1);
    header.extend_from_slice(&[0; 22]);
    header.extend_from_slice(&(64 * 1024 + 1u32).to_be_bytes());
    header.extend_from_slice(&[0; 4]);
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&header).await.unwrap();
    assert!(
        closed_unanswered(&mut s).await,
        "the node waited for a 64 KiB + 1 handshake frame"
    );
    let st = wait_status(&b, "counted as failed", |s| s.handshakes.failed == 1).await;
    assert_eq!(st.handshakes.pending, 0);
    // Exactly 64 KiB is allowed: the node waits for the payload (the handshake is pending).
    let mut header64 = header.clone();
    header64[28..32].copy_from_slice(&(64 * 1024u32).to_be_bytes());
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&header64).await.unwrap();
    let st = wait_status(&b, "pending", |s| s.handshakes.pending == 1).await;
    assert_eq!(
        st.handshakes.failed, 1,
        "a 64 KiB handshake frame is within the cap"
    );
    drop(s);
}

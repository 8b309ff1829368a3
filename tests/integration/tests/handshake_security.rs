//! The handshake's security posture against a real node over real sockets (issue 8, item 9):
//! the dialer proves first (an attacker who knows only the cluster id gets no HMAC), every
//! refusal looks the same from outside whatever was wrong, and weak secrets are refused.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use peercm_cm_manager::{ClusterSecret, SendModel};
use peercm_cm_proto::control::{self, Auth, Challenge, NodeInfo, TransportCap};
use peercm_cm_proto::frame::MsgType;
use peercm_cm_proto::handshake::{DialerStart, HandshakeConfig};
use peercm_cm_proto::Frame;
use peercm_fallback_tcp::FrameCodec;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A second strong secret (not the cluster's).
const OTHER_SECRET: &str = "3d9a7f1c5e2b8064d1f7a3c9e5b2d8f0a6c4e1b7d3f9a5c2e8b0d6f4a1c7e3b9";

/// What a raw peer saw from the node: each frame it received (type and payload length), and
/// whether the node then closed the connection (within 10 s).
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    frames: Vec<(MsgType, usize)>,
    closed: bool,
}

/// How the raw dialer misbehaves after HELLO.
#[derive(Clone, Copy, Debug)]
enum Attempt {
    /// Its AUTH is whatever its (cluster, secret) give.
    Honest,
    /// Its AUTH is a guess: a nonce and a zero proof.
    GuessedProof,
    /// Its AUTH carries another protocol version in the frame header.
    BadVersionAfterHello,
}

fn dialer(cluster: &str, secret: &str) -> DialerStart {
    let cfg = HandshakeConfig {
        cluster_id: cluster.into(),
        secret: ClusterSecret::new(secret.as_bytes()).unwrap(),
        node: NodeInfo {
            node_id: "raw".into(),
            instance: 4242,
            capabilities: vec![TransportCap::Tcp],
            max_payload_bytes: 1 << 20,
        },
    };
    DialerStart::new(cfg, [7; 32])
}

/// Dials `addr`, sends HELLO for `cluster`, answers the CHALLENGE as `attempt` says, then reads
/// everything the node sends until it closes (or accepts it with a WELCOME).
async fn attempt(addr: SocketAddr, cluster: &str, secret: &str, how: Attempt) -> Transcript {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    let (state, hello) = dialer(cluster, secret).start();
    framed.send(hello).await.unwrap();
    let mut frames = Vec::new();
    let challenge = framed.next().await.unwrap().unwrap();
    frames.push((challenge.header.msg_type, challenge.payload.len()));
    let (_, auth) = state.handle(&challenge).unwrap();
    match how {
        Attempt::Honest => framed.send(auth).await.unwrap(),
        Attempt::GuessedProof => {
            let guess = Auth {
                nonce: [9; 32],
                proof: [0; 32],
            };
            let frame = Frame::control(MsgType::Auth, control::encode(&guess));
            framed.send(frame).await.unwrap();
        }
        Attempt::BadVersionAfterHello => {
            let mut bytes = auth.to_bytes().to_vec();
            bytes[4] = 9;
            framed.get_mut().write_all(&bytes).await.unwrap();
        }
    }
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), framed.next()).await {
            Ok(None) | Ok(Some(Err(_))) => break true,
            Ok(Some(Ok(f))) => {
                frames.push((f.header.msg_type, f.payload.len()));
                if f.header.msg_type == MsgType::Welcome {
                    // Accepted: the node now waits for IDENTIFY; nothing more to see.
                    break false;
                }
            }
            Err(_) => break false,
        }
    };
    Transcript { frames, closed }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acceptor_proves_nothing_before_the_dialer_did() {
    init_tracing();
    let b = start_b(None).await;
    let addr = b.local_addr().unwrap();
    // An attacker who knows the cluster id: its HELLO is answered with a bare nonce...
    let seen = attempt(addr, "test", OTHER_SECRET, Attempt::GuessedProof).await;
    assert_eq!(
        seen,
        Transcript {
            frames: vec![(MsgType::Challenge, 32)],
            closed: true
        },
        "the attacker got more than a nonce"
    );
    // ...which is all a CHALLENGE holds: no proof rides along.
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    framed.send(dialer("test", SECRET).start().1).await.unwrap();
    let ch = framed.next().await.unwrap().unwrap();
    let decoded: Challenge = control::decode("CHALLENGE", &ch.payload).unwrap();
    assert_eq!(ch.payload.len(), decoded.nonce.len());
    // An honest dialer, having proven itself, gets the acceptor's WELCOME (its proof).
    let honest = attempt(addr, "test", SECRET, Attempt::Honest).await;
    assert_eq!(honest.frames[0], (MsgType::Challenge, 32));
    assert_eq!(
        honest.frames.get(1).map(|f| f.0),
        Some(MsgType::Welcome),
        "{honest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_looks_the_same_from_outside() {
    let (a, b) = start_pair(1).await;
    let addr = b.local_addr().unwrap();
    let wrong_cluster = attempt(addr, "another-cluster", SECRET, Attempt::Honest).await;
    let wrong_secret = attempt(addr, "test", OTHER_SECRET, Attempt::Honest).await;
    let guessed = attempt(addr, "test", OTHER_SECRET, Attempt::GuessedProof).await;
    let bad_version = attempt(addr, "test", SECRET, Attempt::BadVersionAfterHello).await;
    let refused = Transcript {
        frames: vec![(MsgType::Challenge, 32)],
        closed: true,
    };
    assert_eq!(wrong_cluster, refused, "wrong cluster id");
    assert_eq!(wrong_secret, refused, "wrong secret");
    assert_eq!(guessed, refused, "guessed proof");
    assert_eq!(bad_version, refused, "another version after HELLO");
    // The real partner was served throughout.
    let mut ca = a.register("c", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("c", spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    let s = b.status().await.unwrap();
    assert_eq!(s.stats.resets, 1, "the real session was never reset");
}

#[test]
fn weak_secrets_are_refused_with_advice() {
    // The outside test's secret (16 bytes of one character), the same made long, a word
    // repeated, a short pattern repeated, and a long but small-alphabet secret.
    for weak in [
        "x".repeat(16),
        "x".repeat(64),
        "password".repeat(6),
        "0123456789abcdef".repeat(4),
        "abab-cdcd-".repeat(5),
    ] {
        let err = ClusterSecret::new(weak.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("peercm secret generate"),
            "{weak}: {err}"
        );
    }
    // 32 random bytes as hex (what `peercm secret generate` writes) pass.
    assert!(ClusterSecret::new(SECRET.as_bytes()).is_ok());
    assert!(ClusterSecret::new(OTHER_SECRET.as_bytes()).is_ok());
}

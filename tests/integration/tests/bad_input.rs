//! Bad input from the network: every case gets the connection refused or closed with a logged
//! reason, no panic, and the node keeps serving its real partner throughout.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use futures::{SinkExt, StreamExt};
use peercm_cm_manager::{ClientEvent, ClusterSecret, Node, NodeConfig, SendModel};
use peercm_cm_proto::control::{self, Hello, NodeInfo, RefuseReason, TransportCap};
use peercm_cm_proto::frame::{FrameDecoder, MsgType, HEADER_LEN};
use peercm_cm_proto::handshake::{DialerStart, HandshakeConfig};
use peercm_cm_proto::{Frame, PROTOCOL_VERSION};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// Writes `bytes`, then reads until the peer closes (or 10 s pass). Returns what was read and
/// whether the peer closed.
async fn poke(addr: SocketAddr, bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (got, closed)
}

/// A TCP relay to `target` that counts the connections made through it. A node dialing through
/// it shows each of its attempts: a second one proves that the first ended without a link (a
/// node dials again only after its dial failed or its link was lost).
struct CountingRelay {
    addr: SocketAddr,
    accepted: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingRelay {
    async fn start(target: SocketAddr) -> CountingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (count, accepted) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            let mut relayed = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                count.send_modify(|n| *n += 1);
                relayed.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        CountingRelay {
            addr,
            accepted,
            task,
        }
    }

    /// Waits until `n` connections were made through the relay.
    async fn wait_attempts(&mut self, n: u64, who: &str) {
        let wait = self.accepted.wait_for(|got| *got >= n);
        let reached = matches!(tokio::time::timeout(WAIT, wait).await, Ok(Ok(_)));
        assert!(
            reached,
            "{who} did not dial {n} times: {} connections",
            *self.accepted.borrow()
        );
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hello(cluster: &str) -> Bytes {
    Frame::control(
        MsgType::Hello,
        control::encode(&Hello {
            cluster_id: cluster.into(),
        }),
    )
    .to_bytes()
}

/// A pair whose session must stay undisturbed while node-b is attacked.
struct Witness {
    a: Node,
    b: Node,
    ca: peercm_cm_manager::ClientHandle,
    cb: peercm_cm_manager::ClientHandle,
    sent: u64,
}

impl Witness {
    async fn start() -> Witness {
        init_tracing();
        let mut cfg = fast_config(NodeConfig::new("node-b", "test"));
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.session.handshake_timeout_ms = 500;
        let b = Node::start(cfg, secret()).await.unwrap();
        let a = start_a(b.local_addr().unwrap(), 2).await;
        let mut ca = a.register("witness", spec(SendModel::Async)).await.unwrap();
        let mut cb = b.register("witness", spec(SendModel::Async)).await.unwrap();
        ca.connect().await.unwrap();
        wait_up(&mut ca).await;
        wait_up(&mut cb).await;
        Witness {
            a,
            b,
            ca,
            cb,
            sent: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.b.local_addr().unwrap()
    }

    /// Sends a burst and checks it all arrives in order: the partner is still being served.
    async fn still_served(&mut self) {
        for _ in 0..100 {
            self.sent += 1;
            self.ca.send(msg("w", self.sent)).await.unwrap();
        }
        let first = self.sent - 99;
        for i in first..=self.sent {
            match wait_for(&mut self.cb, "witness data", |e| {
                matches!(e, ClientEvent::Data { .. })
            })
            .await
            {
                ClientEvent::Data { payload, .. } => assert_eq!(payload, msg("w", i)),
                _ => unreachable!(),
            }
        }
        let s = self.b.status().await.unwrap();
        assert_eq!(
            s.stats.resets, 1,
            "the real session was never reset by the attack"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_oversize_and_bad_crc_are_closed_without_a_word() {
    let mut w = Witness::start().await;

    // Garbage (an HTTP request): bad magic, closed at once, nothing said.
    let (got, closed) = poke(w.addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        closed && got.is_empty(),
        "garbage: closed={closed}, {} bytes answered",
        got.len()
    );
    w.still_served().await;

    // Truncated frame: half a HELLO, then silence: closed by the handshake deadline.
    let h = hello("test");
    let (got, closed) = poke(w.addr(), &h[..HEADER_LEN / 2]).await;
    assert!(closed && got.is_empty(), "truncated: closed={closed}");
    w.still_served().await;

    // Oversize length field: refused from the header alone, before any payload arrives.
    let mut big = BytesMut::from(&h[..]);
    big[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
    let (got, closed) = poke(w.addr(), &big[..32]).await;
    assert!(closed && got.is_empty(), "oversize: closed={closed}");
    w.still_served().await;

    // Bad CRC.
    let mut bad = BytesMut::from(&h[..]);
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let (got, closed) = poke(w.addr(), &bad).await;
    assert!(closed && got.is_empty(), "bad crc: closed={closed}");
    w.still_served().await;

    // Random bytes of many lengths.
    let mut x = 0x1234_5678_9abc_def0u64;
    for len in [1usize, 3, 7, 35, 36, 37, 100, 4096] {
        let v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (_, closed) = poke(w.addr(), &v).await;
        assert!(closed, "random {len} bytes: connection left open");
    }
    w.still_served().await;
    drop(w.a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_version_is_refused_with_our_version() {
    let mut w = Witness::start().await;
    let mut v9 = BytesMut::from(&hello("test")[..]);
    v9[4] = 9;
    let (got, closed) = poke(w.addr(), &v9).await;
    assert!(closed, "closed after refusing");
    let mut buf = BytesMut::from(&got[..]);
    let refuse = FrameDecoder::default()
        .decode(&mut buf)
        .expect("the refusal is a valid frame")
        .expect("a whole frame");
    assert_eq!(refuse.header.msg_type, MsgType::Refuse);
    let reason: RefuseReason = control::decode("REFUSE", &refuse.payload).unwrap();
    assert_eq!(
        reason,
        RefuseReason::Version {
            ours: PROTOCOL_VERSION
        }
    );
    w.still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_never_connects_and_the_real_partner_is_unaffected() {
    let mut w = Witness::start().await;
    // The intruder dials node-b through a relay that counts its attempts.
    let mut relay = CountingRelay::start(w.addr()).await;
    let mut cfg = fast_config(NodeConfig::new("intruder", "test"));
    cfg.peer = Some(peercm_cm_manager::config::PeerConfig::new(relay.addr, 1));
    let bad_secret =
        ClusterSecret::new(b"0f3e5d7c9b1a2f4e6d8c0b3a5f7e9d1c2b4a6f8e0d3c5b7a9f1e2d4c6b8a0f3e")
            .unwrap();
    let intruder = Node::start(cfg, bad_secret).await.unwrap();
    let mut ci = intruder
        .register("witness", spec(SendModel::Async))
        .await
        .unwrap();
    ci.connect().await.unwrap();
    // Its second attempt: node-b has answered the first one, and the intruder has taken the
    // answer.
    relay.wait_attempts(2, "the intruder").await;
    let s = intruder.status().await.unwrap();
    assert!(
        s.links.is_empty() && s.peer.is_none() && s.stats.resets == 0,
        "an intruder with the wrong secret got a link: {s:#?}"
    );
    assert!(
        ci.try_next_event().is_none(),
        "the intruder's client saw no Up"
    );
    assert!(ci.send(msg("x", 1)).await.is_err(), "sends fail fast");
    w.still_served().await;
    // And an insecure node is refused by a secured one too.
    let mut relay = CountingRelay::start(w.addr()).await;
    let mut cfg = fast_config(NodeConfig::new("insecure", "test"));
    cfg.peer = Some(peercm_cm_manager::config::PeerConfig::new(relay.addr, 1));
    let insecure = Node::start(cfg, ClusterSecret::insecure()).await.unwrap();
    relay.wait_attempts(2, "the insecure node").await;
    let s = insecure.status().await.unwrap();
    assert!(
        s.links.is_empty() && s.peer.is_none() && s.stats.resets == 0,
        "an insecure node got a link: {s:#?}"
    );
    w.still_served().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_after_authentication_close_only_that_link() {
    init_tracing();
    // A fresh acceptor with no partner yet: an authenticated raw peer gets a link, then sends a
    // corrupted frame; only that link is closed and the node then serves a real partner.
    // The link timeout is far beyond the test's 10 s read deadline, so a close can only come from
    // the bad frame, not from the raw peer's silence.
    let mut cfg = fast_config(NodeConfig::new("node-b", "test"));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.session.link_timeout_ms = 60_000;
    let b = Node::start(cfg, secret()).await.unwrap();
    let addr = b.local_addr().unwrap();
    for corrupt in ["bad-crc", "unknown-type", "handshake-again"] {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut framed = Framed::new(stream, peercm_fallback_tcp::FrameCodec::default());
        let cfg = HandshakeConfig {
            cluster_id: "test".into(),
            secret: secret(),
            node: NodeInfo {
                node_id: "raw".into(),
                instance: 77,
                capabilities: vec![TransportCap::Tcp],
                max_payload_bytes: 1 << 20,
            },
        };
        let (st, hello) = DialerStart::new(cfg, [5; 32]).start();
        framed.send(hello).await.unwrap();
        let ch = framed.next().await.unwrap().unwrap();
        let (st, auth) = st.handle(&ch).unwrap();
        framed.send(auth).await.unwrap();
        let welcome = framed.next().await.unwrap().unwrap();
        let (_, identify) = st.handle(&welcome).expect("authenticated");
        framed.send(identify).await.unwrap();
        let mut raw = framed.into_inner();
        let hb = Frame::control(MsgType::Heartbeat, Bytes::new()).to_bytes();
        let mut bytes = BytesMut::from(&hb[..]);
        match corrupt {
            "bad-crc" => bytes[10] ^= 1,
            "unknown-type" => bytes[5] = 99,
            _ => bytes = BytesMut::from(&hello_bytes()[..]),
        }
        raw.write_all(&bytes).await.unwrap();
        let mut sink = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut sink)).await;
        assert!(
            matches!(r, Ok(Ok(_)) | Ok(Err(_))),
            "{corrupt}: link not closed"
        );
    }
    // The node still takes a real partner.
    let a = start_a(addr, 1).await;
    let mut ca = a.register("c", spec(SendModel::Async)).await.unwrap();
    let mut cb = b.register("c", spec(SendModel::Async)).await.unwrap();
    ca.connect().await.unwrap();
    wait_up(&mut ca).await;
    wait_up(&mut cb).await;
    ca.send(msg("c", 1)).await.unwrap();
    let ev = wait_for(&mut cb, "data", |e| matches!(e, ClientEvent::Data { .. })).await;
    assert!(matches!(ev, ClientEvent::Data { payload, .. } if payload == msg("c", 1)));
}

fn hello_bytes() -> Bytes {
    hello("test")
}

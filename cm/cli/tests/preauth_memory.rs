//! Pre-authentication memory (issue 8, item 5): a real `peercm node` process under 1,000 hostile
//! connections keeps serving its real partner, and its resident memory stays within the bound
//! docs/operations.md gives.
//!
//! Each hostile connection comes from one of 50 loopback source addresses (127.0.0.2 up), sends
//! a frame header claiming a large HELLO and trickles its body: half claim 1 MiB (the node's
//! `max_payload_bytes`, the default) and send up to 256 KiB, half claim 60 KiB (under the handshake frame
//! cap) and stop short of completing it, holding their connection open for the whole attack, as
//! a slow-loris would. The node's peak RSS (`VmHWM`) after the attack is compared with its RSS
//! before it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::{
    ClientEvent, ClientSpec, ClusterSecret, LatencyClass, Node, NodeConfig, SendModel,
};
use peercm_cm_proto::frame::{MAGIC, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

/// The documented bound on the node's memory growth under this attack (docs/operations.md).
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;
const HOSTILE: usize = 1000;
const SOURCES: usize = 50;
const WAIT: Duration = Duration::from_secs(60);

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("peercm-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A field of /proc/PID/status, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A frame header (HELLO, this build's version) claiming a payload of `len` bytes.
fn header_claiming(len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(36);
    h.extend_from_slice(&MAGIC);
    h.push(PROTOCOL_VERSION);
    h.push(1); // HELLO
    h.extend_from_slice(&[0; 2 + 4 + 8 + 8]);
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0; 4]); // CRC: never reached
    h
}

/// One hostile connection: header, then the body in 16 KiB pieces up to `send` bytes, a pause
/// between pieces; then, if `hold`, keeps the connection open until `release`.
async fn hostile(
    target: SocketAddr,
    source: Ipv4Addr,
    claim: u32,
    send: usize,
    hold: bool,
    mut release: tokio::sync::watch::Receiver<bool>,
) {
    let sock = TcpSocket::new_v4().unwrap();
    if sock.bind(SocketAddr::from((source, 0))).is_err() {
        return;
    }
    let Ok(mut s) = sock.connect(target).await else {
        return;
    };
    if s.write_all(&header_claiming(claim)).await.is_err() {
        return;
    }
    let piece = [0x5au8; 16 * 1024];
    let mut sent = 0;
    while sent < send {
        if s.write_all(&piece).await.is_err() {
            return;
        }
        sent += piece.len();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if hold {
        let _ = release.wait_for(|r| *r).await;
    }
}

async fn next_acked(h: &mut peercm_cm_manager::ClientHandle) -> Option<i32> {
    loop {
        match tokio::time::timeout(WAIT, h.next_event()).await {
            Ok(Some(ClientEvent::Acked { code, .. })) => return code,
            Ok(Some(ClientEvent::Up | ClientEvent::FlowControl { .. })) => {}
            other => panic!("the real partner was not served: {other:?}"),
        }
    }
}

fn write_config(d: &Path, secret: &Path) -> PathBuf {
    let p = d.join("b.toml");
    std::fs::write(
        &p,
        format!(
            "node_id = \"mem-b\"\ncluster_id = \"mem\"\nlisten = \"127.0.0.1:0\"\n\
             secret_file = {secret:?}\nstatus_socket = {:?}\n\
             [session]\nhandshake_timeout_ms = 60000\n\
             [[clients]]\nname = \"echo\"\n",
            d.join("b.sock")
        ),
    )
    .unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_under_1000_hostile_connections_stays_small_and_serves_its_partner() {
    let d = tmpdir("preauth");
    let secret_path = d.join("secret");
    let out = Command::new(env!("CARGO_BIN_EXE_peercm"))
        .args(["secret", "generate", "--out"])
        .arg(&secret_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg = write_config(&d, &secret_path);
    let mut b = Proc(
        Command::new(env!("CARGO_BIN_EXE_peercm"))
            .args(["node", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = b.0.id();
    let mut first = String::new();
    BufReader::new(b.0.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr: SocketAddr = first
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .parse()
        .unwrap();

    // The real partner: an in-process node dialing from 127.0.0.1 with two links.
    let secret = ClusterSecret::new(&std::fs::read(&secret_path).unwrap()).unwrap();
    let mut cfg_a = NodeConfig::new("mem-a", "mem");
    cfg_a.peer = Some(PeerConfig::new(addr, 2));
    let a = Node::start(cfg_a, secret).await.unwrap();
    let spec = ClientSpec {
        bandwidth_mbytes_per_s: 10,
        latency: LatencyClass::Normal,
        model: SendModel::Sync,
    };
    let mut echo = a.register("echo", spec).await.unwrap();
    echo.connect().await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, echo.next_event()).await {
            Ok(Some(ClientEvent::Up)) => break,
            Ok(Some(_)) => {}
            other => panic!("the partner's client never came Up: {other:?}"),
        }
    }
    for i in 0..20u32 {
        echo.send(Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap();
        assert_eq!(next_acked(&mut echo).await, Some(0));
    }
    let before_kib = proc_kib(pid, "VmRSS:");

    // The attack.
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let mut attack = tokio::task::JoinSet::new();
    for i in 0..HOSTILE {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8);
        let (claim, send, hold) = if i % 2 == 0 {
            (1 << 20, 256 * 1024, false)
        } else {
            (60 * 1024, 48 * 1024, true)
        };
        attack.spawn(hostile(addr, source, claim, send, hold, release.clone()));
    }
    // The partner is served all along.
    let mut served = 0;
    while attack.len() > HOSTILE / 2 || served < 50 {
        echo.send(Bytes::from_static(b"during")).await.unwrap();
        assert_eq!(next_acked(&mut echo).await, Some(0));
        served += 1;
        while attack.try_join_next().is_some() {}
        if served > 100_000 {
            panic!("the non-holding hostile connections never finished");
        }
    }
    let peak_kib = proc_kib(pid, "VmHWM:");
    // The node counted what it refused (`peercm status --json`: handshakes).
    let out = Command::new(env!("CARGO_BIN_EXE_peercm"))
        .args(["status", "--json", "--socket"])
        .arg(d.join("b.sock"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hs = &status["handshakes"];
    let refused =
        hs["refused_busy"].as_u64().unwrap() + hs["refused_source_busy"].as_u64().unwrap();
    assert!(refused > 0, "no connection refused over the caps: {hs}");
    assert!(
        hs["pending"].as_u64().unwrap() <= 128,
        "more handshakes in progress than the cap: {hs}"
    );
    let _ = release_tx.send(true);
    while attack.join_next().await.is_some() {}
    for _ in 0..20 {
        echo.send(Bytes::from_static(b"after")).await.unwrap();
        assert_eq!(next_acked(&mut echo).await, Some(0));
    }
    let growth = peak_kib.saturating_sub(before_kib);
    println!(
        "preauth_memory: node RSS before {before_kib} KiB, peak during {HOSTILE} hostile \
         connections {peak_kib} KiB, growth {growth} KiB (bound {RSS_GROWTH_BOUND_KIB} KiB); \
         partner served {served} sync round trips during the attack; handshakes {hs}"
    );
    assert!(
        growth <= RSS_GROWTH_BOUND_KIB,
        "the node grew by {growth} KiB under the attack (bound {RSS_GROWTH_BOUND_KIB} KiB)"
    );
    drop(a);
    let _ = std::fs::remove_dir_all(&d);
}

//! A partner killed with `kill -9` keeps every completed one-sided write (issue 9): a real
//! `peercm node` process holds client "mirror" with a 16 MiB region (`[[clients.regions]]`);
//! an in-process node's mirror writes log records into it (sequential, like an NVRAM log, with
//! random sizes) as fast as completions allow, and the partner process is killed with SIGKILL
//! mid-stream. Afterwards the region file holds every record whose write had completed
//! (`Acked`) before the kill, byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::{
    ClientEvent, ClientSpec, ClusterSecret, LatencyClass, Node, NodeConfig, SendModel,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const REGION_LEN: u64 = 16 << 20;
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

/// Record `i`'s bytes.
fn record(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i.wrapping_mul(0x9e37_79b9).wrapping_add(j as u64) >> 2) as u8 | 1)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_completed_write_is_in_the_region_file_after_kill_9() {
    let d = tmpdir("kill9");
    let secret_path = d.join("secret");
    let out = Command::new(env!("CARGO_BIN_EXE_peercm"))
        .args(["secret", "generate", "--out"])
        .arg(&secret_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let regions = d.join("regions");
    let cfg = d.join("b.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_id = \"k-b\"\ncluster_id = \"k\"\nlisten = \"127.0.0.1:0\"\n\
             secret_file = {secret_path:?}\n\
             [regions]\ndir = {regions:?}\n\
             [[clients]]\nname = \"mirror\"\nmodel = \"async\"\n\
             [[clients.regions]]\nname = \"log\"\nlen_bytes = {REGION_LEN}\n"
        ),
    )
    .unwrap();
    let mut b = Proc(
        Command::new(env!("CARGO_BIN_EXE_peercm"))
            .args(["node", "--config"])
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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

    let secret = ClusterSecret::new(&std::fs::read(&secret_path).unwrap()).unwrap();
    let mut cfg_a = NodeConfig::new("k-a", "k");
    cfg_a.peer = Some(PeerConfig::new(addr, 2));
    let a = Node::start(cfg_a, secret).await.unwrap();
    let spec = ClientSpec {
        bandwidth_mbytes_per_s: 100,
        latency: LatencyClass::Bulk,
        model: SendModel::Async,
    };
    let mut m = a.register("mirror", spec).await.unwrap();
    m.connect().await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, m.next_event()).await {
            Ok(Some(ClientEvent::PartnerRegion {
                name,
                available: true,
                ..
            })) if name == "log" => break,
            Ok(Some(_)) => {}
            other => panic!("the partner's region never came: {other:?}"),
        }
    }

    // Records appended at increasing offsets; `acked` are those whose write completed.
    let mut pending: BTreeMap<u64, (u64, u64, usize)> = BTreeMap::new(); // id -> (i, off, len)
    let mut acked: Vec<(u64, u64, usize)> = Vec::new();
    let mut off = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut i = 0u64;
    let kill_after = 3000;
    while acked.len() < kill_after {
        while pending.len() < 256 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = 1 + (rng % 4096) as usize;
            let id = m
                .write_remote("log", off, Bytes::from(record(i, len)))
                .await
                .unwrap();
            pending.insert(id, (i, off, len));
            off += len as u64;
            i += 1;
        }
        match tokio::time::timeout(WAIT, m.next_event()).await {
            Ok(Some(ClientEvent::Acked { seq, code: None })) => {
                if let Some(r) = pending.remove(&seq) {
                    acked.push(r);
                }
            }
            Ok(Some(ClientEvent::Nacked { seq, reason })) => {
                panic!("write {seq} NACKed before the kill: {reason:?}")
            }
            Ok(Some(_)) => {}
            other => panic!("stream stalled: {other:?}"),
        }
    }
    // SIGKILL the partner with writes still in flight.
    assert!(Command::new("kill")
        .args(["-KILL", &b.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = b.0.wait().unwrap();
    assert!(!status.success(), "the partner was killed");
    // Completions that were already on their way count as well.
    while let Some(ev) = m.try_next_event() {
        if let ClientEvent::Acked { seq, code: None } = ev {
            if let Some(r) = pending.remove(&seq) {
                acked.push(r);
            }
        }
    }
    let file = std::fs::read(regions.join("mirror").join("log.region")).unwrap();
    assert_eq!(file.len() as u64, REGION_LEN);
    // Records are written in order and the log never wraps in this test (3000 records of at
    // most 4 KiB < 16 MiB), so each completed record is intact.
    assert!(off < REGION_LEN, "the test's log wrapped");
    for &(i, off, len) in &acked {
        let at = off as usize;
        assert!(
            file[at..at + len] == record(i, len)[..],
            "record {i} ({len} bytes at {off}) completed but is not in the file after kill -9"
        );
    }
    println!(
        "kill -9 with {} writes in flight: all {} completed records in the file",
        pending.len(),
        acked.len()
    );
}

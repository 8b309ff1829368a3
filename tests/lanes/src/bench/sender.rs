//! The sending side: node a dials the receiver, waits until its client is on the measured
//! path (the one rail, or TCP) and knows the partner's region, then measures
//!
//! - **throughput**: `--bw-writes` writes of `--bw-bytes` at consecutive offsets (wrapping in
//!   the region), with up to `--window` outstanding (by default the session's window, as many
//!   as it allows); from the first `write_remote` to the last `Acked`;
//! - **latency**: `--lat-writes` writes of `--lat-bytes`, one at a time: each from the call to
//!   `write_remote` to its `Acked`, i.e. a full round trip (over a rail the RDMA WRITE and its
//!   marker out, the partner's HCA acknowledgement back, as the queue pair's completion; over
//!   TCP the WRITE frame out, the partner's placement code back).
//!
//! Each phase starts with `--warmup` writes that are not counted, and reports the process's and
//! the VM's CPU time over it.

use super::args::Args;
use super::node::{self, CLIENT, REGION};
use super::receiver::spec;
use super::stats::{self, cpu_now, cpu_since};
use bytes::Bytes;
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::{ClientEvent, ClientHandle, Node};
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Runs the sender; its figures as JSON.
pub async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let timeout = Duration::from_secs(args.connect_timeout);
    let mut cfg = node::node_config("bench-a", args)?;
    let window = if args.window == 0 {
        cfg.session.window as usize
    } else {
        args.window
    };
    let peer = args.peer.ok_or("no --peer")?;
    cfg.peer = Some(PeerConfig::new(peer, args.tcp_connections));
    let t_start = Instant::now();
    let node = Node::start_with_verbs(cfg, node::secret()?, node::verbs_source(args)?)
        .await
        .map_err(|e| format!("node a: {e}"))?;
    let mut h = node
        .register(CLIENT, spec())
        .await
        .map_err(|e| format!("register: {e}"))?;
    h.connect().await.map_err(|e| format!("connect: {e}"))?;
    let transport = args.transport;
    node::wait_status(&node, "client on the measured path", timeout, |s| {
        node::ready(s, transport)
    })
    .await?;
    let region_len = wait_region(&mut h, timeout).await?;
    let setup_ms = t_start.elapsed().as_secs_f64() * 1000.0;
    let mut out = json!({
        "role": "sender",
        "label": args.label,
        "transport": format!("{transport:?}").to_lowercase(),
        "hca": args.hca,
        "window": window,
        "setup_ms": setup_ms,
    });
    let phase = Duration::from_secs(args.phase_timeout);
    if args.phases.bw() {
        let pace = Pace {
            bytes: args.bw_bytes,
            region_len,
            window,
        };
        pace.run(&mut h, args.warmup, phase).await?;
        let cpu0 = cpu_now();
        let elapsed = pace.run(&mut h, args.bw_writes, phase).await?;
        let cpu = cpu_since(cpu0, cpu_now());
        let bytes = args.bw_writes * args.bw_bytes as u64;
        let (mib_s, mb_s) = stats::rates(bytes, elapsed);
        out["bw"] = json!({
            "bytes": args.bw_bytes,
            "writes": args.bw_writes,
            "window": window,
            "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
            "mib_per_s": mib_s,
            "mb_per_s": mb_s,
            "cpu_process_ms": cpu.process_ms,
            "cpu_vm_busy_ms": cpu.machine_busy_ms,
        });
    }
    if args.phases.lat() {
        let pace = Pace {
            bytes: args.lat_bytes,
            region_len,
            window: 1,
        };
        pace.run(&mut h, args.warmup, phase).await?;
        let cpu0 = cpu_now();
        let samples = pace.one_at_a_time(&mut h, args.lat_writes, phase).await?;
        let cpu = cpu_since(cpu0, cpu_now());
        let s = stats::summarize(&samples).ok_or("no latency samples")?;
        out["lat"] = json!({
            "bytes": args.lat_bytes,
            "writes": args.lat_writes,
            "rtt_us": s,
            "cpu_process_ms": cpu.process_ms,
            "cpu_vm_busy_ms": cpu.machine_busy_ms,
        });
    }
    let s = node.status().await.map_err(|e| format!("status: {e}"))?;
    out["links_lost"] = json!(s.stats.links_lost);
    out["replays"] = json!(s.stats.replays);
    out["resets"] = json!(s.stats.resets);
    out["still_on_path"] = json!(node::ready(&s, transport));
    drop(h);
    node.shutdown();
    Ok(out)
}

/// Waits for the partner's region; its length.
async fn wait_region(h: &mut ClientHandle, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, h.next_event()).await {
            Ok(Some(ClientEvent::PartnerRegion {
                name,
                len,
                available: true,
            })) if name == REGION => return Ok(len),
            Ok(Some(_)) => {}
            Ok(None) => return Err("node a stopped".into()),
            Err(_) => return Err(format!("no partner region within {timeout:?}")),
        }
    }
}

/// How one phase writes: `bytes` per write at consecutive offsets in a region of `region_len`,
/// at most `window` outstanding.
struct Pace {
    bytes: usize,
    region_len: u64,
    window: usize,
}

impl Pace {
    fn offset(&self, i: u64) -> u64 {
        let slots = (self.region_len / self.bytes as u64).max(1);
        (i % slots) * self.bytes as u64
    }

    fn data(&self, i: u64) -> Bytes {
        Bytes::from(vec![(i % 251) as u8; self.bytes])
    }

    /// `n` writes, pipelined; the time from the first call to the last completion.
    async fn run(&self, h: &mut ClientHandle, n: u64, limit: Duration) -> Result<Duration, String> {
        // Payloads made before the clock starts: the copy into the link's staging is peercm's,
        // building the test pattern is not.
        let data: Vec<Bytes> = (0..self.window.min(n as usize).max(1) as u64)
            .map(|i| self.data(i))
            .collect();
        let t0 = Instant::now();
        let deadline = t0 + limit;
        let mut outstanding = HashSet::new();
        let mut issued = 0u64;
        while issued < n || !outstanding.is_empty() {
            while issued < n && outstanding.len() < self.window {
                let d = data[(issued as usize) % data.len()].clone();
                let id = h
                    .write_remote(REGION, self.offset(issued), d)
                    .await
                    .map_err(|e| format!("write_remote #{issued}: {e}"))?;
                outstanding.insert(id);
                issued += 1;
            }
            let id = completion(h, deadline).await?;
            outstanding.remove(&id);
        }
        Ok(t0.elapsed())
    }

    /// `n` writes, each waited for before the next: the round trip of each.
    async fn one_at_a_time(
        &self,
        h: &mut ClientHandle,
        n: u64,
        limit: Duration,
    ) -> Result<Vec<Duration>, String> {
        let deadline = Instant::now() + limit;
        let mut samples = Vec::with_capacity(n as usize);
        for i in 0..n {
            let d = self.data(i);
            let t = Instant::now();
            let id = h
                .write_remote(REGION, self.offset(i), d)
                .await
                .map_err(|e| format!("write_remote #{i}: {e}"))?;
            let done = completion(h, deadline).await?;
            if done != id {
                return Err(format!("completion of {done} while waiting for {id}"));
            }
            samples.push(t.elapsed());
        }
        Ok(samples)
    }
}

/// The next write completion: its id; a NACK, a Down or the deadline is an error.
async fn completion(h: &mut ClientHandle, deadline: Instant) -> Result<u64, String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, h.next_event()).await {
            Ok(Some(ClientEvent::Acked { seq, code: None })) => return Ok(seq),
            Ok(Some(ClientEvent::Acked { seq, code })) => {
                return Err(format!("write {seq} acked with a code {code:?}"))
            }
            Ok(Some(ClientEvent::Nacked { seq, reason })) => {
                return Err(format!("write {seq} NACKed: {reason:?}"))
            }
            Ok(Some(ClientEvent::Down { reason })) => {
                return Err(format!("client down: {reason:?}"))
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("node a stopped".into()),
            Err(_) => return Err("the phase took longer than --phase-timeout".into()),
        }
    }
}

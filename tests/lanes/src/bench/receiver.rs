//! The receiving side: node b holds the client's region and does nothing else. Its CPU is
//! not on the RDMA path (the writes land in the mapped file through the HCA; only the marker
//! frames reach its manager), while over TCP its manager copies every write into the file.
//! It stops once the stop file exists and reports what its session placed.

use super::args::{Args, Transport};
use super::node::{self, CLIENT, REGION};
use super::stats;
use crate::abort::AbortFile;
use peercm_cm_manager::{ClientEvent, ClientSpec, LatencyClass, Node, SendModel};
use serde_json::json;
use std::time::{Duration, Instant};

pub fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbytes_per_s: 2000,
        latency: LatencyClass::Bulk,
        model: SendModel::Async,
    }
}

/// Runs the receiver until the stop file appears; its figures as JSON.
pub async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let timeout = Duration::from_secs(args.connect_timeout);
    let abort = AbortFile(args.abort_file.clone());
    let mut cfg = node::node_config("bench-b", args)?;
    cfg.listen = args.listen;
    cfg.regions.dir = Some(args.region_dir.clone());
    cfg.regions.max_bytes = args.region_bytes.max(1 << 20);
    let node = Node::start_with_verbs(cfg, node::secret()?, node::verbs_source(args)?)
        .await
        .map_err(|e| format!("node b: {e}"))?;
    let mut h = node
        .register(CLIENT, spec())
        .await
        .map_err(|e| format!("register: {e}"))?;
    h.connect().await.map_err(|e| format!("connect: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout(Duration::from_millis(100), h.next_event()).await {
            Ok(Some(ClientEvent::Up)) => break,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => return Err("node b stopped".into()),
        }
        if let Some(why) = abort.reason() {
            return Err(why);
        }
        if Instant::now() >= deadline {
            return Err(format!("the sender did not connect within {timeout:?}"));
        }
    }
    // Over RDMA, register the region once the rail is up, so that it is advertised with the
    // rail's key from the start (nothing would go one-sided otherwise).
    let transport = args.transport;
    node::wait_status(&node, "rail up", timeout, |s| node::ready(s, transport)).await?;
    let info = h
        .register_region(REGION, args.region_bytes)
        .await
        .map_err(|e| format!("register_region: {e}"))?;
    eprintln!(
        "bench-lane receiver: region {REGION} of {} bytes open",
        info.len
    );
    let cpu0 = stats::cpu_now();
    let t0 = Instant::now();
    let stop = args.stop_file.clone().unwrap_or_default();
    while !stop.exists() {
        if let Some(why) = abort.reason() {
            return Err(why);
        }
        // Drain events (none expected beyond the session's own).
        while h.try_next_event().is_some() {}
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = stats::cpu_since(cpu0, stats::cpu_now());
    let s = node.status().await.map_err(|e| format!("status: {e}"))?;
    let st = &s.stats;
    let one_sided = transport == Transport::Rdma && st.writes_copied == 0;
    let v = json!({
        "role": "receiver",
        "label": args.label,
        "writes_placed": st.writes_placed,
        "writes_copied": st.writes_copied,
        "writes_refused_here": st.writes_refused_here,
        "frames_in": st.frames_in,
        "frames_out": st.frames_out,
        "links_lost": st.links_lost,
        "resets": st.resets,
        "all_one_sided": one_sided,
        "cpu_process_ms": cpu.process_ms,
        "cpu_vm_busy_ms": cpu.machine_busy_ms,
        "wall_ms": t0.elapsed().as_secs_f64() * 1000.0,
    });
    drop(h);
    node.shutdown();
    Ok(v)
}

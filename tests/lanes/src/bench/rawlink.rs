//! `--transport raw-link`: the same writes on a bare `peercm_cm_rdma_link::RdmaLink`, without
//! the manager, the session or tokio, to tell rxe's cost from peercm's. One link per side on
//! the one `--hca`, set up like a rail's (the manager's ring, receive depth and queue-pair
//! parameters), endpoints swapped over a plain TCP socket. The sender posts each write with
//! [`RdmaLink::send_with_write`] (RDMA WRITE + marker frame, as the manager does) and a
//! completion tag; a write is done when the sender's link thread reports the tag (the queue
//! pair completed the marker, so the partner's HCA has the bytes) and hands it to the
//! measuring thread: one thread hand-off per write, as between a link thread and the manager.
//! The receiver's CPU is not involved (its link thread only takes the markers). What peercm
//! adds on top is the client's command and event channels, the manager task and the session.

use super::args::Args;
use super::stats::{self, cpu_now, cpu_since};
use bytes::Bytes;
use peercm_cm_proto::frame::{Flags, MsgType};
use peercm_cm_proto::session::{ClientId, LinkId, LocalDone};
use peercm_cm_proto::{Frame, Header};
use peercm_cm_rdma_link::{
    LinkCloseReason, LinkSink, OneSided, PreparedLink, RdmaLink, RdmaLinkConfig,
};
use peercm_verbs_shim::api::Provider;
use peercm_verbs_shim::real::RealProvider;
use peercm_verbs_shim::{Access, MemoryRegion, QpParams, RemoteMr};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the receiver tells the sender: its link and its region.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    endpoint: peercm_cm_rdma_link::LocalEndpoint,
    region: Option<RemoteMr>,
}

/// What a link reports to the measuring thread: writes completed (their tags), or the close.
enum Report {
    Done(u64),
    Closed,
}

/// A sink counting frames and forwarding completed tags (and a close) to a channel.
struct Forward {
    tx: Sender<Report>,
    frames: Arc<AtomicU64>,
}

impl LinkSink for Forward {
    fn frame(&mut self, _frame: Frame) -> bool {
        self.frames.fetch_add(1, Ordering::Relaxed);
        true
    }
    fn oversize(&mut self, _header: Header) -> bool {
        false
    }
    fn written(&mut self, _bytes: u64, local_done: Vec<LocalDone>) {
        if !local_done.is_empty() {
            let _ = self.tx.send(Report::Done(local_done.len() as u64));
        }
    }
    fn closed(&mut self, _reason: LinkCloseReason) {
        let _ = self.tx.send(Report::Closed);
    }
}

fn link_config(args: &Args) -> RdmaLinkConfig {
    let d = peercm_cm_manager::config::VerbsTunables::default();
    RdmaLinkConfig {
        link_id: LinkId::new(1),
        gid_index: args.gid_index,
        ring_bytes: d.ring_bytes,
        recv_depth: d.recv_depth,
        qp: QpParams {
            ack_timeout_us: 134_000,
            retry_count: 6,
            ..QpParams::default()
        },
        busy_poll_us: args.busy_poll_us,
        ..RdmaLinkConfig::default()
    }
}

/// The link prepared on `--hca`, the hello for the partner and, for the receiver, the region
/// (registered in the link's protection domain; keep it for the run).
type Prepared = (PreparedLink, Hello, Option<Arc<dyn MemoryRegion>>);

fn prepare(args: &Args, region_bytes: Option<usize>) -> Result<Prepared, String> {
    let dev_name = args.hca.as_deref().ok_or("no --hca")?;
    let p = RealProvider::load().map_err(|e| format!("no RDMA here: {e}"))?;
    let dev = p.open(dev_name).map_err(|e| format!("{dev_name}: {e}"))?;
    let pd = dev.clone().alloc_pd().map_err(|e| format!("pd: {e}"))?;
    let region = match region_bytes {
        Some(len) => Some(
            pd.clone()
                .reg_mr(len, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
                .map_err(|e| format!("region: {e}"))?,
        ),
        None => None,
    };
    let (link, endpoint) =
        PreparedLink::new_in(pd, dev, link_config(args)).map_err(|e| format!("link: {e}"))?;
    let remote = region.as_ref().map(|r| r.remote());
    Ok((
        link,
        Hello {
            endpoint,
            region: remote,
        },
        region,
    ))
}

/// The receiver: one link taking the markers, until the sender closes the socket.
pub fn receiver(args: &Args) -> Result<serde_json::Value, String> {
    let listen = args.listen.ok_or("no --listen")?;
    let (prepared, hello, _region) = prepare(args, Some(args.region_bytes as usize))?;
    let l = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let (sock, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    let mut r = BufReader::new(sock.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
    let theirs: Hello = serde_json::from_str(&line).map_err(|e| format!("hello: {e}"))?;
    let (tx, _rx) = channel();
    let markers = Arc::new(AtomicU64::new(0));
    let sink = Forward {
        tx,
        frames: markers.clone(),
    };
    let _link = prepared
        .connect(&theirs.endpoint, Box::new(sink))
        .map_err(|e| format!("connect: {e}"))?;
    let mut w = sock;
    let text = serde_json::to_string(&hello).map_err(|e| e.to_string())?;
    writeln!(w, "{text}").map_err(|e| format!("write: {e}"))?;
    let cpu0 = cpu_now();
    // The sender closes the socket when it is done.
    let mut rest = String::new();
    let _ = r.read_line(&mut rest);
    let cpu = cpu_since(cpu0, cpu_now());
    Ok(json!({
        "role": "receiver", "label": args.label, "transport": "raw-link",
        "markers": markers.load(Ordering::Relaxed),
        "cpu_process_ms": cpu.process_ms, "cpu_vm_busy_ms": cpu.machine_busy_ms,
    }))
}

/// The sender: throughput and latency as the peercm sender measures them.
pub fn sender(args: &Args) -> Result<serde_json::Value, String> {
    let peer = args.peer.ok_or("no --peer")?;
    let (prepared, hello, _) = prepare(args, None)?;
    let deadline = Instant::now() + Duration::from_secs(args.connect_timeout);
    let sock = loop {
        match TcpStream::connect(peer) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => return Err(format!("connect {peer}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut w = sock.try_clone().map_err(|e| e.to_string())?;
    writeln!(
        w,
        "{}",
        serde_json::to_string(&hello).map_err(|e| e.to_string())?
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    BufReader::new(sock)
        .read_line(&mut line)
        .map_err(|e| format!("read: {e}"))?;
    let theirs: Hello = serde_json::from_str(&line).map_err(|e| format!("hello: {e}"))?;
    let region = theirs.region.ok_or("the receiver sent no region")?;
    let (tx, rx) = channel();
    let sink = Forward {
        tx,
        frames: Arc::new(AtomicU64::new(0)),
    };
    let link = prepared
        .connect(&theirs.endpoint, Box::new(sink))
        .map_err(|e| format!("connect: {e}"))?;
    let mut s = Raw {
        link,
        rx,
        region,
        seq: 0,
        limit: Duration::from_secs(args.phase_timeout),
    };
    let window = if args.window == 0 { 256 } else { args.window };
    let mut out = json!({"role": "sender", "label": args.label, "transport": "raw-link",
        "hca": args.hca, "window": window});
    if args.phases.bw() {
        s.pipelined(args.bw_bytes, args.warmup, window)?;
        let cpu0 = cpu_now();
        let elapsed = s.pipelined(args.bw_bytes, args.bw_writes, window)?;
        let cpu = cpu_since(cpu0, cpu_now());
        let (mib_s, mb_s) = stats::rates(args.bw_writes * args.bw_bytes as u64, elapsed);
        out["bw"] = json!({"bytes": args.bw_bytes, "writes": args.bw_writes,
            "elapsed_ms": elapsed.as_secs_f64() * 1000.0, "mib_per_s": mib_s, "mb_per_s": mb_s,
            "cpu_process_ms": cpu.process_ms, "cpu_vm_busy_ms": cpu.machine_busy_ms});
    }
    if args.phases.lat() {
        s.pipelined(args.lat_bytes, args.warmup, 1)?;
        let cpu0 = cpu_now();
        let mut samples = Vec::with_capacity(args.lat_writes as usize);
        for _ in 0..args.lat_writes {
            let t = Instant::now();
            s.pipelined(args.lat_bytes, 1, 1)?;
            samples.push(t.elapsed());
        }
        let cpu = cpu_since(cpu0, cpu_now());
        let sum = stats::summarize(&samples).ok_or("no latency samples")?;
        out["lat"] = json!({"bytes": args.lat_bytes, "writes": args.lat_writes, "rtt_us": sum,
            "cpu_process_ms": cpu.process_ms, "cpu_vm_busy_ms": cpu.machine_busy_ms});
    }
    Ok(out)
}

struct Raw {
    link: RdmaLink,
    rx: Receiver<Report>,
    region: RemoteMr,
    seq: u64,
    limit: Duration,
}

impl Raw {
    /// `n` writes of `bytes`, at most `window` not completed; the time until the last
    /// completion.
    fn pipelined(&mut self, bytes: usize, n: u64, window: usize) -> Result<Duration, String> {
        let data = Bytes::from(vec![0x5a; bytes]);
        let slots = (self.region.len / bytes as u64).max(1);
        let t0 = Instant::now();
        let (mut issued, mut completed) = (0u64, 0u64);
        while completed < n {
            while issued < n && issued - completed < window as u64 {
                let seq = self.seq + issued;
                let marker = Frame::new(MsgType::Data, Flags::empty(), 1, seq, 0, Bytes::new());
                let write = OneSided {
                    data: data.clone(),
                    remote: self.region,
                    remote_offset: (seq % slots) * bytes as u64,
                };
                let tag = LocalDone {
                    client: ClientId::new(1),
                    seq,
                };
                self.link
                    .try_send_with_write(marker, write, Some(tag))
                    .map_err(|e| format!("write {seq}: {e}"))?;
                issued += 1;
            }
            let left = self.limit.saturating_sub(t0.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(Report::Done(n)) => completed += n,
                Ok(Report::Closed) => return Err("the link closed".into()),
                Err(_) => return Err("no completion within --phase-timeout".into()),
            }
        }
        self.seq += n;
        Ok(t0.elapsed())
    }
}

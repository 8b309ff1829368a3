//! `link_one_sided`, the lane's own scenario (after the verbs-shim suite): one RDMA link
//! (`peercm-cm-rdma-link`) on the first HCA; the server registers a 1 MiB region in the
//! protection domain its link lives in (`PreparedLink::new_in`), the client sends 1000
//! one-sided writes (random sizes up to 4 KiB at random offsets, each followed by its marker
//! frame, `RdmaLink::send_with_write`); the server receives every marker in order and then
//! finds the region equal to the model both sides compute from the same seed.

use super::link_steps::{cfg, recv, run_side, send, STEP};
use bytes::Bytes;
use peercm_cm_proto::frame::{Flags, MsgType};
use peercm_cm_proto::session::LocalDone;
use peercm_cm_proto::{Frame, Header};
use peercm_cm_rdma_link::{LinkCloseReason, LinkSink, LocalEndpoint, OneSided, PreparedLink};
use peercm_verbs_shim::scenarios::{Env, Exchange, Outcome, ScenarioError};
use peercm_verbs_shim::types::{Access, RemoteMr};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const NAME: &str = "link_one_sided";
const REGION: usize = 1 << 20;
const WRITES: u64 = 1000;
const MAX_WRITE: u64 = 4096;

/// The lane's own scenarios, run after `scenarios::all()`.
pub fn scenarios() -> Vec<(&'static str, peercm_verbs_shim::scenarios::Scenario)> {
    vec![(NAME, link_one_sided)]
}

/// Write `i` of the deterministic sequence: offset, bytes.
fn nth_write(i: u64) -> (u64, Vec<u8>) {
    let mut x = (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let len = 1 + next() % MAX_WRITE;
    let offset = next() % (REGION as u64 - len + 1);
    let data = (0..len).map(|_| (next() >> 56) as u8).collect();
    (offset, data)
}

fn model() -> Vec<u8> {
    let mut m = vec![0u8; REGION];
    for i in 0..WRITES {
        let (o, d) = nth_write(i);
        m[o as usize..o as usize + d.len()].copy_from_slice(&d);
    }
    m
}

struct Sink(mpsc::Sender<Result<u64, String>>);

impl LinkSink for Sink {
    fn frame(&mut self, frame: Frame) -> bool {
        self.0.send(Ok(frame.header.seq)).is_ok()
    }
    fn oversize(&mut self, header: Header) -> bool {
        self.0
            .send(Err(format!("oversize frame {header:?}")))
            .is_ok()
    }
    fn written(&mut self, _bytes: u64, _local_done: Vec<LocalDone>) {}
    fn closed(&mut self, reason: LinkCloseReason) {
        let _ = self.0.send(Err(format!("link closed: {reason}")));
    }
}

fn link_one_sided(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run_side(NAME, env, ex, server, client)
}

fn server(env: &mut Env, ex: &mut dyn Exchange) -> Result<Vec<(String, String)>, String> {
    let h = env.hcas.first().ok_or("no HCA")?.device.clone();
    let device = env.provider.open(&h).map_err(|e| e.to_string())?;
    let pd = device.clone().alloc_pd().map_err(|e| e.to_string())?;
    let mr = pd
        .clone()
        .reg_mr(REGION, Access::LOCAL_WRITE | Access::REMOTE_WRITE)
        .map_err(|e| format!("registering the region: {e}"))?;
    let (prepared, ep) = PreparedLink::new_in(pd, device, cfg(env)?).map_err(|e| e.to_string())?;
    let hello = serde_json::to_vec(&(ep, mr.remote())).map_err(|e| e.to_string())?;
    send(ex, &hello)?;
    let theirs: LocalEndpoint = serde_json::from_slice(&recv(ex, "the client's endpoint")?)
        .map_err(|e| format!("the client's endpoint: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let link = prepared
        .connect(&theirs, Box::new(Sink(tx)))
        .map_err(|e| e.to_string())?;
    send(ex, b"ready")?;
    for i in 0..WRITES {
        match rx.recv_timeout(STEP) {
            Ok(Ok(seq)) if seq == i => {}
            Ok(Ok(seq)) => return Err(format!("marker {seq} arrived, expected {i}")),
            Ok(Err(e)) => return Err(format!("after {i} markers: {e}")),
            Err(e) => return Err(format!("marker {i}: {e}")),
        }
    }
    let got = mr.read(0, REGION).map_err(|e| e.to_string())?;
    let want = model();
    if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(format!("the region differs from the model at byte {at}"));
    }
    send(ex, b"ok")?;
    link.close();
    Ok(vec![
        ("verified_bytes".into(), REGION.to_string()),
        ("markers".into(), WRITES.to_string()),
    ])
}

fn client(env: &mut Env, ex: &mut dyn Exchange) -> Result<Vec<(String, String)>, String> {
    let h = env.hcas.first().ok_or("no HCA")?.device.clone();
    let device = env.provider.open(&h).map_err(|e| e.to_string())?;
    let (prepared, ep) = PreparedLink::new(device, cfg(env)?).map_err(|e| e.to_string())?;
    let (theirs, region): (LocalEndpoint, RemoteMr) =
        serde_json::from_slice(&recv(ex, "the server's endpoint")?)
            .map_err(|e| format!("the server's endpoint: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let link = prepared
        .connect(&theirs, Box::new(Sink(tx)))
        .map_err(|e| e.to_string())?;
    send(ex, &serde_json::to_vec(&ep).map_err(|e| e.to_string())?)?;
    if recv(ex, "the server's link")? != b"ready" {
        return Err("the server did not connect".into());
    }
    let t0 = Instant::now();
    for i in 0..WRITES {
        while link.stats().frames_queued >= 64 {
            if let Ok(Err(e)) = rx.try_recv() {
                return Err(e);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let (offset, data) = nth_write(i);
        let mut header = Vec::with_capacity(12);
        header.extend_from_slice(&offset.to_be_bytes());
        header.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let marker = Frame::new(MsgType::Data, Flags::empty(), 1, i, 0, Bytes::from(header));
        let write = OneSided {
            data: Bytes::from(data),
            remote: region,
            remote_offset: offset,
        };
        link.try_send_with_write(marker, write, None)
            .map_err(|e| format!("write {i}: {e}"))?;
    }
    if recv(ex, "the server's verdict")? != b"ok" {
        return Err("the server did not confirm the region".into());
    }
    let took = t0.elapsed();
    let s = link.stats();
    link.close();
    Ok(vec![
        ("writes".into(), WRITES.to_string()),
        ("writes_completed".into(), s.writes_sent.to_string()),
        ("write_bytes".into(), s.write_bytes_sent.to_string()),
        ("write_ms".into(), took.as_millis().to_string()),
    ])
}

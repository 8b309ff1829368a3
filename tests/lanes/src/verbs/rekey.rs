//! `link_region_rekey`, the lane's fencing scenario (issue 9): the mechanism peercm uses to
//! fence a partner it switched away from, on real rdma_rxe. The server maps a region file (on
//! the guest's tmpfs), registers it in the protection domain its RDMA link (`peercm-cm-rdma-link`)
//! lives in and hands the rkey over; the client's one-sided write with it lands. The server then
//! deregisters the memory region and registers the same mapping anew (the rekey peercm does at
//! a switch): the client's write with the OLD rkey must fail, its link closing with
//! `Completion { status: RemAccessErr, request: OneSidedWrite }`, and the region's bytes must be
//! untouched; over a new link, a write with the NEW rkey lands.

use super::link_steps::{cfg, recv, run_side, send, STEP};
use bytes::Bytes;
use peercm_cm_proto::frame::{Flags, MsgType};
use peercm_cm_proto::session::LocalDone;
use peercm_cm_proto::{Frame, Header};
use peercm_cm_rdma_link::{
    LinkCloseReason, LinkSink, LocalEndpoint, OneSided, PreparedLink, RdmaLink, RequestKind,
};
use peercm_verbs_shim::scenarios::{Env, Exchange, Outcome, ScenarioError};
use peercm_verbs_shim::types::{Access, RemoteMr, WcStatus};
use peercm_verbs_shim::{Device, MappedFile, ProtectionDomain};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const NAME: &str = "link_region_rekey";
const REGION: u64 = 1 << 20;
const CHUNK: usize = 4096;
/// Where each write goes: the first (old rkey, lands), the fenced one (old rkey after the
/// rekey), the last (new rkey).
const AT_FIRST: u64 = 0;
const AT_FENCED: u64 = 64 << 10;
const AT_NEW: u64 = 128 << 10;

pub fn scenarios() -> Vec<(&'static str, peercm_verbs_shim::scenarios::Scenario)> {
    vec![(NAME, link_region_rekey)]
}

fn bytes_of(tag: u8) -> Vec<u8> {
    (0..CHUNK)
        .map(|j| tag ^ (j as u8).wrapping_mul(31))
        .collect()
}

/// What a link's sink reports: a marker's sequence number, or the link's end.
enum Ev {
    Marker(u64),
    Closed(LinkCloseReason),
    Other(String),
}

struct Sink(mpsc::Sender<Ev>);

impl LinkSink for Sink {
    fn frame(&mut self, frame: Frame) -> bool {
        self.0.send(Ev::Marker(frame.header.seq)).is_ok()
    }
    fn oversize(&mut self, header: Header) -> bool {
        self.0
            .send(Ev::Other(format!("oversize {header:?}")))
            .is_ok()
    }
    fn written(&mut self, _bytes: u64, _local_done: Vec<LocalDone>) {}
    fn closed(&mut self, reason: LinkCloseReason) {
        let _ = self.0.send(Ev::Closed(reason));
    }
}

fn link_region_rekey(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run_side(NAME, env, ex, server, client)
}

fn json<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(b).map_err(|e| format!("{what}: {e}"))
}

fn device(env: &Env) -> Result<Arc<dyn Device>, String> {
    let h = env.hcas.first().ok_or("no HCA")?.device.clone();
    env.provider.open(&h).map_err(|e| e.to_string())
}

/// Server: a link in `pd` whose endpoint goes to the client with `extra`; connected to the
/// client's.
fn server_link(
    env: &Env,
    ex: &mut dyn Exchange,
    pd: &Arc<dyn ProtectionDomain>,
    dev: &Arc<dyn Device>,
    extra: RemoteMr,
) -> Result<(RdmaLink, mpsc::Receiver<Ev>), String> {
    let (prepared, ep) =
        PreparedLink::new_in(pd.clone(), dev.clone(), cfg(env)?).map_err(|e| e.to_string())?;
    send(
        ex,
        &serde_json::to_vec(&(ep, extra)).map_err(|e| e.to_string())?,
    )?;
    let theirs: LocalEndpoint = json(&recv(ex, "the client's endpoint")?, "the client's endpoint")?;
    let (tx, rx) = mpsc::channel();
    let link = prepared
        .connect(&theirs, Box::new(Sink(tx)))
        .map_err(|e| e.to_string())?;
    send(ex, b"ready")?;
    Ok((link, rx))
}

/// Client: the other end of `server_link`; returns the link and the rkey the server sent.
fn client_link(
    env: &Env,
    ex: &mut dyn Exchange,
    dev: &Arc<dyn Device>,
) -> Result<(RdmaLink, mpsc::Receiver<Ev>, RemoteMr), String> {
    let (prepared, ep) = PreparedLink::new(dev.clone(), cfg(env)?).map_err(|e| e.to_string())?;
    let (theirs, region): (LocalEndpoint, RemoteMr) =
        json(&recv(ex, "the server's endpoint")?, "the server's endpoint")?;
    let (tx, rx) = mpsc::channel();
    let link = prepared
        .connect(&theirs, Box::new(Sink(tx)))
        .map_err(|e| e.to_string())?;
    send(ex, &serde_json::to_vec(&ep).map_err(|e| e.to_string())?)?;
    if recv(ex, "the server's link")? != b"ready" {
        return Err("the server did not connect".into());
    }
    Ok((link, rx, region))
}

fn wait_marker(rx: &mpsc::Receiver<Ev>, seq: u64) -> Result<(), String> {
    match rx.recv_timeout(STEP) {
        Ok(Ev::Marker(s)) if s == seq => Ok(()),
        Ok(Ev::Marker(s)) => Err(format!("marker {s} arrived, expected {seq}")),
        Ok(Ev::Closed(r)) => Err(format!("the link closed before marker {seq}: {r}")),
        Ok(Ev::Other(e)) => Err(e),
        Err(e) => Err(format!("marker {seq}: {e}")),
    }
}

fn check(mem: &MappedFile, at: u64, want: &[u8], what: &str) -> Result<(), String> {
    let got = mem
        .read(at as usize, want.len())
        .map_err(|e| e.to_string())?;
    if got != want {
        return Err(format!(
            "{what}: the region's bytes at {at} are not what they should be"
        ));
    }
    Ok(())
}

fn server(env: &mut Env, ex: &mut dyn Exchange) -> Result<Vec<(String, String)>, String> {
    let dev = device(env)?;
    let pd = dev.clone().alloc_pd().map_err(|e| e.to_string())?;
    let path = std::env::temp_dir().join(format!(
        "peercm-verbs-lane-rekey.{}.region",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let (mem, _) = MappedFile::create_or_open(&path, REGION).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path); // the mapping keeps the memory
    let mem = Arc::new(mem);
    let access = Access::LOCAL_WRITE | Access::REMOTE_WRITE;
    let mr1 = pd
        .clone()
        .reg_mapped(mem.clone(), access)
        .map_err(|e| e.to_string())?;
    let (link1, rx1) = server_link(env, ex, &pd, &dev, mr1.remote())?;
    wait_marker(&rx1, 0)?;
    check(&mem, AT_FIRST, &bytes_of(1), "the first write (old rkey)")?;
    // The rekey: deregister, register the same mapping anew.
    let t = Instant::now();
    mr1.deregister()
        .map_err(|e| format!("deregistering: {e}"))?;
    let dereg_us = t.elapsed().as_micros();
    let mr2 = pd
        .clone()
        .reg_mapped(mem.clone(), access)
        .map_err(|e| e.to_string())?;
    let (old_rkey, new_rkey) = (mr1.rkey(), mr2.rkey());
    drop(mr1);
    if old_rkey == new_rkey {
        return Err(format!(
            "the new registration has the old rkey {old_rkey:#x}"
        ));
    }
    send(ex, b"rekeyed")?;
    // The client writes with the old rkey; its verdict comes over the exchange.
    let verdict = recv(ex, "the client's fenced write")?;
    let server_link1 = match rx1.recv_timeout(Duration::from_secs(5)) {
        Ok(Ev::Closed(r)) => format!("closed: {r}"),
        Ok(Ev::Marker(s)) => return Err(format!("marker {s} of the fenced write arrived")),
        Ok(Ev::Other(e)) => e,
        Err(_) => "still open after 5 s".into(),
    };
    link1.close();
    if verdict != b"fenced" {
        return Err(format!("client: {}", String::from_utf8_lossy(&verdict)));
    }
    check(&mem, AT_FENCED, &[0u8; CHUNK], "after the fenced write")?;
    check(&mem, AT_FIRST, &bytes_of(1), "after the fenced write")?;
    // A new link; the new rkey works.
    let (link2, rx2) = server_link(env, ex, &pd, &dev, mr2.remote())?;
    wait_marker(&rx2, 0)?;
    check(&mem, AT_NEW, &bytes_of(3), "the write with the new rkey")?;
    check(&mem, AT_FENCED, &[0u8; CHUNK], "at the end")?;
    send(ex, b"ok")?;
    link2.close();
    Ok(vec![
        ("old_rkey".into(), format!("{old_rkey:#x}")),
        ("new_rkey".into(), format!("{new_rkey:#x}")),
        ("dereg_us".into(), dereg_us.to_string()),
        ("server_link_after_fenced_write".into(), server_link1),
    ])
}

fn write(link: &RdmaLink, seq: u64, region: RemoteMr, at: u64, tag: u8) -> Result<(), String> {
    let mut header = Vec::with_capacity(12);
    header.extend_from_slice(&at.to_be_bytes());
    header.extend_from_slice(&(CHUNK as u32).to_be_bytes());
    let marker = Frame::new(
        MsgType::Data,
        Flags::empty(),
        1,
        seq,
        0,
        Bytes::from(header),
    );
    let w = OneSided {
        data: Bytes::from(bytes_of(tag)),
        remote: region,
        remote_offset: at,
    };
    link.try_send_with_write(marker, w, None)
        .map_err(|e| format!("write {seq}: {e}"))
}

fn client(env: &mut Env, ex: &mut dyn Exchange) -> Result<Vec<(String, String)>, String> {
    let dev = device(env)?;
    let (link1, rx1, old) = client_link(env, ex, &dev)?;
    write(&link1, 0, old, AT_FIRST, 1)?;
    if recv(ex, "the rekey")? != b"rekeyed" {
        return Err("the server did not rekey".into());
    }
    let t = Instant::now();
    let res = write(&link1, 1, old, AT_FENCED, 2).and_then(|()| match rx1.recv_timeout(STEP) {
        Ok(Ev::Closed(r)) => Ok(r),
        Ok(Ev::Marker(s)) => Err(format!("marker {s} came back on the client's link")),
        Ok(Ev::Other(e)) => Err(e),
        Err(e) => Err(format!("the write with the old rkey never failed: {e}")),
    });
    let failed_us = t.elapsed().as_micros();
    link1.close();
    let reason = match res {
        Ok(r) => r,
        Err(e) => {
            let _ = send(ex, e.as_bytes());
            return Err(e);
        }
    };
    let want = matches!(
        reason,
        LinkCloseReason::Completion {
            status: WcStatus::RemAccessErr,
            request: RequestKind::OneSidedWrite,
            ..
        }
    );
    if !want {
        let e = format!(
            "the write with the old rkey closed the link with {reason:?}, not RemAccessErr"
        );
        let _ = send(ex, e.as_bytes());
        return Err(e);
    }
    send(ex, b"fenced")?;
    let (link2, _rx2, new) = client_link(env, ex, &dev)?;
    if new.rkey == old.rkey {
        return Err("the server advertised the old rkey again".into());
    }
    write(&link2, 0, new, AT_NEW, 3)?;
    if recv(ex, "the server's verdict")? != b"ok" {
        return Err("the server did not confirm the region".into());
    }
    link2.close();
    Ok(vec![
        ("fenced_write".into(), format!("{reason}")),
        ("fenced_write_failed_us".into(), failed_us.to_string()),
    ])
}

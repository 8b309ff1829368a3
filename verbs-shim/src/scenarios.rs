//! The scenario suite shared by both backends: each scenario is written once against the
//! [`crate::api`] traits and run by two sides (client and server), each on its own node.
//!
//! - In `cargo test` both sides run in one process on the simulated fabric, joined by an
//!   in-memory [`Exchange`], with faults injected through the simulator.
//! - In the soft-RoCE lane each side runs in its own VM on rdma_rxe, joined by a TCP
//!   [`Exchange`] over the emulated fabric, with faults injected by taking a NIC down.
//!
//! The [`Exchange`] is the bootstrap channel of the real system: the sides swap QP endpoints
//! and memory-region keys over it ("slam connect"), then talk only through verbs.
//!
//! A scenario returns an [`Outcome`] with measured details (counts, statuses, timings) or a
//! [`ScenarioError`] saying exactly which expectation failed.
//!
//! # The suite ([`all`])
//!
//! | name | what it checks |
//! |---|---|
//! | `ping_pong` | SENDs both ways with receives pre-posted, contents and immediates checked; round trips per second |
//! | `rdma_write` | the client writes a pattern into the server's MR; the server verifies it after "done" |
//! | `write_with_imm` | the server gets `RecvRdmaWithImm` with the right immediate and length, data in its MR |
//! | `rdma_read` | the client reads a pattern out of the server's MR |
//! | `bad_rkey` | a WRITE with a wrong rkey completes `RemAccessErr`, the next one flushes, the server's MR is untouched |
//! | `deregistered_mr` | after the server deregisters its MR a WRITE completes `RemAccessErr` (the fencing primitive) |
//! | `cable_cut` | two HCAs: cutting HCA0 raises `PortError`, fails QP0's requests, QP1 keeps working, restore raises `PortActive` and a fresh QP on HCA0 works |
//!
//! # Rules every scenario follows
//!
//! - Only the client injects faults, and the server's assertions hold whether the fault took
//!   both ends down (simulated cable cut) or only the client's port (rdma_rxe admin-down).
//! - Receives are posted before the QP is connected, and the sides meet at a `READY` message
//!   before the first SEND, so no scenario depends on RNR retries or on the partner's timing.
//! - Every wait is bounded ([`STEP_TIMEOUT`] and friends); every failure names what was
//!   expected and what happened. A side that fails tells its partner (an `ABORT` message), so
//!   the partner fails at once instead of timing out.
//! - Messages on the [`Exchange`] are `[kind: u8][payload]`; endpoints and memory keys use the
//!   fixed little-endian layouts of [`encode_endpoint`] and [`encode_remote_mr`].

use crate::api::{CompletionQueue, Device, MemoryRegion, ProtectionDomain, Provider, QueuePair};
use crate::types::{
    Access, AsyncEvent, PortState, QpCaps, QpEndpoint, QpParams, QpState, RecvWr, RemoteMr, SendWr,
    Sge, WcOpcode, WcStatus, WorkCompletion,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// The bootstrap side channel between the two sides of a scenario.
pub trait Exchange: Send {
    /// Sends one message.
    fn send(&mut self, msg: &[u8]) -> std::io::Result<()>;
    /// Receives one message, waiting at most `timeout`.
    fn recv(&mut self, timeout: Duration) -> std::io::Result<Vec<u8>>;
}

/// Cuts and restores the cable of one HCA (by index into [`Env::hcas`]) on this side.
pub trait FaultInjector: Send {
    /// Takes the HCA's link down.
    fn cut(&mut self, hca: usize) -> Result<(), String>;
    /// Brings it back.
    fn restore(&mut self, hca: usize) -> Result<(), String>;
}

/// Which half of a scenario this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Initiates the traffic and owns the fault injection.
    Client,
    /// Answers.
    Server,
}

/// One HCA (device + port + GID index) to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcaSel {
    /// Device name.
    pub device: String,
    /// Port.
    pub port: u8,
    /// GID index addressing the partner.
    pub gid_index: u8,
}

/// What a scenario runs with.
pub struct Env {
    /// Where devices come from.
    pub provider: Arc<dyn Provider>,
    /// The HCAs to use, in cable order (two for the cable-cut scenario).
    pub hcas: Vec<HcaSel>,
    /// This side.
    pub side: Side,
    /// Fault injection for this side.
    pub faults: Box<dyn FaultInjector>,
    /// QP parameters (ports and GID indexes are overridden per HCA).
    pub params: QpParams,
}

/// What a scenario measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Scenario name.
    pub name: &'static str,
    /// Measured details, as name/value pairs for the log.
    pub details: Vec<(String, String)>,
    /// Wall time of this side.
    pub elapsed: Duration,
}

/// A scenario expectation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("scenario {scenario} ({side:?}): {what}")]
pub struct ScenarioError {
    /// Scenario name.
    pub scenario: &'static str,
    /// Side.
    pub side: Side,
    /// What failed.
    pub what: String,
}

/// A scenario: run by both sides with the same name.
pub type Scenario = fn(&mut Env, &mut dyn Exchange) -> Result<Outcome, ScenarioError>;

// =============================================================================================
// The suite

/// Every scenario, in the order the lanes run them.
pub fn all() -> Vec<(&'static str, Scenario)> {
    vec![
        ("ping_pong", ping_pong as Scenario),
        ("rdma_write", rdma_write),
        ("write_with_imm", write_with_imm),
        ("rdma_read", rdma_read),
        ("bad_rkey", bad_rkey),
        ("deregistered_mr", deregistered_mr),
        ("cable_cut", cable_cut),
    ]
}

/// Longest wait for one exchange message or one completion.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for an async event (rdma_rxe raises port events within ~50 ms).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Wire layout of the exchange messages

/// Size of an encoded [`QpEndpoint`].
pub const ENDPOINT_WIRE_LEN: usize = 30;
/// Size of an encoded [`RemoteMr`].
pub const REMOTE_MR_WIRE_LEN: usize = 20;

/// `qpn u32 | psn u32 | gid [16] | mtu_bytes u32 | lid u16`, little-endian, 30 bytes.
pub fn encode_endpoint(ep: &QpEndpoint) -> [u8; ENDPOINT_WIRE_LEN] {
    let mut b = [0u8; ENDPOINT_WIRE_LEN];
    b[0..4].copy_from_slice(&ep.qpn.to_le_bytes());
    b[4..8].copy_from_slice(&ep.psn.to_le_bytes());
    b[8..24].copy_from_slice(&ep.gid);
    b[24..28].copy_from_slice(&ep.mtu_bytes.to_le_bytes());
    b[28..30].copy_from_slice(&ep.lid.to_le_bytes());
    b
}

/// The inverse of [`encode_endpoint`]; `None` unless `b` is exactly 30 bytes.
pub fn decode_endpoint(b: &[u8]) -> Option<QpEndpoint> {
    let b: &[u8; ENDPOINT_WIRE_LEN] = b.try_into().ok()?;
    let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let mut gid = [0u8; 16];
    gid.copy_from_slice(&b[8..24]);
    Some(QpEndpoint {
        qpn: u32_at(0),
        psn: u32_at(4),
        gid,
        mtu_bytes: u32_at(24),
        lid: u16::from_le_bytes([b[28], b[29]]),
    })
}

/// `addr u64 | rkey u32 | len u64`, little-endian, 20 bytes.
pub fn encode_remote_mr(mr: &RemoteMr) -> [u8; REMOTE_MR_WIRE_LEN] {
    let mut b = [0u8; REMOTE_MR_WIRE_LEN];
    b[0..8].copy_from_slice(&mr.addr.to_le_bytes());
    b[8..12].copy_from_slice(&mr.rkey.to_le_bytes());
    b[12..20].copy_from_slice(&mr.len.to_le_bytes());
    b
}

/// The inverse of [`encode_remote_mr`]; `None` unless `b` is exactly 20 bytes.
pub fn decode_remote_mr(b: &[u8]) -> Option<RemoteMr> {
    let b: &[u8; REMOTE_MR_WIRE_LEN] = b.try_into().ok()?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[0..8]);
    let mut l = [0u8; 8];
    l.copy_from_slice(&b[12..20]);
    Some(RemoteMr {
        addr: u64::from_le_bytes(a),
        rkey: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        len: u64::from_le_bytes(l),
    })
}

const K_ENDPOINT: u8 = 1;
const K_MR: u8 = 2;
const K_READY: u8 = 3;
const K_DONE: u8 = 4;
const K_OK: u8 = 5;
const K_INFO: u8 = 6;
const K_ABORT: u8 = 0xEE;

fn kind_name(k: u8) -> String {
    match k {
        K_ENDPOINT => "ENDPOINT".into(),
        K_MR => "MR".into(),
        K_READY => "READY".into(),
        K_DONE => "DONE".into(),
        K_OK => "OK".into(),
        K_INFO => "INFO".into(),
        K_ABORT => "ABORT".into(),
        other => format!("unknown kind {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario plumbing

/// Who is failing, for error messages.
#[derive(Clone, Copy)]
struct At {
    scenario: &'static str,
    side: Side,
}

impl At {
    fn err(self, what: impl Into<String>) -> ScenarioError {
        ScenarioError {
            scenario: self.scenario,
            side: self.side,
            what: what.into(),
        }
    }
}

trait OrFail<T> {
    fn or_fail(self, at: At, what: &str) -> Result<T, ScenarioError>;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, at: At, what: &str) -> Result<T, ScenarioError> {
        self.map_err(|e| at.err(format!("{what}: {e}")))
    }
}

struct Ctx<'a> {
    at: At,
    ex: &'a mut dyn Exchange,
    details: Vec<(String, String)>,
    partner_failed: bool,
}

impl Ctx<'_> {
    fn detail(&mut self, name: &str, value: impl std::fmt::Display) {
        self.details.push((name.to_string(), value.to_string()));
    }

    fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), ScenarioError> {
        let mut m = Vec::with_capacity(payload.len() + 1);
        m.push(kind);
        m.extend_from_slice(payload);
        match self.ex.send(&m) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The partner may have hung up because it failed: say why if it told us.
                if let Ok(m) = self.ex.recv(Duration::ZERO) {
                    if let Some((&K_ABORT, why)) = m.split_first() {
                        self.partner_failed = true;
                        return Err(self.at.err(format!(
                            "the partner failed before this side could send {}: {}",
                            kind_name(kind),
                            String::from_utf8_lossy(why)
                        )));
                    }
                }
                Err(self
                    .at
                    .err(format!("sending {} to the partner: {e}", kind_name(kind))))
            }
        }
    }

    /// Receives the next message, which must be of `kind`.
    fn recv(&mut self, kind: u8, what: &str) -> Result<Vec<u8>, ScenarioError> {
        let at = self.at;
        let m = self.ex.recv(STEP_TIMEOUT).or_fail(
            at,
            &format!("waiting for {} ({what}) from the partner", kind_name(kind)),
        )?;
        match m.split_first() {
            Some((&K_ABORT, why)) => {
                self.partner_failed = true;
                Err(at.err(format!(
                    "the partner failed while this side waited for {} ({what}): {}",
                    kind_name(kind),
                    String::from_utf8_lossy(why)
                )))
            }
            Some((&k, payload)) if k == kind => Ok(payload.to_vec()),
            Some((&k, _)) => Err(at.err(format!(
                "expected {} ({what}) from the partner, got {}",
                kind_name(kind),
                kind_name(k)
            ))),
            None => Err(at.err(format!(
                "expected {} ({what}), got an empty message",
                kind_name(kind)
            ))),
        }
    }

    /// Both sides say `label` and expect the other to have said the same.
    fn sync(&mut self, label: &str) -> Result<(), ScenarioError> {
        self.send(K_READY, label.as_bytes())?;
        let got = self.recv(K_READY, label)?;
        if got != label.as_bytes() {
            return Err(self.at.err(format!(
                "out of step: this side is at {label:?}, the partner at {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        Ok(())
    }

    fn send_u64s(&mut self, kind: u8, values: &[u64]) -> Result<(), ScenarioError> {
        let b: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.send(kind, &b)
    }

    fn recv_u64s(&mut self, kind: u8, what: &str, n: usize) -> Result<Vec<u64>, ScenarioError> {
        let b = self.recv(kind, what)?;
        if b.len() != n * 8 {
            return Err(self.at.err(format!(
                "{what}: expected {n} numbers ({} bytes), got {} bytes",
                n * 8,
                b.len()
            )));
        }
        Ok(b.chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                u64::from_le_bytes(a)
            })
            .collect())
    }
}

/// Runs one side's body with the plumbing: timing, details, and telling the partner on failure.
fn run(
    scenario: &'static str,
    env: &mut Env,
    ex: &mut dyn Exchange,
    body: impl FnOnce(&mut Ctx<'_>, &mut Env) -> Result<(), ScenarioError>,
) -> Result<Outcome, ScenarioError> {
    let started = Instant::now();
    let mut ctx = Ctx {
        at: At {
            scenario,
            side: env.side,
        },
        ex,
        details: Vec::new(),
        partner_failed: false,
    };
    match body(&mut ctx, env) {
        Ok(()) => Ok(Outcome {
            name: scenario,
            details: ctx.details,
            elapsed: started.elapsed(),
        }),
        Err(e) => {
            if !ctx.partner_failed {
                let mut m = vec![K_ABORT];
                m.extend_from_slice(e.what.as_bytes());
                // Best effort: the partner may be gone already.
                let _ = ctx.ex.send(&m);
            }
            Err(e)
        }
    }
}

/// One opened HCA with a protection domain and its QP parameters.
struct Hca {
    dev: Arc<dyn Device>,
    pd: Arc<dyn ProtectionDomain>,
    params: QpParams,
    label: String,
}

fn open_hca(at: At, env: &Env, index: usize) -> Result<Hca, ScenarioError> {
    let sel = env.hcas.get(index).ok_or_else(|| {
        at.err(format!(
            "this scenario needs HCA {index} but the environment lists {} HCA(s)",
            env.hcas.len()
        ))
    })?;
    let label = format!("{}:{}", sel.device, sel.port);
    let dev = env
        .provider
        .open(&sel.device)
        .or_fail(at, &format!("opening {label}"))?;
    let port = dev
        .query_port(sel.port)
        .or_fail(at, &format!("querying {label}"))?;
    if port.state != PortState::Active {
        return Err(at.err(format!(
            "{label} is {:?} before the scenario, expected ACTIVE",
            port.state
        )));
    }
    let pd = dev
        .clone()
        .alloc_pd()
        .or_fail(at, &format!("allocating a PD on {label}"))?;
    Ok(Hca {
        dev,
        pd,
        params: QpParams {
            port: sel.port,
            gid_index: sel.gid_index,
            ..env.params
        },
        label,
    })
}

impl Hca {
    fn reg(
        &self,
        at: At,
        len: usize,
        access: Access,
    ) -> Result<Arc<dyn MemoryRegion>, ScenarioError> {
        self.pd
            .clone()
            .reg_mr(len, access)
            .or_fail(at, &format!("registering {len} bytes on {}", self.label))
    }

    /// A QP in INIT with its own send and receive CQs.
    fn conn(&self, at: At, caps: QpCaps) -> Result<Conn, ScenarioError> {
        let what = format!("creating a QP on {}", self.label);
        let scq = self
            .dev
            .clone()
            .create_cq(caps.max_send_wr * 2 + 16)
            .or_fail(at, &what)?;
        let rcq = self
            .dev
            .clone()
            .create_cq(caps.max_recv_wr * 2 + 16)
            .or_fail(at, &what)?;
        let mut qp = self
            .pd
            .clone()
            .create_qp(scq.clone(), rcq.clone(), caps)
            .or_fail(at, &what)?;
        qp.to_init(&self.params).or_fail(
            at,
            &format!("moving QP {:#x} on {} to INIT", qp.qpn(), self.label),
        )?;
        Ok(Conn {
            qp,
            scq: CqReader::new(scq),
            rcq: CqReader::new(rcq),
        })
    }

    /// Swaps endpoints with the partner and moves `conn` to RTS ("slam connect").
    fn connect(
        &self,
        ctx: &mut Ctx<'_>,
        conn: &mut Conn,
        psn: u32,
    ) -> Result<QpEndpoint, ScenarioError> {
        let at = ctx.at;
        let qpn = conn.qp.qpn();
        let ours = conn
            .qp
            .endpoint(&self.params, psn)
            .or_fail(at, &format!("endpoint of QP {qpn:#x} on {}", self.label))?;
        ctx.send(K_ENDPOINT, &encode_endpoint(&ours))?;
        let b = ctx.recv(K_ENDPOINT, &format!("the partner's QP for {}", self.label))?;
        let theirs = decode_endpoint(&b).ok_or_else(|| {
            at.err(format!(
                "partner endpoint: expected {ENDPOINT_WIRE_LEN} bytes, got {}",
                b.len()
            ))
        })?;
        conn.qp.to_rtr(&self.params, &theirs).or_fail(
            at,
            &format!(
                "QP {qpn:#x} on {} to RTR (remote QP {:#x})",
                self.label, theirs.qpn
            ),
        )?;
        conn.qp
            .to_rts(&self.params, psn)
            .or_fail(at, &format!("QP {qpn:#x} on {} to RTS", self.label))?;
        Ok(theirs)
    }
}

struct Conn {
    qp: Box<dyn QueuePair>,
    scq: CqReader,
    rcq: CqReader,
}

/// A CQ with a small buffer, so completions can be taken one at a time.
struct CqReader {
    cq: Arc<dyn CompletionQueue>,
    buf: VecDeque<WorkCompletion>,
}

impl CqReader {
    fn new(cq: Arc<dyn CompletionQueue>) -> Self {
        CqReader {
            cq,
            buf: VecDeque::new(),
        }
    }

    fn next(&mut self, at: At, timeout: Duration) -> Result<Option<WorkCompletion>, ScenarioError> {
        if let Some(wc) = self.buf.pop_front() {
            return Ok(Some(wc));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self.cq.wait(32, left).or_fail(at, "waiting on a CQ")?;
            self.buf.extend(got);
            if let Some(wc) = self.buf.pop_front() {
                return Ok(Some(wc));
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }

    /// The next completion, which must be `wr_id` with `status` (and `opcode`, on success).
    fn expect(
        &mut self,
        at: At,
        what: &str,
        wr_id: u64,
        status: WcStatus,
        opcode: WcOpcode,
    ) -> Result<WorkCompletion, ScenarioError> {
        let wc = self.next(at, STEP_TIMEOUT)?.ok_or_else(|| {
            at.err(format!(
                "{what}: expected a completion (wr_id {wr_id}, {status:?}) within {STEP_TIMEOUT:?}, got none"
            ))
        })?;
        let opcode_ok = status != WcStatus::Success || wc.opcode == opcode;
        if wc.wr_id != wr_id || wc.status != status || !opcode_ok {
            return Err(at.err(format!(
                "{what}: expected wr_id {wr_id} {status:?} {opcode:?}, got wr_id {} {:?} {:?} (byte_len {}, imm {:?})",
                wc.wr_id, wc.status, wc.opcode, wc.byte_len, wc.imm
            )));
        }
        Ok(wc)
    }
}

fn sge(mr: &Arc<dyn MemoryRegion>, offset: usize, len: usize) -> Sge {
    Sge {
        mr: mr.clone(),
        offset: offset as u64,
        len: len as u32,
    }
}

/// Deterministic bytes for `tag` (xorshift), so both sides can compute what to expect.
fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Checks `got == want`, naming the first differing offset.
fn same_bytes(at: At, what: &str, got: &[u8], want: &[u8]) -> Result<(), ScenarioError> {
    if got.len() != want.len() {
        return Err(at.err(format!(
            "{what}: expected {} bytes, got {}",
            want.len(),
            got.len()
        )));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(at.err(format!(
            "{what}: bytes differ from offset {i} (expected {:#04x}, got {:#04x})",
            want[i], got[i]
        ))),
    }
}

fn post_send(at: At, conn: &Conn, wr: SendWr, what: &str) -> Result<(), ScenarioError> {
    conn.qp.post_send(wr).or_fail(at, what)
}

fn post_recv(at: At, conn: &Conn, wr_id: u64, local: Sge) -> Result<(), ScenarioError> {
    conn.qp
        .post_recv(RecvWr { wr_id, local })
        .or_fail(at, &format!("posting receive {wr_id}"))
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn per_s(count: usize, d: Duration) -> String {
    format!("{:.0}", count as f64 / d.as_secs_f64().max(1e-9))
}

fn mb_per_s(bytes: usize, d: Duration) -> String {
    format!("{:.1}", bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9))
}

fn caps(send: u32, recv: u32) -> QpCaps {
    QpCaps {
        max_send_wr: send,
        max_recv_wr: recv,
        max_sge: 1,
    }
}

fn psn_for(side: Side, n: u32) -> u32 {
    match side {
        Side::Client => 0x10_0000 + n * 0x1000,
        Side::Server => 0x20_0000 + n * 0x1000,
    }
}

// ---------------------------------------------------------------------------------------------
// ping_pong

const PING_ROUNDS: usize = 100;
const PING_LEN: usize = 64;

fn ping_msg(from: Side, i: usize) -> Vec<u8> {
    let tag = match from {
        Side::Client => 0x1000_0000,
        Side::Server => 0x2000_0000,
    };
    pattern(tag + i as u64, PING_LEN)
}

/// SENDs both ways with receives pre-posted; contents (and the client's immediates) checked.
pub fn ping_pong(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("ping_pong", env, ex, |ctx, env| {
        let at = ctx.at;
        let side = env.side;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, PING_ROUNDS as u32 + 4))?;
        let rmr = hca.reg(at, PING_ROUNDS * PING_LEN, Access::LOCAL_WRITE)?;
        let smr = hca.reg(at, PING_LEN, Access::LOCAL_WRITE)?;
        for i in 0..PING_ROUNDS {
            post_recv(at, &conn, i as u64, sge(&rmr, i * PING_LEN, PING_LEN))?;
        }
        hca.connect(ctx, &mut conn, psn_for(side, 0))?;
        ctx.sync("ping_pong: receives posted")?;
        let peer = match side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        let (mut rtt_min, mut rtt_max) = (Duration::MAX, Duration::ZERO);
        let t0 = Instant::now();
        for i in 0..PING_ROUNDS {
            let round = Instant::now();
            let send = |ctx: &mut Ctx<'_>, conn: &mut Conn| -> Result<(), ScenarioError> {
                smr.write(0, &ping_msg(side, i))
                    .or_fail(ctx.at, "filling the send buffer")?;
                let imm = (side == Side::Client).then_some(i as u32);
                post_send(
                    ctx.at,
                    conn,
                    SendWr::Send {
                        wr_id: i as u64,
                        local: sge(&smr, 0, PING_LEN),
                        imm,
                    },
                    &format!("posting send {i}"),
                )?;
                conn.scq.expect(
                    ctx.at,
                    &format!("send {i}"),
                    i as u64,
                    WcStatus::Success,
                    WcOpcode::Send,
                )?;
                Ok(())
            };
            let recv = |ctx: &mut Ctx<'_>, conn: &mut Conn| -> Result<(), ScenarioError> {
                let what = format!("receive {i}");
                let wc =
                    conn.rcq
                        .expect(ctx.at, &what, i as u64, WcStatus::Success, WcOpcode::Recv)?;
                let want_imm = (peer == Side::Client).then_some(i as u32);
                if wc.byte_len as usize != PING_LEN || wc.imm != want_imm {
                    return Err(ctx.at.err(format!(
                        "{what}: expected byte_len {PING_LEN} imm {want_imm:?}, got byte_len {} imm {:?}",
                        wc.byte_len, wc.imm
                    )));
                }
                let got = rmr
                    .read(i * PING_LEN, PING_LEN)
                    .or_fail(ctx.at, "reading the receive buffer")?;
                same_bytes(ctx.at, &what, &got, &ping_msg(peer, i))
            };
            if side == Side::Client {
                send(ctx, &mut conn)?;
                recv(ctx, &mut conn)?;
            } else {
                recv(ctx, &mut conn)?;
                send(ctx, &mut conn)?;
            }
            let rtt = round.elapsed();
            rtt_min = rtt_min.min(rtt);
            rtt_max = rtt_max.max(rtt);
        }
        let total = t0.elapsed();
        ctx.sync("ping_pong: done")?;
        ctx.detail("round_trips", PING_ROUNDS);
        ctx.detail("message_bytes", PING_LEN);
        if side == Side::Client {
            ctx.detail("round_trips_per_s", per_s(PING_ROUNDS, total));
            ctx.detail(
                "rtt_avg_us",
                format!("{:.1}", total.as_secs_f64() * 1e6 / PING_ROUNDS as f64),
            );
            ctx.detail("rtt_min_us", format!("{:.1}", rtt_min.as_secs_f64() * 1e6));
            ctx.detail("rtt_max_us", format!("{:.1}", rtt_max.as_secs_f64() * 1e6));
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// rdma_write

const WRITE_LEN: usize = 64 * 1024;
const WRITE_CHUNK: usize = 4096;
const WRITE_TAG: u64 = 0xA11CE;

/// The client writes a pattern into the server's MR; the server verifies it after "done".
pub fn rdma_write(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("rdma_write", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(64, 4))?;
        let want = pattern(WRITE_TAG, WRITE_LEN);
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, WRITE_LEN, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                ctx.recv(K_DONE, "the client finished writing")?;
                let got = mr
                    .read(0, WRITE_LEN)
                    .or_fail(at, "reading the written region")?;
                same_bytes(at, "the region the client wrote", &got, &want)?;
                ctx.detail("verified_bytes", WRITE_LEN);
                ctx.send(K_OK, &[])?;
            }
            Side::Client => {
                let local = hca.reg(at, WRITE_LEN, Access::LOCAL_WRITE)?;
                local
                    .write(0, &want)
                    .or_fail(at, "filling the source buffer")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                if remote.len < WRITE_LEN as u64 {
                    return Err(at.err(format!(
                        "the server's region has {} bytes, need {WRITE_LEN}",
                        remote.len
                    )));
                }
                let chunks = WRITE_LEN / WRITE_CHUNK;
                let t0 = Instant::now();
                for i in 0..chunks {
                    let wr = SendWr::Write {
                        wr_id: i as u64,
                        local: sge(&local, i * WRITE_CHUNK, WRITE_CHUNK),
                        remote,
                        remote_offset: (i * WRITE_CHUNK) as u64,
                        imm: None,
                    };
                    post_send(at, &conn, wr, &format!("posting write {i}"))?;
                }
                for i in 0..chunks {
                    conn.scq.expect(
                        at,
                        &format!("write {i}"),
                        i as u64,
                        WcStatus::Success,
                        WcOpcode::RdmaWrite,
                    )?;
                }
                let took = t0.elapsed();
                ctx.send(K_DONE, &[])?;
                ctx.recv(K_OK, "the server verified the data")?;
                ctx.detail("bytes", WRITE_LEN);
                ctx.detail("writes", chunks);
                ctx.detail("write_mb_per_s", mb_per_s(WRITE_LEN, took));
                ctx.detail("write_ms", ms(took));
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// write_with_imm

const IMM_WRITES: usize = 4;
const IMM_LEN: usize = 1024;
const IMM_STRIDE: usize = 4096;
const IMM_SKEW: usize = 100;
const IMM_BASE: u32 = 0xC0DE_0000;

fn imm_image() -> Vec<u8> {
    let mut image = vec![0u8; IMM_WRITES * IMM_STRIDE];
    for i in 0..IMM_WRITES {
        let o = i * IMM_STRIDE + IMM_SKEW;
        image[o..o + IMM_LEN].copy_from_slice(&pattern(0x1A4 + i as u64, IMM_LEN));
    }
    image
}

/// WRITE_WITH_IMM: the server gets `RecvRdmaWithImm` with the immediate and length, and the
/// data (only the data) in its MR.
pub fn write_with_imm(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("write_with_imm", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, IMM_WRITES as u32 + 4))?;
        let image = imm_image();
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, image.len(), Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
                let rbuf = hca.reg(at, IMM_WRITES * 16, Access::LOCAL_WRITE)?;
                for i in 0..IMM_WRITES {
                    post_recv(at, &conn, 100 + i as u64, sge(&rbuf, i * 16, 16))?;
                }
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                for i in 0..IMM_WRITES {
                    let what = format!("receive for write-with-immediate {i}");
                    let wc = conn.rcq.expect(
                        at,
                        &what,
                        100 + i as u64,
                        WcStatus::Success,
                        WcOpcode::RecvRdmaWithImm,
                    )?;
                    let want_imm = IMM_BASE + i as u32;
                    if wc.imm != Some(want_imm) || wc.byte_len as usize != IMM_LEN {
                        return Err(at.err(format!(
                            "{what}: expected imm {want_imm:#x} byte_len {IMM_LEN}, got imm {:?} byte_len {}",
                            wc.imm.map(|v| format!("{v:#x}")),
                            wc.byte_len
                        )));
                    }
                }
                let got = mr
                    .read(0, image.len())
                    .or_fail(at, "reading the written region")?;
                same_bytes(
                    at,
                    "the region after the writes (written ranges and zeros around them)",
                    &got,
                    &image,
                )?;
                ctx.detail("immediates_verified", IMM_WRITES);
                ctx.send(K_OK, &[])?;
            }
            Side::Client => {
                let local = hca.reg(at, image.len(), Access::LOCAL_WRITE)?;
                local
                    .write(0, &image)
                    .or_fail(at, "filling the source buffer")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                let t0 = Instant::now();
                for i in 0..IMM_WRITES {
                    let o = i * IMM_STRIDE + IMM_SKEW;
                    let wr = SendWr::Write {
                        wr_id: i as u64,
                        local: sge(&local, o, IMM_LEN),
                        remote,
                        remote_offset: o as u64,
                        imm: Some(IMM_BASE + i as u32),
                    };
                    post_send(at, &conn, wr, &format!("posting write-with-immediate {i}"))?;
                }
                for i in 0..IMM_WRITES {
                    conn.scq.expect(
                        at,
                        &format!("write-with-immediate {i}"),
                        i as u64,
                        WcStatus::Success,
                        WcOpcode::RdmaWrite,
                    )?;
                }
                let took = t0.elapsed();
                ctx.recv(K_OK, "the server verified immediates and data")?;
                ctx.detail("writes_with_imm", IMM_WRITES);
                ctx.detail("write_ms", ms(took));
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// rdma_read

const READ_LEN: usize = 32 * 1024;
const READ_CHUNK: usize = 4096;
const READ_TAG: u64 = 0xBEEF;

/// The client reads a pattern out of the server's MR.
pub fn rdma_read(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("rdma_read", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, 4))?;
        let want = pattern(READ_TAG, READ_LEN);
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, READ_LEN, Access::LOCAL_WRITE | Access::REMOTE_READ)?;
                mr.write(0, &want)
                    .or_fail(at, "filling the region to be read")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                ctx.recv(K_DONE, "the client finished reading")?;
                ctx.detail("served_bytes", READ_LEN);
            }
            Side::Client => {
                let local = hca.reg(at, READ_LEN, Access::LOCAL_WRITE)?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                if remote.len < READ_LEN as u64 {
                    return Err(at.err(format!(
                        "the server's region has {} bytes, need {READ_LEN}",
                        remote.len
                    )));
                }
                let chunks = READ_LEN / READ_CHUNK;
                let t0 = Instant::now();
                for i in 0..chunks {
                    let wr = SendWr::Read {
                        wr_id: i as u64,
                        local: sge(&local, i * READ_CHUNK, READ_CHUNK),
                        remote,
                        remote_offset: (i * READ_CHUNK) as u64,
                    };
                    post_send(at, &conn, wr, &format!("posting read {i}"))?;
                }
                for i in 0..chunks {
                    conn.scq.expect(
                        at,
                        &format!("read {i}"),
                        i as u64,
                        WcStatus::Success,
                        WcOpcode::RdmaRead,
                    )?;
                }
                let took = t0.elapsed();
                let got = local
                    .read(0, READ_LEN)
                    .or_fail(at, "reading the local buffer")?;
                same_bytes(at, "the data read from the server", &got, &want)?;
                ctx.send(K_DONE, &[])?;
                ctx.detail("bytes", READ_LEN);
                ctx.detail("reads", chunks);
                ctx.detail("read_mb_per_s", mb_per_s(READ_LEN, took));
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// bad_rkey

const FENCE_LEN: usize = 4096;

/// A WRITE with a wrong rkey completes `RemAccessErr` at the client and the WRITE posted after
/// it flushes; the server's region stays untouched.
pub fn bad_rkey(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("bad_rkey", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, 4))?;
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, FENCE_LEN, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                ctx.recv(K_DONE, "the client's writes completed")?;
                let got = mr.read(0, FENCE_LEN).or_fail(at, "reading the region")?;
                same_bytes(
                    at,
                    "the region after writes with a bad rkey (must stay zero)",
                    &got,
                    &[0; FENCE_LEN],
                )?;
                // rdma_rxe moves the responder QP to ERR on an rkey violation; not asserted.
                ctx.detail("server_qp_state", format!("{:?}", conn.qp.state()));
                ctx.send(K_OK, &[])?;
            }
            Side::Client => {
                let local = hca.reg(at, FENCE_LEN, Access::LOCAL_WRITE)?;
                local
                    .write(0, &pattern(0xBAD, FENCE_LEN))
                    .or_fail(at, "filling the source buffer")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                let bad = RemoteMr {
                    rkey: !remote.rkey,
                    ..remote
                };
                let t0 = Instant::now();
                let write = |wr_id: u64, remote: RemoteMr| SendWr::Write {
                    wr_id,
                    local: sge(&local, 0, FENCE_LEN),
                    remote,
                    remote_offset: 0,
                    imm: None,
                };
                post_send(
                    at,
                    &conn,
                    write(1, bad),
                    "posting the write with a bad rkey",
                )?;
                post_send(at, &conn, write(2, remote), "posting the write after it")?;
                conn.scq.expect(
                    at,
                    "the write with a bad rkey",
                    1,
                    WcStatus::RemAccessErr,
                    WcOpcode::RdmaWrite,
                )?;
                let took = t0.elapsed();
                conn.scq.expect(
                    at,
                    "the write posted after the bad one",
                    2,
                    WcStatus::WrFlushErr,
                    WcOpcode::RdmaWrite,
                )?;
                let state = conn.qp.state();
                if state != QpState::Err {
                    return Err(at.err(format!(
                        "after RemAccessErr the QP should be in Err, it is in {state:?}"
                    )));
                }
                ctx.send(K_DONE, &[])?;
                ctx.recv(K_OK, "the server found its region untouched")?;
                ctx.detail("bad_rkey_status", "RemAccessErr");
                ctx.detail("next_wr_status", "WrFlushErr");
                ctx.detail("post_to_error_ms", ms(took));
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// deregistered_mr

/// Fencing: a WRITE works, the server deregisters its region, the next WRITE completes
/// `RemAccessErr` and the region keeps the first write's bytes.
pub fn deregistered_mr(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("deregistered_mr", env, ex, |ctx, env| {
        let at = ctx.at;
        let hca = open_hca(at, env, 0)?;
        let mut conn = hca.conn(at, caps(16, 4))?;
        let first = pattern(0xF1, FENCE_LEN);
        let second = pattern(0xF2, FENCE_LEN);
        match env.side {
            Side::Server => {
                let mr = hca.reg(at, FENCE_LEN, Access::LOCAL_WRITE | Access::REMOTE_WRITE)?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                ctx.send(K_MR, &encode_remote_mr(&mr.remote()))?;
                ctx.recv(K_INFO, "the client's first write completed")?;
                let got = mr.read(0, FENCE_LEN).or_fail(at, "reading the region")?;
                same_bytes(at, "the region after the first write", &got, &first)?;
                let t = Instant::now();
                mr.deregister().or_fail(at, "deregistering the region")?;
                ctx.detail(
                    "deregister_us",
                    format!("{:.0}", t.elapsed().as_secs_f64() * 1e6),
                );
                ctx.send(K_INFO, b"fenced")?;
                ctx.recv(K_DONE, "the client's write after the fence completed")?;
                // The object still owns its buffer; if the backend lets us read it after
                // deregistration, it must hold the first write's bytes only.
                match mr.read(0, FENCE_LEN) {
                    Ok(after) => {
                        same_bytes(
                            at,
                            "the fenced region (the write after the fence must not land)",
                            &after,
                            &first,
                        )?;
                        ctx.detail("fenced_region", "unchanged");
                    }
                    Err(e) => ctx.detail(
                        "fenced_region",
                        format!("not readable after deregistration ({e})"),
                    ),
                }
                ctx.send(K_OK, &[])?;
            }
            Side::Client => {
                let local = hca.reg(at, 2 * FENCE_LEN, Access::LOCAL_WRITE)?;
                local
                    .write(0, &first)
                    .or_fail(at, "filling the source buffer")?;
                local
                    .write(FENCE_LEN, &second)
                    .or_fail(at, "filling the source buffer")?;
                hca.connect(ctx, &mut conn, psn_for(env.side, 0))?;
                let b = ctx.recv(K_MR, "the server's region")?;
                let remote = decode_remote_mr(&b)
                    .ok_or_else(|| at.err("the server's region: malformed MR message"))?;
                let write = |wr_id: u64, offset: usize| SendWr::Write {
                    wr_id,
                    local: sge(&local, offset, FENCE_LEN),
                    remote,
                    remote_offset: 0,
                    imm: None,
                };
                post_send(at, &conn, write(1, 0), "posting the write before the fence")?;
                conn.scq.expect(
                    at,
                    "the write before the fence",
                    1,
                    WcStatus::Success,
                    WcOpcode::RdmaWrite,
                )?;
                ctx.send(K_INFO, b"written")?;
                ctx.recv(K_INFO, "the server deregistered its region")?;
                let t0 = Instant::now();
                post_send(
                    at,
                    &conn,
                    write(2, FENCE_LEN),
                    "posting the write after the fence",
                )?;
                conn.scq.expect(
                    at,
                    "the write into the deregistered region",
                    2,
                    WcStatus::RemAccessErr,
                    WcOpcode::RdmaWrite,
                )?;
                let took = t0.elapsed();
                ctx.send(K_DONE, &[])?;
                ctx.recv(K_OK, "the server found its fenced region unchanged")?;
                ctx.detail("fenced_write_status", "RemAccessErr");
                ctx.detail("client_qp_state", format!("{:?}", conn.qp.state()));
                ctx.detail("post_to_error_ms", ms(took));
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// cable_cut

const CUT_PHASE: usize = 16;
const CUT_INFLIGHT: usize = 8;
const CUT_MSG: usize = 256;
/// Receive slots per QP on the server: two phases, the in-flight burst and a probe.
const CUT_SLOTS: usize = 2 * CUT_PHASE + CUT_INFLIGHT + 4;

/// Payload of message `seq` on `hca` in `phase` (0: before the cut, 1: after, 2: fresh QP).
fn cut_msg(hca: usize, phase: u8, seq: usize) -> Vec<u8> {
    let mut m = pattern(
        ((seq as u64) << 8) | ((hca as u64) << 4) | u64::from(phase),
        CUT_MSG,
    );
    m[0..4].copy_from_slice(&(seq as u32).to_le_bytes());
    m[4] = hca as u8;
    m[5] = phase;
    m
}

fn wr_id(hca: usize, seq: usize) -> u64 {
    ((hca as u64) << 32) | seq as u64
}

/// Statuses accepted for QP0's requests once its HCA is cut.
const CUT_ERRORS: [WcStatus; 3] = [
    WcStatus::LocQpOpErr,
    WcStatus::WrFlushErr,
    WcStatus::RetryExcErr,
];

fn summarize(statuses: &[WcStatus]) -> String {
    let mut out: Vec<(WcStatus, usize)> = Vec::new();
    for s in statuses {
        match out.iter_mut().find(|(k, _)| k == s) {
            Some((_, n)) => *n += 1,
            None => out.push((*s, 1)),
        }
    }
    out.iter()
        .map(|(s, n)| format!("{n}x{s:?}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// QP0's completions around the cut.
#[derive(Default)]
struct Tally {
    statuses: Vec<WcStatus>,
    successes: usize,
    first_error: Option<(WcStatus, Duration)>,
}

impl Tally {
    /// Takes the completion of message `seq`: successes may only precede the first error, and
    /// errors must be one of [`CUT_ERRORS`].
    fn collect(
        &mut self,
        at: At,
        conn: &mut Conn,
        seq: usize,
        wait: Duration,
        t_cut: Instant,
    ) -> Result<(), ScenarioError> {
        let what = format!("HCA0 message {seq} (posted around the cut)");
        let wc = conn
            .scq
            .next(at, wait)?
            .ok_or_else(|| at.err(format!("{what}: no completion within {wait:?} of the cut")))?;
        if wc.wr_id != wr_id(0, seq) {
            return Err(at.err(format!(
                "{what}: expected wr_id {:#x}, got {:#x} ({:?})",
                wr_id(0, seq),
                wc.wr_id,
                wc.status
            )));
        }
        self.statuses.push(wc.status);
        match (wc.status, self.first_error) {
            (WcStatus::Success, None) => self.successes += 1,
            (WcStatus::Success, Some((s, _))) => {
                return Err(at.err(format!(
                    "{what}: completed Success after an earlier request failed {s:?}"
                )))
            }
            (s, _) if !CUT_ERRORS.contains(&s) => {
                return Err(at.err(format!("{what}: expected one of {CUT_ERRORS:?}, got {s:?}")))
            }
            (s, None) => self.first_error = Some((s, t_cut.elapsed())),
            (_, Some(_)) => {}
        }
        Ok(())
    }
}

/// Waits for an event matching `want`; returns it with the events skipped on the way.
fn wait_event(
    at: At,
    dev: &Arc<dyn Device>,
    what: &str,
    want: impl Fn(&AsyncEvent) -> bool,
) -> Result<(AsyncEvent, Vec<AsyncEvent>), ScenarioError> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut skipped = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match dev
            .next_async_event(left)
            .or_fail(at, &format!("waiting for {what}"))?
        {
            Some(e) if want(&e) => return Ok((e, skipped)),
            Some(e) => skipped.push(e),
            None => {
                return Err(at.err(format!(
                    "expected {what} within {EVENT_TIMEOUT:?}, got {}",
                    if skipped.is_empty() {
                        "no event".to_string()
                    } else {
                        format!("only {skipped:?}")
                    }
                )))
            }
        }
    }
}

/// The server checks each message on a QP arrives complete and in sequence.
fn expect_msg(
    at: At,
    conn: &mut Conn,
    slots: &Arc<dyn MemoryRegion>,
    hca: usize,
    phase: u8,
    seq: usize,
    slot: usize,
) -> Result<(), ScenarioError> {
    let what = format!("HCA{hca} phase {phase} message {seq}");
    let wc = conn
        .rcq
        .expect(at, &what, slot as u64, WcStatus::Success, WcOpcode::Recv)?;
    if wc.byte_len as usize != CUT_MSG {
        return Err(at.err(format!(
            "{what}: expected {CUT_MSG} bytes, got {}",
            wc.byte_len
        )));
    }
    let got = slots
        .read(slot * CUT_MSG, CUT_MSG)
        .or_fail(at, "reading a receive slot")?;
    same_bytes(at, &what, &got, &cut_msg(hca, phase, seq))
}

/// Two HCAs, one QP pair each. The client streams on both, cuts HCA0: `PortError` on HCA0,
/// QP0's requests fail (`LocQpOpErr`, `WrFlushErr` or `RetryExcErr`), QP1 keeps delivering;
/// after restore `PortActive` on HCA0, QP0 stays in ERR, and a fresh QP pair on HCA0 works.
pub fn cable_cut(env: &mut Env, ex: &mut dyn Exchange) -> Result<Outcome, ScenarioError> {
    run("cable_cut", env, ex, |ctx, env| {
        let at = ctx.at;
        if env.params.retry_count > 6 {
            return Err(at.err(format!(
                "cable_cut needs retry_count <= 6 (rdma_rxe retries 7 forever), got {}",
                env.params.retry_count
            )));
        }
        let hcas = [open_hca(at, env, 0)?, open_hca(at, env, 1)?];
        let c = caps(64, CUT_SLOTS as u32 + 4);
        let mut conns = vec![hcas[0].conn(at, c)?, hcas[1].conn(at, c)?];
        match env.side {
            Side::Client => cut_client(ctx, env, &hcas, &mut conns),
            Side::Server => cut_server(ctx, env, &hcas, &mut conns),
        }
    })
}

fn cut_client(
    ctx: &mut Ctx<'_>,
    env: &mut Env,
    hcas: &[Hca; 2],
    conns: &mut [Conn],
) -> Result<(), ScenarioError> {
    let at = ctx.at;
    let bufs = [
        hcas[0].reg(at, (CUT_SLOTS + CUT_PHASE) * CUT_MSG, Access::LOCAL_WRITE)?,
        hcas[1].reg(at, (CUT_SLOTS + CUT_PHASE) * CUT_MSG, Access::LOCAL_WRITE)?,
    ];
    // Source slot `seq` of HCA `h` holds message (h, phase, seq).
    let send =
        |conn: &Conn, h: usize, phase: u8, seq: usize, slot: usize| -> Result<(), ScenarioError> {
            bufs[h]
                .write(slot * CUT_MSG, &cut_msg(h, phase, seq))
                .or_fail(at, "filling a send slot")?;
            post_send(
                at,
                conn,
                SendWr::Send {
                    wr_id: wr_id(h, seq),
                    local: sge(&bufs[h], slot * CUT_MSG, CUT_MSG),
                    imm: None,
                },
                &format!("posting HCA{h} message {seq}"),
            )
        };
    for (h, conn) in conns.iter_mut().enumerate() {
        hcas[h].connect(ctx, conn, psn_for(Side::Client, h as u32))?;
    }
    ctx.sync("cable_cut: receives posted")?;

    // Phase A: both QPs deliver.
    for seq in 0..CUT_PHASE {
        for (h, conn) in conns.iter_mut().enumerate() {
            send(conn, h, 0, seq, seq)?;
            conn.scq.expect(
                at,
                &format!("HCA{h} message {seq} before the cut"),
                wr_id(h, seq),
                WcStatus::Success,
                WcOpcode::Send,
            )?;
        }
    }
    let mut early = Vec::new();
    while let Some(e) = hcas[0]
        .dev
        .next_async_event(Duration::ZERO)
        .or_fail(at, "draining events")?
    {
        early.push(e);
    }
    if !early.is_empty() {
        ctx.detail("events_before_cut", format!("{early:?}"));
    }

    // The cut, with a burst in flight on QP0.
    for k in 0..CUT_INFLIGHT {
        let seq = CUT_PHASE + k;
        send(&conns[0], 0, 1, seq, seq)?;
    }
    let t_cut = Instant::now();
    env.faults
        .cut(0)
        .map_err(|e| at.err(format!("cutting HCA0: {e}")))?;
    let port0 = hcas[0].params.port;
    let (_, skipped) = wait_event(
        at,
        &hcas[0].dev,
        &format!("PortError on {}", hcas[0].label),
        |e| *e == AsyncEvent::PortError { port: port0 },
    )?;
    let cut_to_port_error = t_cut.elapsed();
    if !skipped.is_empty() {
        ctx.detail("events_before_port_error", format!("{skipped:?}"));
    }

    // QP0: every request completes; once one fails the rest fail too.
    let timeout = env.params.ack_timeout_us.max(1);
    let fail_wait = Duration::from_micros(timeout) * (u32::from(env.params.retry_count) + 1) * 2
        + Duration::from_secs(2);
    let mut tally = Tally::default();
    for k in 0..CUT_INFLIGHT {
        tally.collect(at, &mut conns[0], CUT_PHASE + k, fail_wait, t_cut)?;
    }
    let mut probed = false;
    if tally.first_error.is_none() {
        // The burst made it out before the link went: the next request must fail.
        let seq = CUT_PHASE + CUT_INFLIGHT;
        send(&conns[0], 0, 1, seq, seq)?;
        tally.collect(at, &mut conns[0], seq, fail_wait, t_cut)?;
        probed = true;
    }
    let Some((first_status, cut_to_error)) = tally.first_error else {
        return Err(at.err(
            "HCA0's QP kept completing successfully after the cut (expected an error completion)",
        ));
    };
    let (statuses, successes) = (tally.statuses, tally.successes);

    // Phase B: QP1 keeps delivering.
    let t_b = Instant::now();
    for seq in CUT_PHASE..2 * CUT_PHASE {
        send(&conns[1], 1, 1, seq, seq)?;
        conns[1].scq.expect(
            at,
            &format!("HCA1 message {seq} after HCA0 was cut"),
            wr_id(1, seq),
            WcStatus::Success,
            WcOpcode::Send,
        )?;
    }
    let phase_b = t_b.elapsed();
    ctx.send_u64s(K_INFO, &[successes as u64, u64::from(probed)])?;
    let server = ctx.recv_u64s(K_OK, "the server verified HCA1's messages after the cut", 2)?;

    // Restore: PortActive, QP0 stays errored.
    let t_restore = Instant::now();
    env.faults
        .restore(0)
        .map_err(|e| at.err(format!("restoring HCA0: {e}")))?;
    wait_event(
        at,
        &hcas[0].dev,
        &format!("PortActive on {}", hcas[0].label),
        |e| *e == AsyncEvent::PortActive { port: port0 },
    )?;
    let restore_to_active = t_restore.elapsed();
    // On rdma_rxe the IPv4 GID may come back a little after the port: wait for it.
    let gid_index = hcas[0].params.gid_index;
    let gid_deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        match hcas[0].dev.gid(port0, gid_index) {
            Ok(g) if g != [0; 16] => break,
            other if Instant::now() >= gid_deadline => {
                return Err(at.err(format!(
                "GID {gid_index} of {} not back within {EVENT_TIMEOUT:?} of the restore: {other:?}",
                hcas[0].label
            )))
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let restore_to_gid = t_restore.elapsed();
    let qp0_state = conns[0].qp.state();
    if qp0_state != QpState::Err {
        return Err(at.err(format!(
            "after its requests failed, HCA0's old QP should stay in Err, it is in {qp0_state:?}"
        )));
    }

    // A fresh QP pair on HCA0.
    let mut fresh = hcas[0].conn(at, caps(64, 4))?;
    hcas[0].connect(ctx, &mut fresh, psn_for(Side::Client, 7))?;
    ctx.sync("cable_cut: fresh QP ready")?;
    let t_fresh = Instant::now();
    for seq in 0..CUT_PHASE {
        let slot = CUT_SLOTS + seq;
        send(&fresh, 0, 2, seq, slot)?;
        fresh.scq.expect(
            at,
            &format!("fresh HCA0 QP message {seq}"),
            wr_id(0, seq),
            WcStatus::Success,
            WcOpcode::Send,
        )?;
    }
    let fresh_took = t_fresh.elapsed();
    ctx.send(K_DONE, &[])?;
    ctx.recv(K_OK, "the server verified the fresh QP's messages")?;

    ctx.detail("phase_a_msgs_per_qp", CUT_PHASE);
    ctx.detail("in_flight_at_cut", CUT_INFLIGHT);
    ctx.detail("cut_to_port_error_ms", ms(cut_to_port_error));
    ctx.detail("cut_to_first_error_ms", ms(cut_to_error));
    ctx.detail("first_error_status", format!("{first_status:?}"));
    ctx.detail("qp0_completions", summarize(&statuses));
    ctx.detail("qp0_probe_needed", probed);
    ctx.detail("server_qp0_received_after_phase_a", server[0]);
    ctx.detail("qp1_after_cut_msgs", CUT_PHASE);
    ctx.detail("qp1_after_cut_msgs_per_s", per_s(CUT_PHASE, phase_b));
    ctx.detail("restore_to_port_active_ms", ms(restore_to_active));
    ctx.detail("restore_to_gid_ms", ms(restore_to_gid));
    ctx.detail("fresh_qp_msgs", CUT_PHASE);
    ctx.detail("fresh_qp_msgs_per_s", per_s(CUT_PHASE, fresh_took));
    Ok(())
}

fn cut_server(
    ctx: &mut Ctx<'_>,
    env: &mut Env,
    hcas: &[Hca; 2],
    conns: &mut [Conn],
) -> Result<(), ScenarioError> {
    let at = ctx.at;
    let _ = &env.faults; // only the client injects faults
    let slots = [
        hcas[0].reg(at, CUT_SLOTS * CUT_MSG, Access::LOCAL_WRITE)?,
        hcas[1].reg(at, CUT_SLOTS * CUT_MSG, Access::LOCAL_WRITE)?,
    ];
    for (h, conn) in conns.iter().enumerate() {
        for slot in 0..CUT_SLOTS {
            post_recv(
                at,
                conn,
                slot as u64,
                sge(&slots[h], slot * CUT_MSG, CUT_MSG),
            )?;
        }
    }
    for (h, conn) in conns.iter_mut().enumerate() {
        hcas[h].connect(ctx, conn, psn_for(Side::Server, h as u32))?;
    }
    ctx.sync("cable_cut: receives posted")?;

    // Phase A on both, then QP1's messages after the cut.
    for seq in 0..CUT_PHASE {
        for (h, conn) in conns.iter_mut().enumerate() {
            expect_msg(at, conn, &slots[h], h, 0, seq, seq)?;
        }
    }
    for seq in CUT_PHASE..2 * CUT_PHASE {
        expect_msg(at, &mut conns[1], &slots[1], 1, 1, seq, seq)?;
    }
    let info = ctx.recv_u64s(K_INFO, "the client's view of HCA0 after the cut", 2)?;
    let (client_successes, probed) = (info[0] as usize, info[1] != 0);

    // QP0 after phase A: whatever arrived must be in sequence, and at least what the client
    // saw acknowledged. (If both ends went down, the rest of our receives are flushed.)
    let mut received = 0usize;
    let mut flushed = 0usize;
    let quiet = Duration::from_millis(50);
    while let Some(wc) = conns[0].rcq.next(at, quiet)? {
        match wc.status {
            WcStatus::Success => {
                let seq = CUT_PHASE + received;
                let slot = seq;
                if wc.wr_id != slot as u64 {
                    return Err(at.err(format!(
                        "HCA0 after the cut: expected receive {slot} next, got {} ({:?})",
                        wc.wr_id, wc.status
                    )));
                }
                let got = slots[0].read(slot * CUT_MSG, CUT_MSG).or_fail(at, "reading a receive slot")?;
                same_bytes(at, &format!("HCA0 message {seq} around the cut"), &got, &cut_msg(0, 1, seq))?;
                received += 1;
            }
            WcStatus::WrFlushErr => flushed += 1,
            other => {
                return Err(at.err(format!(
                    "HCA0 after the cut: a receive completed {other:?} (expected Success or WrFlushErr)"
                )))
            }
        }
    }
    let most = CUT_INFLIGHT + usize::from(probed);
    if received < client_successes || received > most {
        return Err(at.err(format!(
            "HCA0 after the cut: received {received} messages, but the client saw {client_successes} acknowledged \
             (expected between that and {most})"
        )));
    }
    ctx.send_u64s(K_OK, &[received as u64, flushed as u64])?;

    // The fresh QP pair on HCA0.
    let mut fresh = hcas[0].conn(at, caps(16, CUT_PHASE as u32 + 4))?;
    let fslots = hcas[0].reg(at, CUT_PHASE * CUT_MSG, Access::LOCAL_WRITE)?;
    for slot in 0..CUT_PHASE {
        post_recv(
            at,
            &fresh,
            slot as u64,
            sge(&fslots, slot * CUT_MSG, CUT_MSG),
        )?;
    }
    hcas[0].connect(ctx, &mut fresh, psn_for(Side::Server, 7))?;
    ctx.sync("cable_cut: fresh QP ready")?;
    for seq in 0..CUT_PHASE {
        expect_msg(at, &mut fresh, &fslots, 0, 2, seq, seq)?;
    }
    ctx.recv(K_DONE, "the client finished on the fresh QP")?;
    ctx.send(K_OK, &[])?;
    ctx.detail("qp0_received_after_phase_a", received);
    ctx.detail("qp0_receives_flushed", flushed);
    ctx.detail("qp1_verified_msgs", 2 * CUT_PHASE);
    ctx.detail("fresh_qp_verified_msgs", CUT_PHASE);
    ctx.detail("old_qp0_state", format!("{:?}", conns[0].qp.state()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_layouts_round_trip() {
        let ep = QpEndpoint {
            qpn: 0x12_3456,
            psn: 0xab_cdef,
            gid: [7; 16],
            mtu_bytes: 1024,
            lid: 3,
        };
        assert_eq!(decode_endpoint(&encode_endpoint(&ep)), Some(ep));
        assert_eq!(decode_endpoint(&[0; 29]), None);
        let mr = RemoteMr {
            addr: 0x7f00_1234_5000,
            rkey: 0xdead_beef,
            len: 4096,
        };
        assert_eq!(decode_remote_mr(&encode_remote_mr(&mr)), Some(mr));
        assert_eq!(decode_remote_mr(&[0; 21]), None);
    }

    #[test]
    fn the_suite_has_unique_names() {
        let names: Vec<&str> = all().iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert!(names.contains(&"cable_cut"));
    }
}

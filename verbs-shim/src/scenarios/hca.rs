//! The verbs side of a scenario: opening an HCA with a protection domain, registering regions,
//! creating a QP with its CQs and connecting it through the exchange ("slam connect"), reading
//! completions one at a time, and posting.

use super::harness::{At, Ctx, Env, OrFail, ScenarioError, Side, STEP_TIMEOUT};
use super::wire::{decode_endpoint, encode_endpoint, ENDPOINT_WIRE_LEN, K_ENDPOINT};
use crate::api::{CompletionQueue, Device, MemoryRegion, ProtectionDomain, QueuePair};
use crate::types::{
    Access, PortState, QpCaps, QpEndpoint, QpParams, RecvWr, SendWr, Sge, WcOpcode, WcStatus,
    WorkCompletion,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One opened HCA with a protection domain and its QP parameters.
pub(super) struct Hca {
    pub(super) dev: Arc<dyn Device>,
    pd: Arc<dyn ProtectionDomain>,
    pub(super) params: QpParams,
    pub(super) label: String,
}

pub(super) fn open_hca(at: At, env: &Env, index: usize) -> Result<Hca, ScenarioError> {
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
    pub(super) fn reg(
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
    pub(super) fn conn(&self, at: At, caps: QpCaps) -> Result<Conn, ScenarioError> {
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
    pub(super) fn connect(
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

pub(super) struct Conn {
    pub(super) qp: Box<dyn QueuePair>,
    pub(super) scq: CqReader,
    pub(super) rcq: CqReader,
}

/// A CQ with a small buffer, so completions can be taken one at a time.
pub(super) struct CqReader {
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

    pub(super) fn next(
        &mut self,
        at: At,
        timeout: Duration,
    ) -> Result<Option<WorkCompletion>, ScenarioError> {
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
    pub(super) fn expect(
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

pub(super) fn sge(mr: &Arc<dyn MemoryRegion>, offset: usize, len: usize) -> Sge {
    Sge {
        mr: mr.clone(),
        offset: offset as u64,
        len: len as u32,
    }
}

pub(super) fn post_send(at: At, conn: &Conn, wr: SendWr, what: &str) -> Result<(), ScenarioError> {
    conn.qp.post_send(wr).or_fail(at, what)
}

pub(super) fn post_recv(at: At, conn: &Conn, wr_id: u64, local: Sge) -> Result<(), ScenarioError> {
    conn.qp
        .post_recv(RecvWr { wr_id, local })
        .or_fail(at, &format!("posting receive {wr_id}"))
}

pub(super) fn caps(send: u32, recv: u32) -> QpCaps {
    QpCaps {
        max_send_wr: send,
        max_recv_wr: recv,
        max_sge: 1,
    }
}

pub(super) fn psn_for(side: Side, n: u32) -> u32 {
    match side {
        Side::Client => 0x10_0000 + n * 0x1000,
        Side::Server => 0x20_0000 + n * 0x1000,
    }
}

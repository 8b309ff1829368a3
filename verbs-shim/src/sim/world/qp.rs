//! The QP verbs as the engine sees them: state changes (INIT, RTR, RTS, ERR, with their
//! checks), posting sends and receives, and the work-queue entries they create. Posting only
//! queues a request and runs the QP ([`super::engine`]); what happens to it is the engine's job.

use super::engine::FailMode;
use super::{invalid, World};
use crate::error::VerbsError;
use crate::types::{Access, QpState, WcOpcode, WcStatus, WorkCompletion};
use std::time::{Duration, Instant};

/// What a send-queue request asks of the responder.
#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    Send {
        imm: Option<u32>,
    },
    Write {
        addr: Option<u64>,
        rkey: u32,
        imm: Option<u32>,
    },
    Read {
        addr: Option<u64>,
        rkey: u32,
    },
}

impl Op {
    pub(super) fn opcode(self) -> WcOpcode {
        match self {
            Op::Send { .. } => WcOpcode::Send,
            Op::Write { .. } => WcOpcode::RdmaWrite,
            Op::Read { .. } => WcOpcode::RdmaRead,
        }
    }
}

/// A posted send-queue request, as the engine sees it (no references to user objects: the
/// local buffer is named by lkey, as the hardware does).
pub(super) struct SendEntry {
    pub(super) wr_id: u64,
    pub(super) op: Op,
    pub(super) lkey: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
    pub(super) psn: u32,
    pub(super) latency: Duration,
    /// Earliest time of the next attempt (latency, RNR timer, ACK timeout).
    pub(super) not_before: Instant,
    /// Attempts since the responder last answered.
    pub(super) attempts: u32,
    pub(super) rnr_naks: u32,
    /// The last attempt went unanswered; `not_before` is its ACK timeout.
    pub(super) awaiting_timeout: bool,
    /// Lost with an infinite ACK timeout: never retransmitted.
    pub(super) stuck: bool,
    /// Delivered; the requester completion is due at this time.
    pub(super) ack_at: Option<Instant>,
    pub(super) read_data: Option<Vec<u8>>,
}

pub(super) struct RecvEntry {
    pub(super) wr_id: u64,
    pub(super) lkey: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// A send request with its remote half resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SendKind {
    Send {
        imm: Option<u32>,
    },
    Write {
        addr: Option<u64>,
        rkey: u32,
        imm: Option<u32>,
    },
    Read {
        addr: Option<u64>,
        rkey: u32,
    },
}

/// The IB RNR NAK timer table (code -> microseconds).
pub(crate) fn rnr_timer(code: u8) -> Duration {
    const US: [u64; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560,
        3_840, 5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880,
        163_840, 245_760, 327_680, 491_520,
    ];
    Duration::from_micros(US[usize::from(code.min(31))])
}

/// The local ACK timeout for an IB timeout exponent (0 = infinite).
pub(crate) fn ack_timeout(exponent: u8) -> Option<Duration> {
    if exponent == 0 {
        None
    } else {
        Some(Duration::from_nanos(4096u64 << exponent.min(31)))
    }
}

impl World {
    pub(crate) fn modify_init(
        &mut self,
        qpn: u32,
        port: u8,
        access: Access,
    ) -> Result<(), VerbsError> {
        let dev = self.qp(qpn)?.dev;
        crate::qp_state::check(self.qp(qpn)?.state, QpState::Init)?;
        self.port(dev, port)
            .ok_or_else(|| invalid(format!("device {} has no port {port}", self.devs[dev].name)))?;
        let q = self.qp_mut(qpn)?;
        q.port = port;
        q.access = access;
        q.state = QpState::Init;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn modify_rtr(
        &mut self,
        qpn: u32,
        port: u8,
        gid_index: u8,
        mtu_bytes: u32,
        min_rnr_timer_code: u8,
        remote_gid: [u8; 16],
        remote_qpn: u32,
        remote_psn: u32,
    ) -> Result<(), VerbsError> {
        let dev = self.qp(qpn)?.dev;
        crate::qp_state::check(self.qp(qpn)?.state, QpState::Rtr)?;
        if !matches!(mtu_bytes, 256 | 512 | 1024 | 2048 | 4096) {
            return Err(invalid(format!(
                "path MTU {mtu_bytes} is not one of 256, 512, 1024, 2048, 4096"
            )));
        }
        if min_rnr_timer_code > 31 {
            return Err(invalid(format!(
                "min RNR timer code {min_rnr_timer_code} > 31"
            )));
        }
        if remote_qpn >= 1 << 24 {
            return Err(invalid(format!(
                "remote QPN {remote_qpn:#x} does not fit 24 bits"
            )));
        }
        // The source GID index must be populated (EINVAL from ibv_modify_qp otherwise); the
        // destination is not checked, as on hardware: an unreachable one shows up as retries.
        self.gid(dev, port, gid_index)?;
        let q = self.qp_mut(qpn)?;
        q.port = port;
        q.gid_index = gid_index;
        q.min_rnr_timer = rnr_timer(min_rnr_timer_code);
        q.remote = Some((remote_gid, remote_qpn));
        q.rq_psn = remote_psn & 0x00ff_ffff;
        q.state = QpState::Rtr;
        Ok(())
    }

    pub(crate) fn modify_rts(
        &mut self,
        qpn: u32,
        timeout_exponent: u8,
        retry_count: u8,
        rnr_retry: u8,
        psn: u32,
        now: Instant,
    ) -> Result<(), VerbsError> {
        let from = self.qp(qpn)?.state;
        crate::qp_state::check(from, QpState::Rts)?;
        if retry_count > 7 || rnr_retry > 7 {
            return Err(invalid(format!(
                "retry_count {retry_count} / rnr_retry {rnr_retry} outside 0..=7"
            )));
        }
        let q = self.qp_mut(qpn)?;
        q.ack_timeout = ack_timeout(timeout_exponent);
        q.retry_count = retry_count;
        q.rnr_retry = rnr_retry;
        if from == QpState::Rtr {
            q.sq_psn = psn & 0x00ff_ffff;
        }
        q.state = QpState::Rts;
        self.run_qp(qpn, now);
        Ok(())
    }

    pub(crate) fn modify_err(&mut self, qpn: u32) -> Result<(), VerbsError> {
        crate::qp_state::check(self.qp(qpn)?.state, QpState::Err)?;
        self.fail(qpn, FailMode::Flush);
        Ok(())
    }

    /// Injected fatal QP error: QP_FATAL event, QP to ERR, everything flushes.
    pub(crate) fn fail_qp_fatal(&mut self, qpn: u32) {
        self.fail(qpn, FailMode::Fatal);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post_send(
        &mut self,
        qpn: u32,
        wr_id: u64,
        kind: SendKind,
        lkey: u32,
        offset: u64,
        len: u32,
        now: Instant,
    ) -> Result<(), VerbsError> {
        let q = self.qp(qpn)?;
        if !crate::qp_state::accepts_send(q.state) {
            return Err(VerbsError::WrongState {
                what: "send",
                state: q.state,
            });
        }
        let op = match kind {
            SendKind::Send { imm } => Op::Send { imm },
            SendKind::Write { addr, rkey, imm } => Op::Write { addr, rkey, imm },
            SendKind::Read { addr, rkey } => Op::Read { addr, rkey },
        };
        if q.state == QpState::Err {
            // As on hardware: a request posted to an errored QP completes at once, flushed.
            let (cq, qpn) = (q.send_cq, qpn);
            self.push_cqe(
                cq,
                WorkCompletion {
                    wr_id,
                    status: WcStatus::WrFlushErr,
                    opcode: op.opcode(),
                    byte_len: 0,
                    imm: None,
                    qpn,
                },
            );
            return Ok(());
        }
        if q.sq.len() >= q.caps.max_send_wr as usize {
            return Err(VerbsError::QueueFull("send"));
        }
        let (dev, port) = (q.dev, q.port);
        let (latency, jitter) = self
            .port(dev, port)
            .and_then(|p| p.cable)
            .map(|c| (self.cables[c].latency, self.cables[c].jitter))
            .unwrap_or_default();
        let q = self.qp_mut(qpn)?;
        let latency = if jitter.is_zero() {
            latency
        } else {
            let extra = q
                .rng
                .below_incl(u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX));
            latency + Duration::from_nanos(extra)
        };
        let psn = q.sq_psn;
        q.sq_psn = (q.sq_psn + 1) & 0x00ff_ffff;
        q.sq.push_back(SendEntry {
            wr_id,
            op,
            lkey,
            offset,
            len,
            psn,
            latency,
            not_before: now + latency,
            attempts: 0,
            rnr_naks: 0,
            awaiting_timeout: false,
            stuck: false,
            ack_at: None,
            read_data: None,
        });
        self.run_qp(qpn, now);
        Ok(())
    }

    pub(crate) fn post_recv(
        &mut self,
        qpn: u32,
        wr_id: u64,
        lkey: u32,
        offset: u64,
        len: u32,
    ) -> Result<(), VerbsError> {
        let q = self.qp(qpn)?;
        if !crate::qp_state::accepts_recv(q.state) {
            return Err(VerbsError::WrongState {
                what: "recv",
                state: q.state,
            });
        }
        if q.state == QpState::Err {
            let cq = q.recv_cq;
            self.push_cqe(
                cq,
                WorkCompletion {
                    wr_id,
                    status: WcStatus::WrFlushErr,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qpn,
                },
            );
            return Ok(());
        }
        if q.rq.len() >= q.caps.max_recv_wr as usize {
            return Err(VerbsError::QueueFull("recv"));
        }
        self.qp_mut(qpn)?.rq.push_back(RecvEntry {
            wr_id,
            lkey,
            offset,
            len,
        });
        Ok(())
    }
}

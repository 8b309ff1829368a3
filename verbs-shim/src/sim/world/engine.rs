//! The QP engine: timers, moving a send queue forward as far as `now` allows, retiring
//! acknowledged requests, retries running out, and failing a QP (completing everything
//! outstanding). One transmission of a request is [`super::delivery`]'s job.

use super::qp::Op;
use super::World;
use crate::types::{AsyncEvent, QpState, WcOpcode, WcStatus, WorkCompletion};
use std::cmp::Reverse;
use std::time::Instant;

/// Most steps one QP takes in one engine pass before yielding (a limit on everything).
const STEPS_MAX: u32 = 100_000;

/// How a QP enters the error state.
#[derive(Debug, Clone, Copy)]
pub(super) enum FailMode {
    /// `to_error()` by the user: everything flushes.
    Flush,
    /// Its port went down: the oldest outstanding request completes LOC_QP_OP_ERR, the rest
    /// flush (rdma_rxe on `ip link set down`).
    Port,
    /// Injected fatal error: QP_FATAL event, everything flushes.
    Fatal,
    /// Request `i` failed with this status: earlier (delivered) requests complete successfully,
    /// later ones flush.
    At(usize, WcStatus),
}

/// The outcome of one transmission of a request ([`World::attempt`]).
pub(super) enum Attempt {
    /// Delivered at the responder; look at the next request.
    Delivered,
    /// Not now (RNR timer or ACK timeout pending).
    Wait,
    /// The request failed with this status; the QP goes to the error state.
    Fatal(WcStatus),
}

impl World {
    /// The earliest pending timer.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Runs every timer due at `now`.
    pub(crate) fn advance(&mut self, now: Instant) {
        while let Some(&Reverse((t, _, qpn))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(q) = self.qps.get_mut(&qpn) {
                if q.kick_at == Some(t) {
                    q.kick_at = None;
                }
            }
            self.run_qp(qpn, now);
        }
    }

    fn schedule(&mut self, qpn: u32, at: Instant) {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return;
        };
        if q.kick_at.is_some_and(|k| k <= at) {
            return; // an earlier kick will look again
        }
        q.kick_at = Some(at);
        self.seq += 1;
        self.timers.push(Reverse((at, self.seq, qpn)));
        if !matches!(self.engine_sleep_until, Some(s) if s <= at) {
            self.engine_kick = true;
        }
    }

    /// Moves one QP's send queue forward as far as `now` allows.
    pub(super) fn run_qp(&mut self, qpn: u32, now: Instant) {
        for _ in 0..STEPS_MAX {
            let Some(q) = self.qps.get(&qpn) else {
                return;
            };
            if q.state != QpState::Rts {
                return; // SQD holds the queue; RTR/INIT/RESET have none; ERR flushed it
            }
            let front_ack = q.sq.front().and_then(|e| e.ack_at);
            if front_ack.is_some_and(|a| a <= now) {
                if !self.retire_front(qpn) {
                    return;
                }
                continue;
            }
            let Some(i) = q.sq.iter().position(|e| e.ack_at.is_none()) else {
                if let Some(a) = front_ack {
                    self.schedule(qpn, a);
                }
                return;
            };
            let e = &q.sq[i];
            if e.stuck || e.not_before > now {
                let next = if e.stuck { None } else { Some(e.not_before) };
                if let Some(w) = [next, front_ack].into_iter().flatten().min() {
                    self.schedule(qpn, w);
                }
                return;
            }
            if e.awaiting_timeout && q.retry_count != 7 && e.attempts > u32::from(q.retry_count) {
                // The first transmission and `retry_count` retransmissions all went unanswered.
                self.fail(qpn, FailMode::At(i, WcStatus::RetryExcErr));
                return;
            }
            match self.attempt(qpn, i, now) {
                Attempt::Delivered | Attempt::Wait => continue,
                Attempt::Fatal(status) => {
                    self.fail(qpn, FailMode::At(i, status));
                    return;
                }
            }
        }
        // Step limit: yield and come back at once.
        self.schedule(qpn, now);
    }

    /// Completes the (acknowledged) front request. `false` if the QP failed instead.
    fn retire_front(&mut self, qpn: u32) -> bool {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return false;
        };
        let Some(e) = q.sq.pop_front() else {
            return false;
        };
        let (dev, pd, cq) = (q.dev, q.pd, q.send_cq);
        let mut wc = WorkCompletion {
            wr_id: e.wr_id,
            status: WcStatus::Success,
            opcode: e.op.opcode(),
            byte_len: 0,
            imm: None,
            qpn,
        };
        if let (Op::Read { .. }, Some(data)) = (e.op, &e.read_data) {
            wc.byte_len = e.len;
            match self.local_mr(dev, pd, e.lkey, e.offset, e.len, true) {
                Some(mr) => self.scatter(mr, e.offset, data),
                None => {
                    // The target region went away between the read and its response.
                    if let Some(q) = self.qps.get_mut(&qpn) {
                        q.sq.push_front(e);
                    }
                    self.fail(qpn, FailMode::At(0, WcStatus::LocProtErr));
                    return false;
                }
            }
        }
        self.push_cqe(cq, wc);
        true
    }

    /// Moves a QP to ERR and completes everything outstanding.
    pub(super) fn fail(&mut self, qpn: u32, mode: FailMode) {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return;
        };
        q.state = QpState::Err;
        q.kick_at = None;
        let sq = std::mem::take(&mut q.sq);
        let rq = std::mem::take(&mut q.rq);
        let (dev, pd, scq, rcq, ctx) = (q.dev, q.pd, q.send_cq, q.recv_cq, q.ctx);
        for (k, e) in sq.into_iter().enumerate() {
            let status = match mode {
                FailMode::At(i, st) if k == i => st,
                FailMode::At(i, _) if k < i => WcStatus::Success,
                FailMode::Port if k == 0 => WcStatus::LocQpOpErr,
                _ => WcStatus::WrFlushErr,
            };
            let mut byte_len = 0;
            if status == WcStatus::Success {
                if let (Op::Read { .. }, Some(data)) = (e.op, &e.read_data) {
                    byte_len = e.len;
                    if let Some(mr) = self.local_mr(dev, pd, e.lkey, e.offset, e.len, true) {
                        self.scatter(mr, e.offset, data);
                    }
                }
            }
            self.push_cqe(
                scq,
                WorkCompletion {
                    wr_id: e.wr_id,
                    status,
                    opcode: e.op.opcode(),
                    byte_len,
                    imm: None,
                    qpn,
                },
            );
        }
        for r in rq {
            self.push_cqe(
                rcq,
                WorkCompletion {
                    wr_id: r.wr_id,
                    status: WcStatus::WrFlushErr,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qpn,
                },
            );
        }
        if matches!(mode, FailMode::Fatal) {
            self.push_ctx_event(ctx, AsyncEvent::QpFatal { qpn });
        }
    }
}

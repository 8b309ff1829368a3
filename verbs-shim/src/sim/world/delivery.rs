//! One transmission of a request and the responder's answer, with RC semantics: the local
//! port and buffer checks, routing, loss and stalls, the responder QP's acceptance (state,
//! connection, PSN), SEND / WRITE / WRITE_WITH_IMM / READ at the responder (receives, rkeys,
//! rights, bounds), RNR NAKs and class C errors.

use super::engine::{Attempt, FailMode};
use super::qp::Op;
use super::World;
use crate::types::{Access, QpState, WcOpcode, WcStatus, WorkCompletion};
use std::time::{Duration, Instant};

/// The responder's answer to one transmission.
enum Resp {
    Done(Option<Vec<u8>>),
    Rnr(Duration),
    Nak(WcStatus),
}

impl World {
    pub(super) fn scatter(&mut self, mr: u64, offset: u64, data: &[u8]) {
        if let Some(m) = self.mrs.get_mut(&mr) {
            // Checked by whoever named the range (local_mr / remote_mr); out of range is a no-op.
            let _ = m.data.put(offset as usize, data);
        }
    }

    /// The region an lkey names for a local access, if valid.
    pub(super) fn local_mr(
        &self,
        dev: usize,
        pd: u64,
        lkey: u32,
        offset: u64,
        len: u32,
        write: bool,
    ) -> Option<u64> {
        let id = *self.keys.get(&(dev, lkey))?;
        let m = self.mrs.get(&id)?;
        let end = offset.checked_add(u64::from(len))?;
        (m.registered
            && m.pd == pd
            && end <= m.data.len() as u64
            && (!write || m.access.contains(Access::LOCAL_WRITE)))
        .then_some(id)
    }

    /// The region an rkey names for a remote access of `need`, if the QP and the region allow it.
    #[allow(clippy::too_many_arguments)]
    fn remote_mr(
        &self,
        dev: usize,
        pd: u64,
        qp_access: Access,
        rkey: u32,
        addr: Option<u64>,
        len: u32,
        need: Access,
    ) -> Option<(u64, usize)> {
        if !qp_access.contains(need) {
            return None;
        }
        let id = *self.keys.get(&(dev, rkey))?;
        let m = self.mrs.get(&id)?;
        let addr = addr?;
        let end = addr.checked_add(u64::from(len))?;
        let mr_end = m.addr + m.data.len() as u64;
        (m.registered && m.pd == pd && m.access.contains(need) && addr >= m.addr && end <= mr_end)
            .then(|| (id, (addr - m.addr) as usize))
    }

    fn lost(&mut self, qpn: u32, i: usize, now: Instant) -> Attempt {
        if let Some(q) = self.qps.get_mut(&qpn) {
            let timeout = q.ack_timeout;
            if let Some(e) = q.sq.get_mut(i) {
                e.awaiting_timeout = true;
                match timeout {
                    Some(t) => e.not_before = now + t,
                    None => e.stuck = true, // infinite timeout: never retransmitted
                }
            }
        }
        Attempt::Wait
    }

    /// One transmission of request `i` (the first undelivered one).
    pub(super) fn attempt(&mut self, qpn: u32, i: usize, now: Instant) -> Attempt {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return Attempt::Wait;
        };
        let Some(e) = q.sq.get_mut(i) else {
            return Attempt::Wait;
        };
        e.attempts += 1;
        e.awaiting_timeout = false;
        let (op, lkey, offset, len, psn, latency) =
            (e.op, e.lkey, e.offset, e.len, e.psn, e.latency);
        let (dev, port, pd, gid_index, remote) = (q.dev, q.port, q.pd, q.gid_index, q.remote);

        // 1. The local port must be up (rdma_rxe: the transmit fails, LOC_QP_OP_ERR).
        if !self.port_is_active(dev, port) {
            return Attempt::Fatal(WcStatus::LocQpOpErr);
        }
        // 2. The local buffer must be a valid registered range (checked at execution, as the
        //    hardware does; the post itself succeeded).
        let need_write = matches!(op, Op::Read { .. });
        let Some(local) = self.local_mr(dev, pd, lkey, offset, len, need_write) else {
            return Attempt::Fatal(WcStatus::LocProtErr);
        };
        let Some((remote_gid, remote_qpn)) = remote else {
            return self.lost(qpn, i, now);
        };
        // 3. The packet must reach the partner's port.
        let Some((pdev, _pport)) = self.route(dev, port, gid_index, &remote_gid) else {
            return self.lost(qpn, i, now);
        };
        if let Some(c) = self.port(dev, port).and_then(|p| p.cable) {
            let cable = &self.cables[c];
            let from = usize::from(cable.ends[1] == (dev, port));
            let loss = cable.loss.max(cable.loss_from[from]);
            if loss > 0.0 {
                let draw = self.qps.get_mut(&qpn).map_or(1.0, |q| q.rng.next_f64());
                if draw < loss {
                    return self.lost(qpn, i, now);
                }
            }
        }
        if self.nodes[self.devs[pdev].node].stalled {
            return self.lost(qpn, i, now);
        }
        // 4. A responder QP must accept it: right device, receiving state, connected back to
        //    us, expecting this PSN. Anything else is silently dropped, as rxe does.
        let Some(our_gid) = self
            .port(dev, port)
            .and_then(|p| p.gids.get(usize::from(gid_index)).copied())
        else {
            return self.lost(qpn, i, now);
        };
        let accepted = self.qps.get(&remote_qpn).is_some_and(|r| {
            r.dev == pdev
                && matches!(
                    r.state,
                    QpState::Rtr | QpState::Rts | QpState::Sqd | QpState::Sqe
                )
                && r.remote == Some((our_gid, qpn))
                && r.rq_psn == psn
        });
        if !accepted {
            return self.lost(qpn, i, now);
        }
        let payload = match op {
            Op::Send { .. } | Op::Write { .. } => self
                .mrs
                .get(&local)
                .and_then(|m| m.data.get(offset as usize, len as usize)),
            Op::Read { .. } => None,
        };
        match self.respond(remote_qpn, op, payload.as_deref().unwrap_or(&[]), len) {
            Resp::Done(read_data) => {
                if let Some(r) = self.qps.get_mut(&remote_qpn) {
                    r.rq_psn = (r.rq_psn + 1) & 0x00ff_ffff;
                }
                if let Some(e) = self.qps.get_mut(&qpn).and_then(|q| q.sq.get_mut(i)) {
                    e.ack_at = Some(now + latency);
                    e.read_data = read_data;
                }
                Attempt::Delivered
            }
            Resp::Rnr(timer) => {
                let Some(q) = self.qps.get_mut(&qpn) else {
                    return Attempt::Wait;
                };
                let rnr_retry = q.rnr_retry;
                let Some(e) = q.sq.get_mut(i) else {
                    return Attempt::Wait;
                };
                if rnr_retry != 7 && e.rnr_naks >= u32::from(rnr_retry) {
                    return Attempt::Fatal(WcStatus::RnrRetryExcErr);
                }
                e.rnr_naks += 1;
                e.attempts = 0; // the responder answered
                e.not_before = now + timer + latency * 2;
                Attempt::Wait
            }
            Resp::Nak(status) => Attempt::Fatal(status),
        }
    }

    /// The responder's side of one request. Class C errors (bad rkey, bad length) move the
    /// responder QP to ERR too, as rdma_rxe does (`do_class_ac_error`).
    fn respond(&mut self, rqpn: u32, op: Op, payload: &[u8], len: u32) -> Resp {
        let Some(r) = self.qps.get(&rqpn) else {
            return Resp::Nak(WcStatus::RemOpErr);
        };
        let (rdev, rpd, raccess, rcq, timer) = (r.dev, r.pd, r.access, r.recv_cq, r.min_rnr_timer);
        let has_recv = !r.rq.is_empty();
        match op {
            Op::Send { imm } => {
                if !has_recv {
                    return Resp::Rnr(timer);
                }
                let Some(recv) = self.qps.get_mut(&rqpn).and_then(|r| r.rq.pop_front()) else {
                    return Resp::Rnr(timer);
                };
                let mut wc = WorkCompletion {
                    wr_id: recv.wr_id,
                    status: WcStatus::Success,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qpn: rqpn,
                };
                match self.local_mr(rdev, rpd, recv.lkey, recv.offset, recv.len, true) {
                    None => {
                        wc.status = WcStatus::LocProtErr;
                        self.push_cqe(rcq, wc);
                        self.fail(rqpn, FailMode::Flush);
                        Resp::Nak(WcStatus::RemOpErr)
                    }
                    Some(_) if len > recv.len => {
                        wc.status = WcStatus::LocLenErr;
                        self.push_cqe(rcq, wc);
                        self.fail(rqpn, FailMode::Flush);
                        Resp::Nak(WcStatus::RemInvReqErr)
                    }
                    Some(mr) => {
                        self.scatter(mr, recv.offset, payload);
                        wc.byte_len = len;
                        wc.imm = imm;
                        self.push_cqe(rcq, wc);
                        Resp::Done(None)
                    }
                }
            }
            Op::Write { addr, rkey, imm } => {
                if imm.is_some() && !has_recv {
                    return Resp::Rnr(timer); // rxe checks resources before the rkey
                }
                // A zero-length RDMA WRITE touches no memory, so (per the IB spec) its rkey is
                // not checked: it proves nothing about a fence.
                if len > 0 {
                    let Some((mr, off)) =
                        self.remote_mr(rdev, rpd, raccess, rkey, addr, len, Access::REMOTE_WRITE)
                    else {
                        self.fail(rqpn, FailMode::Flush);
                        return Resp::Nak(WcStatus::RemAccessErr);
                    };
                    self.scatter(mr, off as u64, payload);
                }
                if let Some(imm) = imm {
                    if let Some(recv) = self.qps.get_mut(&rqpn).and_then(|r| r.rq.pop_front()) {
                        self.push_cqe(
                            rcq,
                            WorkCompletion {
                                wr_id: recv.wr_id,
                                status: WcStatus::Success,
                                opcode: WcOpcode::RecvRdmaWithImm,
                                byte_len: len,
                                imm: Some(imm),
                                qpn: rqpn,
                            },
                        );
                    }
                }
                Resp::Done(None)
            }
            Op::Read { addr, rkey } => {
                if len == 0 {
                    return Resp::Done(Some(Vec::new()));
                }
                let Some((mr, off)) =
                    self.remote_mr(rdev, rpd, raccess, rkey, addr, len, Access::REMOTE_READ)
                else {
                    self.fail(rqpn, FailMode::Flush);
                    return Resp::Nak(WcStatus::RemAccessErr);
                };
                let data = self
                    .mrs
                    .get(&mr)
                    .and_then(|m| m.data.get(off, len as usize));
                Resp::Done(data)
            }
        }
    }
}

//! [`RealQp`]: an RC queue pair (`ibv_qp`): its state, the INIT / RTR / RTS / ERR transitions
//! (checked against [`crate::qp_state`] first) and posting sends and receives. Dropping it
//! destroys it; if that fails, it is leaked with its CQs and PD (see [`crate::teardown`]).

use super::convert::{access_bits, mtu_enum, state_from};
use super::pd::RealPd;
use crate::api::{CompletionQueue, Device, QueuePair};
use crate::error::VerbsError;
use crate::qp_state;
use crate::teardown::{dispose, Disposal};
use crate::types::{QpEndpoint, QpParams, QpState, RecvWr, SendWr, Sge};
use rdma_mummy_sys as sys;
use std::sync::Arc;

/// An RC queue pair.
pub struct RealQp {
    pub(super) qp: *mut sys::ibv_qp,
    pub(super) pd: Arc<RealPd>,
    pub(super) _send_cq: Arc<dyn CompletionQueue>,
    pub(super) _recv_cq: Arc<dyn CompletionQueue>,
}

// SAFETY: the `ibv_qp` pointer is owned by this object and never handed out; libibverbs
// objects may be used from any thread.
unsafe impl Send for RealQp {}
// SAFETY: through `&self` the QP is only queried and posted to, which libibverbs providers
// serialise with their own queue locks; state changes need `&mut self`.
unsafe impl Sync for RealQp {}

impl Drop for RealQp {
    fn drop(&mut self) {
        let qpn = self.qpn();
        // SAFETY: self.qp came from ibv_create_qp and is destroyed only here, once; nothing else
        // holds the pointer.
        let rc = unsafe { sys::ibv_destroy_qp(self.qp) };
        let res = if rc == 0 {
            Ok(())
        } else {
            Err(VerbsError::from_errno("ibv_destroy_qp", rc))
        };
        let object = format!("queue pair {qpn:#x}");
        if dispose(&object, self.pd.dev.name(), None, res) == Disposal::Leak {
            // The QP still exists: the HCA may still use its queues, its CQs and its PD (and
            // the provider has not freed its own buffers), so keep them all.
            std::mem::forget(Arc::clone(&self.pd));
            std::mem::forget(Arc::clone(&self._send_cq));
            std::mem::forget(Arc::clone(&self._recv_cq));
        }
    }
}

impl RealQp {
    fn modify(
        &self,
        to: QpState,
        attr: &mut sys::ibv_qp_attr,
        mask: u32,
        call: &'static str,
    ) -> Result<(), VerbsError> {
        qp_state::check(self.state(), to)?;
        // SAFETY: self.qp is live (owned by `self`); `attr` is a valid, initialised attribute
        // struct for the call's duration, and `mask` names only fields the caller set.
        let rc = unsafe { sys::ibv_modify_qp(self.qp, attr, mask as i32) };
        if rc != 0 {
            return Err(VerbsError::from_errno(call, rc));
        }
        Ok(())
    }

    fn sge(s: &Sge) -> Result<sys::ibv_sge, VerbsError> {
        let end = s.offset.checked_add(u64::from(s.len));
        if end.is_none_or(|e| e > s.mr.len() as u64) {
            return Err(VerbsError::InvalidArgument(format!(
                "local range {}+{} is outside the {}-byte region",
                s.offset,
                s.len,
                s.mr.len()
            )));
        }
        Ok(sys::ibv_sge {
            addr: s.mr.addr() + s.offset,
            length: s.len,
            lkey: s.mr.lkey(),
        })
    }

    /// The C request for `wr`, signaled, its one SGE `sge`, `next` null.
    fn send_wr(wr: &SendWr, sge: &mut sys::ibv_sge) -> sys::ibv_send_wr {
        let (wr_id, opcode, imm, rdma) = match wr {
            SendWr::Send { wr_id, imm, .. } => (
                *wr_id,
                if imm.is_some() {
                    sys::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM
                } else {
                    sys::ibv_wr_opcode::IBV_WR_SEND
                },
                *imm,
                None,
            ),
            SendWr::Write {
                wr_id,
                remote,
                remote_offset,
                imm,
                ..
            } => (
                *wr_id,
                if imm.is_some() {
                    sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM
                } else {
                    sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE
                },
                *imm,
                Some((remote.addr.wrapping_add(*remote_offset), remote.rkey)),
            ),
            SendWr::Read {
                wr_id,
                remote,
                remote_offset,
                ..
            } => (
                *wr_id,
                sys::ibv_wr_opcode::IBV_WR_RDMA_READ,
                None,
                Some((remote.addr.wrapping_add(*remote_offset), remote.rkey)),
            ),
        };
        // SAFETY: ibv_send_wr is a C struct of integers, pointers (null is valid: a null `next`
        // ends the list), an enum whose zero value is valid and unions of integers; all-zero
        // bytes are a valid value. We fill the fields the opcode uses.
        let mut w: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        w.wr_id = wr_id;
        w.sg_list = sge;
        w.num_sge = 1;
        w.opcode = opcode;
        w.send_flags = sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
        if let Some(imm) = imm {
            w.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
        }
        if let Some((addr, rkey)) = rdma {
            w.wr.rdma = sys::rdma_t {
                remote_addr: addr,
                rkey,
            };
        }
        w
    }
}

/// The local buffer a send-queue request reads from (or, for a READ, writes into).
fn send_local(wr: &SendWr) -> &Sge {
    match wr {
        SendWr::Send { local, .. } | SendWr::Write { local, .. } | SendWr::Read { local, .. } => {
            local
        }
    }
}

impl QueuePair for RealQp {
    fn qpn(&self) -> u32 {
        // SAFETY: self.qp points to the live `ibv_qp` this object owns; `qp_num` is a plain
        // integer field set at creation and never changed.
        unsafe { (*self.qp).qp_num }
    }

    fn state(&self) -> QpState {
        // SAFETY: ibv_qp_attr is a C struct of integers, enums whose zero value is valid and
        // nested structs of the same; all-zero bytes are a valid value.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        // SAFETY: ibv_qp_init_attr: pointers, integers and an enum whose zero value is valid;
        // all-zero bytes are a valid value.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32;
        // SAFETY: self.qp is live (owned by `self`); `attr` and `init` are valid, writable
        // out-parameters for the call's duration.
        let rc = unsafe { sys::ibv_query_qp(self.qp, &mut attr, mask, &mut init) };
        if rc != 0 {
            return QpState::Err;
        }
        state_from(attr.qp_state)
    }

    fn endpoint(&self, params: &QpParams, psn: u32) -> Result<QpEndpoint, VerbsError> {
        let dev = &self.pd.dev;
        let port = dev.raw_port(params.port)?;
        Ok(QpEndpoint {
            qpn: self.qpn(),
            psn: psn & 0x00ff_ffff,
            gid: dev.gid(params.port, params.gid_index)?,
            mtu_bytes: params.mtu_bytes,
            lid: port.lid,
        })
    }

    fn to_init(&mut self, params: &QpParams) -> Result<(), VerbsError> {
        // SAFETY: ibv_qp_attr is a C struct of integers, enums whose zero value is valid and
        // nested structs of the same; all-zero bytes are a valid value (we set what we use).
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = params.port;
        a.qp_access_flags = access_bits(params.access) as u32;
        use sys::ibv_qp_attr_mask as m;
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_PKEY_INDEX.0
            | m::IBV_QP_PORT.0
            | m::IBV_QP_ACCESS_FLAGS.0;
        self.modify(QpState::Init, &mut a, mask, "ibv_modify_qp(INIT)")
    }

    fn to_rtr(&mut self, params: &QpParams, remote: &QpEndpoint) -> Result<(), VerbsError> {
        // SAFETY: ibv_qp_attr is a C struct of integers, enums whose zero value is valid and
        // nested structs of the same; all-zero bytes are a valid value (we set what we use).
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = mtu_enum(params.mtu_bytes.min(remote.mtu_bytes))?;
        a.dest_qp_num = remote.qpn;
        a.rq_psn = remote.psn & 0x00ff_ffff;
        a.max_dest_rd_atomic = params.max_rd_atomic.max(1);
        a.min_rnr_timer = params.min_rnr_timer_code.min(31);
        a.ah_attr.is_global = 1;
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = params.port;
        a.ah_attr.grh.dgid = sys::ibv_gid { raw: remote.gid };
        a.ah_attr.grh.sgid_index = params.gid_index;
        a.ah_attr.grh.hop_limit = 1;
        a.ah_attr.grh.traffic_class = 0;
        a.ah_attr.grh.flow_label = 0;
        use sys::ibv_qp_attr_mask as m;
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_AV.0
            | m::IBV_QP_PATH_MTU.0
            | m::IBV_QP_DEST_QPN.0
            | m::IBV_QP_RQ_PSN.0
            | m::IBV_QP_MAX_DEST_RD_ATOMIC.0
            | m::IBV_QP_MIN_RNR_TIMER.0;
        self.modify(QpState::Rtr, &mut a, mask, "ibv_modify_qp(RTR)")
    }

    fn to_rts(&mut self, params: &QpParams, psn: u32) -> Result<(), VerbsError> {
        if params.retry_count > 7 || params.rnr_retry_count > 7 {
            return Err(VerbsError::InvalidArgument(
                "retry counts must be 0..=7".into(),
            ));
        }
        // SAFETY: ibv_qp_attr is a C struct of integers, enums whose zero value is valid and
        // nested structs of the same; all-zero bytes are a valid value (we set what we use).
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
        a.timeout = params.ack_timeout_exponent();
        a.retry_cnt = params.retry_count;
        a.rnr_retry = params.rnr_retry_count;
        a.sq_psn = psn & 0x00ff_ffff;
        a.max_rd_atomic = params.max_rd_atomic.max(1);
        use sys::ibv_qp_attr_mask as m;
        let mask = m::IBV_QP_STATE.0
            | m::IBV_QP_TIMEOUT.0
            | m::IBV_QP_RETRY_CNT.0
            | m::IBV_QP_RNR_RETRY.0
            | m::IBV_QP_SQ_PSN.0
            | m::IBV_QP_MAX_QP_RD_ATOMIC.0;
        self.modify(QpState::Rts, &mut a, mask, "ibv_modify_qp(RTS)")
    }

    fn to_error(&mut self) -> Result<(), VerbsError> {
        // SAFETY: ibv_qp_attr is a C struct of integers, enums whose zero value is valid and
        // nested structs of the same; all-zero bytes are a valid value (we set what we use).
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0;
        self.modify(QpState::Err, &mut a, mask, "ibv_modify_qp(ERR)")
    }

    fn post_send(&self, wr: SendWr) -> Result<(), VerbsError> {
        self.post_send_list(vec![wr])
    }

    fn post_send_list(&self, wrs: Vec<SendWr>) -> Result<(), VerbsError> {
        if wrs.is_empty() {
            return Ok(());
        }
        let state = self.state();
        if !qp_state::accepts_send(state) {
            return Err(VerbsError::WrongState {
                what: "send",
                state,
            });
        }
        // Every SGE first (checked against its region), so the vector never moves while the
        // requests point into it.
        let mut sges = Vec::with_capacity(wrs.len());
        for wr in &wrs {
            sges.push(Self::sge(send_local(wr))?);
        }
        let mut list: Vec<sys::ibv_send_wr> = wrs
            .iter()
            .zip(sges.iter_mut())
            .map(|(wr, sge)| Self::send_wr(wr, sge))
            .collect();
        // Link the list: each request's `next` is the one after it, the last one's stays null.
        for i in 1..list.len() {
            let next: *mut sys::ibv_send_wr = &mut list[i];
            list[i - 1].next = next;
        }
        let mut bad: *mut sys::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: self.qp is live; `list` (linked front to back, the last `next` null) and the
        // `sges` its entries point to live across the call and are not moved during it, and
        // the provider copies them before returning. Each SGE names a range `Self::sge`
        // checked against its region; the HCA reaches the memory only through the region's
        // lkey, which stays valid until the region is deregistered.
        let rc = unsafe { sys::ibv_post_send(self.qp, list.as_mut_ptr(), &mut bad) };
        match rc {
            0 => Ok(()),
            libc::ENOMEM => Err(VerbsError::QueueFull("send")),
            e => Err(VerbsError::from_errno("ibv_post_send", e)),
        }
    }

    fn post_recv(&self, wr: RecvWr) -> Result<(), VerbsError> {
        let state = self.state();
        if !qp_state::accepts_recv(state) {
            return Err(VerbsError::WrongState {
                what: "recv",
                state,
            });
        }
        let mut sge = Self::sge(&wr.local)?;
        // SAFETY: ibv_recv_wr is a C struct of integers and pointers (a null `next` ends the
        // list); all-zero bytes are a valid value.
        let mut w: sys::ibv_recv_wr = unsafe { std::mem::zeroed() };
        w.wr_id = wr.wr_id;
        w.sg_list = &mut sge;
        w.num_sge = 1;
        let mut bad: *mut sys::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: self.qp is live; `w` (a one-entry list) and its `sge` live across the call and
        // are copied by the provider; the SGE's range was checked against its region, which the
        // HCA reaches only through its lkey.
        let rc = unsafe { sys::ibv_post_recv(self.qp, &mut w, &mut bad) };
        match rc {
            0 => Ok(()),
            libc::ENOMEM => Err(VerbsError::QueueFull("recv")),
            e => Err(VerbsError::from_errno("ibv_post_recv", e)),
        }
    }
}

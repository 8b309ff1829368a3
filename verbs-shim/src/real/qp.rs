//! [`RealQp`]: an RC queue pair (`ibv_qp`): its state, the INIT / RTR / RTS / ERR transitions
//! (checked against [`crate::qp_state`] first) and posting sends and receives.

use super::convert::{access_bits, mtu_enum, state_from};
use super::pd::RealPd;
use crate::api::{CompletionQueue, Device, QueuePair};
use crate::error::VerbsError;
use crate::qp_state;
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

// SAFETY: see RealDevice.
unsafe impl Send for RealQp {}
// SAFETY: as above.
unsafe impl Sync for RealQp {}

impl Drop for RealQp {
    fn drop(&mut self) {
        // SAFETY: qp is valid and destroyed once.
        unsafe {
            sys::ibv_destroy_qp(self.qp);
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
        // SAFETY: qp and attr are valid; mask names the fields we set.
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
}

impl QueuePair for RealQp {
    fn qpn(&self) -> u32 {
        // SAFETY: qp is valid.
        unsafe { (*self.qp).qp_num }
    }

    fn state(&self) -> QpState {
        // SAFETY: zeroed attrs are valid out-parameters.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32;
        // SAFETY: qp is valid.
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
        // SAFETY: zeroed is a valid ibv_qp_attr.
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
        // SAFETY: zeroed is a valid ibv_qp_attr.
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
        // SAFETY: zeroed is a valid ibv_qp_attr.
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
        // SAFETY: zeroed is a valid ibv_qp_attr.
        let mut a: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        a.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
        let mask = sys::ibv_qp_attr_mask::IBV_QP_STATE.0;
        self.modify(QpState::Err, &mut a, mask, "ibv_modify_qp(ERR)")
    }

    fn post_send(&self, wr: SendWr) -> Result<(), VerbsError> {
        let state = self.state();
        if !qp_state::accepts_send(state) {
            return Err(VerbsError::WrongState {
                what: "send",
                state,
            });
        }
        let (wr_id, local, opcode, imm, rdma) = match &wr {
            SendWr::Send { wr_id, local, imm } => (
                *wr_id,
                local,
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
                local,
                remote,
                remote_offset,
                imm,
            } => (
                *wr_id,
                local,
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
                local,
                remote,
                remote_offset,
            } => (
                *wr_id,
                local,
                sys::ibv_wr_opcode::IBV_WR_RDMA_READ,
                None,
                Some((remote.addr.wrapping_add(*remote_offset), remote.rkey)),
            ),
        };
        let mut sge = Self::sge(local)?;
        // SAFETY: zeroed is a valid ibv_send_wr; we fill the fields the opcode uses.
        let mut w: sys::ibv_send_wr = unsafe { std::mem::zeroed() };
        w.wr_id = wr_id;
        w.sg_list = &mut sge;
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
        let mut bad: *mut sys::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: w and sge live across the call; the provider copies them.
        let rc = unsafe { sys::ibv_post_send(self.qp, &mut w, &mut bad) };
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
        // SAFETY: zeroed is a valid ibv_recv_wr.
        let mut w: sys::ibv_recv_wr = unsafe { std::mem::zeroed() };
        w.wr_id = wr.wr_id;
        w.sg_list = &mut sge;
        w.num_sge = 1;
        let mut bad: *mut sys::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: w and sge live across the call.
        let rc = unsafe { sys::ibv_post_recv(self.qp, &mut w, &mut bad) };
        match rc {
            0 => Ok(()),
            libc::ENOMEM => Err(VerbsError::QueueFull("recv")),
            e => Err(VerbsError::from_errno("ibv_post_recv", e)),
        }
    }
}

//! [`RealPd`]: a protection domain (`ibv_pd`), which registers memory regions and creates RC
//! queue pairs.

use super::convert::access_bits;
use super::cq::REAL_CQS;
use super::device::RealDevice;
use super::mr::RealMr;
use super::qp::RealQp;
use crate::api::{CompletionQueue, MemoryRegion, ProtectionDomain, QueuePair};
use crate::error::VerbsError;
use crate::types::{Access, QpCaps};
use rdma_mummy_sys as sys;
use std::sync::{Arc, Mutex};

/// A protection domain.
pub struct RealPd {
    pub(super) pd: *mut sys::ibv_pd,
    pub(super) dev: Arc<RealDevice>,
}

// SAFETY: see RealDevice.
unsafe impl Send for RealPd {}
// SAFETY: see RealDevice.
unsafe impl Sync for RealPd {}

impl Drop for RealPd {
    fn drop(&mut self) {
        // SAFETY: every MR and QP holds an Arc to us, so none is left.
        unsafe {
            sys::ibv_dealloc_pd(self.pd);
        }
    }
}

impl ProtectionDomain for RealPd {
    fn reg_mr(
        self: Arc<Self>,
        len: usize,
        access: Access,
    ) -> Result<Arc<dyn MemoryRegion>, VerbsError> {
        if len == 0 {
            return Err(VerbsError::InvalidArgument(
                "cannot register an empty region".into(),
            ));
        }
        // Remote write needs local write too (a kernel rule); add it rather than fail.
        let access = if access.contains(Access::REMOTE_WRITE) {
            access | Access::LOCAL_WRITE
        } else {
            access
        };
        let buf: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        let ptr = Box::into_raw(buf) as *mut u8;
        // SAFETY: ptr points to `len` bytes that stay allocated until RealMr::drop.
        let mr = unsafe { sys::ibv_reg_mr(self.pd, ptr.cast(), len, access_bits(access)) };
        if mr.is_null() {
            let e = VerbsError::last_os("ibv_reg_mr");
            // SAFETY: reclaim the buffer we just leaked.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
            return Err(e);
        }
        // SAFETY: mr is valid.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        Ok(Arc::new(RealMr {
            mr: Mutex::new(mr),
            buf: ptr,
            len,
            lkey,
            rkey,
            _pd: self,
        }))
    }

    fn create_qp(
        self: Arc<Self>,
        send_cq: Arc<dyn CompletionQueue>,
        recv_cq: Arc<dyn CompletionQueue>,
        caps: QpCaps,
    ) -> Result<Box<dyn QueuePair>, VerbsError> {
        let raw_cq = |cq: &Arc<dyn CompletionQueue>| -> Result<*mut sys::ibv_cq, VerbsError> {
            let fd = cq.completion_fd();
            // A real QP can only use real CQs of this backend: find ours by its channel fd.
            REAL_CQS
                .lock()
                .map_err(|_| VerbsError::InvalidArgument("CQ registry poisoned".into()))?
                .iter()
                .find(|(f, _)| Some(*f) == fd)
                .map(|(_, p)| *p as *mut sys::ibv_cq)
                .ok_or_else(|| {
                    VerbsError::InvalidArgument(
                        "CQ does not belong to the libibverbs backend".into(),
                    )
                })
        };
        // SAFETY: zeroed is a valid ibv_qp_init_attr; we fill what RC needs.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = raw_cq(&send_cq)?;
        init.recv_cq = raw_cq(&recv_cq)?;
        init.cap.max_send_wr = caps.max_send_wr;
        init.cap.max_recv_wr = caps.max_recv_wr;
        init.cap.max_send_sge = caps.max_sge;
        init.cap.max_recv_sge = caps.max_sge;
        init.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 1;
        // SAFETY: pd and both CQs are valid and kept alive by the QP.
        let qp = unsafe { sys::ibv_create_qp(self.pd, &mut init) };
        if qp.is_null() {
            return Err(VerbsError::last_os("ibv_create_qp"));
        }
        Ok(Box::new(RealQp {
            qp,
            pd: self,
            _send_cq: send_cq,
            _recv_cq: recv_cq,
        }))
    }
}

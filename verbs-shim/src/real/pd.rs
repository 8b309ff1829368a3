//! [`RealPd`]: a protection domain (`ibv_pd`), which registers memory regions and creates RC
//! queue pairs. Dropping it deallocates it; if that fails, it is leaked together with its device
//! context (see [`crate::teardown`]).

use super::convert::access_bits;
use super::cq::REAL_CQS;
use super::device::RealDevice;
use super::mr::RealMr;
use super::qp::RealQp;
use crate::api::{CompletionQueue, MemoryRegion, ProtectionDomain, QueuePair};
use crate::error::VerbsError;
use crate::mapped::MappedFile;
use crate::teardown::{dispose, Disposal};
use crate::types::{Access, QpCaps};
use rdma_mummy_sys as sys;
use std::sync::{Arc, Mutex};

/// A protection domain.
pub struct RealPd {
    pub(super) pd: *mut sys::ibv_pd,
    pub(super) dev: Arc<RealDevice>,
}

// SAFETY: the `ibv_pd` pointer is owned by this object and never handed out; libibverbs
// objects may be used from any thread.
unsafe impl Send for RealPd {}
// SAFETY: every use through `&self` (registering a region, creating a QP) is a libibverbs call
// that is thread-safe on one PD.
unsafe impl Sync for RealPd {}

impl Drop for RealPd {
    fn drop(&mut self) {
        // SAFETY: `pd` came from ibv_alloc_pd and is deallocated only here, once; every region
        // and QP on it holds an Arc to this PD (one whose destroy failed holds it forever), so
        // none is left that could still use it.
        let rc = unsafe { sys::ibv_dealloc_pd(self.pd) };
        let res = if rc == 0 {
            Ok(())
        } else {
            Err(VerbsError::from_errno("ibv_dealloc_pd", rc))
        };
        if dispose("protection domain", self.dev.name(), None, res) == Disposal::Leak {
            // The kernel still holds the PD: keep its device context open for good.
            std::mem::forget(Arc::clone(&self.dev));
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
        // SAFETY: self.pd is live (this PD owns it); `ptr` points to `len` initialised bytes that
        // stay allocated until the RealMr built below frees them after a successful
        // deregistration (or never, if that fails).
        let mr = unsafe { sys::ibv_reg_mr(self.pd, ptr.cast(), len, access_bits(access)) };
        if mr.is_null() {
            let e = VerbsError::last_os("ibv_reg_mr");
            // SAFETY: the registration failed, so the HCA never got the buffer; `ptr` came from
            // `Box::into_raw` of a `len`-byte boxed slice just above and is reclaimed once.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
            return Err(e);
        }
        // SAFETY: `mr` is the non-null `ibv_mr` ibv_reg_mr just returned; its key fields are
        // plain integers set by the call.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        Ok(Arc::new(RealMr {
            mr: Mutex::new(mr),
            buf: ptr,
            mapping: None,
            len,
            lkey,
            rkey,
            _pd: self,
        }))
    }

    fn reg_mapped(
        self: Arc<Self>,
        mem: Arc<MappedFile>,
        access: Access,
    ) -> Result<Arc<dyn MemoryRegion>, VerbsError> {
        let access = if access.contains(Access::REMOTE_WRITE) {
            access | Access::LOCAL_WRITE
        } else {
            access
        };
        let (ptr, len) = (mem.as_mut_ptr(), mem.len());
        // SAFETY: self.pd is live (this PD owns it); `ptr` is the start of a live shared
        // mapping of `len` (> 0) bytes, which the RealMr built below keeps alive by holding
        // `mem` until it is deregistered (and forever if that fails), so the HCA never
        // reaches unmapped memory. The mapping's bytes are never borrowed by Rust code, only
        // copied through raw pointers, so DMA into them invalidates no reference.
        let mr = unsafe { sys::ibv_reg_mr(self.pd, ptr.cast(), len, access_bits(access)) };
        if mr.is_null() {
            return Err(VerbsError::last_os("ibv_reg_mr"));
        }
        // SAFETY: `mr` is the non-null `ibv_mr` ibv_reg_mr just returned; its key fields are
        // plain integers set by the call.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        Ok(Arc::new(RealMr {
            mr: Mutex::new(mr),
            buf: ptr,
            mapping: Some(mem),
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
        let ctx = self.dev.ctx() as usize;
        let raw_cq = |cq: &Arc<dyn CompletionQueue>| -> Result<*mut sys::ibv_cq, VerbsError> {
            let fd = cq.completion_fd();
            // A real QP can only use real CQs of this backend, created on the same device
            // context: find ours by its channel fd.
            let entry = REAL_CQS
                .lock()
                .map_err(|_| VerbsError::InvalidArgument("CQ registry poisoned".into()))?
                .iter()
                .find(|e| Some(e.fd) == fd)
                .copied()
                .ok_or_else(|| {
                    VerbsError::InvalidArgument(
                        "CQ does not belong to the libibverbs backend".into(),
                    )
                })?;
            if entry.ctx != ctx {
                return Err(VerbsError::InvalidArgument(
                    "CQ belongs to another device context".into(),
                ));
            }
            Ok(entry.cq as *mut sys::ibv_cq)
        };
        // SAFETY: ibv_qp_init_attr is a C struct of pointers, integers and an enum whose zero
        // value is valid; all-zero bytes (null pointers, zero counts) are a valid value. We fill
        // what an RC QP needs below.
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = raw_cq(&send_cq)?;
        init.recv_cq = raw_cq(&recv_cq)?;
        init.cap.max_send_wr = caps.max_send_wr;
        init.cap.max_recv_wr = caps.max_recv_wr;
        init.cap.max_send_sge = caps.max_sge;
        init.cap.max_recv_sge = caps.max_sge;
        init.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 1;
        // SAFETY: self.pd is live; both CQ pointers come from the registry of live RealCqs (an
        // entry is removed before its CQ is destroyed) and belong to the `Arc`s the RealQp built
        // below keeps, so they outlive the QP; `init` is a valid in/out parameter.
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

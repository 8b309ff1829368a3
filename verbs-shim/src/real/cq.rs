//! [`RealCq`]: a completion queue (`ibv_cq`) with its completion channel: polling, waiting
//! on the channel, and the registry that lets a QP find the raw CQ behind a `dyn` one.

use super::convert::wc_opcode;
use super::device::RealDevice;
use super::wait_readable;
use crate::api::CompletionQueue;
use crate::error::VerbsError;
use crate::types::{WcStatus, WorkCompletion};
use rdma_mummy_sys as sys;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Live CQs of this backend by completion-channel fd (lets `create_qp` take `dyn` CQs).
pub(super) static REAL_CQS: Mutex<Vec<(i32, usize)>> = Mutex::new(Vec::new());

/// A completion queue with its channel.
pub struct RealCq {
    pub(super) cq: *mut sys::ibv_cq,
    pub(super) channel: *mut sys::ibv_comp_channel,
    pub(super) unacked_events: Mutex<u32>,
    pub(super) _dev: Arc<RealDevice>,
}

// SAFETY: see RealDevice; polling is serialised by libibverbs providers.
unsafe impl Send for RealCq {}
// SAFETY: as above.
unsafe impl Sync for RealCq {}

impl RealCq {
    pub(super) fn register(self: &Arc<Self>) {
        if let Ok(mut reg) = REAL_CQS.lock() {
            // SAFETY: channel is valid.
            reg.push((unsafe { (*self.channel).fd }, self.cq as usize));
        }
    }
}

impl CompletionQueue for RealCq {
    fn poll(&self, max: usize) -> Result<Vec<WorkCompletion>, VerbsError> {
        let max = max.clamp(1, 256);
        // SAFETY: zeroed ibv_wc values are valid out-parameters.
        let mut wcs: Vec<sys::ibv_wc> = vec![unsafe { std::mem::zeroed() }; max];
        // SAFETY: wcs has room for `max` entries; cq is valid.
        let n = unsafe { sys::ibv_poll_cq(self.cq, max as i32, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(VerbsError::from_errno("ibv_poll_cq", -n));
        }
        Ok(wcs[..n as usize]
            .iter()
            .map(|wc| {
                let with_imm = wc.wc_flags & sys::ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0;
                WorkCompletion {
                    wr_id: wc.wr_id,
                    status: WcStatus::from_code(wc.status),
                    opcode: wc_opcode(wc.opcode),
                    byte_len: wc.byte_len,
                    // SAFETY: imm_data is the active member when IBV_WC_WITH_IMM is set.
                    imm: with_imm.then(|| {
                        u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data })
                    }),
                    qpn: wc.qp_num,
                }
            })
            .collect())
    }

    fn wait(&self, max: usize, timeout: Duration) -> Result<Vec<WorkCompletion>, VerbsError> {
        let ready = self.poll(max)?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        // SAFETY: cq is valid; arm the channel, then poll again to close the race.
        let rc = unsafe { sys::ibv_req_notify_cq(self.cq, 0) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_req_notify_cq", rc));
        }
        let ready = self.poll(max)?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        // SAFETY: channel is valid.
        let fd = unsafe { (*self.channel).fd };
        if wait_readable(fd, timeout)? {
            let mut cq: *mut sys::ibv_cq = std::ptr::null_mut();
            let mut ctx: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: the fd is readable, so this does not block; out-pointers are valid.
            let rc = unsafe { sys::ibv_get_cq_event(self.channel, &mut cq, &mut ctx) };
            if rc == 0 {
                if let Ok(mut n) = self.unacked_events.lock() {
                    *n += 1;
                    if *n >= 64 {
                        // SAFETY: acknowledge what we consumed.
                        unsafe { sys::ibv_ack_cq_events(self.cq, *n) };
                        *n = 0;
                    }
                }
            }
        }
        self.poll(max)
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        // SAFETY: channel is valid.
        Some(unsafe { (*self.channel).fd })
    }
}

impl Drop for RealCq {
    fn drop(&mut self) {
        // SAFETY: channel is valid.
        let fd = unsafe { (*self.channel).fd };
        if let Ok(mut reg) = REAL_CQS.lock() {
            reg.retain(|(f, _)| *f != fd);
        }
        // SAFETY: every QP using this CQ holds an Arc to it, so none is left; events are
        // acknowledged before destruction as libibverbs requires.
        unsafe {
            if let Ok(n) = self.unacked_events.lock() {
                if *n > 0 {
                    sys::ibv_ack_cq_events(self.cq, *n);
                }
            }
            sys::ibv_destroy_cq(self.cq);
            sys::ibv_destroy_comp_channel(self.channel);
        }
    }
}

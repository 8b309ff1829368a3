//! [`RealCq`]: a completion queue (`ibv_cq`) with its completion channel: polling, waiting
//! on the channel, and the registry that lets a QP find the raw CQ behind a `dyn` one.
//! Dropping it destroys the CQ, then the channel; a failed destroy leaks what is still in use
//! (see [`crate::teardown`]).

use super::convert::wc_opcode;
use super::device::RealDevice;
use super::wait_readable;
use crate::api::CompletionQueue;
use crate::error::VerbsError;
use crate::teardown::{dispose, Disposal};
use crate::types::{WcStatus, WorkCompletion};
use rdma_mummy_sys as sys;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A live CQ of this backend, found by its completion-channel fd (lets `create_qp` take `dyn`
/// CQs): the raw CQ and the device context it was created on, as addresses.
#[derive(Debug, Clone, Copy)]
pub(super) struct CqEntry {
    pub fd: i32,
    pub cq: usize,
    pub ctx: usize,
}

/// Live CQs of this backend. An entry is added once its CQ exists and removed before the CQ is
/// destroyed, so every pointer in it is live.
pub(super) static REAL_CQS: Mutex<Vec<CqEntry>> = Mutex::new(Vec::new());

/// A completion queue with its channel.
pub struct RealCq {
    pub(super) cq: *mut sys::ibv_cq,
    pub(super) channel: *mut sys::ibv_comp_channel,
    pub(super) unacked_events: Mutex<u32>,
    pub(super) _dev: Arc<RealDevice>,
}

// SAFETY: the CQ and channel pointers are owned by this object and never handed out;
// libibverbs objects may be used from any thread.
unsafe impl Send for RealCq {}
// SAFETY: through `&self` the CQ is polled (providers lock their CQs), armed and waited on, and
// the event counter is behind a mutex.
unsafe impl Sync for RealCq {}

impl RealCq {
    /// The channel's fd.
    fn fd(&self) -> i32 {
        // SAFETY: `channel` points to the live `ibv_comp_channel` this CQ owns (destroyed only
        // in `drop`); `fd` is a plain integer field set when it was created.
        unsafe { (*self.channel).fd }
    }

    pub(super) fn register(self: &Arc<Self>, ctx: *mut sys::ibv_context) {
        if let Ok(mut reg) = REAL_CQS.lock() {
            reg.push(CqEntry {
                fd: self.fd(),
                cq: self.cq as usize,
                ctx: ctx as usize,
            });
        }
    }
}

impl CompletionQueue for RealCq {
    fn poll(&self, max: usize) -> Result<Vec<WorkCompletion>, VerbsError> {
        let max = max.clamp(1, 256);
        // SAFETY: ibv_wc is a C struct of integers, enums whose zero value is valid and a union
        // of integers; all-zero bytes are a valid value.
        let zero: sys::ibv_wc = unsafe { std::mem::zeroed() };
        let mut wcs: Vec<sys::ibv_wc> = vec![zero; max];
        // SAFETY: self.cq is live (owned by `self`); `wcs` has room for `max` (<= 256) entries,
        // and the provider writes at most `max`.
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
                    imm: with_imm.then(|| {
                        // SAFETY: the union holds two u32s, so either member is initialised
                        // (zeroed, then written by the provider) and any bits are a valid u32;
                        // IBV_WC_WITH_IMM says `imm_data` is the meaningful one.
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
        // Arm the channel, then poll again to close the race with a completion that came between.
        // SAFETY: self.cq is live (owned by `self`) and was created with a completion channel.
        let rc = unsafe { sys::ibv_req_notify_cq(self.cq, 0) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_req_notify_cq", rc));
        }
        let ready = self.poll(max)?;
        if !ready.is_empty() {
            return Ok(ready);
        }
        if wait_readable(self.fd(), timeout)? {
            let mut cq: *mut sys::ibv_cq = std::ptr::null_mut();
            let mut ctx: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: self.channel is live (owned by `self`); `cq` and `ctx` are valid, writable
            // out-parameters. The fd is readable, so the call returns without blocking.
            let rc = unsafe { sys::ibv_get_cq_event(self.channel, &mut cq, &mut ctx) };
            if rc == 0 {
                if let Ok(mut n) = self.unacked_events.lock() {
                    *n += 1;
                    if *n >= 64 {
                        // SAFETY: self.cq is live and `*n` events were obtained from its channel
                        // and not acknowledged yet (the counter is reset under the same lock).
                        unsafe { sys::ibv_ack_cq_events(self.cq, *n) };
                        *n = 0;
                    }
                }
            }
        }
        self.poll(max)
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.fd())
    }
}

impl Drop for RealCq {
    fn drop(&mut self) {
        let fd = self.fd();
        if let Ok(mut reg) = REAL_CQS.lock() {
            reg.retain(|e| e.fd != fd);
        }
        let device = self._dev.name();
        // Events are acknowledged before destruction, as libibverbs requires
        // (ibv_destroy_cq waits for every event obtained to be acknowledged).
        let unacked = self.unacked_events.lock().map_or(0, |n| *n);
        if unacked > 0 {
            // SAFETY: self.cq is live; `unacked` events were obtained from its channel and not
            // acknowledged yet, and no other reference to `self` exists to obtain more.
            unsafe { sys::ibv_ack_cq_events(self.cq, unacked) };
        }
        // SAFETY: self.cq came from ibv_create_cq and is destroyed only here, once; every QP
        // using it holds an Arc to this CQ (one whose destroy failed holds it forever), so none
        // is left.
        let rc = unsafe { sys::ibv_destroy_cq(self.cq) };
        let res = if rc == 0 {
            Ok(())
        } else {
            Err(VerbsError::from_errno("ibv_destroy_cq", rc))
        };
        if dispose("completion queue", device, None, res) == Disposal::Leak {
            // The CQ still exists and is attached to the channel and the context: keep both.
            std::mem::forget(Arc::clone(&self._dev));
            return;
        }
        // SAFETY: self.channel came from ibv_create_comp_channel and is destroyed only here,
        // once, after the only CQ attached to it was destroyed.
        let rc = unsafe { sys::ibv_destroy_comp_channel(self.channel) };
        let res = if rc == 0 {
            Ok(())
        } else {
            Err(VerbsError::from_errno("ibv_destroy_comp_channel", rc))
        };
        if dispose("completion channel", device, None, res) == Disposal::Leak {
            std::mem::forget(Arc::clone(&self._dev));
        }
    }
}

//! [`RealMr`]: a registered memory region (`ibv_mr`) that owns its buffer; local reads and
//! writes are bounds-checked copies.

use super::pd::RealPd;
use crate::api::MemoryRegion;
use crate::error::VerbsError;
use rdma_mummy_sys as sys;
use std::sync::{Arc, Mutex};

/// A registered region owning its buffer.
pub struct RealMr {
    pub(super) mr: Mutex<*mut sys::ibv_mr>,
    pub(super) buf: *mut u8,
    pub(super) len: usize,
    pub(super) lkey: u32,
    pub(super) rkey: u32,
    pub(super) _pd: Arc<RealPd>,
}

// SAFETY: the buffer is only touched by copies under bounds checks; the HCA writes it
// concurrently by design, which is why no reference to it is ever handed out.
unsafe impl Send for RealMr {}
// SAFETY: as above.
unsafe impl Sync for RealMr {}

impl RealMr {
    fn check(&self, offset: usize, len: usize) -> Result<(), VerbsError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(VerbsError::InvalidArgument(format!(
                "range {offset}+{len} is outside the {}-byte region",
                self.len
            )));
        }
        Ok(())
    }
}

impl MemoryRegion for RealMr {
    fn lkey(&self) -> u32 {
        self.lkey
    }
    fn rkey(&self) -> u32 {
        self.rkey
    }
    fn addr(&self) -> u64 {
        self.buf as u64
    }
    fn len(&self) -> usize {
        self.len
    }
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        self.check(offset, data.len())?;
        // SAFETY: bounds checked; the source is a distinct Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.add(offset), data.len()) };
        Ok(())
    }
    fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, VerbsError> {
        self.check(offset, len)?;
        let mut out = vec![0u8; len];
        // SAFETY: bounds checked; the destination is a fresh Vec.
        unsafe { std::ptr::copy_nonoverlapping(self.buf.add(offset), out.as_mut_ptr(), len) };
        Ok(out)
    }
    fn deregister(&self) -> Result<(), VerbsError> {
        let mut g = self
            .mr
            .lock()
            .map_err(|_| VerbsError::InvalidArgument("MR lock poisoned".into()))?;
        if g.is_null() {
            return Ok(());
        }
        // SAFETY: *g is a live MR, deregistered once (then nulled).
        let rc = unsafe { sys::ibv_dereg_mr(*g) };
        if rc != 0 {
            return Err(VerbsError::from_errno("ibv_dereg_mr", rc));
        }
        *g = std::ptr::null_mut();
        Ok(())
    }
}

impl Drop for RealMr {
    fn drop(&mut self) {
        let _ = self.deregister();
        // SAFETY: the region is deregistered (or was never used by a live MR), so the HCA no
        // longer touches the buffer; it was leaked from a Box of exactly `len` bytes.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.buf, self.len)) });
    }
}

//! [`RealMr`]: a registered memory region (`ibv_mr`) that owns its buffer, or holds the
//! [`MappedFile`] it was registered over; local reads and writes are bounds-checked copies.
//! Dropping it deregisters the region and frees the buffer (a mapping is only released: its
//! other holders keep it), or, if the deregistration fails, leaks both (see
//! [`crate::teardown`]): a region that is still registered may still be written by the HCA or
//! by the partner through its rkey.

use super::pd::RealPd;
use crate::api::MemoryRegion;
use crate::error::VerbsError;
use crate::mapped::MappedFile;
use crate::teardown::{dispose, Disposal};
use rdma_mummy_sys as sys;
use std::sync::{Arc, Mutex};

/// A registered region owning its buffer, or over a mapping it holds.
pub struct RealMr {
    pub(super) mr: Mutex<*mut sys::ibv_mr>,
    /// The first byte: of a heap buffer this region owns (`mapping` is `None`), or of the
    /// mapping it holds.
    pub(super) buf: *mut u8,
    /// The mapping the region covers, held so it cannot be unmapped while registered.
    pub(super) mapping: Option<Arc<MappedFile>>,
    pub(super) len: usize,
    pub(super) lkey: u32,
    pub(super) rkey: u32,
    pub(super) _pd: Arc<RealPd>,
}

// SAFETY: the raw pointers are owned by this object: `buf` is a heap buffer (or a mapping this
// object holds an `Arc` of) only touched through bounds-checked copies (never a reference, since the HCA may write it concurrently), and the
// `ibv_mr` pointer is only used under its mutex. libibverbs objects may be used from any thread.
unsafe impl Send for RealMr {}
// SAFETY: shared use is copies in and out of `buf` (no references to it exist, so concurrent
// copies and HCA writes cannot invalidate any Rust borrow) and `deregister`, serialised by the
// mutex around the `ibv_mr` pointer.
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
        // SAFETY: `check` proved offset + len <= self.len, so the destination lies inside the
        // live `len`-byte buffer (freed only in `drop`, which needs `&mut self`; a mapping is
        // held by `self.mapping` as long as `self` lives); the source is a
        // Rust slice, which cannot overlap a buffer no Rust reference points into.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.buf.add(offset), data.len()) };
        Ok(())
    }
    fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, VerbsError> {
        self.check(offset, len)?;
        let mut out = vec![0u8; len];
        // SAFETY: `check` proved offset + len <= self.len, so the source lies inside the live
        // buffer (or the mapping `self.mapping` holds); the destination is a fresh Vec of exactly `len` bytes, distinct from it.
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
        // SAFETY: *g is non-null, so it is the `ibv_mr` that `ibv_reg_mr` returned and that was
        // not deregistered yet (a successful deregistration nulls it, under this lock).
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
        let deregistered = self.deregister();
        match dispose(
            "memory region",
            self._pd.dev.name(),
            Some(self.len),
            deregistered,
        ) {
            Disposal::Release if self.mapping.is_some() => {
                // Registered over a mapping: nothing to free, the `Arc` goes with `self` and
                // the mapping's other holders keep it.
            }
            Disposal::Release => {
                // SAFETY: the region is deregistered (`deregister` returned Ok, so the `ibv_mr`
                // is gone), so neither the HCA nor the partner can reach the buffer any more; it
                // was leaked from a `Box<[u8]>` of exactly `len` bytes in `RealPd::reg_mr` and is
                // freed only here, once.
                drop(unsafe {
                    Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.buf, self.len))
                });
            }
            Disposal::Leak => {
                // The region is still registered: the buffer stays allocated for good, and so
                // do the protection domain and device context it is registered with.
                std::mem::forget(Arc::clone(&self._pd));
                if let Some(m) = &self.mapping {
                    // The HCA may still write into the mapping: it is never unmapped.
                    std::mem::forget(Arc::clone(m));
                }
            }
        }
    }
}

//! The completion channel's file descriptor: a non-blocking Linux eventfd.
//!
//! The one place the simulator needs `unsafe`: creating the descriptor (`libc::eventfd`) and
//! taking ownership of it. Reads and writes then go through safe `std::fs::File` calls.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd owned by one simulated completion queue.
#[derive(Debug)]
pub(crate) struct EventFd {
    file: File,
}

impl EventFd {
    /// A fresh eventfd, or `None` if the kernel refused one (then the CQ reports no fd).
    pub(crate) fn new() -> Option<Self> {
        // SAFETY: eventfd(2) takes no pointers; it returns -1 or a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just created by eventfd(2) above, is open, and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Some(EventFd {
            file: File::from(owned),
        })
    }

    /// Makes the descriptor readable (adds 1 to the counter).
    pub(crate) fn signal(&self) {
        // A full counter (EAGAIN) still leaves the descriptor readable, so errors are moot.
        let _ = (&self.file).write(&1u64.to_ne_bytes());
    }

    /// Resets the counter so the descriptor is no longer readable.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 8];
        // EAGAIN when the counter is already zero: nothing to drain.
        let _ = (&self.file).read(&mut buf);
    }

    /// The raw descriptor (stays owned by this object).
    pub(crate) fn raw(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

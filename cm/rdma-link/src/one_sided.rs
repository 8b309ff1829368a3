//! One-sided writes riding with a frame: [`OneSided`] and [`crate::RdmaLink::send_with_write`].
//!
//! The manager hands the link a frame (the "marker", a header-only WRITE frame) together with
//! data for the partner's registered memory. When the frame's turn comes, the link copies the
//! data into its write-staging region ([`crate::staging`]) and posts, on the link's one queue
//! pair and in this order, an RDMA WRITE (no immediate) of the data to `remote` at
//! `remote_offset`, then the frame as its usual WRITE_WITH_IMM into the partner's ring. An RC
//! queue pair executes its requests in order, so by the time the partner's link thread sees the
//! marker, the data is placed in the partner's memory: the partner's CPU is not involved in the
//! write itself.
//!
//! Everything else is as for [`crate::RdmaLink::send`]: the same queue, lanes, credit and
//! `local_done` (reported when the frame's WRITE completes, which on RC implies the data's WRITE
//! completed before it). A frame with a write additionally waits while the write-staging region
//! is full or the send queue cannot take both requests; it is never overtaken by a later frame
//! of its lane. The data's staging space is freed when the RDMA WRITE's own completion arrives.
//! A WRITE that fails (a bad or deregistered rkey: `RemAccessErr`) closes the link with
//! [`crate::LinkCloseReason::Completion`] naming [`crate::RequestKind::OneSidedWrite`].

use crate::error::SendError;
use crate::link::RdmaLink;
use bytes::Bytes;
use peercm_cm_proto::session::LocalDone;
use peercm_cm_proto::Frame;
use peercm_verbs_shim::RemoteMr;

/// A one-sided write riding with a frame.
#[derive(Debug, Clone)]
pub struct OneSided {
    /// The bytes to write: at least 1, at most the link's write-staging region.
    pub data: Bytes,
    /// The partner's region (address, rkey, length), as it advertised it for this link's rail.
    pub remote: RemoteMr,
    /// Where in the region: `remote_offset + data.len()` must not pass `remote.len`.
    pub remote_offset: u64,
}

impl OneSided {
    /// Checks the write on its own against a write-staging region of `staging_bytes`: not
    /// empty, not larger than the region, inside the partner's region.
    pub(crate) fn check(&self, staging_bytes: u64) -> Result<(), SendError> {
        let write_bytes = self.data.len() as u64;
        if write_bytes == 0 {
            return Err(SendError::EmptyWrite);
        }
        if write_bytes > staging_bytes {
            return Err(SendError::WriteTooLarge {
                write_bytes,
                staging_bytes,
            });
        }
        let inside = self
            .remote_offset
            .checked_add(write_bytes)
            .is_some_and(|end| end <= self.remote.len)
            && self.remote.addr.checked_add(self.remote.len).is_some();
        if !inside {
            return Err(SendError::WriteOutOfBounds {
                remote_offset: self.remote_offset,
                write_bytes,
                region_bytes: self.remote.len,
            });
        }
        Ok(())
    }
}

impl RdmaLink {
    /// Queues `frame` preceded by the RDMA WRITE of `write`, never blocking: same queueing,
    /// lanes, credit and `local_done` semantics as [`Self::send`] (see [`crate::one_sided`]).
    ///
    /// Returns false if the link is closed, or if the frame or the write is refused (logged);
    /// use [`Self::try_send_with_write`] to tell them apart.
    pub fn send_with_write(
        &self,
        frame: Frame,
        write: OneSided,
        local_done: Option<LocalDone>,
    ) -> bool {
        match self.try_send_with_write(frame, write, local_done) {
            Ok(()) => true,
            Err(SendError::Closed) => false,
            Err(e) => {
                tracing::warn!(link = self.shared.id.get(), error = %e, "one-sided write refused");
                false
            }
        }
    }

    /// [`Self::send_with_write`] with the reason for a refusal, checked before anything is
    /// posted: [`SendError::TooLarge`] for the frame, [`SendError::EmptyWrite`],
    /// [`SendError::WriteTooLarge`] (data larger than the write-staging region) and
    /// [`SendError::WriteOutOfBounds`] (past `remote.len`) for the write, [`SendError::Closed`]
    /// once the link is closing.
    pub fn try_send_with_write(
        &self,
        frame: Frame,
        write: OneSided,
        local_done: Option<LocalDone>,
    ) -> Result<(), SendError> {
        self.enqueue(frame, Some(write), local_done)
    }

    /// The size of the write-staging region: the largest one-sided write this link takes (0
    /// when one-sided writes are off).
    pub fn write_staging_bytes(&self) -> usize {
        self.shared.write_staging.as_ref().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(len: usize, offset: u64, region: u64) -> OneSided {
        OneSided {
            data: Bytes::from(vec![7u8; len]),
            remote: RemoteMr {
                addr: 0x1000,
                rkey: 1,
                len: region,
            },
            remote_offset: offset,
        }
    }

    #[test]
    fn writes_inside_the_region_and_the_staging_size_pass() {
        assert_eq!(w(10, 90, 100).check(10), Ok(()));
        assert_eq!(w(1, 0, 1).check(1), Ok(()));
    }

    #[test]
    fn empty_oversized_and_out_of_bounds_writes_are_refused() {
        assert_eq!(w(0, 0, 100).check(10), Err(SendError::EmptyWrite));
        assert_eq!(
            w(11, 0, 100).check(10),
            Err(SendError::WriteTooLarge {
                write_bytes: 11,
                staging_bytes: 10
            })
        );
        assert_eq!(
            w(1, 0, 100).check(0),
            Err(SendError::WriteTooLarge {
                write_bytes: 1,
                staging_bytes: 0
            })
        );
        assert_eq!(
            w(10, 91, 100).check(10),
            Err(SendError::WriteOutOfBounds {
                remote_offset: 91,
                write_bytes: 10,
                region_bytes: 100
            })
        );
        assert!(matches!(
            w(10, u64::MAX - 5, 100).check(10),
            Err(SendError::WriteOutOfBounds { .. })
        ));
        let mut wrap = w(1, 0, 100);
        wrap.remote.addr = u64::MAX - 10;
        assert!(matches!(
            wrap.check(10),
            Err(SendError::WriteOutOfBounds { .. })
        ));
    }
}

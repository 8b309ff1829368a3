//! Per-link counters: lock-free atomics updated on the data path, read as a [`LinkStats`]
//! snapshot.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of one link's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Frames whose WRITE completed.
    pub frames_sent: u64,
    /// Encoded bytes of those frames.
    pub bytes_sent: u64,
    /// Frames received and delivered to the sink.
    pub frames_received: u64,
    /// Encoded bytes of those frames.
    pub bytes_received: u64,
    /// Times sending had to wait for credit (window or ring full), counted per stall.
    pub credit_stalls: u64,
    /// Credit messages sent.
    pub credit_msgs_sent: u64,
    /// Credit messages received.
    pub credit_msgs_received: u64,
    /// Frames written that wrapped to the start of the partner's ring.
    pub ring_wraps_sent: u64,
    /// Frames received that wrapped to the start of our ring.
    pub ring_wraps_received: u64,
    /// Liveness probes posted.
    pub probes_sent: u64,
    /// One-sided RDMA WRITEs completed ([`crate::RdmaLink::send_with_write`]).
    pub writes_sent: u64,
    /// Data bytes of those writes.
    pub write_bytes_sent: u64,
    /// Times a frame with a one-sided write had to wait for write-staging space, counted per
    /// stall.
    pub write_stalls: u64,
    /// Frames queued waiting for credit right now.
    pub frames_queued: u64,
    /// Batches of completions the link thread found by busy polling rather than by a
    /// completion-channel wake-up (see [`crate::RdmaLinkConfig::busy_poll_us`]).
    pub busy_poll_hits: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub frames_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub credit_stalls: AtomicU64,
    pub credit_msgs_sent: AtomicU64,
    pub credit_msgs_received: AtomicU64,
    pub ring_wraps_sent: AtomicU64,
    pub ring_wraps_received: AtomicU64,
    pub probes_sent: AtomicU64,
    pub writes_sent: AtomicU64,
    pub write_bytes_sent: AtomicU64,
    pub write_stalls: AtomicU64,
    pub busy_poll_hits: AtomicU64,
}

pub(crate) fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self, frames_queued: u64) -> LinkStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkStats {
            frames_sent: g(&self.frames_sent),
            bytes_sent: g(&self.bytes_sent),
            frames_received: g(&self.frames_received),
            bytes_received: g(&self.bytes_received),
            credit_stalls: g(&self.credit_stalls),
            credit_msgs_sent: g(&self.credit_msgs_sent),
            credit_msgs_received: g(&self.credit_msgs_received),
            ring_wraps_sent: g(&self.ring_wraps_sent),
            ring_wraps_received: g(&self.ring_wraps_received),
            probes_sent: g(&self.probes_sent),
            writes_sent: g(&self.writes_sent),
            write_bytes_sent: g(&self.write_bytes_sent),
            write_stalls: g(&self.write_stalls),
            busy_poll_hits: g(&self.busy_poll_hits),
            frames_queued,
        }
    }
}

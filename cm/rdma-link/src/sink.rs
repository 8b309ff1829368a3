//! [`LinkSink`]: how a link hands what it receives and completes to its consumer (the
//! manager), always from the link's own thread.

use crate::error::LinkCloseReason;
use peercm_cm_proto::session::LocalDone;
use peercm_cm_proto::{Frame, Header};

/// The consumer of one link's events. Every method is called from the link's CQ-polling
/// thread only, in order; [`LinkSink::closed`] exactly once, last. A sink may call back into
/// the [`crate::RdmaLink`] (for example `send`) -- the link holds no lock while calling it.
pub trait LinkSink: Send {
    /// A frame arrived (in the partner's send order). Return false if the consumer is gone:
    /// the link then closes with [`LinkCloseReason::SinkGone`].
    fn frame(&mut self, frame: Frame) -> bool;
    /// A frame above this link's `max_payload_bytes` arrived whole in the ring and was
    /// skipped; here is its header, for the session to refuse that one message. Return false
    /// if the consumer is gone.
    fn oversize(&mut self, header: Header) -> bool;
    /// WRITEs of frames totalling `bytes` encoded bytes completed (the partner's HCA has them);
    /// `local_done` are the marks passed to `send` with those frames, in order.
    fn written(&mut self, bytes: u64, local_done: Vec<LocalDone>);
    /// The link is closed; nothing is delivered after this.
    fn closed(&mut self, reason: LinkCloseReason);
}

//! The manager's input from every transport: [`LinkInput`] (a frame arrived, frames were
//! written, the link closed) and [`LinkLoss`], the typed reason a link closed on its own. Each
//! transport delivers through its own sink trait (see `sinks`); both end up here, on one bounded
//! channel into the manager task.

use peercm_cm_proto::session::{LinkId, LocalDone};
use peercm_cm_proto::{Frame, Header};
use peercm_cm_rdma_link::LinkCloseReason;
use peercm_fallback_tcp::TcpLinkClosed;
use thiserror::Error;

/// What a link tells the manager.
#[derive(Debug)]
pub(crate) enum LinkInput {
    /// A frame arrived.
    Frame {
        /// The link.
        link: LinkId,
        /// The frame.
        frame: Frame,
    },
    /// A frame above `max_payload_bytes` arrived and was skipped; its header.
    Oversize {
        /// The link.
        link: LinkId,
        /// The skipped frame's header.
        header: Header,
    },
    /// The link put `bytes` on the wire; `local_done` are local-model sends it carried.
    Written {
        /// The link.
        link: LinkId,
        /// Bytes written.
        bytes: u64,
        /// Local-model sends now transmitted.
        local_done: Vec<LocalDone>,
    },
    /// The link is gone (the last input of a link).
    Closed {
        /// The link.
        link: LinkId,
        /// Why.
        reason: LinkLoss,
    },
}

/// Why a link closed on its own, by transport (the `reason` of [`LinkInput::Closed`]).
#[derive(Debug, Error)]
pub(crate) enum LinkLoss {
    /// A TCP connection ended.
    #[error(transparent)]
    Tcp(#[from] TcpLinkClosed),
    /// An RDMA queue pair failed or was closed.
    #[error(transparent)]
    Rdma(#[from] LinkCloseReason),
}

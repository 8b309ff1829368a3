//! Typed errors: setting a link up ([`RdmaLinkError`], [`EndpointError`]), refusing a frame
//! ([`SendError`]) and why an established link closed ([`LinkCloseReason`]).

use peercm_cm_proto::FrameError;
use peercm_verbs_shim::{VerbsError, WcStatus};
use thiserror::Error;

/// Preparing, connecting or fencing a link failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RdmaLinkError {
    /// The configuration is unusable.
    #[error("invalid RDMA link configuration: {0}")]
    Config(String),
    /// A verbs call failed.
    #[error("{what}: {error}")]
    Verbs {
        /// What was being done.
        what: String,
        /// The verbs error (part of the message, so not also a `source()`).
        error: VerbsError,
    },
    /// The partner's endpoint cannot be used with this side.
    #[error("the partner's RDMA endpoint is unusable: {0}")]
    RemoteEndpoint(EndpointError),
    /// The CQ-polling thread could not be started.
    #[error("could not start the RDMA link thread: {0}")]
    Thread(String),
}

impl RdmaLinkError {
    pub(crate) fn verbs(what: impl Into<String>, error: VerbsError) -> Self {
        RdmaLinkError::Verbs {
            what: what.into(),
            error,
        }
    }
}

impl From<EndpointError> for RdmaLinkError {
    fn from(e: EndpointError) -> Self {
        RdmaLinkError::RemoteEndpoint(e)
    }
}

/// What is wrong with a partner's [`crate::LocalEndpoint`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The ring cannot hold two of the largest frames this side would send into it.
    #[error(
        "the partner's ring has {ring_bytes} bytes; the largest frame sent into it \
         ({max_frame_bytes} bytes) needs at least {need}"
    )]
    RingTooSmall {
        /// The partner's ring size.
        ring_bytes: u64,
        /// The largest encoded frame we would send into it.
        max_frame_bytes: u64,
        /// The smallest acceptable ring.
        need: u64,
    },
    /// The ring is larger than an immediate can address.
    #[error("the partner's ring has {ring_bytes} bytes, more than the maximum of {max}")]
    RingTooLarge {
        /// The partner's ring size.
        ring_bytes: u64,
        /// The largest acceptable ring.
        max: u64,
    },
    /// The memory region does not match the announced ring size.
    #[error("the partner announces a {ring_bytes}-byte ring but a {mr_len}-byte memory region")]
    RingLengthMismatch {
        /// Announced ring size.
        ring_bytes: u64,
        /// Length of the announced memory region.
        mr_len: u64,
    },
    /// The region's address range wraps around.
    #[error("the partner's ring address {addr:#x} + {len} overflows")]
    RingAddressOverflow {
        /// Address.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The receive depth is outside the supported range.
    #[error("the partner's receive depth {recv_depth} is outside {min}..={max}")]
    RecvDepth {
        /// The partner's value.
        recv_depth: u32,
        /// Smallest supported.
        min: u32,
        /// Largest supported.
        max: u32,
    },
}

/// Why [`crate::RdmaLink::try_send`] refused a frame (nothing was posted).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The link is closed or closing.
    #[error("the RDMA link is closed")]
    Closed,
    /// The encoded frame is larger than this link carries (header plus `max_payload_bytes`).
    /// Frames are never split: the session must keep payloads within the bound.
    #[error(
        "frame of {frame_bytes} encoded bytes exceeds this link's maximum of {max_frame_bytes}"
    )]
    TooLarge {
        /// Encoded size of the refused frame.
        frame_bytes: u64,
        /// The largest encoded frame the link takes.
        max_frame_bytes: u64,
    },
    /// A one-sided write without data ([`crate::RdmaLink::try_send_with_write`]).
    #[error("a one-sided write needs at least one byte of data")]
    EmptyWrite,
    /// A one-sided write's data is larger than this link's write-staging region
    /// ([`crate::RdmaLinkConfig::write_staging_bytes`]; 0 when one-sided writes are off).
    /// Writes are never split: the caller must keep them within the bound.
    #[error(
        "one-sided write of {write_bytes} bytes exceeds this link's write-staging region of \
         {staging_bytes} bytes"
    )]
    WriteTooLarge {
        /// The write's data length.
        write_bytes: u64,
        /// The write-staging region's size.
        staging_bytes: u64,
    },
    /// A one-sided write would pass the end of the partner's region.
    #[error(
        "one-sided write of {write_bytes} bytes at offset {remote_offset} passes the end of \
         the partner's {region_bytes}-byte region"
    )]
    WriteOutOfBounds {
        /// Where in the region the write starts.
        remote_offset: u64,
        /// The write's data length.
        write_bytes: u64,
        /// The region's length (`RemoteMr::len`).
        region_bytes: u64,
    },
}

/// Which kind of request a completion belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// A data WRITE_WITH_IMM (a frame).
    Data,
    /// A credit WRITE_WITH_IMM.
    Credit,
    /// A zero-length liveness probe WRITE.
    Probe,
    /// A posted receive.
    Receive,
    /// A one-sided RDMA WRITE into a partner's region (the data of
    /// [`crate::RdmaLink::send_with_write`]); a bad or deregistered rkey fails it with
    /// `RemAccessErr`.
    OneSidedWrite,
    /// A work-request id this link never used.
    Unknown,
}

/// Why a link closed; reported exactly once through [`crate::LinkSink::closed`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LinkCloseReason {
    /// Closed locally ([`crate::RdmaLink::close`] or dropping the handle).
    #[error("closed locally")]
    Closed,
    /// The receive ring was fenced ([`crate::RdmaLink::fence`]) and the link then failed (the
    /// partner's next WRITE into the fenced ring moves both queue pairs to the error state).
    #[error("fenced: the receive ring was deregistered")]
    Fenced,
    /// The local port went down (the manager saw a PORT_ERR event).
    #[error("the local port went down")]
    PortDown,
    /// The device failed (the manager saw a DEVICE_FATAL event).
    #[error("the RDMA device failed")]
    DeviceFatal,
    /// A work request completed with an error (transport retries exhausted, remote access
    /// error, flushed, ...).
    #[error("{request:?} work request {wr_id:#x} completed with {status:?}")]
    Completion {
        /// The completion status.
        status: WcStatus,
        /// The work request's id.
        wr_id: u64,
        /// What the request was.
        request: RequestKind,
    },
    /// A received frame failed to decode (bad magic, CRC, oversize, ...).
    #[error("received an undecodable frame: {0}")]
    Decode(FrameError),
    /// The partner broke the link protocol (bad immediate, length, credit, opcode).
    #[error("link protocol violation: {0}")]
    Protocol(String),
    /// A verbs call failed on the data path.
    #[error("verbs error on the data path: {0}")]
    Verbs(String),
    /// The sink reported that the manager is gone.
    #[error("the link's consumer is gone")]
    SinkGone,
    /// Any other reason the manager gives to [`crate::RdmaLink::fail`].
    #[error("{0}")]
    Other(String),
}

//! [`RailSetupError`]: why one rail link could not be set up, on either side. Its sentence is
//! also the `reason` of a TRANSPORT refusal sent to the partner.

use peercm_cm_proto::session::InterconnectId;
use peercm_cm_rdma_link::RdmaLinkError;
use thiserror::Error;

/// Why a rail link could not be set up.
#[derive(Debug, Error)]
pub(crate) enum RailSetupError {
    /// The partner named a rail this node does not have.
    #[error("this node has no rail {0}")]
    NoSuchRail(InterconnectId),
    /// The rail's port is down.
    #[error("rail {rail} ({device} port {port}) is not ACTIVE")]
    PortNotActive {
        /// The rail.
        rail: InterconnectId,
        /// Its device.
        device: String,
        /// Its port.
        port: u8,
    },
    /// Too many teardowns on the rail's device have not finished: no new resources there
    /// until they do.
    #[error("rail {rail}: {busy} teardowns on {device} have not finished; the rail stays down")]
    TeardownsStuck {
        /// The rail.
        rail: InterconnectId,
        /// Its device.
        device: String,
        /// Teardowns running on the device.
        busy: usize,
    },
    /// The rail's device was not opened at start.
    #[error("device {0} is not open")]
    DeviceNotOpen(String),
    /// Creating the queue pair or registering the ring failed.
    #[error("preparing rail {rail}: {error}")]
    Prepare {
        /// The rail.
        rail: InterconnectId,
        /// What failed (part of the message, so not also a `source()`).
        error: RdmaLinkError,
    },
    /// This side's endpoint could not be encoded.
    #[error("encoding endpoint: {0}")]
    EncodeEndpoint(postcard::Error),
    /// The partner's endpoint is longer than any valid one.
    #[error("endpoint of {len} bytes exceeds {max}")]
    EndpointTooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The partner's endpoint has bytes after its end.
    #[error("trailing bytes after the endpoint")]
    EndpointTrailingBytes,
    /// The partner's endpoint does not decode.
    #[error("malformed endpoint: {0}")]
    EndpointMalformed(postcard::Error),
    /// Connecting the queue pair to the partner's (INIT -> RTR -> RTS) failed, or the
    /// partner's endpoint does not fit this side's limits.
    #[error("connecting rail {rail}: {error}")]
    Connect {
        /// The rail.
        rail: InterconnectId,
        /// What failed (part of the message, so not also a `source()`).
        error: RdmaLinkError,
    },
}

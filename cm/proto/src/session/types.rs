//! The session's public vocabulary: identities, configuration, client specs, the events
//! clients are told, the session state, errors, transmits and counters.

use crate::control::{self, NackReason};
use crate::frame::{Frame, MsgType, DEFAULT_MAX_PAYLOAD_BYTES};
use crate::port::{InvalidTransition, PortState};
use crate::stream::{ReplyError, SendModel};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

pub use crate::ids::{ClientId, InterconnectId, LinkId, PeerClientId};

/// Largest TRANSPORT payload (RDMA endpoint offers are a few hundred bytes).
pub const MAX_TRANSPORT_PAYLOAD_BYTES: usize = 4096;

/// Tunables of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Messages per client stream that may be unacknowledged (and the credit granted).
    pub window: u32,
    /// Send a heartbeat on a link that has been quiet this long.
    pub heartbeat_interval: Duration,
    /// Declare a link dead when nothing was received on it for this long.
    pub link_timeout: Duration,
    /// Queued (never transmitted) messages at which a client is told flow control is on.
    pub flow_high_water: usize,
    /// Queue length at which flow control turns off again.
    pub flow_low_water: usize,
    /// Largest message payload.
    pub max_payload_bytes: u32,
    /// Autoswitch (dialer only): when every link to the partner is lost, hold unacknowledged
    /// messages (and accept new sends) for up to this long instead of NACKing them, so that
    /// the runtime can connect a backup partner and the session resends them there. The same
    /// partner coming back instead ends the hold the classic way (NACK, reset). `None`: NACK at
    /// once.
    pub hold_on_partner_loss: Option<Duration>,
    /// Async sends complete when the partner client has taken them, which the receiving end
    /// reports with its consumed mark (in every ACK and FLOW frame). When a client takes a
    /// message and no frame is due to carry the mark, a FLOW of its own carries it, at most
    /// one per client per this interval (the first at once): a busy stream is not answered
    /// with a frame per message. `ZERO`: every take is reported at once.
    pub consumed_report_interval: Duration,
    /// A write its sender placed by RDMA WRITE completed on the sender's queue pair: it needs
    /// no code back. Its acknowledgement (which lets the sender drop the copy it keeps for a
    /// replay) goes in the next ACK or FLOW for the client -- at once when a quarter window of
    /// credit is due -- or in a FLOW of its own this long after the first write waiting for
    /// it, so a write costs the partner no frame of its own. A refused write is answered with
    /// its code at once. `ZERO`: a FLOW at once.
    pub write_ack_delay: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window: 256,
            heartbeat_interval: Duration::from_millis(100),
            // A silent partner is detected within 500 ms: heartbeats every 100 ms on quiet links,
            // so the last frame is at most 100 ms older than the failure (docs/operations.md).
            link_timeout: Duration::from_millis(500),
            flow_high_water: 4096,
            flow_low_water: 1024,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            hold_on_partner_loss: None,
            consumed_report_interval: Duration::from_millis(1),
            write_ack_delay: Duration::from_millis(5),
        }
    }
}

/// Per-send options: the send model, and an acknowledgement timeout overriding the client's
/// default (see [`crate::session::Session::set_ack_timeout`]). A [`SendModel`] converts into
/// options without a timeout of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// How the send completes.
    pub model: SendModel,
    /// `Some`: NACK it with `Timeout` unless acknowledged within this long (sync and async;
    /// a local send completes without its partner). `None`: the client's default.
    pub ack_timeout: Option<Duration>,
}

impl From<SendModel> for SendOptions {
    fn from(model: SendModel) -> Self {
        SendOptions {
            model,
            ack_timeout: None,
        }
    }
}

/// How latency-sensitive a client is. The placement policy keeps a Critical client out of the
/// failure domain of the heaviest client (see [`crate::placement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyClass {
    /// Heartbeats and failover signalling: must never queue behind bulk traffic.
    Critical,
    /// Ordinary request/response.
    Normal,
    /// Throughput over latency.
    Bulk,
}

/// What a client declares at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSpec {
    /// Expected bandwidth in MB/s.
    pub bandwidth_mbytes_per_s: u32,
    /// Latency class.
    pub latency: LatencyClass,
    /// How sends complete.
    pub model: SendModel,
}

/// Why a client's connection went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DownReason {
    /// Every link to the partner was lost.
    ConnectionLost,
    /// The partner restarted.
    PeerRestarted,
    /// The partner closed its namesake client.
    PeerClientClosed,
    /// The partner reset the session.
    PeerReset,
}

/// Something a client must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message from the partner's namesake. If `reply_needed`, answer with `reply(seq, code)`.
    Data {
        /// Sequence number on this stream.
        seq: u64,
        /// The message.
        payload: Bytes,
        /// Whether the sender waits for a return code.
        reply_needed: bool,
    },
    /// A send completed: sync with the partner client's code, async with `None`.
    Acked {
        /// The send's id, as returned by `send` (unique for the life of the client, across
        /// resets and partner switches).
        seq: u64,
        /// Return code from the partner client (sync model).
        code: Option<i32>,
    },
    /// A local-model send was handed to the transport.
    Transmitted {
        /// The send's id, as returned by `send`.
        seq: u64,
    },
    /// A send failed; it may or may not have reached the partner (see the reason).
    Nacked {
        /// The send's id, as returned by `send` (unique for the life of the client, across
        /// resets and partner switches).
        seq: u64,
        /// Why.
        reason: NackReason,
    },
    /// The connection to the partner's namesake is up; sends are accepted.
    Up,
    /// The connection is down; sends fail fast until `Up`.
    Down {
        /// Why.
        reason: DownReason,
    },
    /// The session switched to another partner node (autoswitch): every message not yet
    /// acknowledged was kept and is being resent to it. Numbers and handles stay valid.
    PeerSwitched {
        /// The new partner's node id.
        node: String,
        /// The session epoch of the switch (higher than any before it).
        epoch: u64,
    },
    /// The partner's namesake advertised a region (`available`; `len` bytes), or released it
    /// (`len` 0). One-sided writes name it (`write_remote`).
    PartnerRegion {
        /// The region's name.
        name: String,
        /// Its length in bytes (0 when released).
        len: u64,
        /// Advertised (true) or released (false).
        available: bool,
    },
    /// Flow control turned on (throttle) or off.
    FlowControl {
        /// On or off.
        on: bool,
    },
    /// The manager moved this client's traffic to another interconnect (adapter failure,
    /// rebalancing, fallback to TCP or back). Informational: nothing was lost, nothing needs
    /// resending.
    Migrated {
        /// Where its data went before.
        from: InterconnectId,
        /// Where it goes now.
        to: InterconnectId,
    },
}

/// The session's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// No link.
    Down,
    /// A link is up; sequence state is being reset.
    Resetting,
    /// Reset done; waiting for the partner's READY.
    AwaitingReady,
    /// Client traffic flows.
    Up,
}

/// A client command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// No such client (never registered or destroyed).
    #[error("unknown client id {0}")]
    UnknownClient(ClientId),
    /// No such live link.
    #[error("unknown link {0}")]
    UnknownLink(LinkId),
    /// The name is taken by a live client.
    #[error("client name {0:?} is already registered")]
    DuplicateName(String),
    /// The name is not acceptable.
    #[error(transparent)]
    BadName(#[from] control::ControlError),
    /// The node already has the most clients it may have registered at once
    /// ([`control::MAX_CLIENTS_PER_NODE`]).
    #[error("this node already has {limit} clients registered, the most a node may have: close one first")]
    TooManyClients {
        /// The limit.
        limit: usize,
    },
    /// The port does not allow this now.
    #[error(transparent)]
    Port(#[from] InvalidTransition),
    /// Sends fail fast while the connection is not up.
    #[error("client {name:?} is not connected (port {state}); retry after the Up event")]
    NotConnected {
        /// Client name.
        name: String,
        /// Port state.
        state: PortState,
    },
    /// The payload is larger than this node's `max_payload_bytes` or the partner's: refused
    /// at once, nothing was sent.
    #[error("payload of {len} bytes is too large: this node accepts at most {ours} bytes, the partner {}", partner.map_or_else(|| "(not known yet)".to_string(), |p| format!("at most {p} bytes")))]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// This node's `max_payload_bytes`.
        ours: u32,
        /// The partner's, once a partner has described itself.
        partner: Option<u32>,
    },
    /// Bad reply.
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// A region request beyond the node's bounds.
    #[error(transparent)]
    Region(#[from] crate::region::table::RegionLimit),
    /// A one-sided write refused before anything was sent.
    #[error(transparent)]
    Write(#[from] crate::region::WriteError),
    /// No region of that name (the client's own, or its partner namesake's).
    #[error("no region named {name:?} {whose}")]
    NoSuchRegion {
        /// The name asked for.
        name: String,
        /// "held by this client" or "advertised by the partner client".
        whose: &'static str,
    },
}

/// The partner broke the protocol on a link; the runtime closes that link.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// A handshake message after the handshake.
    #[error("unexpected {0:?} on an established link")]
    Unexpected(MsgType),
    /// A frame other than DATA was above `max_payload_bytes` (the link's reader skipped it).
    #[error("{msg_type:?} frame of {len} bytes, above this node's max_payload_bytes of {max}")]
    Oversize {
        /// Its type.
        msg_type: MsgType,
        /// Its payload length.
        len: u32,
        /// This node's limit.
        max: u32,
    },
    /// A control payload was malformed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// A REGION or WRITE payload was malformed or out of bounds.
    #[error(transparent)]
    Region(#[from] crate::region::RegionError),
    /// The partner advertised more regions than the bounds allow.
    #[error("partner region table: {0}")]
    RegionLimit(#[from] crate::region::table::RegionLimit),
    /// A stream rule was broken.
    #[error("client {client}: {err}")]
    Stream {
        /// Local client id.
        client: ClientId,
        /// The rule.
        err: crate::stream::RecvError,
    },
}

/// A TRANSPORT message could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransportSendError {
    /// The session is not up.
    #[error("the session is {0:?}, not up: transport setup waits for it")]
    NotUp(SessionState),
    /// The payload is over [`MAX_TRANSPORT_PAYLOAD_BYTES`].
    #[error("transport payload of {0} bytes exceeds {MAX_TRANSPORT_PAYLOAD_BYTES}")]
    TooLarge(usize),
}

/// A frame to put on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Which link.
    pub link: LinkId,
    /// The frame.
    pub frame: Frame,
    /// For local-model data: report it back through `handle_written` once written.
    pub local_done: Option<LocalDone>,
    /// For a WRITE on an RDMA link whose rail the partner's region is registered on: where the
    /// bytes go one-sided. The link posts an RDMA WRITE of the frame's data (the payload after
    /// its first [`crate::region::wire::WRITE_HEADER_BYTES`]) to this target, then the frame
    /// cut to its write header (the marker), on the same queue pair
    /// ([`Transmit::take_one_sided`]). `None` on TCP, or when the region has no key for the
    /// rail: the WRITE frame carries the bytes and the partner's manager places them.
    pub one_sided: Option<OneSidedTarget>,
}

impl Transmit {
    /// For a one-sided WRITE: cuts the frame to its write header (the marker) and returns the
    /// bytes to write and where; `None` (and the frame untouched) for any other frame.
    pub fn take_one_sided(&mut self) -> Option<(Bytes, OneSidedTarget)> {
        let hdr = crate::region::wire::WRITE_HEADER_BYTES;
        if self.frame.payload.len() <= hdr {
            return None;
        }
        let target = self.one_sided.take()?;
        let data = self.frame.payload.split_off(hdr);
        self.frame.header.len = hdr as u32;
        Some((data, target))
    }
}

/// Where a one-sided write goes on the partner: its region's registration on the link's rail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneSidedTarget {
    /// The region's address on the partner (as advertised for this rail).
    pub addr: u64,
    /// Its rkey on this rail.
    pub rkey: u32,
    /// The region's length.
    pub len: u64,
    /// Where in the region the bytes go.
    pub offset: u64,
}

/// A one-sided write the partner sent in a WRITE frame (over TCP, or over RDMA without a key
/// for the rail): the runtime must copy `data` into the client's region at `offset` before it
/// next calls [`crate::session::Session::poll_transmit`] (that may carry the placement code
/// that completes the write on the partner). Already checked against the region's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apply {
    /// The (local) client holding the region.
    pub client: ClientId,
    /// The region.
    pub region: crate::region::RegionId,
    /// Where in it.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// A local-model send that a link writer has put on the wire: reported back to the session
/// through [`Session::handle_written`](super::Session::handle_written), which completes the
/// send with [`ClientEvent::Transmitted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalDone {
    /// The (local) client that sent it.
    pub client: ClientId,
    /// Its sequence number on the client's stream.
    pub seq: u64,
}

/// Counters for status output and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SessionStats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames handed out for transmission.
    pub frames_out: u64,
    /// DATA frames that were retransmissions.
    pub replays: u64,
    /// Duplicate DATA frames dropped by receivers.
    pub duplicates_dropped: u64,
    /// Messages delivered to local clients.
    pub delivered: u64,
    /// Links lost while the session stayed up.
    pub links_lost: u64,
    /// Session resets.
    pub resets: u64,
    /// Frames refused as protocol violations.
    pub violations: u64,
    /// DATA frames for clients that do not exist here (NACKed).
    pub unknown_client_frames: u64,
    /// Frames above `max_payload_bytes` skipped by the link readers (DATA is NACKed
    /// `TooLarge`, anything else closes its link).
    pub oversize_refused: u64,
    /// DATA frames from a partner client incarnation that has closed (dropped).
    pub stale_frames_dropped: u64,
    /// Sends NACKed with `Timeout` (no acknowledgement within their acknowledgement timeout).
    pub ack_timeouts: u64,
    /// Completions (return codes, consumed marks) that came for sends already timed out:
    /// dropped.
    pub late_completions: u64,
    /// One-sided writes placed into this node's regions (applied from a WRITE frame, or
    /// placed by RDMA WRITE and confirmed by its marker).
    pub writes_placed: u64,
    /// Of those, the ones whose bytes came in the WRITE frame (TCP, a replay, or a rail
    /// without a key) and were copied by this node's manager; the rest were placed one-sided
    /// by RDMA WRITE.
    pub writes_copied: u64,
    /// One-sided writes into this node's regions refused (outside the region, unknown or
    /// released region): answered with a refusal code, nothing written.
    pub writes_refused_here: u64,
    /// This node's one-sided writes the partner refused (NACKed to their client).
    pub writes_refused: u64,
    /// This node's writes completed one-sided: their queue pair completed the RDMA WRITE and
    /// the marker behind it, so their client was told without waiting for the partner's
    /// manager (the rest completed with the partner's placement code).
    pub writes_placed_one_sided: u64,
    /// Writes placed here by RDMA WRITE that were not answered with a frame of their own
    /// (their acknowledgement waited for the next ACK or FLOW, see
    /// [`SessionConfig::write_ack_delay`]).
    pub write_acks_deferred: u64,
}

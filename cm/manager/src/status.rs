//! What a node reports about itself (`peercm status`, the demo summary, tests): the snapshot
//! [`NodeStatus`] and the typed reasons in it ([`TransportKind`], [`FallbackReason`],
//! [`RdmaUnavailable`]). The timeline's events are in [`crate::timeline`].
//!
//! In JSON, a reason is an object `{"code": ..., "message": ...}`: `code` is stable (scripts and
//! metrics match on it), `message` is the sentence shown to operators.

pub use crate::manager::HandshakeStats;
pub use crate::timeline::{NodeEvent, TimelineEntry};
use peercm_cm_proto::port::PortState;
use peercm_cm_proto::session::{InterconnectId, LinkId, SessionState, SessionStats};
use peercm_verbs_shim::VerbsUnavailable;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use std::fmt;
use thiserror::Error;

/// A snapshot of a node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// This node.
    pub node_id: String,
    /// Session state with the partner.
    pub session: SessionState,
    /// Session epoch (bumped by every reset).
    pub epoch: u64,
    /// The partner's node id, once known.
    pub peer: Option<String>,
    /// Why this node cannot use verbs (RDMA) at all, if it cannot.
    pub verbs_unavailable: Option<RdmaUnavailable>,
    /// Why clients are on TCP right now, if they are.
    pub fallback: Option<FallbackReason>,
    /// Every interconnect: capacity, state, load and the clients placed on it.
    pub interconnects: Vec<InterconnectStatus>,
    /// Live links.
    pub links: Vec<LinkStatus>,
    /// Registered clients.
    pub clients: Vec<ClientStatus>,
    /// Counters.
    pub stats: SessionStats,
    /// Client regions open on this node, and the bytes they hold together.
    pub regions: RegionsStatus,
    /// Inbound handshakes: in progress, accepted, refused over the caps, failed.
    pub handshakes: HandshakeStats,
    /// The most recent notable events, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// This node's client regions.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RegionsStatus {
    /// Regions open.
    pub open: usize,
    /// Bytes they hold together (counted against `[regions] max_bytes`).
    pub bytes: u64,
}

/// One link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// Link id.
    pub id: LinkId,
    /// The transport carrying it.
    pub transport: TransportKind,
    /// Interconnect (0 = TCP, k = RDMA rail k).
    pub interconnect: InterconnectId,
    /// Remote address.
    pub remote: String,
    /// The client it is reserved for (a client's own queue pair), once in the session.
    pub reserved_for: Option<String>,
    /// DATA and WRITE frames this node put on it (once in the session).
    pub data_frames_out: Option<u64>,
}

/// One client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientStatus {
    /// Name.
    pub name: String,
    /// Port state.
    pub state: PortState,
    /// Sends not yet completed.
    pub unacked: usize,
    /// The interconnect its data is placed on.
    pub interconnect: Option<InterconnectId>,
    /// The rail of its own queue pair, when it has one in the session.
    pub own_queue_pair: Option<InterconnectId>,
}

/// One interconnect (TCP, or an RDMA rail).
#[derive(Debug, Clone, Serialize)]
pub struct InterconnectStatus {
    /// Id (0 = TCP, k = rail k).
    pub id: InterconnectId,
    /// `tcp` or `rail k`.
    pub name: String,
    /// The local HCA port of a rail.
    pub device: Option<String>,
    /// Whether that port is ACTIVE.
    pub port_active: Option<bool>,
    /// Capacity in Mb/s.
    pub capacity_mbits_per_s: u32,
    /// Has a live link to the partner.
    pub usable: bool,
    /// Declared demand of its clients, MB/s.
    pub declared_mbytes_per_s: f64,
    /// Measured (smoothed) rate of its clients, MB/s.
    pub measured_mbytes_per_s: f64,
    /// Effective demand / capacity.
    pub utilization: f64,
    /// Clients placed on it.
    pub clients: Vec<String>,
    /// A rail: teardowns on its device (destroying queue pairs, deregistering rings) that have
    /// not finished after 2 s. They cost memory and a thread each, never liveness; at 8 the
    /// device's rails stay down until they finish (docs/operations.md).
    pub teardowns_stuck: u32,
    /// `up` (a link in the session), `port_down`, `failing` (its last link attempts were lost
    /// before their activation round trip; the next offer waits for the backoff),
    /// `connecting`, or `idle`.
    pub state: RailState,
    /// A rail: failed link attempts in a row (0 once one activates).
    pub failures: u32,
    /// A rail: offers this node (the dialer) made on it.
    pub offers: u64,
}

/// What the status says about an interconnect (`"up"`, `"port_down"`, ... in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RailState {
    /// A link on it is in the session.
    Up,
    /// The local port is not ACTIVE.
    PortDown,
    /// Its last link attempts failed (lost before their activation round trip); the next
    /// offer waits for the backoff.
    Failing,
    /// A link is being set up or is waiting for its activation round trip.
    Connecting,
    /// Nothing: no partner session, or the partner has no such rail.
    Idle,
}

impl std::fmt::Display for RailState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RailState::Up => "up",
            RailState::PortDown => "port_down",
            RailState::Failing => "failing",
            RailState::Connecting => "connecting",
            RailState::Idle => "idle",
        })
    }
}

/// Which transport carries a link (`"tcp"` or `"rdma"` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// A TCP connection.
    Tcp,
    /// An RDMA queue pair on a rail.
    Rdma,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Rdma => "rdma",
        })
    }
}

/// Why this node cannot use RDMA at all (it then runs on TCP only).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RdmaUnavailable {
    /// The configuration turns RDMA off.
    #[error("RDMA disabled in the configuration (verbs.enabled = false)")]
    DisabledInConfig,
    /// The embedding application started the node without RDMA (`VerbsSource::Disabled`).
    #[error("RDMA disabled for this node")]
    DisabledForNode,
    /// The verbs layer says why: no library, or no device. (Ports that are down are not a
    /// reason: their devices are opened and watched, see [`FallbackReason::PortsDown`].)
    #[error(transparent)]
    Verbs(VerbsUnavailable),
    /// Devices are listed but none could be opened.
    #[error("no RDMA device could be opened")]
    NoDeviceOpened,
}

impl RdmaUnavailable {
    /// A stable code for scripts and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            RdmaUnavailable::DisabledInConfig => "disabled_in_config",
            RdmaUnavailable::DisabledForNode => "disabled_for_node",
            RdmaUnavailable::Verbs(v) => v.code(),
            RdmaUnavailable::NoDeviceOpened => "no_device_opened",
        }
    }
}

/// Why clients are on TCP right now.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FallbackReason {
    /// This node cannot use RDMA at all.
    #[error("verbs unavailable here: {0}")]
    VerbsUnavailable(RdmaUnavailable),
    /// The partner announced no RDMA rail.
    #[error("the partner offers no RDMA")]
    PartnerHasNoRdma,
    /// This node has rails, but none of the ports the partner also has is ACTIVE (for example
    /// the node started with its cables unplugged); they are watched, and a PORT_ACTIVE brings
    /// the rail up and the clients back to RDMA.
    #[error("every local RDMA port is down (the rails come up on PORT_ACTIVE)")]
    PortsDown,
    /// Both sides have rails and a local port is ACTIVE, but no rail has a live link (the
    /// partner's port down, links failed or still being set up).
    #[error("no RDMA rail is usable (the partner's ports down, or links failed)")]
    NoUsableRail,
}

impl FallbackReason {
    /// A stable code for scripts and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            FallbackReason::VerbsUnavailable(_) => "verbs_unavailable",
            FallbackReason::PartnerHasNoRdma => "partner_has_no_rdma",
            FallbackReason::PortsDown => "ports_down",
            FallbackReason::NoUsableRail => "no_usable_rail",
        }
    }
}

/// `{"code": ..., "message": ...}`.
fn serialize_coded<S: Serializer>(
    code: &'static str,
    message: &dyn fmt::Display,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut st = s.serialize_struct("Reason", 2)?;
    st.serialize_field("code", code)?;
    st.serialize_field("message", &message.to_string())?;
    st.end()
}

impl Serialize for RdmaUnavailable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_coded(self.code(), self, s)
    }
}

impl Serialize for FallbackReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_coded(self.code(), self, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_serialize_as_a_stable_code_and_a_sentence() {
        let r =
            FallbackReason::VerbsUnavailable(RdmaUnavailable::Verbs(VerbsUnavailable::NoDevice));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["code"], "verbs_unavailable");
        assert_eq!(v["message"], "verbs unavailable here: no RDMA device found");
        let v = serde_json::to_value(FallbackReason::PortsDown).unwrap();
        assert_eq!(v["code"], "ports_down");
        let v = serde_json::to_value(RdmaUnavailable::DisabledInConfig).unwrap();
        assert_eq!(v["code"], "disabled_in_config");
        let v = serde_json::to_value(FallbackReason::PartnerHasNoRdma).unwrap();
        assert_eq!(v["code"], "partner_has_no_rdma");
        assert_eq!(v["message"], "the partner offers no RDMA");
        assert_eq!(serde_json::to_value(TransportKind::Rdma).unwrap(), "rdma");
    }
}

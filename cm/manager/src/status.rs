//! What a node reports about itself (`peercm status`, the demo summary, tests).

use peercm_cm_proto::port::PortState;
use peercm_cm_proto::session::{InterconnectId, LinkId, SessionState, SessionStats};
use serde::Serialize;

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
    pub verbs_unavailable: Option<String>,
    /// Why clients are on TCP right now, if they are.
    pub fallback: Option<String>,
    /// Every interconnect: capacity, state, load and the clients placed on it.
    pub interconnects: Vec<InterconnectStatus>,
    /// Live links.
    pub links: Vec<LinkStatus>,
    /// Registered clients.
    pub clients: Vec<ClientStatus>,
    /// Counters.
    pub stats: SessionStats,
    /// The most recent notable events, oldest first.
    pub timeline: Vec<TimelineEntry>,
}

/// One link.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// Link id.
    pub id: LinkId,
    /// Transport (`tcp` or `rdma`).
    pub transport: &'static str,
    /// Interconnect (0 = TCP, k = RDMA rail k).
    pub interconnect: InterconnectId,
    /// Remote address.
    pub remote: String,
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
    pub capacity_mbps: u32,
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
}

/// A notable event.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Milliseconds since the node started.
    pub at_ms: u64,
    /// What happened.
    pub what: String,
}

//! What a node reports about itself (`peercm status`, the demo summary, tests).

use peercm_proto::port::PortState;
use peercm_proto::session::{SessionState, SessionStats};
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
    /// Why the verbs (RDMA) path is not in use, if it is not.
    pub verbs_unavailable: Option<String>,
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
    pub id: u64,
    /// Transport.
    pub transport: &'static str,
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
}

/// A notable event.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Milliseconds since the node started.
    pub at_ms: u64,
    /// What happened.
    pub what: String,
}

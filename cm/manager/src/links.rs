//! [`AnyLink`]: the manager's handle on one live link, whichever transport carries it: a TCP
//! connection (reader and writer tasks) or an RDMA queue pair (a CQ-polling thread).

use peercm_cm_proto::session::{InterconnectId, LinkId};
use peercm_cm_rdma_link::{LinkCloseReason, RdmaLink};
use peercm_fallback_tcp::{LinkHandle, Outgoing};

/// One live link.
pub(crate) enum AnyLink {
    /// A TCP connection.
    Tcp(LinkHandle),
    /// An RDMA queue pair on a rail.
    Rdma {
        /// The link.
        link: RdmaLink,
        /// Its rail (= interconnect id).
        rail: InterconnectId,
        /// Acceptor side: handed to the session only once the first frame proves the
        /// partner's queue pair is ready.
        activated: bool,
    },
}

impl AnyLink {
    /// Queues a frame; false if the link is gone (its Closed input is on the way).
    pub fn send(&self, out: Outgoing) -> bool {
        match self {
            AnyLink::Tcp(h) => h.send(out),
            AnyLink::Rdma { link, .. } => link.send(out.frame, out.local_done),
        }
    }

    /// Tears the link down at once.
    pub fn abort(&self) {
        match self {
            AnyLink::Tcp(h) => h.abort(),
            AnyLink::Rdma { link, .. } => link.fail(LinkCloseReason::Closed),
        }
    }

    /// The link id.
    pub fn id(&self) -> LinkId {
        match self {
            AnyLink::Tcp(h) => h.id,
            AnyLink::Rdma { link, .. } => link.id(),
        }
    }

    /// The interconnect it belongs to.
    pub fn interconnect(&self) -> InterconnectId {
        match self {
            AnyLink::Tcp(_) => InterconnectId::TCP,
            AnyLink::Rdma { rail, .. } => *rail,
        }
    }

    /// Transport name for status output.
    pub fn transport(&self) -> &'static str {
        match self {
            AnyLink::Tcp(_) => "tcp",
            AnyLink::Rdma { .. } => "rdma",
        }
    }

    /// Where it goes, for status output.
    pub fn remote(&self) -> String {
        match self {
            AnyLink::Tcp(h) => h.remote.clone(),
            AnyLink::Rdma { link, rail, .. } => {
                format!(
                    "rail {rail} via {} qpn {}",
                    link.device(),
                    link.remote().qp.qpn
                )
            }
        }
    }

    /// Whether the session knows this link.
    pub fn in_session(&self) -> bool {
        match self {
            AnyLink::Tcp(_) => true,
            AnyLink::Rdma { activated, .. } => *activated,
        }
    }
}

//! The manager's side of its links. [`AnyLink`] (here) is the manager's handle on one live link,
//! whichever transport carries it: a TCP connection (reader and writer tasks) or an RDMA queue
//! pair (a CQ-polling thread).
//!
//! - `input`: [`LinkInput`], what every transport tells the manager, and [`LinkLoss`].
//! - `sinks`: the manager's implementations of the transports' sink traits.
//!
//! The dependency points one way: the transports define their sink traits and know nothing of
//! the manager's types.

mod input;
mod sinks;

pub(crate) use input::LinkInput;
pub(crate) use sinks::{RdmaSink, TcpSink};

use crate::rails::ReapedLink;
use crate::status::TransportKind;
use peercm_cm_proto::session::{InterconnectId, LocalDone};
use peercm_cm_proto::Frame;
use peercm_cm_rdma_link::LinkCloseReason;
use peercm_fallback_tcp::LinkHandle;

/// One live link.
pub(crate) enum AnyLink {
    /// A TCP connection.
    Tcp(LinkHandle),
    /// An RDMA queue pair on a rail.
    Rdma {
        /// The link; dropping it hands it to the reaper (its teardown can block).
        link: ReapedLink,
        /// Its rail (= interconnect id).
        rail: InterconnectId,
        /// Acceptor side: handed to the session only once the first frame proves the
        /// partner's queue pair is ready.
        activated: bool,
    },
}

impl AnyLink {
    /// Queues a frame, with the local-model send it completes once written; false if the link
    /// is gone (its Closed input is on the way).
    pub fn send(&self, frame: Frame, local_done: Option<LocalDone>) -> bool {
        match self {
            AnyLink::Tcp(h) => h.send(frame, local_done),
            AnyLink::Rdma { link, .. } => link.get().is_some_and(|l| l.send(frame, local_done)),
        }
    }

    /// Queues a WRITE marker preceded by the RDMA WRITE of its bytes (`write`), on an RDMA
    /// link; false if the link is gone or refused it (a TCP link never gets one: the session
    /// only asks for one-sided writes on RDMA rails).
    pub fn send_with_write(
        &self,
        frame: Frame,
        write: peercm_cm_rdma_link::OneSided,
        local_done: Option<LocalDone>,
    ) -> bool {
        match self {
            AnyLink::Tcp(_) => false,
            AnyLink::Rdma { link, .. } => link
                .get()
                .is_some_and(|l| l.send_with_write(frame, write, local_done)),
        }
    }

    /// Whether it is an RDMA link.
    pub fn is_rdma(&self) -> bool {
        matches!(self, AnyLink::Rdma { .. })
    }

    /// Tears the link down at once (an RDMA link's queue pair goes to ERR on the reaper).
    pub fn abort(&self) {
        match self {
            AnyLink::Tcp(h) => h.abort(),
            AnyLink::Rdma { link, .. } => link.fail(LinkCloseReason::Closed),
        }
    }

    /// The interconnect it belongs to.
    pub fn interconnect(&self) -> InterconnectId {
        match self {
            AnyLink::Tcp(_) => InterconnectId::TCP,
            AnyLink::Rdma { rail, .. } => *rail,
        }
    }

    /// The transport carrying it.
    pub fn transport(&self) -> TransportKind {
        match self {
            AnyLink::Tcp(_) => TransportKind::Tcp,
            AnyLink::Rdma { .. } => TransportKind::Rdma,
        }
    }

    /// Where it goes, for status output.
    pub fn remote(&self) -> String {
        match self {
            AnyLink::Tcp(h) => h.remote.clone(),
            AnyLink::Rdma { link, rail, .. } => {
                let qpn = link.get().map_or(0, |l| l.remote().qp.qpn);
                format!("rail {rail} via {} qpn {qpn}", link.device())
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

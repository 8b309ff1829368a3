//! RDMA rails: this node's HCA ports numbered as interconnects, the opened devices and their
//! async-event watchers, and the offer/accept bookkeeping that turns a rail into an RDMA link.
//!
//! Rail numbering: every port of every device the provider lists, sorted by device name then
//! port number, is rail 1, 2, ... Both partners number their own ports the same way and
//! announce them, in that order, as `TransportCap::Verbs` capabilities in the bootstrap
//! handshake, so rail k pairs this node's k-th port with the partner's k-th port (rxe0 with
//! rxe0, rxe1 with rxe1 on a dual-rail pair). A rail is the placement policy's interconnect id
//! k; TCP is interconnect 0.
//!
//! Setup ("slam connect" over the bootstrap session): the dialer prepares a queue pair and its
//! receive ring for a rail and sends `TransportMsg::Offer`; the acceptor prepares its own,
//! connects it to the offer (INIT -> RTR -> RTS) and answers `Accept`; the dialer connects to
//! the answer. Neither side hands its link to the session before a round trip over it (a
//! LINK_PROBE heartbeat and its answer, `activation`); a rail whose attempts fail is offered
//! again only after an exponential backoff with jitter (`health`).
//!
//! - `discovery`: listing and opening the devices, numbering their ports as rails, the
//!   capabilities announced to the partner.
//! - `error`: `RailSetupError`, why a rail link could not be set up.
//! - `setup`: the blocking resource creation for one rail link (`SetupJob`, `RailDone`).
//! - `negotiation`: the TRANSPORT offer/answer exchange and the dialer's offers in flight.
//! - `events`: the device async-event watchers and the port state they change.
//! - `activation`: a new rail link joins the session only after a LINK_PROBE round trip.
//! - `health`: failed attempts per rail, the dialer's backoff before re-offering, the state
//!   shown in the status.
//! - `teardown`: the reaper, where every verbs call that can block (destroy, deregister,
//!   fence, modify to ERR) runs, off the manager task; the guards that send it work.
//! - `glue`: the manager's side of all this, an `impl Manager` block.

mod activation;
pub(crate) mod client_qps;
mod discovery;
mod error;
mod events;
mod glue;
mod health;
mod negotiation;
mod region_pds;
mod setup;
pub(crate) mod teardown;

pub(crate) use error::RailSetupError;
pub(crate) use events::DeviceInput;
use negotiation::Pending;
pub(crate) use negotiation::RailAction;
pub(crate) use setup::{RailDone, SetupJob};
pub(crate) use teardown::{ReapedLink, ReapedPrepared, Reaper};

use crate::config::VerbsTunables;
use crate::status::RdmaUnavailable;
use peercm_cm_proto::session::{InterconnectId, LinkId};
use peercm_verbs_shim::{Device, Provider};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Where the verbs provider comes from.
#[derive(Clone)]
pub enum VerbsSource {
    /// rdma-core's libibverbs, loaded at run time (production).
    Real,
    /// A given provider (a node of a simulated fabric in tests).
    Provider(Arc<dyn Provider>),
    /// No RDMA: TCP only.
    Disabled,
}

impl std::fmt::Debug for VerbsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerbsSource::Real => "Real",
            VerbsSource::Provider(_) => "Provider",
            VerbsSource::Disabled => "Disabled",
        })
    }
}

/// One local HCA port.
#[derive(Debug, Clone)]
pub(crate) struct LocalRail {
    pub rail: InterconnectId,
    pub device: String,
    pub port: u8,
    pub gid: [u8; 16],
    pub gid_index: u8,
    pub capacity_mbits_per_s: u32,
    pub active: bool,
}

/// The node's RDMA side. See the module docs.
pub(crate) struct Rails {
    pub unavailable: Option<RdmaUnavailable>,
    devices: BTreeMap<String, Arc<dyn Device>>,
    /// One protection domain per device, shared by the device's links and the client
    /// regions registered for them (see `region_pds`). Empty until links take a shared one.
    shared_pds: BTreeMap<String, Arc<dyn peercm_verbs_shim::ProtectionDomain>>,
    pub local: Vec<LocalRail>,
    pending: BTreeMap<InterconnectId, Pending>,
    next_attempt: u64,
    tunables: VerbsTunables,
    max_payload_bytes: u32,
    /// Where this node's verbs objects are destroyed (off the manager task).
    pub reaper: Reaper,
    /// RDMA links waiting for their activation round trip, since when.
    pub probing: BTreeMap<LinkId, std::time::Instant>,
    /// Failed attempts and backoff per rail.
    pub health: health::Health,
    /// Queue pairs of their own for clients.
    pub client_qps: client_qps::ClientQps,
}

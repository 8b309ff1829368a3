//! Rail link setup: creating one rail link's queue pair and receive ring, work the manager hands
//! to a blocking thread, and the result that comes back ([`RailDone`]).

use super::discovery::{gid_table, pick_gid};
use super::{LocalRail, RailSetupError, Rails};
use peercm_cm_proto::control::TransportMsg;
use peercm_cm_proto::session::{InterconnectId, LinkId};
use peercm_cm_rdma_link::{PreparedLink, RdmaLinkConfig};
use peercm_verbs_shim::{Device, ProtectionDomain, QpParams};
use std::sync::Arc;

/// QP local ACK timeout: exponent 15, 4.096 us x 2^15 = 134 ms. With [`QP_RETRY_COUNT`]
/// retries the hardware gives up after at least (6 + 1) x 134 ms = 0.94 s of silence, well
/// after the session's 500 ms heartbeat verdict: the manager, not the HCA, decides that a
/// partner is gone (docs/operations.md, "Detection").
const QP_ACK_TIMEOUT_US: u64 = 134_000;
/// QP transport retries: 6, finite. rdma_rxe treats 7 as "forever", and a queue pair retrying
/// forever towards a frozen partner holds its packets, and so its teardown, until the partner
/// resumes (docs/decisions.md, "RC retry count 6, not 7").
const QP_RETRY_COUNT: u8 = 6;

/// Resource creation for one rail link: cheap to build on the manager task, run on a blocking
/// thread (creating a PD, CQ, QP and registering rings takes milliseconds on hardware and up
/// to seconds under emulation, and the manager must keep heartbeating meanwhile).
pub(crate) struct SetupJob {
    rail: InterconnectId,
    device: Arc<dyn Device>,
    /// The device's shared protection domain (client regions are registered in it), if any.
    pd: Option<Arc<dyn ProtectionDomain>>,
    cfg: RdmaLinkConfig,
}

impl SetupJob {
    /// Creates the queue pair and rings; returns them with this side's encoded endpoint.
    pub fn prepare(mut self) -> Result<(Box<PreparedLink>, Vec<u8>), RailSetupError> {
        let rail = self.rail;
        // The GID table as it is now: a port that was down at discovery (or whose address
        // changed) may have had no RoCEv2 IPv4-mapped entry then, and its entry may appear
        // only shortly after PORT_ACTIVE; an attempt that still finds none is retried.
        let table = gid_table(self.device.as_ref(), self.cfg.port);
        if !table.is_empty() {
            self.cfg.gid_index = pick_gid(&table).0;
        }
        let prepared = match self.pd {
            Some(pd) => PreparedLink::new_in(pd, self.device, self.cfg),
            None => PreparedLink::new(self.device, self.cfg),
        };
        let (prepared, ep) = prepared.map_err(|error| RailSetupError::Prepare { rail, error })?;
        let bytes = postcard::to_stdvec(&ep).map_err(RailSetupError::EncodeEndpoint)?;
        Ok((Box::new(prepared), bytes))
    }
}

/// Blocking rail work finished; back on the manager task.
pub(crate) enum RailDone {
    /// Dialer: the rail's resources exist; the offer can go out.
    Prepared {
        rail: InterconnectId,
        link_id: LinkId,
        res: Result<(Box<PreparedLink>, Vec<u8>), RailSetupError>,
    },
    /// A link is connected (or failed to). `reply` is the acceptor's answer to send.
    Connected {
        rail: InterconnectId,
        link_id: LinkId,
        res: Result<peercm_cm_rdma_link::RdmaLink, RailSetupError>,
        reply: Option<TransportMsg>,
        /// A client's own queue pair (for this local client), not a rail link.
        dedicated: Option<peercm_cm_proto::session::ClientId>,
    },
    /// A client's own queue pair is ready on this side; the offer can go out.
    ClientPrepared {
        link_id: LinkId,
        res: Result<(Box<PreparedLink>, Vec<u8>), RailSetupError>,
    },
    /// The reaper fenced a retired link (or failed to, and closed it).
    Fenced {
        link: LinkId,
        res: Result<(), String>,
    },
    /// A client region was registered with the node's protection domains (or failed to).
    Region(crate::regions::runtime::RegionRegistered),
}

impl Rails {
    fn link_config(&self, rail: &LocalRail, link_id: LinkId) -> RdmaLinkConfig {
        RdmaLinkConfig {
            link_id,
            port: rail.port,
            gid_index: rail.gid_index,
            ring_bytes: self.tunables.ring_bytes,
            recv_depth: self.tunables.recv_depth,
            max_payload_bytes: self.max_payload_bytes,
            busy_poll_us: self.tunables.busy_poll_us,
            qp: QpParams {
                ack_timeout_us: QP_ACK_TIMEOUT_US,
                retry_count: QP_RETRY_COUNT,
                ..QpParams::default()
            },
            ..RdmaLinkConfig::default()
        }
    }

    pub(super) fn setup_job(
        &self,
        rail: InterconnectId,
        link_id: LinkId,
    ) -> Result<SetupJob, RailSetupError> {
        let r = rail
            .rail_index()
            .and_then(|i| self.local.get(i))
            .ok_or(RailSetupError::NoSuchRail(rail))?;
        if !r.active {
            return Err(RailSetupError::PortNotActive {
                rail,
                device: r.device.clone(),
                port: r.port,
            });
        }
        let busy = self.reaper.busy_on(&r.device);
        if busy >= super::teardown::MAX_BUSY_PER_DEVICE {
            return Err(RailSetupError::TeardownsStuck {
                rail,
                device: r.device.clone(),
                busy,
            });
        }
        let device = self
            .devices
            .get(&r.device)
            .ok_or_else(|| RailSetupError::DeviceNotOpen(r.device.clone()))?
            .clone();
        Ok(SetupJob {
            rail,
            device,
            pd: self.shared_pds.get(&r.device).cloned(),
            cfg: self.link_config(r, link_id),
        })
    }
}

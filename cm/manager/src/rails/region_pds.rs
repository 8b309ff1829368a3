//! [`RegionPds`]: the protection domains client regions are registered with (one per device
//! the node's rails use, shared by every link of that device, so a region's rkey is valid on
//! any of them), and the rail keys a registration gives the partner.

use super::Rails;
use crate::regions::registration::RegionRegistration;
use peercm_cm_proto::region::RailKey;
use peercm_cm_proto::session::InterconnectId;
use peercm_verbs_shim::ProtectionDomain;
use std::sync::Arc;

/// What a region registration needs: the protection domains by device, and which rail is on
/// which device.
#[derive(Clone, Default)]
pub(crate) struct RegionPds {
    pub devices: Vec<(String, Arc<dyn ProtectionDomain>)>,
    pub rails: Vec<(InterconnectId, String)>,
}

impl RegionPds {
    /// No protection domain: regions are written through WRITE frames only.
    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The partner's keys for a registration: one per rail whose device it is registered on.
    pub fn keys(&self, reg: &RegionRegistration) -> Vec<RailKey> {
        let remote = reg.remote();
        self.rails
            .iter()
            .filter_map(|(rail, device)| {
                let (_, r) = remote.iter().find(|(d, _)| d == device)?;
                Some(RailKey {
                    rail: *rail,
                    addr: r.addr,
                    rkey: r.rkey,
                })
            })
            .collect()
    }
}

impl Rails {
    /// The protection domains to register client regions with. Empty while the links of a
    /// device do not share one protection domain (an rkey is only valid on queue pairs of the
    /// protection domain it was registered in): regions are then written through WRITE frames,
    /// which the partner's manager places.
    pub fn region_pds(&self) -> RegionPds {
        let devices: Vec<(String, Arc<dyn ProtectionDomain>)> = self
            .shared_pds
            .iter()
            .map(|(d, pd)| (d.clone(), pd.clone()))
            .collect();
        let rails = self
            .local
            .iter()
            .filter(|r| self.shared_pds.contains_key(&r.device))
            .map(|r| (r.rail, r.device.clone()))
            .collect();
        RegionPds { devices, rails }
    }
}

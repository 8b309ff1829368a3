//! Regions on the manager task: the node's open regions by client and session id, the client
//! commands that open, grow, release, read and write them, the placement of writes that arrived as
//! WRITE frames (`Session::poll_apply`), and the registrations that give the partner one-sided
//! access (rail keys for `Session::set_region_keys`), replaced after a switch to another
//! partner (`Session::poll_rekey`) so the old partner's rkeys stop working.
//!
//! Registration of a region's memory with the node's protection domains pins its pages, which
//! takes time for a large region: it runs on a blocking thread, and the keys come back as a
//! [`RegionRegistered`]. Deregistration goes through the reaper (see `registration`). Nothing
//! here calls a verb on the manager task.

use super::registration::RegionRegistration;
use super::{Region, RegionError, RegionStore};
use crate::config::RegionTunables;
use crate::error::CmError;
use crate::manager::Manager;
use bytes::Bytes;
use peercm_cm_proto::region::{RailKey, RegionId};
use peercm_cm_proto::session::ClientId;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

/// A region as its client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRegionInfo {
    /// Its name (unique per client).
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
    /// The mapped file.
    pub path: PathBuf,
}

/// One open region of a client.
struct OpenRegion {
    /// Its client's name (its directory).
    client: String,
    name: String,
    region: Region,
    /// The registrations on the node's protection domains, once made.
    registration: Option<RegionRegistration>,
    /// Registrations over a shorter mapping, kept after the region grew so the partner's
    /// writes with the keys it had still land (within the old length) until it has the new
    /// ones; dropped (to the reaper) at a switch, a release, or beyond [`MAX_RETIRED`].
    retired: VecDeque<RegionRegistration>,
    /// Bumped by every (re-)registration: a result for an older one is dropped.
    generation: u64,
}

/// Most superseded registrations a region keeps after growing; older ones are deregistered
/// (a partner still writing with their keys gets a remote access error, its link is closed
/// and the write is replayed as a frame: late, never lost).
const MAX_RETIRED: usize = 4;

/// What happens to a region's registration when it is registered anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OldKeys {
    /// A switch to another partner: the old keys (and any kept ones) stop working now.
    Fence,
    /// The region grew: the old keys keep working until the region is released or fenced.
    Keep,
}

/// A registration made on a blocking thread, back on the manager task.
pub(crate) struct RegionRegistered {
    pub client: ClientId,
    pub region: RegionId,
    pub generation: u64,
    pub res: Result<(RegionRegistration, Vec<RailKey>), RegionError>,
}

/// The node's regions (see the module docs).
pub(crate) struct RegionRuntime {
    store: RegionStore,
    open: HashMap<(ClientId, RegionId), OpenRegion>,
}

impl RegionRuntime {
    pub fn new(cfg: &RegionTunables) -> Self {
        RegionRuntime {
            store: RegionStore::new(cfg),
            open: HashMap::new(),
        }
    }

    /// Bytes the open regions hold together.
    pub fn bytes_in_use(&self) -> u64 {
        self.store.bytes_in_use()
    }

    /// How many regions are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }
}

impl Manager {
    /// Opens client `id`'s region `name` of `len` bytes (its file, then its entry in the
    /// session), registers it, and advertises it to the partner once registered.
    pub(crate) fn register_region(
        &mut self,
        id: ClientId,
        name: &str,
        len: u64,
    ) -> Result<LocalRegionInfo, CmError> {
        let client = self
            .session
            .client_name(id)
            .ok_or(peercm_cm_proto::session::SessionError::UnknownClient(id))?
            .to_string();
        if self.session.local_region(id, name).is_some() {
            return Err(RegionError::AlreadyOpen {
                name: name.to_string(),
            }
            .into());
        }
        let region = self.regions.store.open_for(&client, name, len)?;
        let rid = match self.session.register_region(id, name, len) {
            Ok(rid) => rid,
            Err(e) => {
                let _ = self.regions.store.release_for(&client, name);
                return Err(e.into());
            }
        };
        let info = LocalRegionInfo {
            name: name.to_string(),
            len,
            path: region.path().to_path_buf(),
        };
        tracing::info!(client = %client, region = name, len, id = rid.get(), "region registered");
        self.regions.open.insert(
            (id, rid),
            OpenRegion {
                client: client.clone(),
                name: name.to_string(),
                region,
                registration: None,
                retired: VecDeque::new(),
                generation: 0,
            },
        );
        self.register_region_memory(id, rid, OldKeys::Fence);
        Ok(info)
    }

    /// Grows client `id`'s region `name` to `len` bytes (file, session entry), then registers
    /// the grown mapping and advertises it; the old registration is kept (see [`OldKeys`]).
    pub(crate) fn grow_region(
        &mut self,
        id: ClientId,
        name: &str,
        len: u64,
    ) -> Result<LocalRegionInfo, CmError> {
        let (rid, old_len) = self.session.local_region(id, name).ok_or_else(|| {
            CmError::from(RegionError::Unknown {
                name: name.chars().take(80).collect(),
            })
        })?;
        if len <= old_len {
            return Err(RegionError::NotLarger {
                name: name.to_string(),
                len: old_len,
                asked: len,
            }
            .into());
        }
        if len > peercm_cm_proto::region::MAX_REGION_BYTES {
            return Err(peercm_cm_proto::session::SessionError::from(
                peercm_cm_proto::region::table::RegionLimit::Length(len),
            )
            .into());
        }
        let client = self
            .regions
            .open
            .get(&(id, rid))
            .map(|o| o.client.clone())
            .ok_or_else(|| RegionError::Unknown {
                name: name.chars().take(80).collect(),
            })?;
        let grown = self.regions.store.grow_for(&client, name, len)?;
        // Checked above against the same bounds: cannot fail now.
        self.session.grow_region(id, rid, len)?;
        let info = LocalRegionInfo {
            name: name.to_string(),
            len,
            path: grown.path().to_path_buf(),
        };
        if let Some(open) = self.regions.open.get_mut(&(id, rid)) {
            open.region = grown;
        }
        tracing::info!(client = %client, region = name, from = old_len, to = len, "region grown");
        self.register_region_memory(id, rid, OldKeys::Keep);
        Ok(info)
    }

    /// Registers region `rid` of client `id` with the node's protection domains (on a
    /// blocking thread), or, without RDMA, advertises it at once with no rail keys.
    fn register_region_memory(&mut self, id: ClientId, rid: RegionId, old: OldKeys) {
        let pds = self.rails.region_pds();
        let Some(open) = self.regions.open.get_mut(&(id, rid)) else {
            return;
        };
        open.generation += 1;
        match old {
            // The old registrations go to the reaper now: the old keys stop working.
            OldKeys::Fence => {
                open.registration = None;
                open.retired.clear();
            }
            OldKeys::Keep => {
                if let Some(reg) = open.registration.take() {
                    open.retired.push_back(reg);
                }
                while open.retired.len() > MAX_RETIRED {
                    open.retired.pop_front();
                }
            }
        }
        if pds.is_empty() {
            if let Err(e) = self.session.set_region_keys(id, rid, Vec::new()) {
                tracing::warn!(region = rid.get(), error = %e, "region not advertised");
            }
            return;
        }
        let region = open.region.clone();
        let generation = open.generation;
        let reaper = self.rails.reaper.clone();
        let tx = self.rail_tx.clone();
        tokio::task::spawn_blocking(move || {
            let res = RegionRegistration::register(&region, &pds.devices, &reaper).map(|reg| {
                let keys = pds.keys(&reg);
                (reg, keys)
            });
            let _ = tx.send(crate::rails::RailDone::Region(RegionRegistered {
                client: id,
                region: rid,
                generation,
                res,
            }));
        });
    }

    /// A registration came back: advertise the region with its keys (unless it was released
    /// or registered anew meanwhile: then the registration is dropped, through the reaper).
    pub(crate) fn on_region_registered(&mut self, done: RegionRegistered) {
        let key = (done.client, done.region);
        let Some(open) = self.regions.open.get_mut(&key) else {
            return; // released meanwhile: `done` drops the registration through the reaper
        };
        if open.generation != done.generation {
            return;
        }
        match done.res {
            Ok((reg, keys)) => {
                open.registration = Some(reg);
                if let Err(e) = self.session.set_region_keys(done.client, done.region, keys) {
                    tracing::warn!(region = done.region.get(), error = %e, "region not advertised");
                }
            }
            Err(e) => {
                // Without a registration the partner writes through WRITE frames only.
                tracing::warn!(
                    region = %open.name,
                    error = %e,
                    "region could not be registered for RDMA: advertised for TCP writes only"
                );
                if let Err(e) = self
                    .session
                    .set_region_keys(done.client, done.region, Vec::new())
                {
                    tracing::warn!(region = done.region.get(), error = %e, "region not advertised");
                }
            }
        }
    }

    /// Releases client `id`'s region `name`: the partner is told, the registrations go to the
    /// reaper, the file stays with its contents.
    pub(crate) fn release_region(&mut self, id: ClientId, name: &str) -> Result<(), CmError> {
        let (rid, _) = self.session.local_region(id, name).ok_or_else(|| {
            CmError::from(RegionError::Unknown {
                name: name.chars().take(80).collect(),
            })
        })?;
        self.session.release_region(id, rid)?;
        self.forget_region(id, rid);
        Ok(())
    }

    fn forget_region(&mut self, id: ClientId, rid: RegionId) {
        if let Some(open) = self.regions.open.remove(&(id, rid)) {
            let _ = self.regions.store.release_for(&open.client, &open.name);
            // `open.registration` drops here: deregistered on the reaper.
        }
    }

    /// Client `id` was destroyed: its regions go (their files stay).
    pub(crate) fn release_client_regions(&mut self, id: ClientId) {
        let mine: Vec<RegionId> = self
            .regions
            .open
            .keys()
            .filter(|k| k.0 == id)
            .map(|k| k.1)
            .collect();
        for rid in mine {
            self.forget_region(id, rid);
        }
    }

    /// Client `id` writes `data` at `offset` of its partner namesake's region `region`.
    pub(crate) fn write_remote(
        &mut self,
        id: ClientId,
        region: &str,
        offset: u64,
        data: Bytes,
        ack_timeout: Option<Duration>,
    ) -> Result<u64, CmError> {
        let now = std::time::Instant::now();
        Ok(self
            .session
            .write_named(id, region, offset, data, ack_timeout, now)?)
    }

    /// Reads `len` bytes at `offset` of client `id`'s own region `name`.
    pub(crate) fn read_region(
        &self,
        id: ClientId,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, CmError> {
        let (rid, _) = self.session.local_region(id, name).ok_or_else(|| {
            CmError::from(RegionError::Unknown {
                name: name.chars().take(80).collect(),
            })
        })?;
        let open = self
            .regions
            .open
            .get(&(id, rid))
            .ok_or_else(|| RegionError::Unknown {
                name: name.chars().take(80).collect(),
            })?;
        Ok(open.region.read(offset, len)?)
    }

    /// Places the writes that arrived as WRITE frames (before anything is transmitted: the
    /// placement codes that complete them are among what goes next), and replaces the
    /// registrations a switch to another partner fenced.
    pub(crate) fn place_region_writes(&mut self) {
        while let Some(ap) = self.session.poll_apply() {
            match self.regions.open.get(&(ap.client, ap.region)) {
                Some(open) => {
                    if let Err(e) = open.region.write(ap.offset, &ap.data) {
                        // The session checked the bounds against the same length.
                        tracing::error!(region = %open.name, error = %e, "write not placed");
                    }
                }
                None => tracing::error!(
                    region = ap.region.get(),
                    "write for a region the manager does not hold"
                ),
            }
        }
        while let Some((id, rid)) = self.session.poll_rekey() {
            tracing::info!(
                region = rid.get(),
                "new partner: region registered anew, the old partner's keys invalidated"
            );
            self.register_region_memory(id, rid, OldKeys::Fence);
        }
    }
}

//! The two region tables of a session, and the typed refusals of a write.
//!
//! - [`PartnerRegions`] (writer side): the regions the partner advertised, learned from REGION
//!   frames, replaced on re-advertisement, dropped when the partner's client goes down. On a
//!   session reset or a partner switch every entry is fenced: a write against it fails with
//!   [`WriteError::Fenced`] until the (new) partner advertises the region again.
//!   [`PartnerRegions::check_write`] is the writer-side validation: it runs before anything is
//!   posted, so a refused write never reaches the partner.
//! - [`LocalRegions`] (receiver side): this node's regions, with the bounds a client request
//!   must stay within ([`RegionLimit`]), and [`LocalRegions::check_apply`], the check an
//!   arriving WRITE frame passes before its bytes touch the mapped file. A refused frame is
//!   answered with a NACK for that write alone ([`WriteRefusal`]); the link stays up.
//!
//! Region ids are handed out node-wide and never reused, so a late write for a released region
//! can never land in a newer one.

use super::wire::{RegionInfo, RegionMsg};
use super::{RegionId, MAX_REGIONS_PER_CLIENT, MAX_REGIONS_PER_NODE, MAX_REGION_BYTES};
use crate::control;
use crate::ids::{ClientId, PeerClientId};
use std::collections::BTreeMap;
use thiserror::Error;

/// Why a write was refused on the writer, before anything was sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WriteError {
    /// `offset + len` is beyond the region's end (or overflows).
    #[error("write of {len} bytes at offset {offset} is outside the region of {region_len} bytes")]
    OutOfBounds {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The region's length.
        region_len: u64,
    },
    /// The partner never advertised this region (or its client went down).
    #[error("region {region} of partner client {client} is unknown")]
    UnknownRegion {
        /// The partner's client.
        client: PeerClientId,
        /// The region.
        region: RegionId,
    },
    /// The partner released the region.
    #[error("region {region} of partner client {client} was released")]
    RegionReleased {
        /// The partner's client.
        client: PeerClientId,
        /// The region.
        region: RegionId,
    },
    /// The session to the partner that advertised the region was reset or switched: its keys
    /// are invalid until the region is advertised again.
    #[error(
        "region {region} of partner client {client} is fenced (session reset or partner switch)"
    )]
    Fenced {
        /// The partner's client.
        client: PeerClientId,
        /// The region.
        region: RegionId,
    },
    /// A write carries at least one byte.
    #[error("empty write")]
    Empty,
}

/// Why an arriving WRITE frame was not applied. Sent back as the write's placement code
/// (instead of 0), which the writer reports as `Nacked` with the NACK reason of the same code
/// (7, 8, 9; docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[repr(u8)]
pub enum WriteRefusal {
    /// The write reaches beyond the region's end.
    #[error("write outside the region")]
    OutOfBounds = 7,
    /// No such region (never registered here, or its client closed).
    #[error("unknown region")]
    UnknownRegion = 8,
    /// The region was released.
    #[error("region released")]
    RegionReleased = 9,
}

impl WriteRefusal {
    /// The reason byte on the wire.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Parses a reason byte.
    pub fn from_code(b: u8) -> Option<Self> {
        Some(match b {
            7 => WriteRefusal::OutOfBounds,
            8 => WriteRefusal::UnknownRegion,
            9 => WriteRefusal::RegionReleased,
            _ => return None,
        })
    }
}

/// A region request or advertisement beyond the bounds of [`crate::region`]: a typed refusal
/// to a local client, a protocol violation when the partner sends it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegionLimit {
    /// The client already holds [`MAX_REGIONS_PER_CLIENT`] regions.
    #[error("client holds the maximum of {MAX_REGIONS_PER_CLIENT} regions")]
    PerClient,
    /// The node already holds [`MAX_REGIONS_PER_NODE`] regions.
    #[error("node holds the maximum of {MAX_REGIONS_PER_NODE} regions")]
    PerNode,
    /// The length is 0 or above [`MAX_REGION_BYTES`].
    #[error("region length {0} outside 1..={MAX_REGION_BYTES}")]
    Length(u64),
    /// The name breaks the name rules.
    #[error(transparent)]
    Name(#[from] control::ControlError),
    /// The client already has a region of this name.
    #[error("the client already has a region named {0:?}")]
    DuplicateName(String),
    /// A region may only grow: the length asked for is not above its current one.
    #[error("region holds {len} bytes: it can only grow, not to {asked}")]
    NotLarger {
        /// Its current length.
        len: u64,
        /// The length asked for.
        asked: u64,
    },
    /// Every region id was handed out.
    #[error("region ids exhausted")]
    IdsExhausted,
}

/// A region that is no longer writable, kept so a late write gets the precise error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    Released,
    Fenced,
}

/// Puts `key` among the gone entries, forgetting the oldest (lowest key) ones beyond
/// [`MAX_REGIONS_PER_NODE`] (a write against a forgotten one is an unknown region).
fn bury<K: Ord + Copy>(gone: &mut BTreeMap<K, Gone>, key: K, how: Gone) {
    gone.insert(key, how);
    while gone.len() > MAX_REGIONS_PER_NODE {
        gone.pop_first();
    }
}

/// Checks `offset..offset + len` against a region of `region_len` bytes.
fn check_bounds(offset: u64, len: u64, region_len: u64) -> Result<(), WriteError> {
    if len == 0 {
        return Err(WriteError::Empty);
    }
    match offset.checked_add(len) {
        Some(end) if end <= region_len => Ok(()),
        _ => Err(WriteError::OutOfBounds {
            offset,
            len,
            region_len,
        }),
    }
}

type PartnerKey = (PeerClientId, RegionId);

/// The partner's regions, as learned over the session. See the module docs.
#[derive(Debug, Default)]
pub struct PartnerRegions {
    live: BTreeMap<PartnerKey, RegionInfo>,
    gone: BTreeMap<PartnerKey, Gone>,
}

impl PartnerRegions {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Learns from a (decoded and validated) REGION message. An advertisement replaces an
    /// earlier one of the same region; a release of a region never advertised is ignored (a
    /// late copy). Beyond the bounds: [`RegionLimit`], the partner's protocol violation.
    pub fn learn(&mut self, msg: RegionMsg) -> Result<(), RegionLimit> {
        match msg {
            RegionMsg::Advertise(info) => {
                let key = (PeerClientId::new(info.client), info.region);
                if !self.live.contains_key(&key) {
                    if self.live.len() >= MAX_REGIONS_PER_NODE {
                        return Err(RegionLimit::PerNode);
                    }
                    if self.of_client(key.0).count() >= MAX_REGIONS_PER_CLIENT {
                        return Err(RegionLimit::PerClient);
                    }
                }
                self.gone.remove(&key);
                self.live.insert(key, info);
            }
            RegionMsg::Release { client, region } => {
                let key = (PeerClientId::new(client), region);
                if self.live.remove(&key).is_some() {
                    bury(&mut self.gone, key, Gone::Released);
                }
            }
        }
        Ok(())
    }

    /// The partner's client went down: its regions are forgotten.
    pub fn client_gone(&mut self, client: PeerClientId) {
        self.live.retain(|k, _| k.0 != client);
        self.gone.retain(|k, _| k.0 != client);
    }

    /// The session was reset or switched to another partner: every region is fenced until it
    /// is advertised again.
    pub fn fence_all(&mut self) {
        for key in std::mem::take(&mut self.live).into_keys() {
            bury(&mut self.gone, key, Gone::Fenced);
        }
        for how in self.gone.values_mut() {
            *how = Gone::Fenced;
        }
    }

    /// The live regions of one partner client.
    pub fn of_client(&self, client: PeerClientId) -> impl Iterator<Item = &RegionInfo> {
        self.live
            .range((client, RegionId::new(0))..=(client, RegionId::new(u32::MAX)))
            .map(|(_, i)| i)
    }

    /// A live region.
    pub fn get(&self, client: PeerClientId, region: RegionId) -> Option<&RegionInfo> {
        self.live.get(&(client, region))
    }

    /// How many regions are live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no region is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Writer-side validation of writing `len` bytes at `offset` of the partner client's
    /// region: the region (with its rail keys) if the write may be issued.
    pub fn check_write(
        &self,
        client: PeerClientId,
        region: RegionId,
        offset: u64,
        len: u64,
    ) -> Result<&RegionInfo, WriteError> {
        let key = (client, region);
        let Some(info) = self.live.get(&key) else {
            return Err(match self.gone.get(&key) {
                Some(Gone::Released) => WriteError::RegionReleased { client, region },
                Some(Gone::Fenced) => WriteError::Fenced { client, region },
                None => WriteError::UnknownRegion { client, region },
            });
        };
        check_bounds(offset, len, info.len)?;
        Ok(info)
    }
}

/// One of this node's regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRegion {
    /// Its name (unique per client).
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
}

type LocalKey = (ClientId, RegionId);

/// This node's regions. See the module docs.
#[derive(Debug)]
pub struct LocalRegions {
    live: BTreeMap<LocalKey, LocalRegion>,
    gone: BTreeMap<LocalKey, Gone>,
    next_id: u32,
}

impl Default for LocalRegions {
    fn default() -> Self {
        LocalRegions {
            live: BTreeMap::new(),
            gone: BTreeMap::new(),
            next_id: 1,
        }
    }
}

impl LocalRegions {
    /// An empty table; ids start at 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// A client asks for a region: its id, or a typed refusal when beyond the bounds.
    pub fn register(
        &mut self,
        client: ClientId,
        name: &str,
        len: u64,
    ) -> Result<RegionId, RegionLimit> {
        control::validate_name("region name", name)?;
        if len == 0 || len > MAX_REGION_BYTES {
            return Err(RegionLimit::Length(len));
        }
        if self.of_client(client).any(|(_, r)| r.name == name) {
            return Err(RegionLimit::DuplicateName(name.to_owned()));
        }
        if self.of_client(client).count() >= MAX_REGIONS_PER_CLIENT {
            return Err(RegionLimit::PerClient);
        }
        if self.live.len() >= MAX_REGIONS_PER_NODE {
            return Err(RegionLimit::PerNode);
        }
        let id = RegionId::new(self.next_id);
        self.next_id = self
            .next_id
            .checked_add(1)
            .ok_or(RegionLimit::IdsExhausted)?;
        self.live.insert(
            (client, id),
            LocalRegion {
                name: name.to_owned(),
                len,
            },
        );
        Ok(id)
    }

    /// A client grows one of its regions to `new_len` bytes: `Ok(true)` once its length is
    /// the new one, `Ok(false)` if it holds no such region; refused (nothing changed) when
    /// `new_len` is not above the current length or beyond [`MAX_REGION_BYTES`].
    pub fn grow(
        &mut self,
        client: ClientId,
        region: RegionId,
        new_len: u64,
    ) -> Result<bool, RegionLimit> {
        let Some(r) = self.live.get_mut(&(client, region)) else {
            return Ok(false);
        };
        if new_len > MAX_REGION_BYTES {
            return Err(RegionLimit::Length(new_len));
        }
        if new_len <= r.len {
            return Err(RegionLimit::NotLarger {
                len: r.len,
                asked: new_len,
            });
        }
        r.len = new_len;
        Ok(true)
    }

    /// A client releases a region: the RELEASE message to send, or `None` if it held no such
    /// region.
    pub fn release(&mut self, client: ClientId, region: RegionId) -> Option<RegionMsg> {
        self.live.remove(&(client, region))?;
        bury(&mut self.gone, (client, region), Gone::Released);
        Some(RegionMsg::Release {
            client: client.get(),
            region,
        })
    }

    /// A client closed: its regions are gone (the partner learns it from CLIENT-DOWN).
    pub fn client_closed(&mut self, client: ClientId) {
        self.live.retain(|k, _| k.0 != client);
        self.gone.retain(|k, _| k.0 != client);
    }

    /// The regions of one client, by id.
    pub fn of_client(&self, client: ClientId) -> impl Iterator<Item = (RegionId, &LocalRegion)> {
        self.live
            .range((client, RegionId::new(0))..=(client, RegionId::new(u32::MAX)))
            .map(|(k, r)| (k.1, r))
    }

    /// Every region, by client and id (what to advertise to a partner whose session just came
    /// up).
    pub fn iter(&self) -> impl Iterator<Item = (ClientId, RegionId, &LocalRegion)> {
        self.live.iter().map(|(k, r)| (k.0, k.1, r))
    }

    /// The advertisement of one region, with the rail keys the runtime registered it under;
    /// `None` if the client holds no such region.
    pub fn advert(
        &self,
        client: ClientId,
        region: RegionId,
        rails: Vec<super::RailKey>,
    ) -> Option<RegionMsg> {
        let r = self.live.get(&(client, region))?;
        Some(RegionMsg::Advertise(RegionInfo {
            client: client.get(),
            region,
            name: r.name.clone(),
            len: r.len,
            rails,
        }))
    }

    /// Receiver-side check of an arriving WRITE frame of `len` bytes at `offset`: `Ok` when
    /// the bytes may be placed; otherwise the write alone is refused and nothing is touched.
    pub fn check_apply(
        &self,
        client: ClientId,
        region: RegionId,
        offset: u64,
        len: u64,
    ) -> Result<(), WriteRefusal> {
        let key = (client, region);
        let Some(r) = self.live.get(&key) else {
            return Err(match self.gone.get(&key) {
                Some(_) => WriteRefusal::RegionReleased,
                None => WriteRefusal::UnknownRegion,
            });
        };
        check_bounds(offset, len, r.len).map_err(|_| WriteRefusal::OutOfBounds)
    }
}

#[cfg(test)]
mod tests;

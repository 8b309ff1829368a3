//! Client regions in the session \[CCM\]: this node's regions (registered by the runtime,
//! advertised to the partner with the rail keys the runtime registered them under), the
//! partner's regions (learned from its REGION frames, fenced on every reset and switch), and
//! one-sided writes: [`Session::write`] checks a write against the partner's table and queues
//! it as an entry of the client's send stream, so it is ordered with the client's sends,
//! replayed after a link loss and deduplicated like them. Outputs for the runtime:
//! [`Session::poll_apply`] (writes that arrived as WRITE frames, to copy into the mapped file
//! before the next `poll_transmit`) and [`Session::poll_rekey`] (after a switch to a new
//! partner, regions whose registrations must be replaced, fencing the old partner's rkeys).
//!
//! The receive side (REGION and WRITE frames) is in `recv::region`; the wire format and the
//! tables are in [`crate::region`].

use super::{Apply, ClientEvent, ClientId, Session, SessionError, SessionState};
use crate::frame::{Frame, MsgType};
use crate::region::wire::WRITE_HEADER_BYTES;
use crate::region::{RailKey, RegionId, RegionInfo, RegionMsg, WriteError, WriteFrame};
use bytes::Bytes;
use std::time::{Duration, Instant};

impl Session {
    /// A client asks for a region of `len` bytes named `name` (unique per client): its id, or
    /// a typed refusal beyond the bounds of [`crate::region`]. The region is advertised to the
    /// partner once the runtime has registered it and given its rail keys
    /// ([`Session::set_region_keys`]).
    pub fn register_region(
        &mut self,
        id: ClientId,
        name: &str,
        len: u64,
    ) -> Result<RegionId, SessionError> {
        if !self.clients.contains_key(&id) {
            return Err(SessionError::UnknownClient(id));
        }
        Ok(self.local_regions.register(id, name, len)?)
    }

    /// The runtime registered region `region` of client `id` on the node's rails (`rails`:
    /// one address and rkey per RDMA rail; empty without RDMA). The region is advertised to
    /// the partner now if the session is up, and to every partner after each reset; a new
    /// call (another rail, a re-registration after a switch) advertises it again, replacing
    /// the partner's entry.
    pub fn set_region_keys(
        &mut self,
        id: ClientId,
        region: RegionId,
        rails: Vec<RailKey>,
    ) -> Result<(), SessionError> {
        let Some(msg) = self.local_regions.advert(id, region, rails.clone()) else {
            return Err(SessionError::NoSuchRegion {
                name: region.to_string(),
                whose: "held by this client",
            });
        };
        if let RegionMsg::Advertise(info) = &msg {
            info.validate().map_err(|e| SessionError::NoSuchRegion {
                name: format!("{} ({e})", info.name),
                whose: "held by this client",
            })?;
        }
        self.region_keys.insert((id, region), rails);
        self.rekeys.retain(|k| *k != (id, region));
        self.queue_region_msg(msg);
        Ok(())
    }

    /// A client grows one of its regions to `new_len` bytes \[CCM\]. Its length here is the new
    /// one at once (a WRITE frame within it is placed), but it is advertised to the partner
    /// (with the new length) only when the runtime has registered the grown mapping and calls
    /// [`Session::set_region_keys`]; until then the partner keeps writing within the old
    /// length with the old keys, which the runtime keeps registered. Refused with a typed
    /// error (nothing changed) for a region the client does not hold, a length not above the
    /// current one, or one beyond [`crate::region::MAX_REGION_BYTES`].
    pub fn grow_region(
        &mut self,
        id: ClientId,
        region: RegionId,
        new_len: u64,
    ) -> Result<(), SessionError> {
        if !self.local_regions.grow(id, region, new_len)? {
            return Err(SessionError::NoSuchRegion {
                name: region.to_string(),
                whose: "held by this client",
            });
        }
        // Not advertised again (after a reset) with keys of the old, shorter registration.
        self.region_keys.remove(&(id, region));
        Ok(())
    }

    /// A client releases one of its regions: the partner is told (its writes into it are
    /// refused from then on), and the id is never used again. The runtime drops the
    /// registration (through its reaper) and the mapping.
    pub fn release_region(&mut self, id: ClientId, region: RegionId) -> Result<(), SessionError> {
        let Some(msg) = self.local_regions.release(id, region) else {
            return Err(SessionError::NoSuchRegion {
                name: region.to_string(),
                whose: "held by this client",
            });
        };
        self.region_keys.remove(&(id, region));
        self.rekeys.retain(|k| *k != (id, region));
        self.queue_region_msg(msg);
        Ok(())
    }

    /// The id and length of client `id`'s own region `name`.
    pub fn local_region(&self, id: ClientId, name: &str) -> Option<(RegionId, u64)> {
        self.local_regions
            .of_client(id)
            .find(|(_, r)| r.name == name)
            .map(|(rid, r)| (rid, r.len))
    }

    /// The regions the partner's namesake of client `id` advertised and holds now.
    pub fn partner_regions(&self, id: ClientId) -> Vec<RegionInfo> {
        let Some(peer) = self
            .clients
            .get(&id)
            .and_then(|c| self.peer_clients.get(&c.name))
        else {
            return Vec::new();
        };
        self.partner_table.of_client(peer.id).cloned().collect()
    }

    /// Writes `data` at `offset` of the partner namesake's region named `name`
    /// ([`Session::write`] by name).
    pub fn write_named(
        &mut self,
        id: ClientId,
        name: &str,
        offset: u64,
        data: Bytes,
        ack_timeout: Option<Duration>,
        now: Instant,
    ) -> Result<u64, SessionError> {
        let region = self
            .partner_regions(id)
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.region)
            .ok_or_else(|| SessionError::NoSuchRegion {
                name: name.chars().take(80).collect(),
                whose: "advertised by the partner client",
            })?;
        self.write(id, region, offset, data, ack_timeout, now)
    }

    /// Queues a one-sided write of `data` at `offset` of the partner namesake's region
    /// `region` and returns its send id (the same id space as sends). Checked first against
    /// the partner's table (out of bounds, unknown, released, fenced, empty: a typed error and
    /// nothing sent) and against both nodes' `max_payload_bytes` (the write with its 12-byte
    /// header must fit one frame). Ordered with the client's sends: a send queued after it is
    /// delivered after it is placed. Completes with `Acked { code: None }` once the partner
    /// confirmed the bytes are in its region, or `Nacked` (refused there, connection lost,
    /// timeout, or `Fenced` by a switch to another partner).
    pub fn write(
        &mut self,
        id: ClientId,
        region: RegionId,
        offset: u64,
        data: Bytes,
        ack_timeout: Option<Duration>,
        now: Instant,
    ) -> Result<u64, SessionError> {
        let ours = self.cfg.max_payload_bytes;
        let partner = self.partner_max_payload_bytes();
        let high = self.cfg.flow_high_water;
        let c = self
            .clients
            .get(&id)
            .ok_or(SessionError::UnknownClient(id))?;
        if data.is_empty() {
            return Err(WriteError::Empty.into());
        }
        if self.state != SessionState::Up || !c.port.state().is_up() {
            return Err(SessionError::NotConnected {
                name: c.name.clone(),
                state: c.port.state(),
            });
        }
        let Some(peer) = self.peer_clients.get(&c.name) else {
            return Err(SessionError::NotConnected {
                name: c.name.clone(),
                state: c.port.state(),
            });
        };
        self.partner_table
            .check_write(peer.id, region, offset, data.len() as u64)?;
        let framed = WRITE_HEADER_BYTES + data.len();
        let limit = partner.map_or(ours, |p| p.min(ours));
        if framed > limit as usize {
            return Err(SessionError::PayloadTooLarge {
                len: framed,
                ours,
                partner,
            });
        }
        let payload = WriteFrame {
            region,
            offset,
            data,
        }
        .encode();
        let Some(c) = self.clients.get_mut(&id) else {
            return Err(SessionError::UnknownClient(id));
        };
        let timeout = ack_timeout.or(c.ack_timeout);
        let seq = c.send.push_write(payload, timeout, Some(now));
        if !c.flow_on && c.send.queued() >= high {
            c.flow_on = true;
            self.events
                .push_back((id, ClientEvent::FlowControl { on: true }));
        }
        if timeout.is_some() {
            self.reindex_ack(id);
        }
        Ok(seq)
    }

    /// The next write that arrived as a WRITE frame, for the runtime to copy into the
    /// region's mapped file. It must be applied before the next [`Session::poll_transmit`]
    /// (which may carry the placement code that completes the write on the partner).
    pub fn poll_apply(&mut self) -> Option<Apply> {
        self.applies.pop_front()
    }

    /// After a switch to a new partner: a region whose registrations the runtime must
    /// replace (deregistering the old ones, so the old partner's writes fail with a remote
    /// access error) before it calls [`Session::set_region_keys`] with the new keys. Until
    /// then the region is not advertised to the new partner.
    pub fn poll_rekey(&mut self) -> Option<(ClientId, RegionId)> {
        self.rekeys.pop_front()
    }

    /// Queues a REGION message for the partner once this side has announced its clients (Up,
    /// or awaiting the partner's READY after its own CLIENT-UPs and adverts went out: a
    /// message from then on would otherwise never be sent), on the control link, after the
    /// CLIENT-UPs it refers to. Earlier, the adverts of the coming READY carry it.
    fn queue_region_msg(&mut self, msg: RegionMsg) {
        if matches!(self.state, SessionState::Up | SessionState::AwaitingReady) {
            self.control_out.push_back((
                self.control_link,
                Frame::control(MsgType::Region, msg.encode()),
            ));
        }
    }

    /// Queues the advertisement of every keyed region (after CLIENT-UP, before READY).
    pub(super) fn queue_region_adverts(&mut self) {
        let adverts: Vec<RegionMsg> = self
            .region_keys
            .iter()
            .filter_map(|(&(client, region), rails)| {
                self.local_regions.advert(client, region, rails.clone())
            })
            .collect();
        for msg in adverts {
            self.control_out.push_back((
                self.control_link,
                Frame::control(MsgType::Region, msg.encode()),
            ));
        }
    }

    /// A switch to a new partner: every local region needs new registrations (fencing the
    /// old partner), and the client's writes still in flight were meant for the old
    /// partner's memory: NACKed `Fenced`.
    pub(super) fn fence_regions_for_switch(&mut self) {
        let keyed: Vec<(ClientId, RegionId)> =
            std::mem::take(&mut self.region_keys).into_keys().collect();
        for k in keyed {
            if !self.rekeys.contains(&k) {
                self.rekeys.push_back(k);
            }
        }
    }

    /// A client closed: its regions are gone (the partner learns it from CLIENT-DOWN).
    pub(super) fn forget_client_regions(&mut self, id: ClientId) {
        self.local_regions.client_closed(id);
        self.region_keys.retain(|k, _| k.0 != id);
        self.rekeys.retain(|k| k.0 != id);
    }
}

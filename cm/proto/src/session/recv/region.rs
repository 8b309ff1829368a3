//! REGION and WRITE: the partner's region advertisements and releases (into the partner
//! table; an event to the namesake client), and one-sided writes into this node's regions,
//! placed in stream order: a WRITE frame's bytes go to the runtime ([`Session::poll_apply`]),
//! an RDMA marker (the bytes went ahead by RDMA WRITE) only confirms placement; either way the
//! write is answered with a placement code (0, or the refusal's NACK reason byte) like a sync
//! message, and counted as consumed.

use crate::control::NackReason;
use crate::frame::Frame;
use crate::ids::PeerClientId;
use crate::region::wire::WRITE_HEADER_BYTES;
use crate::region::{RegionError, RegionId, RegionMsg, WriteFrame};
use crate::session::{Apply, ClientEvent, ClientId, ProtocolViolation, Session};
use crate::stream::Delivery;
use bytes::{Buf, Bytes};

/// A WRITE payload: the write header, and the bytes unless they went by RDMA WRITE.
pub(in crate::session) struct WriteParts {
    pub region: RegionId,
    pub offset: u64,
    pub data: Option<Bytes>,
}

/// Decodes a WRITE payload: a marker is exactly the write header (only valid from an RDMA
/// link, which the caller checked); anything else is a full [`WriteFrame`].
pub(in crate::session) fn decode_write(payload: &Bytes) -> Result<WriteParts, RegionError> {
    if payload.len() == WRITE_HEADER_BYTES {
        let mut b = payload.clone();
        let region = RegionId::new(b.get_u32());
        let offset = b.get_u64();
        return Ok(WriteParts {
            region,
            offset,
            data: None,
        });
    }
    let w = WriteFrame::decode(payload.clone())?;
    Ok(WriteParts {
        region: w.region,
        offset: w.offset,
        data: Some(w.data),
    })
}

impl Session {
    /// REGION: the partner advertised or released a region.
    pub(super) fn recv_region(&mut self, frame: Frame) -> Result<(), ProtocolViolation> {
        let msg = RegionMsg::decode(&frame.payload)?;
        let (peer, name, len, available) = match &msg {
            RegionMsg::Advertise(info) => (info.client, Some(info.name.clone()), info.len, true),
            RegionMsg::Release { client, region } => {
                let name = self
                    .partner_table
                    .get(PeerClientId::new(*client), *region)
                    .map(|i| i.name.clone());
                (*client, name, 0, false)
            }
        };
        self.partner_table.learn(msg)?;
        let peer = PeerClientId::new(peer);
        let local = self
            .clients
            .iter()
            .find(|(_, c)| self.peer_clients.get(&c.name).is_some_and(|p| p.id == peer))
            .map(|(id, _)| *id);
        if let (Some(id), Some(name)) = (local, name) {
            self.events.push_back((
                id,
                ClientEvent::PartnerRegion {
                    name,
                    len,
                    available,
                },
            ));
        }
        Ok(())
    }

    /// A write delivered in stream order to client `id`: placed (a WRITE frame's bytes handed
    /// to the runtime, a marker's already in memory) or refused. A placed marker needs no
    /// answer (its writer's queue pair completed it): its code is remembered, for a replay,
    /// and its acknowledgement waits (see [`crate::session::SessionConfig::write_ack_delay`]).
    /// Anything else is answered with its code (an ACK that also carries the cumulative ack).
    pub(super) fn place_write(&mut self, id: ClientId, d: Delivery) -> WriteAnswer {
        let decoded = decode_write(&d.payload);
        let marker = decoded.as_ref().is_ok_and(|w| w.data.is_none());
        let code = match decoded {
            Ok(w) => {
                let len = w.data.as_ref().map_or(1, |b| b.len() as u64);
                match self.local_regions.check_apply(id, w.region, w.offset, len) {
                    Ok(()) => {
                        if let Some(data) = w.data {
                            self.stats.writes_copied += 1;
                            self.applies.push_back(Apply {
                                client: id,
                                region: w.region,
                                offset: w.offset,
                                data,
                            });
                        }
                        self.stats.writes_placed += 1;
                        0
                    }
                    Err(refusal) => {
                        tracing::warn!(
                            client = id.get(),
                            region = w.region.get(),
                            offset = w.offset,
                            len,
                            "one-sided write refused: {refusal}"
                        );
                        self.stats.writes_refused_here += 1;
                        i32::from(refusal.code())
                    }
                }
            }
            // Checked on arrival; cannot happen, but never place what does not decode.
            Err(_) => {
                self.stats.writes_refused_here += 1;
                i32::from(NackReason::UnknownRegion as u8)
            }
        };
        if marker && code == 0 {
            if let Some(c) = self.clients.get_mut(&id) {
                if c.recv.reply(d.seq, code).is_ok() {
                    self.stats.write_acks_deferred += 1;
                    return WriteAnswer::Deferred;
                }
            }
            return WriteAnswer::None;
        }
        if self.reply(id, d.seq, code).is_ok() {
            WriteAnswer::Coded
        } else {
            WriteAnswer::None
        }
    }
}

/// What answers a placed or refused write ([`Session::place_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteAnswer {
    /// Its code, in an ACK that also carries the cumulative ack.
    Coded,
    /// Nothing now: a marker its writer's queue pair completed; the acknowledgement waits.
    Deferred,
    /// Nothing (the client is gone).
    None,
}

//! Transmit side: which frame goes next on which link ([`Session::poll_transmit`]): queued
//! control frames first, then cumulative ACKs and FLOW credit, then client DATA (round robin
//! over clients, on the client's placed interconnect, least-loaded link), then heartbeats on
//! quiet links; and the writers' feedback ([`Session::handle_written`]).

use super::{
    ClientEvent, ClientId, InterconnectId, LinkId, LocalDone, OneSidedTarget, SessionState,
    Transmit,
};
use super::{LinkState, Session};
use crate::frame::{Flags, Frame, MsgType};
use crate::stream::SendModel;
use bytes::Bytes;
use std::time::Instant;

impl Session {
    /// The link for client `id`'s next data frame: the least-loaded link reserved for it on
    /// `interconnect` (its own queue pair), else the least-loaded shared link of
    /// `interconnect`, else (not placed, or nothing left there) a shared link of any
    /// interconnect, and a link reserved for another client only when nothing else is left.
    /// `rdma_first`: with no placement, prefer an RDMA link (for a write, which goes one-sided
    /// there).
    fn pick_link_for(
        &mut self,
        id: ClientId,
        interconnect: Option<InterconnectId>,
        rdma_first: bool,
    ) -> Option<LinkId> {
        let least = |pred: &dyn Fn(&LinkState) -> bool| {
            self.links
                .iter()
                .filter(|(_, l)| pred(l))
                .min_by_key(|(_, l)| l.queued_bytes)
                .map(|(id, _)| *id)
        };
        let shared = |l: &LinkState| l.reserved.is_none() || l.reserved == Some(id);
        let found = match interconnect {
            Some(ic) => least(&|l| l.interconnect == ic && l.reserved == Some(id))
                .or_else(|| least(&|l| l.interconnect == ic && l.reserved.is_none())),
            None if rdma_first => least(&|l| l.interconnect != InterconnectId::TCP && shared(l)),
            None => None,
        };
        if found.is_some() {
            return found;
        }
        let n = self.links.len();
        if n == 0 {
            return None;
        }
        self.rr_link = self.rr_link.wrapping_add(1);
        let start = self.rr_link % n;
        let any = |pred: &dyn Fn(&LinkState) -> bool| {
            self.links
                .iter()
                .cycle()
                .skip(start)
                .take(n)
                .filter(|(_, l)| pred(l))
                .min_by_key(|(_, l)| l.queued_bytes)
                .map(|(id, _)| *id)
        };
        any(&shared).or_else(|| any(&|_| true))
    }

    fn pick_link(&mut self) -> Option<LinkId> {
        let n = self.links.len();
        if n == 0 {
            return None;
        }
        self.rr_link = self.rr_link.wrapping_add(1);
        let start = self.rr_link % n;
        self.links
            .iter()
            .cycle()
            .skip(start)
            .take(n)
            .min_by_key(|(_, l)| l.queued_bytes)
            .map(|(id, _)| *id)
    }

    fn emit(
        &mut self,
        link: LinkId,
        frame: Frame,
        local_done: Option<LocalDone>,
        now: Instant,
    ) -> Transmit {
        if let Some(l) = self.links.get_mut(&link) {
            l.last_tx = now;
            l.queued_bytes += frame.encoded_len() as u64;
        }
        self.stats.frames_out += 1;
        Transmit {
            link,
            frame,
            local_done,
            one_sided: None,
        }
    }

    /// The next frame to transmit: control first, then acks and credit, then client data
    /// (round robin over clients, least-loaded link), then heartbeats on quiet links.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        // Sends queued without the clock start their acknowledgement timeout now.
        self.arm_ack_timers(now);
        while let Some((want, frame)) = self.control_out.pop_front() {
            let link = match want {
                Some(l) if self.links.contains_key(&l) => Some(l),
                Some(_) => None, // its link died; the state machine re-queues what matters
                None => self.pick_link(),
            };
            if let Some(link) = link {
                return Some(self.emit(link, frame, None, now));
            }
        }
        if self.state == SessionState::Up {
            if let Some(t) = self.poll_ack_or_flow(now) {
                return Some(t);
            }
            if let Some(t) = self.poll_data(now) {
                return Some(t);
            }
        }
        let quiet = self
            .links
            .iter()
            .find(|(_, l)| now.saturating_duration_since(l.last_tx) >= self.cfg.heartbeat_interval)
            .map(|(id, _)| *id);
        // Heartbeats carry the epoch: each one is also a fence (see `LinkState::peer_epoch`).
        let hb = self.heartbeat();
        quiet.map(|link| self.emit(link, hb, None, now))
    }

    fn poll_ack_or_flow(&mut self, now: Instant) -> Option<Transmit> {
        if self.links.is_empty() {
            return None; // nothing can go: keep what is due
        }
        // A cumulative ACK carries the consumed mark in `ack` (what completes the partner's
        // async sends), as does every FLOW.
        while let Some(id) = self.ack_due.pop_first() {
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            let Some(peer) = self.peer_clients.get(&c.name) else {
                continue;
            };
            let frame = Frame::new(
                MsgType::Ack,
                Flags::CUMULATIVE,
                peer.id.get(),
                c.recv.delivered(),
                c.recv.take_mark(),
                Bytes::new(),
            );
            c.mark_sent_at = Some(now);
            self.mark_due.remove(id);
            let link = self.pick_link()?;
            return Some(self.emit(link, frame, None, now));
        }
        while let Some(id) = self.flow_due.pop_first() {
            if let Some(t) = self.flow_frame(id, now) {
                return Some(t);
            }
        }
        // Marks nothing else carried: one FLOW per client per report interval at most.
        while let Some(id) = self.mark_due.pop_ready(now) {
            if let Some(t) = self.flow_frame(id, now) {
                return Some(t);
            }
        }
        None
    }

    /// A FLOW for client `id`: its credit and its consumed mark.
    fn flow_frame(&mut self, id: ClientId, now: Instant) -> Option<Transmit> {
        let c = self.clients.get_mut(&id)?;
        let peer = self.peer_clients.get(&c.name)?;
        let frame = Frame::new(
            MsgType::Flow,
            Flags::empty(),
            peer.id.get(),
            c.recv.regrant(),
            c.recv.take_mark(),
            Bytes::new(),
        );
        c.mark_sent_at = Some(now);
        self.mark_due.remove(id);
        let link = self.pick_link()?;
        Some(self.emit(link, frame, None, now))
    }

    fn poll_data(&mut self, now: Instant) -> Option<Transmit> {
        let ids: Vec<ClientId> = self
            .clients
            .range(ClientId::new(self.rr_client.get().wrapping_add(1))..)
            .chain(self.clients.range(..=self.rr_client))
            .filter(|(_, c)| c.port.state().is_up() && c.send.can_transmit())
            .map(|(id, _)| *id)
            .take(1)
            .collect();
        let id = *ids.first()?;
        self.rr_client = id;
        let low = self.cfg.flow_low_water;
        let c = self.clients.get(&id)?;
        let placed = c.placed;
        // A client not placed yet (placement batches registrations for a moment) sends on any
        // link; its writes prefer RDMA, where they can go one-sided (a write sent with its
        // bytes makes the client's next writes wait for it before going one-sided again).
        let rdma_first = placed.is_none() && c.send.next_is_write();
        let link = self.pick_link_for(id, placed, rdma_first)?;
        let c = self.clients.get_mut(&id)?;
        let peer = *self.peer_clients.get(&c.name)?;
        let (seq, flags, payload, model) = c.send.next_transmit()?;
        c.bytes_out += payload.len() as u64;
        let ack = c.recv.delivered();
        let mut flow_off = false;
        if c.flow_on && c.send.queued() <= low {
            c.flow_on = false;
            flow_off = true;
        }
        // The piggybacked ack makes a separate cumulative ACK for this client unnecessary.
        self.ack_due.remove(&id);
        if flow_off {
            self.events
                .push_back((id, ClientEvent::FlowControl { on: false }));
        }
        let write = c.send.is_write(seq);
        let msg_type = if write { MsgType::Write } else { MsgType::Data };
        let may = write && c.send.may_go_one_sided(seq, link);
        let one_sided = if may {
            self.one_sided_target(link, peer.id, &payload)
        } else {
            None
        };
        if write {
            if let Some(c) = self.clients.get_mut(&id) {
                c.send
                    .note_write_route(seq, one_sided.is_some().then_some(link));
            }
        }
        let frame = Frame::new(msg_type, flags, peer.id.get(), seq, ack, payload);
        if let Some(l) = self.links.get_mut(&link) {
            l.data_frames_out += 1;
        }
        // A local send completes when handed over; a one-sided write when its queue pair
        // completes the marker behind the RDMA WRITE (the partner's CPU not involved).
        let local = (model == SendModel::Local || one_sided.is_some())
            .then_some(LocalDone { client: id, seq });
        let mut t = self.emit(link, frame, local, now);
        t.one_sided = one_sided;
        Some(t)
    }

    /// Where a write's bytes go one-sided on `link`: the partner region's key for the link's
    /// rail, if it advertised one (never on TCP).
    fn one_sided_target(
        &self,
        link: LinkId,
        peer: crate::ids::PeerClientId,
        payload: &Bytes,
    ) -> Option<OneSidedTarget> {
        let ic = self.links.get(&link)?.interconnect;
        if ic == InterconnectId::TCP {
            return None;
        }
        let w = crate::region::WriteFrame::decode(payload.clone()).ok()?;
        let info = self.partner_table.get(peer, w.region)?;
        let key = info.rail(ic)?;
        Some(OneSidedTarget {
            addr: key.addr,
            rkey: key.rkey,
            len: info.len,
            offset: w.offset,
        })
    }

    /// The runtime wrote `bytes` on `link`; `local_done` lists local-model sends now transmitted.
    pub fn handle_written(&mut self, link: LinkId, bytes: u64, local_done: &[LocalDone]) {
        if let Some(l) = self.links.get_mut(&link) {
            l.queued_bytes = l.queued_bytes.saturating_sub(bytes);
        }
        for &LocalDone { client: id, seq } in local_done {
            let done = self
                .clients
                .get_mut(&id)
                .and_then(|c| c.send.on_transmitted(seq))
                .into_iter()
                .collect();
            self.complete(id, done);
        }
    }
}

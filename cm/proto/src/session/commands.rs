//! Client commands: register, connect, close, send, reply, consumed, place, and the
//! manager's TRANSPORT messages. Each refuses what the client's port or the session state does
//! not allow, and queues what the partner must learn.

use super::SendOptions;
use super::{code_ack, ClientSlot, Session};
use super::{
    ClientEvent, ClientId, ClientSpec, InterconnectId, SessionError, SessionState,
    TransportSendError, MAX_TRANSPORT_PAYLOAD_BYTES,
};
use crate::control::{self, ClientGone, NackReason, MAX_CLIENTS_PER_NODE};
use crate::frame::{Frame, MsgType};
use crate::port::{Port, PortInput, PortState};
use crate::stream::{RecvStream, SendModel, SendStream};
use bytes::Bytes;
use std::time::Instant;

impl Session {
    /// Registers a client (port -> INITIALIZED) and announces it when the session is up.
    pub fn register(&mut self, name: &str, spec: ClientSpec) -> Result<ClientId, SessionError> {
        control::validate_name("client name", name)?;
        if self.by_name.contains_key(name) {
            return Err(SessionError::DuplicateName(name.to_string()));
        }
        if self.clients.len() >= MAX_CLIENTS_PER_NODE {
            return Err(SessionError::TooManyClients {
                limit: MAX_CLIENTS_PER_NODE,
            });
        }
        let id = self.next_client_id;
        self.next_client_id = ClientId::new(self.next_client_id.get().wrapping_add(1).max(1));
        let mut port = Port::default();
        port.apply(PortInput::Register)?;
        port.apply(PortInput::Initialize)?;
        let window = self.cfg.window;
        let credit = self
            .peer_clients
            .get(name)
            .map_or(0, |p| u64::from(p.window));
        let mut send = SendStream::new(window, credit);
        if let Some(max) = self.partner_max_payload_bytes() {
            send.set_partner_max(max);
        }
        self.clients.insert(
            id,
            ClientSlot {
                name: name.to_string(),
                spec,
                port,
                send,
                recv: RecvStream::new(window),
                flow_on: false,
                placed: None,
                bytes_out: 0,
                mark_sent_at: None,
                ack_timeout: None,
                indexed_deadline: None,
            },
        );
        self.by_name.insert(name.to_string(), id);
        if matches!(self.state, SessionState::Up | SessionState::AwaitingReady) {
            self.queue_client_up(id);
        }
        self.refresh_path(id);
        Ok(id)
    }

    /// Use-counted connect (port -> CONNECTING, or CONNECTED when the partner is reachable).
    pub fn connect(&mut self, id: ClientId) -> Result<PortState, SessionError> {
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(SessionError::UnknownClient(id))?;
        let before = c.port.state();
        let after = c.port.apply(PortInput::Connect)?;
        if before != after && matches!(self.state, SessionState::Up | SessionState::AwaitingReady) {
            self.queue_client_up(id);
        }
        self.refresh_path(id);
        Ok(self.port_state(id).unwrap_or(after))
    }

    /// Controlled (use-counted) or immediate close. Outstanding sends of a destroyed client are
    /// NACKed with [`NackReason::Closed`].
    pub fn close(&mut self, id: ClientId, immediate: bool) -> Result<PortState, SessionError> {
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(SessionError::UnknownClient(id))?;
        let input = if immediate {
            PortInput::CloseImmediate
        } else {
            PortInput::Close
        };
        let state = c.port.apply(input)?;
        if state == PortState::Destroyed {
            self.forget_ack(id);
            let Some(c) = self.clients.get_mut(&id) else {
                return Ok(state);
            };
            let seqs = c.send.drain_unacked();
            let name = c.name.clone();
            for seq in seqs {
                self.events.push_back((
                    id,
                    ClientEvent::Nacked {
                        seq,
                        reason: NackReason::Closed,
                    },
                ));
            }
            self.clients.remove(&id);
            self.by_name.remove(&name);
            self.forget_client_regions(id);
            for l in self.links.values_mut() {
                if l.reserved == Some(id) {
                    l.reserved = None;
                }
            }
            self.ack_due.remove(&id);
            self.flow_due.remove(&id);
            self.mark_due.remove(id);
            if self.state == SessionState::Up {
                let gone = ClientGone { name, id: id.get() };
                self.queue_on_all_links(Frame::control(
                    MsgType::ClientDown,
                    control::encode(&gone),
                ));
            }
        }
        Ok(state)
    }

    /// Queues a message for the partner's namesake and returns its send id, unique for the life
    /// of the client across resets and partner switches (every `Acked`, `Transmitted` or
    /// `Nacked` of it carries that id). Fails fast unless the port is up. The client's default
    /// acknowledgement timeout applies, counted from the next call that carries the clock (a
    /// runtime's `poll_transmit` right after the command); [`Session::send_with`] takes the
    /// clock and per-send options.
    pub fn send(
        &mut self,
        id: ClientId,
        payload: Bytes,
        model: SendModel,
    ) -> Result<u64, SessionError> {
        self.queue_send(id, payload, model.into(), None)
    }

    /// [`Session::send`] with per-send options (a model and an acknowledgement timeout of its
    /// own) at `now`, from which the timeout counts.
    pub fn send_with(
        &mut self,
        id: ClientId,
        payload: Bytes,
        opts: impl Into<SendOptions>,
        now: Instant,
    ) -> Result<u64, SessionError> {
        self.queue_send(id, payload, opts.into(), Some(now))
    }

    /// The partner's `max_payload_bytes`, as its latest node description gave it.
    pub fn partner_max_payload_bytes(&self) -> Option<u32> {
        self.peer.as_ref().map(|p| p.max_payload_bytes)
    }

    /// Fault injection (tests only): [`Session::send_with`] without the check against the
    /// partner's limit (ours still applies), so a message the partner must refuse as too
    /// large goes on the wire, as it would from a node that does not know that limit.
    pub fn send_past_partner_limit(
        &mut self,
        id: ClientId,
        payload: Bytes,
        opts: impl Into<SendOptions>,
        now: Instant,
    ) -> Result<u64, SessionError> {
        self.queue_send_checked(id, payload, opts.into(), Some(now), false)
    }

    fn queue_send(
        &mut self,
        id: ClientId,
        payload: Bytes,
        opts: SendOptions,
        now: Option<Instant>,
    ) -> Result<u64, SessionError> {
        self.queue_send_checked(id, payload, opts, now, true)
    }

    fn queue_send_checked(
        &mut self,
        id: ClientId,
        payload: Bytes,
        opts: SendOptions,
        now: Option<Instant>,
        check_partner: bool,
    ) -> Result<u64, SessionError> {
        let ours = self.cfg.max_payload_bytes;
        let partner = self.partner_max_payload_bytes();
        let high = self.cfg.flow_high_water;
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(SessionError::UnknownClient(id))?;
        let over_partner = check_partner && partner.is_some_and(|p| payload.len() > p as usize);
        if payload.len() > ours as usize || over_partner {
            return Err(SessionError::PayloadTooLarge {
                len: payload.len(),
                ours,
                partner,
            });
        }
        // While holding for a switch, and while the switch's reset runs, sends queue: they go
        // to the new partner with the rest (the client saw no Down, so it must not fail).
        let flowing =
            self.state == SessionState::Up || self.holding_since.is_some() || self.switching;
        if !c.port.state().is_up() || !flowing {
            return Err(SessionError::NotConnected {
                name: c.name.clone(),
                state: c.port.state(),
            });
        }
        let timeout = opts.ack_timeout.or(c.ack_timeout);
        let seq = c.send.push_with(payload, opts.model, timeout, now);
        if !c.flow_on && c.send.queued() >= high {
            c.flow_on = true;
            self.events
                .push_back((id, ClientEvent::FlowControl { on: true }));
        }
        if c.send.has_unarmed() {
            self.unarmed.insert(id);
        } else if timeout.is_some() {
            self.reindex_ack(id);
        }
        Ok(seq)
    }

    /// The local client's return code for a synchronous message.
    pub fn reply(&mut self, id: ClientId, seq: u64, code: i32) -> Result<(), SessionError> {
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(SessionError::UnknownClient(id))?;
        c.recv.reply(seq, code)?;
        if let Some(peer) = self.peer_clients.get(&c.name) {
            let ack = code_ack(peer.id, seq, c.recv.delivered(), code);
            self.control_out.push_back((None, ack));
        }
        Ok(())
    }

    /// Places a client's data on `interconnect` (the placement policy's decision). Its frames
    /// then go on that interconnect's links, or on any link while it has none. Messages already
    /// in flight on the old path still arrive: the receiver restores order by sequence number,
    /// so a move needs no drain and loses nothing (make-before-break). A move between two
    /// interconnects emits [`ClientEvent::Migrated`]; the first placement is silent. Returns
    /// the previous placement.
    pub fn place(
        &mut self,
        id: ClientId,
        interconnect: InterconnectId,
    ) -> Result<Option<InterconnectId>, SessionError> {
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(SessionError::UnknownClient(id))?;
        let from = c.placed.replace(interconnect);
        if let Some(from) = from.filter(|&f| f != interconnect) {
            self.events.push_back((
                id,
                ClientEvent::Migrated {
                    from,
                    to: interconnect,
                },
            ));
        }
        Ok(from)
    }

    /// Queues a TRANSPORT message (RDMA endpoint offer or answer) for the partner's manager.
    /// Only while the session is up: transport setup needs a partner past its reset.
    pub fn send_transport(&mut self, payload: Bytes) -> Result<(), TransportSendError> {
        if payload.len() > MAX_TRANSPORT_PAYLOAD_BYTES {
            return Err(TransportSendError::TooLarge(payload.len()));
        }
        if self.state != SessionState::Up {
            return Err(TransportSendError::NotUp(self.state));
        }
        self.control_out
            .push_back((None, Frame::control(MsgType::Transport, payload)));
        Ok(())
    }

    /// The local client took every message up to `seq` off its queue: grants credit, and
    /// the partner learns the new consumed mark (which completes its async sends) in the next
    /// ACK or FLOW for this client; a FLOW goes at once when a quarter window of credit is
    /// due, otherwise the mark waits for a frame, at most `consumed_report_interval`.
    pub fn consumed(&mut self, id: ClientId, seq: u64) {
        if let Some(c) = self.clients.get_mut(&id) {
            if c.recv.consume(seq).is_some() {
                self.flow_due.insert(id);
            } else if c.recv.mark_pending() {
                let ready_at = c
                    .mark_sent_at
                    .map(|at| at + self.cfg.consumed_report_interval);
                self.mark_due.insert(id, ready_at);
            }
        }
    }
}

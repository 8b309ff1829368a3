//! One partner session: every client's streams multiplexed over every live link, IO-free.
//!
//! Inputs: [`Session::handle_link_up`] / [`Session::handle_link_down`] when the runtime gains or
//! loses an authenticated link, [`Session::handle_frame`] for each received frame,
//! [`Session::handle_written`] when a link writer took frames, [`Session::handle_timeout`] when
//! the deadline from [`Session::poll_timeout`] passed, and client commands (`register`,
//! `connect`, `close`, `send`, `reply`, `consumed`). Outputs: [`Session::poll_transmit`] (which
//! frame on which link), [`Session::poll_event`] (what to tell which client) and
//! [`Session::poll_close_link`] (links judged dead).
//!
//! Session life: DOWN -> (first link) RESETTING -> (RESET / RESET-ACK exchanged on that link)
//! AWAITING-READY -> (partner READY) UP. While UP, losing one link replays every
//! unacknowledged message on the survivors (receivers drop duplicates, so nothing is lost or
//! delivered twice). Losing the last link takes the session DOWN: outstanding messages are
//! NACKed, clients told the connection is down, sends fail fast until the next RESET.

use crate::auth::Role;
use crate::control::{self, ClientAnnounce, ClientGone, NackReason, NodeInfo};
use crate::frame::{Flags, Frame, MsgType, DEFAULT_MAX_PAYLOAD_BYTES};
use crate::port::{InvalidTransition, Port, PortInput, PortState};
use crate::stream::{RecvError, RecvStream, ReplyError, SendCompletion, SendModel, SendStream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Runtime-assigned identity of one link (one TCP connection, later one QP).
pub type LinkId = u64;
/// Local identity of a registered client.
pub type ClientId = u32;
/// Which interconnect a link belongs to. The runtime numbers them: [`TCP_INTERCONNECT`] for
/// every TCP connection, 1.. for the RDMA rails.
pub type InterconnectId = u32;
/// The interconnect id of TCP links.
pub const TCP_INTERCONNECT: InterconnectId = 0;
/// Largest TRANSPORT payload (RDMA endpoint offers are a few hundred bytes).
pub const MAX_TRANSPORT_PAYLOAD_BYTES: usize = 4096;

/// Tunables of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Messages per client stream that may be unacknowledged (and the credit granted).
    pub window: u32,
    /// Send a heartbeat on a link that has been quiet this long.
    pub heartbeat_interval: Duration,
    /// Declare a link dead when nothing was received on it for this long.
    pub link_timeout: Duration,
    /// Queued (never transmitted) messages at which a client is told flow control is on.
    pub flow_high_water: usize,
    /// Queue length at which flow control turns off again.
    pub flow_low_water: usize,
    /// Largest message payload.
    pub max_payload_bytes: u32,
    /// Autoswitch (dialer only): when every link to the partner is lost, hold unacknowledged
    /// messages (and accept new sends) for up to this long instead of NACKing them, so that
    /// the runtime can connect a backup partner and the session resends them there. The same
    /// partner coming back instead ends the hold the classic way (NACK, reset). `None`: NACK at
    /// once.
    pub hold_on_partner_loss: Option<Duration>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window: 256,
            heartbeat_interval: Duration::from_millis(100),
            // A silent partner is detected within 500 ms: heartbeats every 100 ms on quiet links,
            // so the last frame is at most 100 ms older than the failure (docs/operations.md).
            link_timeout: Duration::from_millis(500),
            flow_high_water: 4096,
            flow_low_water: 1024,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            hold_on_partner_loss: None,
        }
    }
}

/// How latency-sensitive a client is (used by placement in later work).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyClass {
    /// Heartbeats and failover signalling: must never queue behind bulk traffic.
    Critical,
    /// Ordinary request/response.
    Normal,
    /// Throughput over latency.
    Bulk,
}

/// What a client declares at registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSpec {
    /// Expected bandwidth in MB/s.
    pub bandwidth_mbps: u32,
    /// Latency class.
    pub latency: LatencyClass,
    /// How sends complete.
    pub model: SendModel,
}

/// Why a client's connection went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DownReason {
    /// Every link to the partner was lost.
    ConnectionLost,
    /// The partner restarted.
    PeerRestarted,
    /// The partner closed its namesake client.
    PeerClientClosed,
    /// The partner reset the session.
    PeerReset,
}

/// Something a client must be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A message from the partner's namesake. If `reply_needed`, answer with `reply(seq, code)`.
    Data {
        /// Sequence number on this stream.
        seq: u64,
        /// The message.
        payload: Bytes,
        /// Whether the sender waits for a return code.
        reply_needed: bool,
    },
    /// A send completed: sync with the partner client's code, async with `None`.
    Acked {
        /// Sequence number of the send.
        seq: u64,
        /// Return code from the partner client (sync model).
        code: Option<i32>,
    },
    /// A local-model send was handed to the transport.
    Transmitted {
        /// Sequence number of the send.
        seq: u64,
    },
    /// A send failed; it may or may not have reached the partner (see the reason).
    Nacked {
        /// Sequence number of the send.
        seq: u64,
        /// Why.
        reason: NackReason,
    },
    /// The connection to the partner's namesake is up; sends are accepted.
    Up,
    /// The connection is down; sends fail fast until `Up`.
    Down {
        /// Why.
        reason: DownReason,
    },
    /// The session switched to another partner node (autoswitch): every message not yet
    /// acknowledged was kept and is being resent to it. Numbers and handles stay valid.
    PeerSwitched {
        /// The new partner's node id.
        node: String,
        /// The session epoch of the switch (higher than any before it).
        epoch: u64,
    },
    /// Flow control turned on (throttle) or off.
    FlowControl {
        /// On or off.
        on: bool,
    },
    /// The manager moved this client's traffic to another interconnect (adapter failure,
    /// rebalancing, fallback to TCP or back). Informational: nothing was lost, nothing needs
    /// resending.
    Migrated {
        /// Where its data went before.
        from: InterconnectId,
        /// Where it goes now.
        to: InterconnectId,
    },
}

/// The session's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// No link.
    Down,
    /// A link is up; sequence state is being reset.
    Resetting,
    /// Reset done; waiting for the partner's READY.
    AwaitingReady,
    /// Client traffic flows.
    Up,
}

/// A client command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SessionError {
    /// No such client (never registered or destroyed).
    #[error("unknown client id {0}")]
    UnknownClient(ClientId),
    /// The name is taken by a live client.
    #[error("client name {0:?} is already registered")]
    DuplicateName(String),
    /// The name is not acceptable.
    #[error(transparent)]
    BadName(#[from] control::ControlError),
    /// The port does not allow this now.
    #[error(transparent)]
    Port(#[from] InvalidTransition),
    /// Sends fail fast while the connection is not up.
    #[error("client {name:?} is not connected (port {state}); retry after the Up event")]
    NotConnected {
        /// Client name.
        name: String,
        /// Port state.
        state: PortState,
    },
    /// The payload is larger than the configured maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The maximum.
        max: u32,
    },
    /// Bad reply.
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

/// The partner broke the protocol on a link; the runtime closes that link.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// A handshake message after the handshake.
    #[error("unexpected {0:?} on an established link")]
    Unexpected(MsgType),
    /// A control payload was malformed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// A stream rule was broken.
    #[error("client {client}: {err}")]
    Stream {
        /// Local client id.
        client: ClientId,
        /// The rule.
        err: crate::stream::RecvError,
    },
}

/// An ACK carrying the return code of synchronous message `seq`, with the cumulative ack.
fn code_ack(peer_client: u32, seq: u64, delivered: u64, code: i32) -> Frame {
    Frame::new(
        MsgType::Ack,
        Flags::empty(),
        peer_client,
        seq,
        delivered,
        control::encode_code(code),
    )
}

/// A TRANSPORT message could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TransportSendError {
    /// The session is not up.
    #[error("the session is {0:?}, not up: transport setup waits for it")]
    NotUp(SessionState),
    /// The payload is over [`MAX_TRANSPORT_PAYLOAD_BYTES`].
    #[error("transport payload of {0} bytes exceeds {MAX_TRANSPORT_PAYLOAD_BYTES}")]
    TooLarge(usize),
}

/// A frame to put on a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Which link.
    pub link: LinkId,
    /// The frame.
    pub frame: Frame,
    /// For local-model data: report `(client, seq)` back through `handle_written` once written.
    pub local_done: Option<(ClientId, u64)>,
}

/// Counters for status output and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SessionStats {
    /// Frames received.
    pub frames_in: u64,
    /// Frames handed out for transmission.
    pub frames_out: u64,
    /// DATA frames that were retransmissions.
    pub replays: u64,
    /// Duplicate DATA frames dropped by receivers.
    pub duplicates_dropped: u64,
    /// Messages delivered to local clients.
    pub delivered: u64,
    /// Links lost while the session stayed up.
    pub links_lost: u64,
    /// Session resets.
    pub resets: u64,
    /// Frames refused as protocol violations.
    pub violations: u64,
    /// DATA frames for clients that do not exist here (NACKed).
    pub unknown_client_frames: u64,
    /// DATA frames from a partner client incarnation that has closed (dropped).
    pub stale_frames_dropped: u64,
}

#[derive(Debug)]
struct LinkState {
    last_rx: Instant,
    last_tx: Instant,
    queued_bytes: u64,
    interconnect: InterconnectId,
    /// The partner's epoch as last announced on this link (by RESET, RESET-ACK or a
    /// heartbeat). Session frames on the link are only taken while it equals ours: anything the
    /// partner sent on the link before it learned of the current reset is stale.
    peer_epoch: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct PeerClient {
    id: u32,
    window: u32,
}

#[derive(Debug)]
struct ClientSlot {
    name: String,
    spec: ClientSpec,
    port: Port,
    send: SendStream,
    recv: RecvStream,
    flow_on: bool,
    /// The interconnect the runtime placed this client on; `None` = any link.
    placed: Option<InterconnectId>,
    /// Payload bytes handed out for transmission (replays included): the measured rate.
    bytes_out: u64,
}

/// One partner session. See the module docs.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    role: Role,
    state: SessionState,
    epoch: u64,
    peer: Option<NodeInfo>,
    control_link: Option<LinkId>,
    links: BTreeMap<LinkId, LinkState>,
    clients: BTreeMap<ClientId, ClientSlot>,
    by_name: HashMap<String, ClientId>,
    peer_clients: HashMap<String, PeerClient>,
    /// Highest closed incarnation id per partner client name: announcements of these (late
    /// copies from a slower link) are ignored.
    peer_retired: HashMap<String, u32>,
    next_client_id: ClientId,
    control_out: VecDeque<(Option<LinkId>, Frame)>,
    ack_due: BTreeSet<ClientId>,
    flow_due: BTreeSet<ClientId>,
    events: VecDeque<(ClientId, ClientEvent)>,
    closing: VecDeque<LinkId>,
    rr_client: ClientId,
    rr_link: usize,
    /// DATA that arrived while AWAITING-READY (the partner is already up and its READY is
    /// still on its way on the control link), replayed once READY arrives. At most one frame
    /// per client and sequence number within the fresh credit, so bounded by clients x window.
    early: BTreeMap<(ClientId, u64), Frame>,
    /// TRANSPORT payloads from the partner, for the runtime.
    transport_in: VecDeque<(LinkId, Bytes)>,
    /// Autoswitch: since when every link is lost and messages are held.
    holding_since: Option<Instant>,
    /// A reset towards a new partner node is under way: streams are rebased, not dropped.
    switching: bool,
    stats: SessionStats,
}

impl Session {
    /// A session in state DOWN. The dialer of the first link drives the RESET.
    pub fn new(cfg: SessionConfig, role: Role) -> Self {
        Session {
            cfg,
            role,
            state: SessionState::Down,
            epoch: 0,
            peer: None,
            control_link: None,
            links: BTreeMap::new(),
            clients: BTreeMap::new(),
            by_name: HashMap::new(),
            peer_clients: HashMap::new(),
            peer_retired: HashMap::new(),
            next_client_id: 1,
            control_out: VecDeque::new(),
            ack_due: BTreeSet::new(),
            flow_due: BTreeSet::new(),
            events: VecDeque::new(),
            closing: VecDeque::new(),
            rr_client: 0,
            rr_link: 0,
            early: BTreeMap::new(),
            transport_in: VecDeque::new(),
            holding_since: None,
            switching: false,
            stats: SessionStats::default(),
        }
    }

    // ----- getters -----

    /// Session state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// Session epoch (bumped by every RESET).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The partner as described in the latest handshake.
    pub fn peer(&self) -> Option<&NodeInfo> {
        self.peer.as_ref()
    }

    /// Live links.
    pub fn links(&self) -> impl Iterator<Item = LinkId> + '_ {
        self.links.keys().copied()
    }

    /// The interconnect of a live link.
    pub fn link_interconnect(&self, link: LinkId) -> Option<InterconnectId> {
        self.links.get(&link).map(|l| l.interconnect)
    }

    /// Where a client's data goes (`None`: not placed, any link).
    pub fn placement(&self, id: ClientId) -> Option<InterconnectId> {
        self.clients.get(&id).and_then(|c| c.placed)
    }

    /// Since when the session holds messages for a partner switch (autoswitch), if it does.
    pub fn holding_since(&self) -> Option<Instant> {
        self.holding_since
    }

    /// Payload bytes of a client handed out for transmission so far (for measured rates).
    pub fn client_bytes_out(&self, id: ClientId) -> u64 {
        self.clients.get(&id).map_or(0, |c| c.bytes_out)
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// A client's port state.
    pub fn port_state(&self, id: ClientId) -> Option<PortState> {
        self.clients.get(&id).map(|c| c.port.state())
    }

    /// A client's name.
    pub fn client_name(&self, id: ClientId) -> Option<&str> {
        self.clients.get(&id).map(|c| c.name.as_str())
    }

    /// A client's spec.
    pub fn client_spec(&self, id: ClientId) -> Option<ClientSpec> {
        self.clients.get(&id).map(|c| c.spec)
    }

    /// Live clients.
    pub fn client_ids(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.clients.keys().copied()
    }

    /// Unacknowledged sends of a client.
    pub fn unacked(&self, id: ClientId) -> usize {
        self.clients.get(&id).map_or(0, |c| c.send.unacked_len())
    }

    /// Announcements of every live client (for the handshake's NodeInfo).
    pub fn announcements(&self) -> Vec<ClientAnnounce> {
        self.clients
            .iter()
            .map(|(id, c)| self.announce(*id, c))
            .collect()
    }

    fn announce(&self, id: ClientId, c: &ClientSlot) -> ClientAnnounce {
        ClientAnnounce {
            name: c.name.clone(),
            id,
            recv_window: self.cfg.window,
            connecting: matches!(c.port.state(), PortState::Connecting | PortState::Connected),
        }
    }

    // ----- client commands -----

    /// Registers a client (port -> INITIALIZED) and announces it when the session is up.
    pub fn register(&mut self, name: &str, spec: ClientSpec) -> Result<ClientId, SessionError> {
        control::validate_name("client name", name)?;
        if self.by_name.contains_key(name) {
            return Err(SessionError::DuplicateName(name.to_string()));
        }
        let id = self.next_client_id;
        self.next_client_id = self.next_client_id.wrapping_add(1).max(1);
        let mut port = Port::default();
        port.apply(PortInput::Register)?;
        port.apply(PortInput::Initialize)?;
        let window = self.cfg.window;
        let credit = self
            .peer_clients
            .get(name)
            .map_or(0, |p| u64::from(p.window));
        self.clients.insert(
            id,
            ClientSlot {
                name: name.to_string(),
                spec,
                port,
                send: SendStream::new(window, credit),
                recv: RecvStream::new(window),
                flow_on: false,
                placed: None,
                bytes_out: 0,
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
            self.ack_due.remove(&id);
            self.flow_due.remove(&id);
            if self.state == SessionState::Up {
                let gone = ClientGone { name, id };
                self.queue_on_all_links(Frame::control(
                    MsgType::ClientDown,
                    control::encode(&gone),
                ));
            }
        }
        Ok(state)
    }

    /// Queues a message for the partner's namesake. Fails fast unless the port is up.
    pub fn send(
        &mut self,
        id: ClientId,
        payload: Bytes,
        model: SendModel,
    ) -> Result<u64, SessionError> {
        let max = self.cfg.max_payload_bytes;
        let high = self.cfg.flow_high_water;
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(SessionError::UnknownClient(id))?;
        if payload.len() > max as usize {
            return Err(SessionError::PayloadTooLarge {
                len: payload.len(),
                max,
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
        let seq = c.send.push(payload, model);
        if !c.flow_on && c.send.queued() >= high {
            c.flow_on = true;
            self.events
                .push_back((id, ClientEvent::FlowControl { on: true }));
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

    /// The next TRANSPORT message from the partner's manager, with the link it came on.
    pub fn poll_transport(&mut self) -> Option<(LinkId, Bytes)> {
        self.transport_in.pop_front()
    }

    /// The local client took every message up to `seq` off its queue (grants credit).
    pub fn consumed(&mut self, id: ClientId, seq: u64) {
        if let Some(c) = self.clients.get_mut(&id) {
            if c.recv.consume(seq).is_some() {
                self.flow_due.insert(id);
            }
        }
    }

    // ----- link events -----

    /// An authenticated TCP link to `peer` came up.
    pub fn handle_link_up(&mut self, link: LinkId, peer: NodeInfo, now: Instant) {
        self.handle_link_up_on(link, TCP_INTERCONNECT, peer, now);
    }

    /// A link to `peer` on interconnect `interconnect` came up (an RDMA queue pair set up over
    /// the bootstrap session, or a TCP connection).
    pub fn handle_link_up_on(
        &mut self,
        link: LinkId,
        interconnect: InterconnectId,
        peer: NodeInfo,
        now: Instant,
    ) {
        if self.holding_since.is_some() {
            // A switch whose reset never completed is still a switch, whoever answers.
            let same = !self.switching
                && self
                    .peer
                    .as_ref()
                    .is_some_and(|p| p.node_id == peer.node_id);
            if same {
                // The partner itself is back: resynchronise the classic way.
                self.go_down(DownReason::ConnectionLost, NackReason::ConnectionLost);
            } else {
                tracing::warn!(
                    to = %peer.node_id,
                    "switching partner: unacknowledged messages will be resent there"
                );
                self.holding_since = None;
                self.switching = true;
                self.peer = None;
            }
        }
        if let Some(old) = &self.peer {
            if old.instance != peer.instance {
                tracing::warn!(
                    old = old.instance,
                    new = peer.instance,
                    "partner {} restarted: dropping the old session",
                    peer.node_id
                );
                let old_links: Vec<LinkId> = self.links.keys().copied().collect();
                for l in old_links {
                    self.links.remove(&l);
                    self.closing.push_back(l);
                }
                self.go_down(DownReason::PeerRestarted, NackReason::PeerRestarted);
            }
        }
        self.peer = Some(peer);
        self.links.insert(
            link,
            LinkState {
                last_rx: now,
                last_tx: now,
                queued_bytes: 0,
                interconnect,
                peer_epoch: None,
            },
        );
        // Tell the partner our epoch on the new link before anything else goes on it, then (when
        // up) every client, so no DATA on this link can overtake its client's announcement.
        self.fence(link);
        if self.state == SessionState::Up {
            let ids: Vec<ClientId> = self.clients.keys().copied().collect();
            for id in ids {
                if let Some(c) = self.clients.get(&id) {
                    let a = self.announce(id, c);
                    self.control_out.push_back((
                        Some(link),
                        Frame::control(MsgType::ClientUp, control::encode(&a)),
                    ));
                }
            }
        }
        if self.state == SessionState::Down {
            self.begin_reset(link);
        } else if self.state == SessionState::Up {
            self.resync_after_link_change();
        }
    }

    /// Queues a heartbeat carrying our epoch on `link`: everything we send on the link after
    /// it belongs to this epoch.
    fn fence(&mut self, link: LinkId) {
        let hb = self.heartbeat();
        self.control_out.push_back((Some(link), hb));
    }

    /// A heartbeat: our epoch in `seq`, and, from an acceptor that has no session in that
    /// epoch (it lost every link while the dialer kept one it believes in), RESET-REQUEST, so
    /// the dialer starts a reset instead of sending into a session that no longer exists.
    fn heartbeat(&self) -> Frame {
        let lost = self.role == Role::Acceptor
            && matches!(self.state, SessionState::Down | SessionState::Resetting);
        let flags = if lost {
            Flags::RESET_REQUEST
        } else {
            Flags::empty()
        };
        Frame::new(MsgType::Heartbeat, flags, 0, self.epoch, 0, Bytes::new())
    }

    fn fence_all(&mut self) {
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.fence(link);
        }
    }

    fn begin_reset(&mut self, link: LinkId) {
        self.control_link = Some(link);
        self.state = SessionState::Resetting;
        if self.role == Role::Dialer {
            // Saturating: the partner's RESET may have carried u64::MAX (`epoch` adopts it), and
            // overflowing would panic (debug) or wrap below the partner's epoch so that no
            // RESET-ACK could ever match (release).
            self.epoch = self.epoch.saturating_add(1);
            self.control_out.push_back((
                Some(link),
                Frame::new(
                    MsgType::Reset,
                    Flags::empty(),
                    0,
                    self.epoch,
                    0,
                    Bytes::new(),
                ),
            ));
            // Links that survive into the new epoch may still carry the partner's frames of
            // the old one; its fences tell them apart (see `LinkState::peer_epoch`).
            self.fence_all();
        }
        self.early.clear();
    }

    /// A link was lost (closed by the peer, an IO error, or judged dead by this session).
    pub fn handle_link_down(&mut self, link: LinkId, now: Instant) {
        if self.links.remove(&link).is_none() {
            return;
        }
        if self.links.is_empty() {
            let hold = self.role == Role::Dialer
                && self.cfg.hold_on_partner_loss.is_some()
                && (self.state == SessionState::Up || self.switching);
            if hold {
                self.enter_hold(now);
            } else {
                self.go_down(DownReason::ConnectionLost, NackReason::ConnectionLost);
            }
            return;
        }
        let next = self.links.keys().next().copied();
        match self.state {
            SessionState::Up => {
                self.stats.links_lost += 1;
                if self.control_link == Some(link) {
                    // The partner may still be AWAITING-READY with our READY (and the
                    // announcements before it) lost with the link: repeat them on a survivor.
                    // An up partner ignores the repeat.
                    self.control_link = next;
                    self.announce_ready();
                }
                self.resync_after_link_change();
            }
            SessionState::Resetting | SessionState::AwaitingReady
                if self.control_link == Some(link) =>
            {
                if self.role == Role::Dialer {
                    // The reset lost its link: start it again (new epoch) on a survivor.
                    if let Some(next) = next {
                        self.control_out.clear();
                        self.begin_reset(next);
                    }
                } else {
                    // Only the dialer drives resets: it restarts this one if it still needs
                    // to. The dialer may be up already though, waiting for nothing: then our
                    // READY must not be lost with the link, so repeat it (an acceptor that
                    // fell back to RESETTING here could never come up again).
                    self.control_link = next;
                    if self.state == SessionState::AwaitingReady {
                        self.announce_ready();
                    }
                }
            }
            _ => {}
        }
    }

    /// After a link change: retransmit everything unacknowledged and re-announce acks and
    /// credit, since any of them may have died with the link.
    fn resync_after_link_change(&mut self) {
        for (id, c) in self.clients.iter_mut() {
            self.stats.replays += c.send.replay_all() as u64;
            c.recv.regrant();
            if c.port.state().is_up() {
                self.ack_due.insert(*id);
                self.flow_due.insert(*id);
                // Return codes too: an ACK carrying one may have died with the link, and the
                // partner's replay (if any) came before the code existed. Duplicates are
                // ignored by the sender.
                if let Some(peer) = self.peer_clients.get(&c.name) {
                    let delivered = c.recv.delivered();
                    for (seq, code) in c.recv.codes() {
                        let ack = code_ack(peer.id, seq, delivered, code);
                        self.control_out.push_back((None, ack));
                    }
                }
            }
        }
    }

    /// Every link is lost and autoswitch is on: keep every client's unacknowledged messages
    /// and accept new ones until a partner is connected again (see `hold_on_partner_loss`).
    fn enter_hold(&mut self, now: Instant) {
        tracing::warn!("every link to the partner lost: holding messages for a partner switch");
        if self.holding_since.is_none() {
            self.holding_since = Some(now);
        }
        self.state = SessionState::Down;
        self.control_link = None;
        self.control_out.clear();
        self.early.clear();
        self.ack_due.clear();
        self.flow_due.clear();
    }

    fn go_down(&mut self, reason: DownReason, nack: NackReason) {
        let held = self.holding_since.take().is_some();
        let switching = std::mem::take(&mut self.switching);
        let was_up = self.state == SessionState::Up || held || switching;
        self.state = SessionState::Down;
        self.control_link = None;
        self.control_out.clear();
        self.early.clear();
        self.ack_due.clear();
        self.flow_due.clear();
        self.peer_clients.clear();
        self.peer_retired.clear();
        for (id, c) in self.clients.iter_mut() {
            for seq in c.send.drain_unacked() {
                self.events
                    .push_back((*id, ClientEvent::Nacked { seq, reason: nack }));
            }
            let was_port_up = c.port.state().is_up();
            let _ = c.port.apply(PortInput::PathDown);
            if was_up && was_port_up {
                self.events.push_back((*id, ClientEvent::Down { reason }));
            }
            if c.flow_on {
                c.flow_on = false;
                self.events
                    .push_back((*id, ClientEvent::FlowControl { on: false }));
            }
        }
    }

    fn reset_streams(&mut self) {
        self.stats.resets += 1;
        self.early.clear();
        for c in self.clients.values_mut() {
            if self.switching {
                // A new partner: nothing it has seen, so everything unacknowledged goes to it,
                // renumbered for its fresh receive stream; the client's numbers stay. (Ports
                // stay up; `switching` ends with the partner's READY.)
                self.stats.replays += c.send.rebase(0) as u64;
            } else {
                c.send.reset(0);
            }
            c.recv.reset();
        }
        self.peer_clients.clear();
        self.peer_retired.clear();
    }

    /// Announces a client. While UP the announcement goes on every link, so on whichever link
    /// the client's first DATA travels, the announcement is ahead of it (links are FIFO).
    /// During a reset it goes on the control link, ahead of READY.
    fn queue_client_up(&mut self, id: ClientId) {
        if let Some(c) = self.clients.get(&id) {
            let frame = Frame::control(MsgType::ClientUp, control::encode(&self.announce(id, c)));
            if self.state == SessionState::Up {
                self.queue_on_all_links(frame);
            } else {
                self.control_out.push_back((self.control_link, frame));
            }
        }
    }

    fn queue_on_all_links(&mut self, frame: Frame) {
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.control_out.push_back((Some(link), frame.clone()));
        }
    }

    fn queue_ready(&mut self) {
        self.announce_ready();
        self.state = SessionState::AwaitingReady;
    }

    /// Queues CLIENT-UP for every client, then READY, on the control link.
    fn announce_ready(&mut self) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            self.queue_client_up(id);
        }
        self.control_out.push_back((
            self.control_link,
            Frame::control(MsgType::Ready, Bytes::new()),
        ));
    }

    /// Re-evaluates whether a client's path is up and emits Up/Down on changes.
    fn refresh_path(&mut self, id: ClientId) {
        if self.holding_since.is_some() || self.switching {
            return; // ports stay as they are until the switch settles
        }
        let session_up = self.state == SessionState::Up;
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let peer = self.peer_clients.get(&c.name).copied();
        let was_up = c.port.state().is_up();
        let reachable = session_up && peer.is_some();
        let input = if reachable {
            PortInput::PathUp
        } else {
            PortInput::PathDown
        };
        let _ = c.port.apply(input);
        let is_up = c.port.state().is_up();
        if let Some(p) = peer {
            c.send.on_credit(u64::from(p.window));
        }
        if is_up && !was_up {
            self.events.push_back((id, ClientEvent::Up));
        } else if was_up && !is_up {
            for seq in c.send.drain_unacked() {
                self.events.push_back((
                    id,
                    ClientEvent::Nacked {
                        seq,
                        reason: NackReason::UnknownClient,
                    },
                ));
            }
            self.events.push_back((
                id,
                ClientEvent::Down {
                    reason: DownReason::PeerClientClosed,
                },
            ));
        }
    }

    // ----- frames -----

    /// Handles one frame received on `link`. An error means the partner broke the protocol:
    /// the runtime logs it and closes the link (the session treats that as a link loss).
    pub fn handle_frame(
        &mut self,
        link: LinkId,
        frame: Frame,
        now: Instant,
    ) -> Result<(), ProtocolViolation> {
        let Some(l) = self.links.get_mut(&link) else {
            return Ok(()); // late frame from a link already dropped
        };
        l.last_rx = now;
        self.stats.frames_in += 1;
        let res = self.dispatch(link, frame);
        if res.is_err() {
            self.stats.violations += 1;
        }
        res
    }

    fn set_peer_epoch(&mut self, link: LinkId, epoch: u64) {
        if let Some(l) = self.links.get_mut(&link) {
            l.peer_epoch = Some(epoch);
        }
    }

    /// The partner closed incarnation `id` of client `name`: NACK what our namesake had
    /// outstanding, tell it Down, and start both streams over (the next incarnation begins at
    /// sequence 1). Idempotent; an id that is not the current one only raises the retired mark.
    fn retire_peer_client(&mut self, name: &str, id: u32) {
        let retired = self.peer_retired.entry(name.to_string()).or_insert(0);
        *retired = (*retired).max(id);
        if self.peer_clients.get(name).is_some_and(|p| p.id == id) {
            self.peer_clients.remove(name);
            if let Some(&local) = self.by_name.get(name) {
                self.refresh_path(local);
                if let Some(c) = self.clients.get_mut(&local) {
                    c.send.reset(0);
                    c.recv.reset();
                }
            }
        }
    }

    fn dispatch(&mut self, link: LinkId, frame: Frame) -> Result<(), ProtocolViolation> {
        let h = frame.header;
        let carries_epoch = matches!(
            h.msg_type,
            MsgType::Heartbeat | MsgType::Reset | MsgType::ResetAck
        );
        let handshake = matches!(
            h.msg_type,
            MsgType::Hello
                | MsgType::Challenge
                | MsgType::Auth
                | MsgType::Welcome
                | MsgType::Refuse
        );
        let current = self
            .links
            .get(&link)
            .is_some_and(|l| l.peer_epoch == Some(self.epoch));
        if !carries_epoch && !handshake && !current {
            // Sent before the partner learned of the current reset (or before it announced its
            // epoch on this link): it belongs to a session state that no longer exists.
            tracing::debug!(link, msg = ?h.msg_type, "stale frame from before a reset dropped");
            return Ok(());
        }
        match h.msg_type {
            MsgType::Hello
            | MsgType::Challenge
            | MsgType::Auth
            | MsgType::Welcome
            | MsgType::Refuse => Err(ProtocolViolation::Unexpected(h.msg_type)),
            MsgType::Heartbeat => {
                self.set_peer_epoch(link, h.seq);
                let lost_by_partner = self.role == Role::Dialer
                    && h.flags.contains(Flags::RESET_REQUEST)
                    && h.seq == self.epoch
                    && matches!(self.state, SessionState::Up | SessionState::AwaitingReady);
                if lost_by_partner {
                    // The partner lost this epoch's session (every link, on its side) while
                    // we kept one: what we sent since may be gone. Start over.
                    tracing::warn!(link, epoch = h.seq, "partner lost the session: resetting");
                    self.go_down(DownReason::PeerReset, NackReason::ConnectionLost);
                    self.begin_reset(link);
                }
                Ok(())
            }
            MsgType::Reset => {
                if self.state == SessionState::Up {
                    self.go_down(DownReason::PeerReset, NackReason::ConnectionLost);
                }
                // Follow the dialer's epoch, even downwards: a restarted dialer counts from 1
                // again, and a RESET-ACK carrying any other number would never match.
                self.epoch = h.seq;
                self.set_peer_epoch(link, h.seq);
                self.control_link = Some(link);
                self.reset_streams();
                self.control_out.clear();
                self.control_out.push_back((
                    Some(link),
                    Frame::new(
                        MsgType::ResetAck,
                        Flags::empty(),
                        0,
                        self.epoch,
                        0,
                        Bytes::new(),
                    ),
                ));
                // The reset is adopted: the fences below must not ask for another one.
                self.state = SessionState::AwaitingReady;
                self.fence_all();
                self.queue_ready();
                Ok(())
            }
            MsgType::ResetAck => {
                self.set_peer_epoch(link, h.seq);
                if self.state == SessionState::Resetting && h.seq == self.epoch {
                    self.reset_streams();
                    self.queue_ready();
                }
                Ok(())
            }
            MsgType::Ready => {
                if self.state == SessionState::AwaitingReady {
                    self.state = SessionState::Up;
                    let ids: Vec<ClientId> = self.clients.keys().copied().collect();
                    if std::mem::take(&mut self.switching) {
                        let node = self
                            .peer
                            .as_ref()
                            .map_or_else(String::new, |p| p.node_id.clone());
                        for &id in &ids {
                            self.events.push_back((
                                id,
                                ClientEvent::PeerSwitched {
                                    node: node.clone(),
                                    epoch: self.epoch,
                                },
                            ));
                        }
                    }
                    // Re-announce every client on every link before any DATA can be queued: a
                    // client registered while AWAITING-READY was announced only on the control
                    // link, behind READY, and its first DATA on another link would overtake
                    // that. The partner is past its reset (it sent READY), so it keeps these.
                    for &id in &ids {
                        self.queue_client_up(id);
                    }
                    for id in ids {
                        self.refresh_path(id);
                    }
                    for (_, early) in std::mem::take(&mut self.early) {
                        if let Err(e) = self.on_data(early) {
                            tracing::debug!("early DATA refused: {e}");
                        }
                    }
                }
                Ok(())
            }
            MsgType::ClientUp => {
                let a: ClientAnnounce = control::decode("CLIENT-UP", &frame.payload)?;
                control::validate_name("client name", &a.name)?;
                if self.peer_retired.get(&a.name).is_some_and(|&r| a.id <= r) {
                    return Ok(()); // a late copy of a closed incarnation's announcement
                }
                match self.peer_clients.get(&a.name) {
                    Some(p) if p.id == a.id => return Ok(()), // another link's copy
                    Some(p) if p.id > a.id => return Ok(()),  // older than what we know
                    Some(p) => {
                        // A newer incarnation is announced before the old one's CLIENT-DOWN
                        // arrived (it travels on a slower link): retire the old one now.
                        let old = p.id;
                        self.retire_peer_client(&a.name, old);
                    }
                    None => {}
                }
                self.peer_clients.insert(
                    a.name.clone(),
                    PeerClient {
                        id: a.id,
                        window: a.recv_window,
                    },
                );
                if let Some(&id) = self.by_name.get(&a.name) {
                    self.refresh_path(id);
                }
                Ok(())
            }
            MsgType::ClientDown => {
                let gone: ClientGone = control::decode("CLIENT-DOWN", &frame.payload)?;
                control::validate_name("client name", &gone.name)?;
                self.retire_peer_client(&gone.name, gone.id);
                Ok(())
            }
            MsgType::Data => self.on_data(frame),
            MsgType::Ack => {
                if self.state != SessionState::Up {
                    return Ok(());
                }
                let id = h.client;
                let completion = {
                    let Some(c) = self.clients.get_mut(&id) else {
                        return Ok(());
                    };
                    if h.flags.contains(Flags::CUMULATIVE) {
                        c.send.on_cumulative_ack(h.seq)
                    } else {
                        let code = control::decode_code(&frame.payload)?;
                        // The piggybacked cumulative ack completes async/local sends too: keep
                        // its completions (dropping them lost those sends' Acked events).
                        let mut v = c.send.on_cumulative_ack(h.ack);
                        v.extend(c.send.on_code(h.seq, code));
                        v
                    }
                };
                self.complete(id, completion);
                Ok(())
            }
            MsgType::Nack => {
                let (reason, dest) = control::decode_nack(&frame.payload)?;
                let target = self
                    .clients
                    .iter()
                    .find(|(_, c)| self.peer_clients.get(&c.name).is_some_and(|p| p.id == dest))
                    .map(|(id, _)| *id);
                if let Some(id) = target {
                    if let Some(c) = self.clients.get_mut(&id) {
                        if let Some(seq) = c.send.remove(h.seq) {
                            self.events
                                .push_back((id, ClientEvent::Nacked { seq, reason }));
                        }
                    }
                }
                Ok(())
            }
            MsgType::Flow => {
                if let Some(c) = self.clients.get_mut(&h.client) {
                    if self.state == SessionState::Up {
                        c.send.on_credit(h.seq);
                    }
                }
                Ok(())
            }
            MsgType::Transport => {
                if frame.payload.len() > MAX_TRANSPORT_PAYLOAD_BYTES {
                    return Err(ProtocolViolation::Control(
                        control::ControlError::OutOfBounds {
                            what: "TRANSPORT payload",
                            detail: format!(
                                "{} bytes > {MAX_TRANSPORT_PAYLOAD_BYTES}",
                                frame.payload.len()
                            ),
                        },
                    ));
                }
                if self.state == SessionState::Up {
                    self.transport_in.push_back((link, frame.payload));
                } else {
                    tracing::debug!(link, "TRANSPORT before the session is up dropped");
                }
                Ok(())
            }
        }
    }

    fn on_data(&mut self, frame: Frame) -> Result<(), ProtocolViolation> {
        let h = frame.header;
        let id = h.client;
        if self.state == SessionState::AwaitingReady {
            // The partner is up (it only sends DATA then, and the fence proved the frame is of
            // this epoch) but its READY and CLIENT-UPs, sent on the control link, have not
            // arrived yet. Dropping the frame would lose it for good (nothing replays it), so
            // keep it for when READY comes. The fresh credit bounds what may arrive.
            if let Some(c) = self.clients.get(&id) {
                let credit = c.recv.credit();
                if h.seq == 0 || h.seq > credit {
                    let err = if h.seq == 0 {
                        RecvError::ZeroSeq
                    } else {
                        RecvError::BeyondCredit { seq: h.seq, credit }
                    };
                    return Err(ProtocolViolation::Stream { client: id, err });
                }
                self.early.entry((id, h.seq)).or_insert(frame);
                return Ok(());
            }
        }
        if self.state != SessionState::Up && self.state != SessionState::AwaitingReady {
            return Ok(()); // the partner replays or NACKs it after the reset
        }
        let known = self.clients.get(&id).map(|c| c.port.state().is_up());
        if known == Some(false) {
            // The client exists but its partner namesake is gone: announcements travel on every
            // link ahead of DATA, so this was sent by a namesake incarnation that has since
            // closed (and NACKed it locally). Nothing to answer.
            self.stats.stale_frames_dropped += 1;
            tracing::debug!(
                client = id,
                seq = h.seq,
                "DATA from a closed partner client dropped"
            );
            return Ok(());
        }
        if known.is_none() {
            self.stats.unknown_client_frames += 1;
            tracing::warn!(
                client = id,
                seq = h.seq,
                "DATA for a client that is not registered here: NACKed"
            );
            self.control_out.push_back((
                None,
                Frame::new(
                    MsgType::Nack,
                    Flags::empty(),
                    0,
                    h.seq,
                    0,
                    control::encode_nack(NackReason::UnknownClient, id),
                ),
            ));
            return Ok(());
        }
        let (outcome, piggy) = {
            let Some(c) = self.clients.get_mut(&id) else {
                return Ok(());
            };
            let outcome = c
                .recv
                .handle_data(h.seq, h.flags.contains(Flags::SYNC), frame.payload)
                .map_err(|err| ProtocolViolation::Stream { client: id, err })?;
            let piggy = if h.ack > 0 {
                c.send.on_cumulative_ack(h.ack)
            } else {
                Vec::new()
            };
            (outcome, piggy)
        };
        self.complete(id, piggy);
        if outcome.duplicate {
            self.stats.duplicates_dropped += 1;
        }
        if let Some((seq, code)) = outcome.reack_code {
            if let Some(peer) = self
                .clients
                .get(&id)
                .and_then(|c| self.peer_clients.get(&c.name))
            {
                self.control_out.push_back((
                    None,
                    Frame::new(
                        MsgType::Ack,
                        Flags::empty(),
                        peer.id,
                        seq,
                        0,
                        control::encode_code(code),
                    ),
                ));
            }
        }
        self.ack_due.insert(id);
        for d in outcome.deliveries {
            self.stats.delivered += 1;
            self.events.push_back((
                id,
                ClientEvent::Data {
                    seq: d.seq,
                    payload: d.payload,
                    reply_needed: d.sync,
                },
            ));
        }
        Ok(())
    }

    fn complete(&mut self, id: ClientId, done: Vec<SendCompletion>) {
        for d in done {
            let ev = match d {
                SendCompletion::Acked { seq, code } => ClientEvent::Acked { seq, code },
                SendCompletion::Transmitted { seq } => ClientEvent::Transmitted { seq },
            };
            self.events.push_back((id, ev));
        }
    }

    /// The runtime wrote `bytes` on `link`; `local_done` lists local-model sends now transmitted.
    pub fn handle_written(&mut self, link: LinkId, bytes: u64, local_done: &[(ClientId, u64)]) {
        if let Some(l) = self.links.get_mut(&link) {
            l.queued_bytes = l.queued_bytes.saturating_sub(bytes);
        }
        for &(id, seq) in local_done {
            let done = self
                .clients
                .get_mut(&id)
                .and_then(|c| c.send.on_transmitted(seq))
                .into_iter()
                .collect();
            self.complete(id, done);
        }
    }

    /// Timer input: judges silent links dead. Harmless when nothing is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let (Some(since), Some(hold)) = (self.holding_since, self.cfg.hold_on_partner_loss) {
            if now.saturating_duration_since(since) >= hold {
                tracing::warn!(
                    hold_ms = hold.as_millis() as u64,
                    "no partner within the hold time: NACKing held messages"
                );
                self.go_down(DownReason::ConnectionLost, NackReason::ConnectionLost);
            }
        }
        let dead: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_rx) >= self.cfg.link_timeout)
            .map(|(id, _)| *id)
            .collect();
        for link in dead {
            tracing::warn!(
                link,
                timeout_ms = self.cfg.link_timeout.as_millis() as u64,
                "link silent: closing it"
            );
            self.closing.push_back(link);
            self.handle_link_down(link, now);
        }
    }

    // ----- outputs -----

    /// The next deadline at which [`Session::handle_timeout`] or a heartbeat is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hold = self
            .holding_since
            .zip(self.cfg.hold_on_partner_loss)
            .map(|(since, hold)| since + hold);
        self.links
            .values()
            .flat_map(|l| {
                [
                    l.last_tx + self.cfg.heartbeat_interval,
                    l.last_rx + self.cfg.link_timeout,
                ]
            })
            .chain(hold)
            .min()
    }

    /// A link this session judged dead; the runtime must close it.
    pub fn poll_close_link(&mut self) -> Option<LinkId> {
        self.closing.pop_front()
    }

    /// The next event for a client.
    pub fn poll_event(&mut self) -> Option<(ClientId, ClientEvent)> {
        self.events.pop_front()
    }

    /// The least-loaded link of `interconnect`, or of any interconnect when it has none.
    fn pick_link_on(&mut self, interconnect: Option<InterconnectId>) -> Option<LinkId> {
        if let Some(ic) = interconnect {
            let best = self
                .links
                .iter()
                .filter(|(_, l)| l.interconnect == ic)
                .min_by_key(|(_, l)| l.queued_bytes)
                .map(|(id, _)| *id);
            if best.is_some() {
                return best;
            }
        }
        self.pick_link()
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
        local_done: Option<(ClientId, u64)>,
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
        }
    }

    /// The next frame to transmit: control first, then acks and credit, then client data
    /// (round robin over clients, least-loaded link), then heartbeats on quiet links.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
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
        while let Some(id) = self.ack_due.pop_first() {
            let Some(c) = self.clients.get(&id) else {
                continue;
            };
            let Some(peer) = self.peer_clients.get(&c.name) else {
                continue;
            };
            let frame = Frame::new(
                MsgType::Ack,
                Flags::CUMULATIVE,
                peer.id,
                c.recv.delivered(),
                0,
                Bytes::new(),
            );
            let link = self.pick_link()?;
            return Some(self.emit(link, frame, None, now));
        }
        while let Some(id) = self.flow_due.pop_first() {
            let Some(c) = self.clients.get_mut(&id) else {
                continue;
            };
            let Some(peer) = self.peer_clients.get(&c.name) else {
                continue;
            };
            let credit = c.recv.regrant();
            let frame = Frame::new(
                MsgType::Flow,
                Flags::empty(),
                peer.id,
                credit,
                0,
                Bytes::new(),
            );
            let link = self.pick_link()?;
            return Some(self.emit(link, frame, None, now));
        }
        None
    }

    fn poll_data(&mut self, now: Instant) -> Option<Transmit> {
        let ids: Vec<ClientId> = self
            .clients
            .range(self.rr_client.wrapping_add(1)..)
            .chain(self.clients.range(..=self.rr_client))
            .filter(|(_, c)| c.port.state().is_up() && c.send.can_transmit())
            .map(|(id, _)| *id)
            .take(1)
            .collect();
        let id = *ids.first()?;
        self.rr_client = id;
        let low = self.cfg.flow_low_water;
        let placed = self.clients.get(&id)?.placed;
        let link = self.pick_link_on(placed)?;
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
        let frame = Frame::new(MsgType::Data, flags, peer.id, seq, ack, payload);
        let local = (model == SendModel::Local).then_some((id, seq));
        Some(self.emit(link, frame, local, now))
    }
}

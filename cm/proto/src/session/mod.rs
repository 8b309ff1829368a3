//! One partner session: every client's streams multiplexed over every live link, IO-free.
//!
//! Inputs: [`Session::handle_link_up`] / [`Session::handle_link_down`] when the runtime gains or
//! loses an authenticated link, [`Session::handle_frame`] for each received frame,
//! [`Session::handle_written`] when a link writer took frames, [`Session::handle_timer`] (or
//! [`Session::handle_timeout`]) when the deadline from [`Session::poll_timeout`] passed, and client commands (`register`,
//! `connect`, `close`, `send`, `reply`, `consumed`, `place`, `send_transport`). Outputs:
//! [`Session::poll_transmit`] (which frame on which link), [`Session::poll_event`] (what to tell
//! which client), [`Session::poll_close_link`] (links judged dead) and
//! [`Session::poll_transport`] (TRANSPORT payloads from the partner's manager).
//!
//! Session life: DOWN -> (first link) RESETTING -> (RESET / RESET-ACK exchanged on that link)
//! AWAITING-READY -> (partner READY) UP. While UP, losing one link replays every
//! unacknowledged message on the survivors (receivers drop duplicates, so nothing is lost or
//! delivered twice). Losing the last link takes the session DOWN: outstanding messages are
//! NACKed, clients told the connection is down, sends fail fast until the next RESET.
//!
//! Layout: this file holds the [`Session`] state, its accessors and its event/timer outputs;
//! `types` the public vocabulary (ids, config, events, errors, stats); `commands` the client
//! commands; `ack_timeout` the acknowledgement timeouts of sends; `lifecycle` link up/down,
//! resets, the autoswitch hold and the timer; `liveness`
//! the grace a late timer gives links before a silence verdict; `marks` the consumed marks
//! waiting to be reported (rate limited); `recv` one
//! receive function per message type behind [`Session::handle_frame`]; `transmit`
//! [`Session::poll_transmit`] and the link choice.

mod ack_timeout;
mod commands;
mod lifecycle;
mod liveness;
mod marks;
mod recv;
mod regions;
mod transmit;
mod types;

pub use types::*;

use crate::auth::Role;
use crate::control::{self, ClientAnnounce, NodeInfo};
use crate::frame::{Flags, Frame, MsgType};
use crate::port::{Port, PortState};
use crate::region::{LocalRegions, PartnerRegions, RailKey, RegionId};
use crate::stream::{RecvStream, SendStream};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// An ACK carrying the return code of synchronous message `seq`, with the cumulative ack.
fn code_ack(peer_client: PeerClientId, seq: u64, delivered: u64, code: i32) -> Frame {
    Frame::new(
        MsgType::Ack,
        Flags::empty(),
        peer_client.get(),
        seq,
        delivered,
        control::encode_code(code),
    )
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
    /// A link reserved for one client's traffic (its own queue pair, \[CCM\]): only that
    /// client's data and writes go on it while another link can take the rest.
    reserved: Option<ClientId>,
    /// DATA and WRITE frames put on it (first transmissions and replays).
    data_frames_out: u64,
}

#[derive(Debug, Clone, Copy)]
struct PeerClient {
    id: PeerClientId,
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
    /// When the consumed mark last went to the partner (in an ACK or FLOW frame).
    mark_sent_at: Option<Instant>,
    /// Default acknowledgement timeout of its sync and async sends.
    ack_timeout: Option<Duration>,
    /// Its earliest acknowledgement deadline as entered in `Session::ack_index`.
    indexed_deadline: Option<Instant>,
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
    peer_retired: HashMap<String, PeerClientId>,
    next_client_id: ClientId,
    control_out: VecDeque<(Option<LinkId>, Frame)>,
    ack_due: BTreeSet<ClientId>,
    flow_due: BTreeSet<ClientId>,
    /// Clients whose consumed mark moved and awaits a frame (sent by `poll_transmit` at most
    /// once per `consumed_report_interval`, unless an ACK or FLOW takes it first), and
    /// clients whose one-sided writes' acknowledgement waits (`write_ack_delay`).
    mark_due: marks::MarkReports,
    /// The time of the latest frame handled (what a deferred acknowledgement counts from).
    clock: Instant,
    /// Each client's earliest acknowledgement deadline, ordered (see `ack_timeout`).
    ack_index: BTreeSet<(Instant, ClientId)>,
    /// Clients with sends whose acknowledgement deadline awaits the clock.
    unarmed: BTreeSet<ClientId>,
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
    /// Links given a grace period by a late timer ([`Session::handle_timer`]).
    stall_grace: BTreeMap<LinkId, liveness::StallGrace>,
    /// This node's client regions (see `regions`).
    local_regions: LocalRegions,
    /// The rail keys each local region is registered under (advertised with it); a region
    /// without an entry is not advertised (registration pending, or replaced after a switch).
    region_keys: BTreeMap<(ClientId, RegionId), Vec<RailKey>>,
    /// Regions the runtime must register anew (after a switch), for [`Session::poll_rekey`].
    rekeys: VecDeque<(ClientId, RegionId)>,
    /// The partner's regions, as advertised.
    partner_table: PartnerRegions,
    /// Writes that arrived with their bytes, for the runtime to place ([`Session::poll_apply`]).
    applies: VecDeque<Apply>,
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
            next_client_id: ClientId::new(1),
            control_out: VecDeque::new(),
            ack_due: BTreeSet::new(),
            flow_due: BTreeSet::new(),
            mark_due: marks::MarkReports::default(),
            clock: Instant::now(),
            ack_index: BTreeSet::new(),
            unarmed: BTreeSet::new(),
            events: VecDeque::new(),
            closing: VecDeque::new(),
            rr_client: ClientId::new(0),
            rr_link: 0,
            early: BTreeMap::new(),
            transport_in: VecDeque::new(),
            holding_since: None,
            switching: false,
            stall_grace: BTreeMap::new(),
            local_regions: LocalRegions::new(),
            region_keys: BTreeMap::new(),
            rekeys: VecDeque::new(),
            partner_table: PartnerRegions::new(),
            applies: VecDeque::new(),
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

    /// Reserves `link` for client `id`'s traffic (a queue pair of its own \[CCM\]): from now on
    /// the client's data and writes go on it (or on another link reserved for it on the
    /// interconnect it is placed on), and other clients' data goes on it only when no other
    /// link is left. Control frames and heartbeats may use any link.
    pub fn reserve_link(&mut self, link: LinkId, id: ClientId) -> Result<(), SessionError> {
        if !self.clients.contains_key(&id) {
            return Err(SessionError::UnknownClient(id));
        }
        let l = self
            .links
            .get_mut(&link)
            .ok_or(SessionError::UnknownLink(link))?;
        l.reserved = Some(id);
        Ok(())
    }

    /// The client a live link is reserved for.
    pub fn link_reserved_for(&self, link: LinkId) -> Option<ClientId> {
        self.links.get(&link).and_then(|l| l.reserved)
    }

    /// DATA and WRITE frames put on a live link so far.
    pub fn link_data_frames_out(&self, link: LinkId) -> Option<u64> {
        self.links.get(&link).map(|l| l.data_frames_out)
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

    /// The live client registered under `name`.
    pub fn client_by_name(&self, name: &str) -> Option<ClientId> {
        self.by_name.get(name).copied()
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

    fn announce(&self, id: ClientId, c: &ClientSlot) -> ClientAnnounce {
        ClientAnnounce {
            name: c.name.clone(),
            id: id.get(),
            recv_window: self.cfg.window,
            connecting: matches!(c.port.state(), PortState::Connecting | PortState::Connected),
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
            .chain(self.grace_deadlines())
            .chain(self.next_mark_report())
            .chain(self.next_ack_deadline())
            .min()
    }

    /// When the next consumed mark waiting for its rate limit may go (see
    /// [`SessionConfig::consumed_report_interval`]); included in [`Session::poll_timeout`]. A
    /// mark that may go at once is not listed: the next [`Session::poll_transmit`] sends it.
    pub fn next_mark_report(&self) -> Option<Instant> {
        if self.state != SessionState::Up {
            return None;
        }
        self.mark_due.next_deadline()
    }

    /// A link this session judged dead; the runtime must close it.
    pub fn poll_close_link(&mut self) -> Option<LinkId> {
        self.closing.pop_front()
    }

    /// The next event for a client.
    pub fn poll_event(&mut self) -> Option<(ClientId, ClientEvent)> {
        self.events.pop_front()
    }

    /// The next TRANSPORT message from the partner's manager, with the link it came on.
    pub fn poll_transport(&mut self) -> Option<(LinkId, Bytes)> {
        self.transport_in.pop_front()
    }
}

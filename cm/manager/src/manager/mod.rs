//! The manager task: one per node. It owns the IO-free [`Session`] and everything with a handle
//! on the outside world: live links, the dialer's reconnect schedule, and each client's event
//! channel. Every input (a client command, a link frame, a new link, a timer) is fed to the
//! session, then `Manager::flush` carries out what the session asks for.
//!
//! This file holds the `Manager` itself, the run loop, link input and `flush`. The other jobs
//! are in child modules, each an `impl Manager` block:
//!
//! - `commands`: what a [`crate::Node`] or [`crate::ClientHandle`] asks (`Command`).
//! - `dialer`: dialing the partner with backoff, and new TCP links.
//! - `listener`: accepting inbound connections, pending handshakes capped overall and per source.
//! - `partner`: partner-death detection, switching to a backup partner, fencing RDMA links.
//! - `status`: the status snapshot, the interconnect list, the fallback reason, the timeline.
//!
//! The rail glue (offering rails, TRANSPORT messages, device events, feeding the placement
//! policy) is an `impl Manager` block in [`crate::rails`].

mod client_qps;
mod commands;
mod dialer;
mod listener;
mod partner;
mod status;

pub(crate) use commands::Command;
use dialer::NewLink;
use listener::HandshakeCounters;
pub use listener::HandshakeStats;

use crate::config::NodeConfig;
use crate::links::{AnyLink, LinkInput};
use crate::rails::{DeviceInput, RailDone, Rails, Reaper, VerbsSource};
use crate::timeline::{CloseCause, NodeEvent, TimelineEntry};
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::control::NodeInfo;
use peercm_cm_proto::handshake::HandshakeConfig;
use peercm_cm_proto::placement::{Placement, PlacementConfig};
use peercm_cm_proto::session::{
    ClientEvent, ClientId, LatencyClass, LinkId, Session, SessionState,
};
use peercm_fallback_tcp::TcpHandshakeConfig;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// Capacity of the link -> manager channel (back-pressures readers when the manager lags).
const LINK_INPUT_CAPACITY: usize = 4096;
/// How long newly registered clients wait to be placed, so that a burst of registrations is
/// placed in one pass (a pass costs O(n log n) in the number of clients). An unplaced client's
/// data goes on any link meanwhile.
const PLACE_BATCH: Duration = Duration::from_millis(20);

/// A registered client as the manager sees it: its event channel, its consumption reports and
/// the session boundaries forwarded to it (see [`crate::consumed`]).
pub(crate) struct ClientChannel {
    tx: mpsc::UnboundedSender<ClientEvent>,
    report: Arc<crate::consumed::ConsumedReport>,
    boundaries: u64,
}

/// The manager task's state (see the module docs). The fields the rail glue in
/// [`crate::rails`] works on are `pub(crate)`.
pub(crate) struct Manager {
    pub(crate) cfg: NodeConfig,
    handshake: TcpHandshakeConfig,
    pub(crate) session: Session,
    pub(crate) role: Role,
    started: Instant,
    pub(crate) links: HashMap<LinkId, AnyLink>,
    pub(crate) rails: Rails,
    pub(crate) placement: Placement,
    /// Clients registered but not yet placed, placed together by `flush` once
    /// [`PLACE_BATCH`] has passed since the first of them (see `place_registered`).
    to_place: Vec<(ClientId, u32, LatencyClass)>,
    /// When `to_place` is due.
    to_place_at: Option<Instant>,
    /// Bytes of each client already fed to the placement policy.
    pub(crate) bytes_fed: HashMap<ClientId, u64>,
    dev_tx: mpsc::Sender<DeviceInput>,
    dev_rx: mpsc::Receiver<DeviceInput>,
    /// Results of rail setup work done on blocking threads.
    pub(crate) rail_tx: mpsc::UnboundedSender<RailDone>,
    rail_rx: mpsc::UnboundedReceiver<RailDone>,
    pub(crate) next_rail_round: Instant,
    last_session_state: SessionState,
    /// Index into the partner addresses (partner, then backups) currently dialed.
    peer_index: usize,
    /// When the last link to the partner was lost (partner-failure detection).
    lost_all_at: Option<Instant>,
    /// When anything last arrived from the partner, on any link.
    last_partner_rx: Option<Instant>,
    /// RDMA links judged dead and handed to the reaper to be fenced (their receive rings
    /// deregistered) and parked until they close, so that a zombie partner's RDMA WRITEs fail
    /// with a remote access error; with when they were retired. Only their ids are kept here,
    /// to recognise their last inputs; the reaper owns the links.
    pub(crate) fenced: Vec<(Instant, LinkId)>,
    /// Fault injection: process nothing until then (a hung process).
    #[cfg(feature = "fault-injection")]
    frozen_until: Option<Instant>,
    /// The same deadline for the listener, which then stalls inbound handshakes too.
    #[cfg(feature = "fault-injection")]
    frozen_tx: watch::Sender<Option<Instant>>,
    /// Fault injection: TCP link readers hold the frame they read until then (a stalled
    /// process reads nothing either).
    #[cfg(feature = "fault-injection")]
    pub(crate) readers_held_tx: watch::Sender<Option<Instant>>,
    pub(crate) next_link: Arc<AtomicU64>,
    clients: HashMap<ClientId, ClientChannel>,
    node_info: watch::Sender<NodeInfo>,
    pub(crate) link_tx: mpsc::Sender<LinkInput>,
    link_rx: mpsc::Receiver<LinkInput>,
    new_tx: mpsc::Sender<NewLink>,
    new_rx: mpsc::Receiver<NewLink>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    dialing: u32,
    next_dial_at: Instant,
    backoff: Duration,
    timeline: VecDeque<TimelineEntry>,
    listener_task: Option<tokio::task::JoinHandle<()>>,
    /// What the listener did with inbound connections.
    handshake_counters: Arc<HandshakeCounters>,
    /// Client regions (mapped files the partner writes into).
    pub(crate) regions: crate::regions::runtime::RegionRuntime,
}

impl Drop for Manager {
    fn drop(&mut self) {
        // The node is gone: stop accepting and drop every link, as a dead process would.
        if let Some(t) = self.listener_task.take() {
            t.abort();
        }
        for (_, l) in self.links.drain() {
            l.abort();
        }
    }
}

impl Manager {
    /// Builds the manager and, when `listener` is given, starts accepting.
    pub(crate) fn new(
        cfg: NodeConfig,
        handshake: HandshakeConfig,
        listener: Option<TcpListener>,
        cmd_rx: mpsc::UnboundedReceiver<Command>,
        verbs: VerbsSource,
    ) -> Self {
        let role = if cfg.peer.is_some() {
            Role::Dialer
        } else {
            Role::Acceptor
        };
        let session = Session::new(cfg.session_config(), role);
        let (link_tx, link_rx) = mpsc::channel(LINK_INPUT_CAPACITY);
        let (new_tx, new_rx) = mpsc::channel(64);
        let (dev_tx, dev_rx) = mpsc::channel(256);
        let (rail_tx, rail_rx) = mpsc::unbounded_channel();
        let reaper = Reaper::new(rail_tx.clone());
        let rails = Rails::discover(&verbs, &cfg.verbs, cfg.session.max_payload_bytes, reaper);
        let mut handshake = handshake;
        handshake.node.capabilities = rails.capabilities();
        let (node_info, _) = watch::channel(handshake.node.clone());
        let hs = TcpHandshakeConfig {
            handshake,
            max_payload_bytes: cfg.session.max_payload_bytes,
            timeout: Duration::from_millis(cfg.session.handshake_timeout_ms),
        };
        let cfg_regions = cfg.regions.clone();
        let m = Manager {
            backoff: Duration::from_millis(cfg.session.reconnect_backoff_min_ms),
            cfg,
            handshake: hs,
            session,
            role,
            started: Instant::now(),
            links: HashMap::new(),
            rails,
            placement: Placement::new(PlacementConfig::default()),
            to_place: Vec::new(),
            to_place_at: None,
            bytes_fed: HashMap::new(),
            dev_tx,
            dev_rx,
            rail_tx,
            rail_rx,
            next_rail_round: Instant::now(),
            last_session_state: SessionState::Down,
            peer_index: 0,
            lost_all_at: None,
            last_partner_rx: None,
            fenced: Vec::new(),
            #[cfg(feature = "fault-injection")]
            frozen_until: None,
            #[cfg(feature = "fault-injection")]
            frozen_tx: watch::channel(None).0,
            #[cfg(feature = "fault-injection")]
            readers_held_tx: watch::channel(None).0,
            next_link: Arc::new(AtomicU64::new(1)),
            clients: HashMap::new(),
            node_info,
            link_tx,
            link_rx,
            new_tx,
            new_rx,
            cmd_rx,
            dialing: 0,
            next_dial_at: Instant::now(),
            timeline: VecDeque::new(),
            listener_task: None,
            handshake_counters: Arc::default(),
            regions: crate::regions::runtime::RegionRuntime::new(&cfg_regions),
        };
        let mut m = m;
        if let Some(reason) = m.rails.unavailable.clone() {
            m.note(NodeEvent::VerbsUnavailable { reason });
        } else {
            for r in m.rails.local.clone() {
                m.note(NodeEvent::RailFound {
                    rail: r.rail,
                    device: r.device,
                    port: r.port,
                    capacity_mbits_per_s: r.capacity_mbits_per_s,
                    active: r.active,
                });
            }
            m.rails.spawn_watchers(m.dev_tx.clone());
        }
        // Every interconnect known to the policy, none usable until a link comes up.
        m.refresh_interconnects(Instant::now());
        if let Some(l) = listener {
            m.listener_task = Some(m.spawn_listener(l));
        }
        m
    }

    fn next_deadline(&self) -> Option<Instant> {
        let dial =
            (self.tcp_links() + self.dialing < self.want_links()).then_some(self.next_dial_at);
        let rails = (self.role == Role::Dialer
            && self.session.state() == SessionState::Up
            && self.rails.unavailable.is_none())
        .then_some(self.next_rail_round);
        let switch = self.switch_deadline();
        [
            self.session.poll_timeout(),
            self.to_place_at,
            dial,
            rails,
            self.placement.poll_timeout(),
            switch,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs until every handle is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            #[cfg(feature = "fault-injection")]
            if let Some(until) = self.frozen_until.take() {
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
            let now = Instant::now();
            self.detect_partner_failure(now);
            self.maybe_dial(now);
            self.flush(now);
            let due = self
                .next_deadline()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let deadline = tokio::time::Instant::from_std(due);
            // Not `biased`: with a fixed order a link that always has input ready would starve
            // the commands and the timer behind it (acknowledgement timeouts, placement,
            // heartbeats). The timer branch drains ready input itself before any verdict.
            tokio::select! {
                input = self.link_rx.recv() => {
                    if let Some(input) = input { self.on_link_input(input); }
                    // Drain what else is ready before flushing: fewer, larger batches.
                    self.drain_link_input();
                }
                cmd = self.cmd_rx.recv() => {
                    match cmd {
                        Some(c) => self.on_command(c),
                        None => break,
                    }
                    for _ in 0..256 {
                        match self.cmd_rx.try_recv() {
                            Ok(c) => self.on_command(c),
                            Err(_) => break,
                        }
                    }
                }
                new = self.new_rx.recv() => {
                    if let Some(n) = new { self.on_new_link(n); }
                }
                dev = self.dev_rx.recv() => {
                    if let Some(d) = dev { self.on_device_event(d); }
                }
                done = self.rail_rx.recv() => {
                    if let Some(d) = done { self.on_rail_done(d); }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    // Input that is ready counts before any silence verdict: a link whose
                    // frames are waiting here is not silent.
                    self.drain_link_input();
                    let now = Instant::now();
                    // `due` lets the session tell a late runtime (a stalled process) from a
                    // silent link: see `Session::handle_timer`.
                    self.session.handle_timer(due, now);
                    if self.placement.poll_timeout().is_some_and(|t| now >= t) {
                        // Measured rates are fed when the policy evaluates: a pass over every
                        // client, so not on every heartbeat tick.
                        self.feed_placement(now);
                        self.placement.handle_timeout(now);
                    }
                    // Both sides: a new rail link without its round trip in time is a failed
                    // attempt (the acceptor's too, not only the dialer's).
                    if !self.rails.probing.is_empty() {
                        self.expire_activations(now);
                    }
                    if now >= self.next_rail_round {
                        self.offer_rails(now);
                        self.offer_client_qps(now);
                    }
                }
            }
        }
    }

    /// Takes the link input that is ready, in a bounded batch (256), so commands and timers
    /// are not starved by a busy link.
    fn drain_link_input(&mut self) {
        for _ in 0..256 {
            match self.link_rx.try_recv() {
                Ok(i) => self.on_link_input(i),
                Err(_) => break,
            }
        }
    }

    fn on_link_input(&mut self, input: LinkInput) {
        let now = Instant::now();
        match input {
            LinkInput::Frame { link, frame } => {
                if !self.links.contains_key(&link) {
                    return; // a fenced or closed link's last frames
                }
                self.last_partner_rx = Some(now);
                if self.rdma_link_activation(link, &frame, now) {
                    return; // a LINK_PROBE, outside the session
                }
                if let Err(e) = self.session.handle_frame(link, frame, now) {
                    tracing::warn!(
                        link = link.get(),
                        error = %e,
                        "protocol violation: closing link"
                    );
                    let detail = e.to_string();
                    self.close_link(link, CloseCause::ProtocolViolation { detail });
                }
            }
            LinkInput::Oversize { link, header } => {
                if !self.links.contains_key(&link) {
                    return;
                }
                self.last_partner_rx = Some(now);
                if let Err(e) = self.session.handle_oversize(link, header, now) {
                    tracing::warn!(
                        link = link.get(),
                        error = %e,
                        "protocol violation: closing link"
                    );
                    let detail = e.to_string();
                    self.close_link(link, CloseCause::ProtocolViolation { detail });
                }
            }
            LinkInput::Written {
                link,
                bytes,
                local_done,
            } => {
                self.session.handle_written(link, bytes, &local_done);
            }
            LinkInput::Closed { link, reason } => {
                if let Some(i) = self.fenced.iter().position(|(_, l)| *l == link) {
                    self.fenced.remove(i);
                    let reason = reason.to_string();
                    self.note(NodeEvent::FencedLinkClosed { link, reason });
                    return;
                }
                if let Some(l) = self.links.remove(&link) {
                    self.note(NodeEvent::LinkLost {
                        link,
                        transport: l.transport(),
                        reason: reason.to_string(),
                    });
                    if l.in_session() {
                        self.session.handle_link_down(link, now);
                    } else if let AnyLink::Rdma { rail, .. } = &l {
                        let rail = *rail;
                        self.rail_attempt_failed(link, rail, reason.to_string(), now);
                    }
                    self.refresh_interconnects(now);
                }
            }
        }
    }

    pub(crate) fn close_link(&mut self, link: LinkId, cause: CloseCause) {
        if let Some(h) = self.links.remove(&link) {
            h.abort();
            self.note(NodeEvent::LinkClosed { link, cause });
            if h.in_session() {
                self.session.handle_link_down(link, Instant::now());
            }
            self.refresh_interconnects(Instant::now());
        }
    }

    /// Hands the clients registered since the last batch to the placement policy.
    fn place_registered(&mut self, now: Instant) {
        self.to_place_at = None;
        if !self.to_place.is_empty() {
            let batch = std::mem::take(&mut self.to_place);
            self.placement.add_clients(batch, now);
        }
    }

    fn flush(&mut self, now: Instant) {
        if self.to_place_at.is_some_and(|at| now >= at) {
            self.place_registered(now);
        }
        let mut closed_any = false;
        while let Some(link) = self.session.poll_close_link() {
            if let Some(h) = self.links.remove(&link) {
                closed_any = true;
                self.note(NodeEvent::LinkSilent {
                    link,
                    transport: h.transport(),
                    silent_ms: self.cfg.session.link_timeout_ms,
                });
                self.retire_link(h, now);
            }
        }
        // The reaper frees a parked link once `fence_park_ms` has passed; forget it here too.
        let park = Duration::from_millis(self.cfg.verbs.fence_park_ms);
        self.fenced.retain(|(at, _)| now < *at + park);
        if closed_any {
            self.refresh_interconnects(now);
        }
        let state = self.session.state();
        if state != self.last_session_state {
            self.last_session_state = state;
            if state == SessionState::Up {
                self.next_rail_round = now;
            } else if state == SessionState::Down {
                self.rails.clear_pending();
            }
        }
        while let Some((_, payload)) = self.session.poll_transport() {
            self.on_transport(payload);
        }
        while let Some(mv) = self.placement.poll_move() {
            let client = self
                .session
                .client_name(mv.client)
                .unwrap_or("?")
                .to_string();
            if self.session.place(mv.client, mv.to).is_ok() {
                self.note(NodeEvent::ClientMoved {
                    client,
                    from: mv.from,
                    to: mv.to,
                    reason: mv.reason,
                });
            }
        }
        // Writes that came with their bytes are placed before anything goes out: what goes
        // out may be the placement codes that complete them.
        self.place_region_writes();
        while let Some(mut t) = self.session.poll_transmit(now) {
            if let Some(h) = self.links.get(&t.link) {
                // A failed send means the writer is gone; its Closed input is on the way. A
                // one-sided write the link refuses (or cannot take as it closes) closes the
                // link, so the session replays the write, with its bytes, on another one.
                if h.is_rdma() {
                    if let Some((data, target)) = t.take_one_sided() {
                        let write = peercm_cm_rdma_link::OneSided {
                            data,
                            remote: peercm_verbs_shim::RemoteMr {
                                addr: target.addr,
                                rkey: target.rkey,
                                len: target.len,
                            },
                            remote_offset: target.offset,
                        };
                        if !h.send_with_write(t.frame, write, t.local_done) {
                            self.close_link(t.link, CloseCause::OneSidedRefused);
                        }
                        continue;
                    }
                }
                let _ = h.send(t.frame, t.local_done);
            }
        }
        while let Some((id, ev)) = self.session.poll_event() {
            let client = || self.session.client_name(id).unwrap_or("?").to_string();
            let noted = match &ev {
                ClientEvent::Up => Some(NodeEvent::ClientUp { client: client() }),
                ClientEvent::Down { reason } => Some(NodeEvent::ClientDown {
                    client: client(),
                    reason: *reason,
                }),
                _ => None,
            };
            if let Some(e) = noted {
                self.note(e);
            }
            if let Some(ch) = self.clients.get_mut(&id) {
                if crate::consumed::is_boundary(&ev) {
                    ch.boundaries += 1;
                }
                let _ = ch.tx.send(ev);
            }
        }
    }
}

/// The node description offered in handshakes (the manager adds its RDMA capabilities).
pub(crate) fn local_node_info(cfg: &NodeConfig, instance: u64) -> NodeInfo {
    NodeInfo {
        node_id: cfg.node_id.clone(),
        instance,
        capabilities: vec![peercm_cm_proto::control::TransportCap::Tcp],
        max_payload_bytes: cfg.session.max_payload_bytes,
    }
}

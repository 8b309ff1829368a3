//! The manager task: one per node. It owns the IO-free [`Session`] and everything with a handle
//! on the outside world: live links, the dialer's reconnect schedule, and each client's event
//! channel. Every input (a client command, a link frame, a new link, a timer) is fed to the
//! session, then [`Manager::flush`] carries out what the session asks for.

use crate::config::NodeConfig;
use crate::error::CmError;
use crate::links::AnyLink;
use crate::rails::{DeviceInput, ManagerSink, RailAction, RailDone, Rails, VerbsSource};
use crate::status::{ClientStatus, InterconnectStatus, LinkStatus, NodeStatus, TimelineEntry};
use bytes::Bytes;
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::control::{self, NodeInfo, TransportMsg};
use peercm_cm_proto::handshake::HandshakeConfig;
use peercm_cm_proto::placement::{InterconnectInfo, InterconnectKind, Placement, PlacementConfig};
use peercm_cm_proto::port::PortState;
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, InterconnectId, LinkId, Session, SessionState,
    TCP_INTERCONNECT,
};
use peercm_cm_proto::stream::SendModel;
use peercm_cm_rdma_link::LinkCloseReason;
use peercm_fallback_tcp::handshake::FramedLink;
use peercm_fallback_tcp::{spawn_link, LinkInput, Outgoing, TcpHandshakeConfig};
use peercm_verbs_shim::AsyncEvent;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

/// Nominal capacity given to the TCP interconnect for placement (it is only used when no RDMA
/// rail is, so the figure only matters for utilization reports).
const TCP_CAPACITY_MBPS: u32 = 10_000;
/// How long a fenced RDMA link is kept before it is closed anyway.
const FENCE_PARK: Duration = Duration::from_secs(30);
/// Timeline entries kept for status output.
const TIMELINE_MAX: usize = 64;
/// Capacity of the link -> manager channel (back-pressures readers when the manager lags).
const LINK_INPUT_CAPACITY: usize = 4096;

type Reply<T> = oneshot::Sender<Result<T, CmError>>;

/// What a [`crate::Node`] or [`crate::ClientHandle`] asks of the manager.
#[derive(Debug)]
pub(crate) enum Command {
    Register {
        name: String,
        spec: ClientSpec,
        reply: Reply<(ClientId, mpsc::UnboundedReceiver<ClientEvent>)>,
    },
    Connect {
        id: ClientId,
        reply: Reply<PortState>,
    },
    Close {
        id: ClientId,
        immediate: bool,
        reply: Reply<PortState>,
    },
    Send {
        id: ClientId,
        payload: Bytes,
        model: SendModel,
        reply: Reply<u64>,
    },
    Reply {
        id: ClientId,
        seq: u64,
        code: i32,
        reply: Reply<()>,
    },
    Consumed {
        id: ClientId,
        seq: u64,
    },
    Status {
        reply: Reply<NodeStatus>,
    },
    KillLink {
        link: Option<LinkId>,
        reply: Reply<Option<LinkId>>,
    },
    SwitchPeer {
        reply: Reply<String>,
    },
    Freeze {
        duration: Duration,
        reply: Reply<()>,
    },
}

/// A link produced by the dialer or the listener, after a successful handshake.
pub(crate) enum NewLink {
    /// A dial to the partner address at this index of the switch order finished.
    Dialed(usize, Result<(FramedLink, NodeInfo), String>),
    Accepted(FramedLink, NodeInfo),
}

pub(crate) struct Manager {
    cfg: NodeConfig,
    handshake: TcpHandshakeConfig,
    session: Session,
    role: Role,
    started: Instant,
    links: HashMap<LinkId, AnyLink>,
    rails: Rails,
    placement: Placement,
    /// Bytes of each client already fed to the placement policy.
    bytes_fed: HashMap<ClientId, u64>,
    dev_tx: mpsc::Sender<DeviceInput>,
    dev_rx: mpsc::Receiver<DeviceInput>,
    /// Results of rail setup work done on blocking threads.
    rail_tx: mpsc::UnboundedSender<RailDone>,
    rail_rx: mpsc::UnboundedReceiver<RailDone>,
    next_rail_round: Instant,
    last_session_state: SessionState,
    /// Index into the partner addresses (partner, then backups) currently dialed.
    peer_index: usize,
    /// When the last link to the partner was lost (partner-failure detection).
    lost_all_at: Option<Instant>,
    /// When anything last arrived from the partner, on any link.
    last_partner_rx: Option<Instant>,
    /// RDMA links judged dead, fenced (their receive rings deregistered) and kept until they
    /// close, so that a zombie partner's RDMA WRITEs fail with a remote access error.
    fenced: Vec<(Instant, AnyLink)>,
    /// Fault injection: process nothing until then (a hung process).
    frozen_until: Option<Instant>,
    /// The same deadline for the listener, which then stalls inbound handshakes too.
    frozen_tx: watch::Sender<Option<Instant>>,
    next_link: Arc<AtomicU64>,
    clients: HashMap<ClientId, mpsc::UnboundedSender<ClientEvent>>,
    node_info: watch::Sender<NodeInfo>,
    link_tx: mpsc::Sender<LinkInput>,
    link_rx: mpsc::Receiver<LinkInput>,
    new_tx: mpsc::Sender<NewLink>,
    new_rx: mpsc::Receiver<NewLink>,
    cmd_rx: mpsc::UnboundedReceiver<Command>,
    dialing: u32,
    next_dial_at: Instant,
    backoff: Duration,
    timeline: VecDeque<TimelineEntry>,
    listener_task: Option<tokio::task::JoinHandle<()>>,
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
        let rails = Rails::discover(&verbs, &cfg.verbs, cfg.session.max_payload_bytes);
        let mut handshake = handshake;
        handshake.node.capabilities = rails.capabilities();
        let (node_info, _) = watch::channel(handshake.node.clone());
        let hs = TcpHandshakeConfig {
            handshake,
            max_payload_bytes: cfg.session.max_payload_bytes,
            timeout: Duration::from_millis(cfg.session.handshake_timeout_ms),
        };
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
            frozen_until: None,
            frozen_tx: watch::channel(None).0,
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
        };
        let mut m = m;
        if let Some(why) = m.rails.unavailable.clone() {
            m.note(format!("verbs unavailable, using TCP: {why}"));
        } else {
            for r in m.rails.local.clone() {
                m.note(format!(
                    "rail {}: {} port {} ({} Mb/s, {})",
                    r.rail,
                    r.device,
                    r.port,
                    r.capacity_mbps,
                    if r.active { "ACTIVE" } else { "down" }
                ));
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

    fn note(&mut self, what: String) {
        tracing::info!("{what}");
        if self.timeline.len() == TIMELINE_MAX {
            self.timeline.pop_front();
        }
        self.timeline.push_back(TimelineEntry {
            at_ms: self.started.elapsed().as_millis() as u64,
            what,
        });
    }

    fn spawn_listener(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let new_tx = self.new_tx.clone();
        let base = self.handshake.clone();
        let info = self.node_info.subscribe();
        let frozen = self.frozen_tx.subscribe();
        tokio::spawn(
            async move {
                let mut handshakes = tokio::task::JoinSet::new();
                loop {
                    while handshakes.try_join_next().is_some() {}
                    let (stream, from) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let hung = *frozen.borrow();
                    if let Some(until) = hung.filter(|u| *u > Instant::now()) {
                        // Fault injection (a hung process): the connection waits unanswered.
                        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
                    }
                    let mut hs = base.clone();
                    hs.handshake.node = info.borrow().clone();
                    let new_tx = new_tx.clone();
                    handshakes.spawn(
                        async move {
                            match peercm_fallback_tcp::accept(stream, &hs).await {
                                Ok((framed, peer)) => {
                                    let _ = new_tx.send(NewLink::Accepted(framed, peer)).await;
                                }
                                Err(e) => {
                                    tracing::warn!(%from, error = %e, "refused inbound connection")
                                }
                            }
                        }
                        .in_current_span(),
                    );
                }
            }
            .in_current_span(),
        )
    }

    fn want_links(&self) -> u32 {
        self.cfg.peer.as_ref().map_or(0, |p| p.connections)
    }

    fn tcp_links(&self) -> u32 {
        self.links
            .values()
            .filter(|l| matches!(l, AnyLink::Tcp(_)))
            .count() as u32
    }

    fn maybe_dial(&mut self, now: Instant) {
        let Some(peer) = self.cfg.peer.clone() else {
            return;
        };
        while self.tcp_links() + self.dialing < self.want_links() && now >= self.next_dial_at {
            self.dialing += 1;
            let mut hs = self.handshake.clone();
            hs.handshake.node = self.node_info.borrow().clone();
            let new_tx = self.new_tx.clone();
            let addrs = peer.addresses();
            let target = self.peer_index % addrs.len().max(1);
            let addr = addrs.get(target).copied().unwrap_or(peer.address);
            tokio::spawn(
                async move {
                    let res = match tokio::time::timeout(hs.timeout, TcpStream::connect(addr)).await
                    {
                        Ok(Ok(stream)) => peercm_fallback_tcp::dial(stream, &hs)
                            .await
                            .map_err(|e| e.to_string()),
                        Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
                        Err(_) => Err(format!("connect to {addr}: timed out")),
                    };
                    let _ = new_tx.send(NewLink::Dialed(target, res)).await;
                }
                .in_current_span(),
            );
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let dial =
            (self.tcp_links() + self.dialing < self.want_links()).then_some(self.next_dial_at);
        let rails = (self.role == Role::Dialer
            && self.session.state() == SessionState::Up
            && self.rails.unavailable.is_none())
        .then_some(self.next_rail_round);
        let switch = self.switch_deadline();
        let unpark = self.fenced.first().map(|(at, _)| *at + FENCE_PARK);
        [
            self.session.poll_timeout(),
            dial,
            rails,
            self.placement.poll_timeout(),
            switch,
            unpark,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs until every handle is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            if let Some(until) = self.frozen_until.take() {
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
            let now = Instant::now();
            self.detect_partner_failure(now);
            self.maybe_dial(now);
            self.flush(now);
            let deadline = self
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                input = self.link_rx.recv() => {
                    if let Some(input) = input { self.on_link_input(input); }
                    // Drain what else is ready before flushing: fewer, larger batches.
                    for _ in 0..256 {
                        match self.link_rx.try_recv() {
                            Ok(i) => self.on_link_input(i),
                            Err(_) => break,
                        }
                    }
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
                    let now = Instant::now();
                    self.session.handle_timeout(now);
                    self.feed_placement(now);
                    self.placement.handle_timeout(now);
                    if now >= self.next_rail_round {
                        self.offer_rails(now);
                    }
                }
            }
        }
    }

    fn on_new_link(&mut self, new: NewLink) {
        let (framed, peer, dialed) = match new {
            NewLink::Dialed(target, _) if target != self.peer_index => {
                // A dial to the partner we switched away from (no longer counted): drop it.
                return;
            }
            NewLink::Dialed(_, Ok((f, p))) => {
                self.dialing = self.dialing.saturating_sub(1);
                self.backoff = Duration::from_millis(self.cfg.session.reconnect_backoff_min_ms);
                (f, p, true)
            }
            NewLink::Dialed(_, Err(e)) => {
                self.dialing = self.dialing.saturating_sub(1);
                tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "dial failed");
                self.next_dial_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_millis(
                    self.cfg.session.reconnect_backoff_max_ms,
                ));
                return;
            }
            NewLink::Accepted(f, p) => (f, p, false),
        };
        if !dialed && self.role == Role::Dialer {
            tracing::warn!(peer = %peer.node_id, "this node dials its partner; refusing an inbound session link");
            return;
        }
        if let Some(current) = self.session.peer() {
            if current.node_id != peer.node_id && !self.links.is_empty() {
                tracing::warn!(
                    peer = %peer.node_id,
                    partner = %current.node_id,
                    "already partnered with another node; refusing link"
                );
                return;
            }
        }
        let id = self.next_link.fetch_add(1, Ordering::Relaxed);
        let handle = spawn_link(framed, id, self.link_tx.clone());
        self.note(format!(
            "link {id} up ({} {}, peer {})",
            if dialed { "dialed" } else { "accepted" },
            handle.remote,
            peer.node_id
        ));
        let peer_rails = Rails::peer_rail_count(&peer.capabilities);
        self.links.insert(id, AnyLink::Tcp(handle));
        self.session.handle_link_up(id, peer, Instant::now());
        if peer_rails == 0 && self.rails.unavailable.is_none() {
            self.note("partner offers no RDMA: using TCP".into());
        }
        self.refresh_interconnects(Instant::now());
    }

    fn on_link_input(&mut self, input: LinkInput) {
        let now = Instant::now();
        match input {
            LinkInput::Frame { link, frame } => {
                if !self.links.contains_key(&link) {
                    return; // a fenced or closed link's last frames
                }
                self.last_partner_rx = Some(now);
                self.activate_rdma_link(link, now);
                if let Err(e) = self.session.handle_frame(link, frame, now) {
                    tracing::warn!(link, error = %e, "protocol violation: closing link");
                    self.close_link(link, format!("protocol violation: {e}"));
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
                if let Some(i) = self.fenced.iter().position(|(_, l)| l.id() == link) {
                    self.fenced.remove(i);
                    self.note(format!("fenced rdma link {link} closed: {reason}"));
                    return;
                }
                if let Some(l) = self.links.remove(&link) {
                    self.note(format!("{} link {link} lost: {reason}", l.transport()));
                    if l.in_session() {
                        self.session.handle_link_down(link, now);
                    }
                    self.refresh_interconnects(now);
                }
            }
        }
    }

    /// Takes a link out of service. A TCP link is dropped; an RDMA link is fenced first (its
    /// receive ring deregistered, so the partner can no longer write into this node's memory)
    /// and parked until it closes, which a zombie partner's next WRITE causes.
    fn retire_link(&mut self, l: AnyLink, now: Instant) {
        match l {
            AnyLink::Rdma { ref link, .. } => {
                if let Err(e) = link.fence() {
                    tracing::warn!(link = link.id(), error = %e, "fencing failed: closing");
                    l.abort();
                    return;
                }
                self.note(format!("rdma link {} fenced", link.id()));
                self.fenced.push((now, l));
            }
            AnyLink::Tcp(_) => l.abort(),
        }
    }

    /// When the switch to the next partner is due (autoswitch, partner unreachable).
    fn switch_deadline(&self) -> Option<Instant> {
        let peer = self.cfg.peer.as_ref()?;
        if !peer.autoswitch || peer.backups.is_empty() {
            return None;
        }
        // The detection window runs from the partner's last sign of life (a process crash
        // closes TCP at once while RDMA links only go silent), but never ends before every
        // link is gone.
        let window = Duration::from_millis(peer.switch_after_ms);
        self.lost_all_at
            .map(|lost| lost.max(self.last_partner_rx.unwrap_or(lost) + window))
    }

    /// Tracks when the last link was lost, and switches partner when the detection window
    /// has passed without one.
    fn detect_partner_failure(&mut self, now: Instant) {
        if self.role != Role::Dialer {
            return;
        }
        let live = self.links.values().any(|l| l.in_session());
        if live {
            self.lost_all_at = None;
            return;
        }
        if self.session.peer().is_none() {
            return; // never connected: keep dialing the first partner
        }
        let since = *self.lost_all_at.get_or_insert(now);
        if self.switch_deadline().is_some_and(|d| now >= d) {
            self.note(format!(
                "partner unreachable for {} ms",
                now.saturating_duration_since(since).as_millis()
            ));
            self.switch_peer(now);
        }
    }

    /// Moves to the next partner in the configured order: fences every RDMA link to the old
    /// one and dials the new one at once. Returns its address.
    fn switch_peer(&mut self, now: Instant) -> Option<String> {
        let addrs = self.cfg.peer.as_ref()?.addresses();
        if addrs.len() < 2 {
            return None;
        }
        self.peer_index = (self.peer_index + 1) % addrs.len();
        let to = addrs[self.peer_index];
        let old: Vec<LinkId> = self.links.keys().copied().collect();
        for id in old {
            if let Some(l) = self.links.remove(&id) {
                if l.in_session() {
                    self.session.handle_link_down(id, now);
                }
                self.retire_link(l, now);
            }
        }
        self.rails.clear_pending();
        self.refresh_interconnects(now);
        // The new partner gets a full detection window to answer.
        self.lost_all_at = None;
        self.last_partner_rx = None;
        self.dialing = 0; // dials to the old partner finish unheeded
        self.next_dial_at = now;
        self.backoff = Duration::from_millis(self.cfg.session.reconnect_backoff_min_ms);
        self.note(format!(
            "switching partner to {to} (epoch after {})",
            self.session.epoch()
        ));
        Some(to.to_string())
    }

    fn close_link(&mut self, link: LinkId, reason: String) {
        if let Some(h) = self.links.remove(&link) {
            h.abort();
            self.note(format!("link {link} closed: {reason}"));
            if h.in_session() {
                self.session.handle_link_down(link, Instant::now());
            }
            self.refresh_interconnects(Instant::now());
        }
    }

    /// Acceptor side: an RDMA link joins the session on its first frame.
    fn activate_rdma_link(&mut self, link: LinkId, now: Instant) {
        let Some(AnyLink::Rdma {
            rail, activated, ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        if *activated {
            return;
        }
        *activated = true;
        let rail = *rail;
        if let Some(peer) = self.session.peer().cloned() {
            self.session.handle_link_up_on(link, rail, peer, now);
            self.note(format!("rdma link {link} up on rail {rail}"));
            self.refresh_interconnects(now);
        }
    }

    /// Tells the placement policy which interconnects have live links.
    fn refresh_interconnects(&mut self, now: Instant) {
        let live: HashSet<InterconnectId> = self
            .links
            .values()
            .filter(|l| l.in_session())
            .map(AnyLink::interconnect)
            .collect();
        let tcp = live.contains(&TCP_INTERCONNECT);
        self.placement.upsert_interconnect(
            InterconnectInfo {
                id: TCP_INTERCONNECT,
                kind: InterconnectKind::Tcp,
                capacity_mbps: TCP_CAPACITY_MBPS,
                failure_domain: "tcp".into(),
                usable: tcp,
            },
            now,
        );
        for r in self.rails.local.clone() {
            self.placement.upsert_interconnect(
                InterconnectInfo {
                    id: r.rail,
                    kind: InterconnectKind::Rdma,
                    capacity_mbps: r.capacity_mbps,
                    failure_domain: r.device.clone(),
                    usable: live.contains(&r.rail),
                },
                now,
            );
        }
    }

    /// Feeds each client's transmitted bytes since the last call to the placement policy.
    fn feed_placement(&mut self, now: Instant) {
        let ids: Vec<ClientId> = self.session.client_ids().collect();
        for id in ids {
            let total = self.session.client_bytes_out(id);
            let fed = self.bytes_fed.entry(id).or_insert(0);
            let delta = total.saturating_sub(*fed);
            *fed = total;
            if delta > 0 {
                self.placement.record_bytes(id, delta, now);
            }
        }
    }

    /// Dialer: offers every rail that has no link yet.
    fn offer_rails(&mut self, now: Instant) {
        self.next_rail_round = now + Duration::from_millis(self.cfg.verbs.rail_retry_interval_ms);
        if self.role != Role::Dialer
            || self.session.state() != SessionState::Up
            || self.rails.unavailable.is_some()
        {
            return;
        }
        let peer_rails = self
            .session
            .peer()
            .map_or(0, |p| Rails::peer_rail_count(&p.capabilities));
        let linked: Vec<u32> = self
            .links
            .values()
            .filter_map(|l| match l {
                AnyLink::Rdma { rail, .. } => Some(*rail),
                AnyLink::Tcp(_) => None,
            })
            .collect();
        for rail in self.rails.rails_to_offer(peer_rails, &linked, now) {
            let link_id = self.next_link.fetch_add(1, Ordering::Relaxed);
            match self.rails.begin_offer(rail, link_id, now) {
                Ok(job) => {
                    let tx = self.rail_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let res = job.prepare();
                        let _ = tx.send(RailDone::Prepared { rail, link_id, res });
                    });
                }
                Err(e) => tracing::warn!(rail, error = %e, "cannot offer rail"),
            }
        }
    }

    /// Blocking rail work finished.
    fn on_rail_done(&mut self, done: RailDone) {
        let now = Instant::now();
        match done {
            RailDone::Prepared { rail, link_id, res } => {
                if let Some(msg) = self.rails.prepared(rail, link_id, res, now) {
                    if let Err(e) = self.session.send_transport(control::encode(&msg)) {
                        tracing::warn!(rail, error = %e, "cannot send rail offer");
                    }
                }
            }
            RailDone::Connected {
                rail,
                link_id,
                res,
                reply,
            } => {
                let dialer = reply.is_none();
                if let Some(m) = &reply {
                    let _ = self.session.send_transport(control::encode(m));
                }
                let link = match res {
                    Ok(link) => link,
                    Err(e) => {
                        tracing::warn!(rail, error = %e, "rail setup failed");
                        if dialer {
                            self.rails.connected(rail, link_id);
                        }
                        return;
                    }
                };
                let wanted = if dialer {
                    self.rails.connected(rail, link_id) && self.session.state() == SessionState::Up
                } else {
                    self.session.state() == SessionState::Up
                };
                if !wanted {
                    link.close(); // abandoned meanwhile (session down, offer expired)
                    return;
                }
                self.links.insert(
                    link_id,
                    AnyLink::Rdma {
                        link,
                        rail,
                        activated: dialer,
                    },
                );
                if dialer {
                    if let Some(peer) = self.session.peer().cloned() {
                        self.session.handle_link_up_on(link_id, rail, peer, now);
                    }
                    self.note(format!("rdma link {link_id} up on rail {rail}"));
                    self.refresh_interconnects(now);
                }
            }
        }
    }

    /// A TRANSPORT message from the partner's manager.
    fn on_transport(&mut self, payload: Bytes) {
        let msg: TransportMsg = match control::decode("TRANSPORT", &payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "malformed TRANSPORT message ignored");
                return;
            }
        };
        if let TransportMsg::Offer { rail, .. } = &msg {
            // The dialer offers a rail it has no link on: any link we still hold there is dead.
            let stale: Vec<LinkId> = self
                .links
                .iter()
                .filter(|(_, l)| matches!(l, AnyLink::Rdma { rail: r, .. } if r == rail))
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                self.close_link(id, "partner re-offered its rail".into());
            }
        }
        let id = match &msg {
            TransportMsg::Offer { .. } => self.next_link.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let sink = |link| -> Box<dyn peercm_cm_rdma_link::LinkSink> {
            Box::new(ManagerSink {
                link,
                tx: self.link_tx.clone(),
            })
        };
        let tx = self.rail_tx.clone();
        match self.rails.handle(msg, id) {
            RailAction::None => {}
            RailAction::Reply(m) => {
                let _ = self.session.send_transport(control::encode(&m));
            }
            RailAction::Accept {
                rail,
                attempt,
                link_id,
                job,
                remote,
            } => {
                let sink = sink(link_id);
                tokio::task::spawn_blocking(move || {
                    let (res, reply) = match job.prepare() {
                        Ok((prepared, endpoint)) => match prepared.connect(&remote, sink) {
                            Ok(link) => (
                                Ok(link),
                                TransportMsg::Accept {
                                    rail,
                                    attempt,
                                    endpoint,
                                },
                            ),
                            Err(e) => {
                                let reason = format!("connecting rail {rail}: {e}");
                                (
                                    Err(reason.clone()),
                                    TransportMsg::Refuse {
                                        rail,
                                        attempt,
                                        reason,
                                    },
                                )
                            }
                        },
                        Err(reason) => (
                            Err(reason.clone()),
                            TransportMsg::Refuse {
                                rail,
                                attempt,
                                reason,
                            },
                        ),
                    };
                    let _ = tx.send(RailDone::Connected {
                        rail,
                        link_id,
                        res,
                        reply: Some(reply),
                    });
                });
            }
            RailAction::Connect {
                rail,
                link_id,
                prepared,
                remote,
            } => {
                let sink = sink(link_id);
                tokio::task::spawn_blocking(move || {
                    let res = prepared
                        .connect(&remote, sink)
                        .map_err(|e| format!("connecting rail {rail}: {e}"));
                    let _ = tx.send(RailDone::Connected {
                        rail,
                        link_id,
                        res,
                        reply: None,
                    });
                });
            }
        }
    }

    /// An async event from one of our devices.
    fn on_device_event(&mut self, d: DeviceInput) {
        let now = Instant::now();
        let (rails, reason, up) = match d.event {
            AsyncEvent::PortError { port } => (
                self.rails.set_port_active(&d.device, port, false),
                Some(LinkCloseReason::PortDown),
                false,
            ),
            AsyncEvent::PortActive { port } => (
                self.rails.set_port_active(&d.device, port, true),
                None,
                true,
            ),
            AsyncEvent::DeviceFatal => (
                self.rails.rails_of_device(&d.device),
                Some(LinkCloseReason::DeviceFatal),
                false,
            ),
            other => {
                tracing::info!(device = %d.device, event = ?other, "device event");
                return;
            }
        };
        self.note(format!("{}: {:?} (rails {rails:?})", d.device, d.event));
        if let Some(reason) = reason {
            for l in self.links.values() {
                if let AnyLink::Rdma { link, rail, .. } = l {
                    if rails.contains(rail) {
                        link.fail(reason.clone());
                    }
                }
            }
        }
        if up {
            // Offer the rail again at once (dialer) rather than at the next round.
            self.next_rail_round = now;
        }
    }

    fn publish_node_info(&self) {
        let mut info = self.node_info.borrow().clone();
        info.clients = self.session.announcements();
        self.node_info.send_replace(info);
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Register { name, spec, reply } => {
                let res = self
                    .session
                    .register(&name, spec)
                    .map_err(CmError::from)
                    .map(|id| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        self.clients.insert(id, tx);
                        (id, rx)
                    });
                if let Ok((id, _)) = &res {
                    self.placement.add_client(
                        *id,
                        spec.bandwidth_mbps,
                        spec.latency,
                        Instant::now(),
                    );
                    self.publish_node_info();
                }
                let _ = reply.send(res);
            }
            Command::Connect { id, reply } => {
                let _ = reply.send(self.session.connect(id).map_err(CmError::from));
            }
            Command::Close {
                id,
                immediate,
                reply,
            } => {
                let res = self.session.close(id, immediate).map_err(CmError::from);
                // Flush first so the client sees its final NACKs before its channel closes.
                self.flush(Instant::now());
                if matches!(res, Ok(PortState::Destroyed)) {
                    self.clients.remove(&id);
                    self.placement.remove_client(id);
                    self.bytes_fed.remove(&id);
                    self.publish_node_info();
                }
                let _ = reply.send(res);
            }
            Command::Send {
                id,
                payload,
                model,
                reply,
            } => {
                let _ = reply.send(self.session.send(id, payload, model).map_err(CmError::from));
            }
            Command::Reply {
                id,
                seq,
                code,
                reply,
            } => {
                let _ = reply.send(self.session.reply(id, seq, code).map_err(CmError::from));
            }
            Command::Consumed { id, seq } => self.session.consumed(id, seq),
            Command::Status { reply } => {
                let _ = reply.send(Ok(self.status()));
            }
            Command::SwitchPeer { reply } => {
                let res = if self.role != Role::Dialer {
                    Err(CmError::Config(
                        "only the dialing node (with [peer]) switches partners".into(),
                    ))
                } else {
                    self.switch_peer(Instant::now()).ok_or_else(|| {
                        CmError::Config("no backup partner configured ([peer] backups)".into())
                    })
                };
                let _ = reply.send(res);
            }
            Command::Freeze { duration, reply } => {
                let until = Instant::now() + duration;
                self.frozen_until = Some(until);
                self.frozen_tx.send_replace(Some(until));
                let _ = reply.send(Ok(()));
            }
            Command::KillLink { link, reply } => {
                let victim = link.or_else(|| {
                    self.links
                        .iter()
                        .filter(|(_, l)| matches!(l, AnyLink::Tcp(_)))
                        .map(|(id, _)| *id)
                        .min()
                });
                let found = victim.filter(|v| self.links.contains_key(v));
                if let Some(v) = found {
                    self.close_link(v, "killed on request (fault injection)".into());
                }
                let _ = reply.send(Ok(found));
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        let mut closed_any = false;
        while let Some(link) = self.session.poll_close_link() {
            if let Some(h) = self.links.remove(&link) {
                closed_any = true;
                self.note(format!(
                    "{} link {link} closed: silent for {} ms",
                    h.transport(),
                    self.cfg.session.link_timeout_ms
                ));
                self.retire_link(h, now);
            }
        }
        while self
            .fenced
            .first()
            .is_some_and(|(at, _)| now >= *at + FENCE_PARK)
        {
            let (_, l) = self.fenced.remove(0);
            l.abort();
        }
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
            let name = self
                .session
                .client_name(mv.client)
                .unwrap_or("?")
                .to_string();
            if self.session.place(mv.client, mv.to).is_ok() {
                self.note(format!(
                    "client {name}: {} -> {} ({:?})",
                    ic_name(mv.from),
                    ic_name(Some(mv.to)),
                    mv.reason
                ));
            }
        }
        while let Some(t) = self.session.poll_transmit(now) {
            if let Some(h) = self.links.get(&t.link) {
                // A failed send means the writer is gone; its Closed input is on the way.
                let _ = h.send(Outgoing {
                    frame: t.frame,
                    local_done: t.local_done,
                });
            }
        }
        while let Some((id, ev)) = self.session.poll_event() {
            match &ev {
                ClientEvent::Up | ClientEvent::Down { .. } => {
                    let name = self.session.client_name(id).unwrap_or("?").to_string();
                    self.note(format!("client {name}: {ev:?}"));
                }
                _ => {}
            }
            if let Some(tx) = self.clients.get(&id) {
                let _ = tx.send(ev);
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let mut links: Vec<LinkStatus> = self
            .links
            .iter()
            .map(|(id, l)| LinkStatus {
                id: *id,
                transport: l.transport(),
                interconnect: l.interconnect(),
                remote: l.remote(),
            })
            .collect();
        links.sort_by_key(|l| l.id);
        let clients = self
            .session
            .client_ids()
            .filter_map(|id| {
                Some(ClientStatus {
                    name: self.session.client_name(id)?.to_string(),
                    state: self.session.port_state(id)?,
                    unacked: self.session.unacked(id),
                    interconnect: self.session.placement(id),
                })
            })
            .collect();
        NodeStatus {
            node_id: self.cfg.node_id.clone(),
            session: self.session.state(),
            epoch: self.session.epoch(),
            peer: self.session.peer().map(|p| p.node_id.clone()),
            verbs_unavailable: self.rails.unavailable.clone(),
            fallback: self.fallback_reason(),
            interconnects: self.interconnects(),
            links,
            clients,
            stats: self.session.stats(),
            timeline: self.timeline.iter().cloned().collect(),
        }
    }
}

/// The node description offered in handshakes (the manager adds its RDMA capabilities).
pub(crate) fn local_node_info(cfg: &NodeConfig, instance: u64) -> NodeInfo {
    NodeInfo {
        node_id: cfg.node_id.clone(),
        instance,
        capabilities: vec![peercm_cm_proto::control::TransportCap::Tcp],
        clients: Vec::new(),
    }
}

/// How an interconnect is named in the timeline.
fn ic_name(ic: Option<InterconnectId>) -> String {
    match ic {
        None => "unplaced".into(),
        Some(TCP_INTERCONNECT) => "tcp".into(),
        Some(r) => format!("rail {r}"),
    }
}

impl Manager {
    /// Why clients are on TCP, when they are.
    fn fallback_reason(&self) -> Option<String> {
        if let Some(why) = &self.rails.unavailable {
            return Some(format!("verbs unavailable here: {why}"));
        }
        let peer_rails = self
            .session
            .peer()
            .map(|p| Rails::peer_rail_count(&p.capabilities))?;
        if peer_rails == 0 {
            return Some("the partner offers no RDMA".into());
        }
        self.placement
            .on_tcp()
            .then(|| "no RDMA rail is usable (ports down or links failed)".into())
    }

    fn interconnects(&self) -> Vec<InterconnectStatus> {
        let now = Instant::now();
        self.placement
            .loads(now)
            .into_iter()
            .map(|l| {
                let rail = self.rails.local.iter().find(|r| r.rail == l.id);
                InterconnectStatus {
                    id: l.id,
                    name: ic_name(Some(l.id)),
                    device: rail.map(|r| format!("{} port {}", r.device, r.port)),
                    port_active: rail.map(|r| r.active),
                    capacity_mbps: l.capacity_mbps,
                    usable: l.usable,
                    declared_mbytes_per_s: l.declared_mbytes_per_s,
                    measured_mbytes_per_s: l.measured_mbytes_per_s,
                    utilization: l.utilization,
                    clients: l
                        .clients
                        .iter()
                        .filter_map(|c| self.session.client_name(*c).map(str::to_string))
                        .collect(),
                }
            })
            .collect()
    }
}

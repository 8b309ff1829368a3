//! The manager task: one per node. It owns the IO-free [`Session`] and everything with a handle
//! on the outside world: live links, the dialer's reconnect schedule, and each client's event
//! channel. Every input (a client command, a link frame, a new link, a timer) is fed to the
//! session, then [`Manager::flush`] carries out what the session asks for.

use crate::config::NodeConfig;
use crate::error::CmError;
use crate::status::{ClientStatus, LinkStatus, NodeStatus, TimelineEntry};
use bytes::Bytes;
use peercm_proto::auth::Role;
use peercm_proto::control::{NodeInfo, TransportCap};
use peercm_proto::handshake::HandshakeConfig;
use peercm_proto::port::PortState;
use peercm_proto::session::{ClientEvent, ClientId, ClientSpec, LinkId, Session};
use peercm_proto::stream::SendModel;
use peercm_tcp::handshake::FramedLink;
use peercm_tcp::{spawn_link, LinkHandle, LinkInput, Outgoing, TcpHandshakeConfig};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

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
}

/// A link produced by the dialer or the listener, after a successful handshake.
pub(crate) enum NewLink {
    Dialed(Result<(FramedLink, NodeInfo), String>),
    Accepted(FramedLink, NodeInfo),
}

pub(crate) struct Manager {
    cfg: NodeConfig,
    handshake: TcpHandshakeConfig,
    session: Session,
    role: Role,
    started: Instant,
    links: HashMap<LinkId, LinkHandle>,
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
    verbs_unavailable: Option<String>,
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
    ) -> Self {
        let role = if cfg.peer.is_some() {
            Role::Dialer
        } else {
            Role::Acceptor
        };
        let session = Session::new(cfg.session_config(), role);
        let (link_tx, link_rx) = mpsc::channel(LINK_INPUT_CAPACITY);
        let (new_tx, new_rx) = mpsc::channel(64);
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
            verbs_unavailable: None,
        };
        let mut m = m;
        if let Err(why) = peercm_verbs_shim::real::RealProvider::load() {
            m.note(format!("verbs unavailable: {why}"));
            m.verbs_unavailable = Some(why.to_string());
        }
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
                    let mut hs = base.clone();
                    hs.handshake.node = info.borrow().clone();
                    let new_tx = new_tx.clone();
                    handshakes.spawn(
                        async move {
                            match peercm_tcp::accept(stream, &hs).await {
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

    fn maybe_dial(&mut self, now: Instant) {
        let Some(peer) = self.cfg.peer.clone() else {
            return;
        };
        while (self.links.len() as u32) + self.dialing < self.want_links()
            && now >= self.next_dial_at
        {
            self.dialing += 1;
            let mut hs = self.handshake.clone();
            hs.handshake.node = self.node_info.borrow().clone();
            let new_tx = self.new_tx.clone();
            let addr = peer.address;
            tokio::spawn(
                async move {
                    let res = match tokio::time::timeout(hs.timeout, TcpStream::connect(addr)).await
                    {
                        Ok(Ok(stream)) => peercm_tcp::dial(stream, &hs)
                            .await
                            .map_err(|e| e.to_string()),
                        Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
                        Err(_) => Err(format!("connect to {addr}: timed out")),
                    };
                    let _ = new_tx.send(NewLink::Dialed(res)).await;
                }
                .in_current_span(),
            );
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let dial = ((self.links.len() as u32) + self.dialing < self.want_links())
            .then_some(self.next_dial_at);
        match (self.session.poll_timeout(), dial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs until every handle is dropped.
    pub(crate) async fn run(mut self) {
        loop {
            let now = Instant::now();
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
                _ = tokio::time::sleep_until(deadline) => {
                    self.session.handle_timeout(Instant::now());
                }
            }
        }
    }

    fn on_new_link(&mut self, new: NewLink) {
        let (framed, peer, dialed) = match new {
            NewLink::Dialed(Ok((f, p))) => {
                self.dialing = self.dialing.saturating_sub(1);
                self.backoff = Duration::from_millis(self.cfg.session.reconnect_backoff_min_ms);
                (f, p, true)
            }
            NewLink::Dialed(Err(e)) => {
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
        self.links.insert(id, handle);
        self.session.handle_link_up(id, peer, Instant::now());
    }

    fn on_link_input(&mut self, input: LinkInput) {
        let now = Instant::now();
        match input {
            LinkInput::Frame { link, frame } => {
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
                if self.links.remove(&link).is_some() {
                    self.note(format!("link {link} lost: {reason}"));
                    self.session.handle_link_down(link, now);
                }
            }
        }
    }

    fn close_link(&mut self, link: LinkId, reason: String) {
        if let Some(h) = self.links.remove(&link) {
            h.abort();
            self.note(format!("link {link} closed: {reason}"));
            self.session.handle_link_down(link, Instant::now());
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
                if res.is_ok() {
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
            Command::KillLink { link, reply } => {
                let victim = link.or_else(|| self.links.keys().min().copied());
                let found = victim.filter(|v| self.links.contains_key(v));
                if let Some(v) = found {
                    self.close_link(v, "killed on request (fault injection)".into());
                }
                let _ = reply.send(Ok(found));
            }
        }
    }

    fn flush(&mut self, now: Instant) {
        while let Some(link) = self.session.poll_close_link() {
            if let Some(h) = self.links.remove(&link) {
                h.abort();
                self.note(format!(
                    "link {link} closed: silent for {} ms",
                    self.cfg.session.link_timeout_ms
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
            .values()
            .map(|l| LinkStatus {
                id: l.id,
                transport: "tcp",
                remote: l.remote.clone(),
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
                })
            })
            .collect();
        NodeStatus {
            node_id: self.cfg.node_id.clone(),
            session: self.session.state(),
            epoch: self.session.epoch(),
            peer: self.session.peer().map(|p| p.node_id.clone()),
            verbs_unavailable: self.verbs_unavailable.clone(),
            links,
            clients,
            stats: self.session.stats(),
            timeline: self.timeline.iter().cloned().collect(),
        }
    }
}

/// The node description offered in handshakes.
pub(crate) fn local_node_info(cfg: &NodeConfig, instance: u64) -> NodeInfo {
    NodeInfo {
        node_id: cfg.node_id.clone(),
        instance,
        capabilities: vec![TransportCap::Tcp],
        clients: Vec::new(),
    }
}

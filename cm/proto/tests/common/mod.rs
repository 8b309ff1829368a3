//! A deterministic in-memory pair of sessions (in the manner of quinn-proto's test `Pair`):
//! links are FIFO queues, time is virtual, and the order in which links deliver is chosen by a
//! seeded RNG so tests explore interleavings reproducibly.

#![allow(dead_code)]

pub mod regions;

use bytes::Bytes;
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::control::{NodeInfo, TransportCap};
use peercm_cm_proto::session::{
    Apply, ClientEvent, ClientId, LinkId, LocalDone, OneSidedTarget, Session, SessionConfig,
};
use peercm_cm_proto::Frame;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Small xorshift RNG so the harness needs no extra crate and is fully seed-determined.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[derive(Default)]
struct LinkQ {
    a_to_b: VecDeque<Frame>,
    b_to_a: VecDeque<Frame>,
    /// The RDMA WRITEs ahead of the markers queued in each direction, in order: each is
    /// placed when its marker is taken off the link (a link that dies loses both).
    /// Each with the sender's completion tags, reported when the WRITE is placed.
    a_to_b_writes: VecDeque<(OneSidedTarget, Bytes, Vec<LocalDone>)>,
    b_to_a_writes: VecDeque<(OneSidedTarget, Bytes, Vec<LocalDone>)>,
}

pub fn node(name: &str, instance: u64) -> NodeInfo {
    NodeInfo {
        node_id: name.into(),
        instance,
        capabilities: vec![TransportCap::Tcp],
        max_payload_bytes: 1 << 20,
    }
}

pub struct Pair {
    pub a: Session,
    pub b: Session,
    pub a_info: NodeInfo,
    pub b_info: NodeInfo,
    pub now: Instant,
    links: BTreeMap<LinkId, LinkQ>,
    next_link: LinkId,
    pub rng: Rng,
    pub a_events: Vec<(ClientId, ClientEvent)>,
    pub b_events: Vec<(ClientId, ClientEvent)>,
    /// Auto-consume delivered data (the client reads promptly).
    pub auto_consume: bool,
    /// Print every frame as it is delivered (for debugging one seed).
    pub trace: bool,
    /// b's link readers skip frames with a larger payload (`Session::handle_oversize`).
    pub b_reader_max: u32,
    /// Frames transmitted, by sender (`true`: a) and type.
    pub sent: HashMap<(bool, peercm_cm_proto::MsgType), usize>,
    /// Writes a and b were asked to place (`Session::poll_apply`), in order; collected before
    /// the events of the same step.
    pub a_applies: Vec<Apply>,
    pub b_applies: Vec<Apply>,
    /// One-sided writes placed by RDMA WRITE (sender `true`: a), in the order they were
    /// placed: when the link delivered the marker behind them (queue pairs are FIFO; writes on
    /// different links are not ordered against each other).
    pub one_sided: Vec<(bool, OneSidedTarget, Bytes)>,
}

impl Pair {
    pub fn new(seed: u64) -> Self {
        Pair::with_config(seed, SessionConfig::default())
    }

    pub fn with_config(seed: u64, cfg: SessionConfig) -> Self {
        Pair {
            a: Session::new(cfg.clone(), Role::Dialer),
            b: Session::new(cfg, Role::Acceptor),
            a_info: node("a", 1),
            b_info: node("b", 2),
            now: Instant::now(),
            links: BTreeMap::new(),
            next_link: LinkId::new(1),
            rng: Rng(seed),
            a_events: Vec::new(),
            b_events: Vec::new(),
            auto_consume: true,
            trace: false,
            b_reader_max: u32::MAX,
            sent: HashMap::new(),
            a_applies: Vec::new(),
            b_applies: Vec::new(),
            one_sided: Vec::new(),
        }
    }

    pub fn add_link(&mut self) -> LinkId {
        let id = self.next_link;
        self.next_link = LinkId::new(self.next_link.get() + 1);
        self.links.insert(id, LinkQ::default());
        self.a.handle_link_up(id, self.b_info.clone(), self.now);
        self.b.handle_link_up(id, self.a_info.clone(), self.now);
        id
    }

    /// Adds a link on interconnect `ic` (an RDMA rail in the runtime).
    pub fn add_link_on(&mut self, ic: peercm_cm_proto::session::InterconnectId) -> LinkId {
        let id = self.next_link;
        self.next_link = LinkId::new(self.next_link.get() + 1);
        self.links.insert(id, LinkQ::default());
        self.a
            .handle_link_up_on(id, ic, self.b_info.clone(), self.now);
        self.b
            .handle_link_up_on(id, ic, self.a_info.clone(), self.now);
        id
    }

    pub fn kill_link(&mut self, id: LinkId) {
        if self.links.remove(&id).is_some() {
            self.a.handle_link_down(id, self.now);
            self.b.handle_link_down(id, self.now);
        }
    }

    pub fn link_ids(&self) -> Vec<LinkId> {
        self.links.keys().copied().collect()
    }

    /// Replaces node b by a fresh process (new instance, nothing registered).
    pub fn restart_b(&mut self, cfg: SessionConfig) {
        let ids = self.link_ids();
        for id in ids {
            self.links.remove(&id);
            self.a.handle_link_down(id, self.now);
        }
        self.b = Session::new(cfg, Role::Acceptor);
        self.b_info.instance += 100;
        self.b_events.clear();
    }

    /// Replaces node b by another node (a backup partner named `node_id`): every link to the
    /// old b is gone and the new one has nothing registered.
    pub fn replace_b_with(&mut self, node_id: &str, cfg: SessionConfig) {
        self.restart_b(cfg);
        self.b_info.node_id = node_id.to_string();
    }

    /// Replaces node b by a fresh process of node `node_id` (new instance, nothing registered)
    /// while the links in `silent` stay up on a's side: an RDMA link to a crashed process goes
    /// silent instead of closing. Every other link is closed at once (TCP sees the crash). What
    /// a queued on a silent link is lost and whatever a sends on it from now on is swallowed
    /// (the new process does not know the link); what the old b sent before it crashed still
    /// arrives. a closes silent links when it judges them dead (link timeout) or when it learns
    /// that the partner restarted.
    pub fn crash_b_leaving_silent(&mut self, silent: &[LinkId], node_id: &str, cfg: SessionConfig) {
        let ids = self.link_ids();
        for id in ids {
            if silent.contains(&id) {
                if let Some(q) = self.links.get_mut(&id) {
                    q.a_to_b.clear();
                    q.a_to_b_writes.clear();
                }
            } else {
                self.links.remove(&id);
                self.a.handle_link_down(id, self.now);
            }
        }
        self.b = Session::new(cfg, Role::Acceptor);
        self.b_info.instance += 100;
        self.b_info.node_id = node_id.to_string();
        self.b_events.clear();
    }

    /// One end sees link `id` fail before the other (a QP error or a reset noticed on one side
    /// only): that end (`a` when `on_a`, else `b`) drops the link at once and what it had queued
    /// on it is lost; the other end keeps sending into it, unanswered (the frames are dropped on
    /// arrival), until it judges the link dead (link timeout) and closes it.
    pub fn fail_link_on_one_side(&mut self, id: LinkId, on_a: bool) {
        if let Some(q) = self.links.get_mut(&id) {
            if on_a {
                q.a_to_b.clear();
                q.a_to_b_writes.clear();
                self.a.handle_link_down(id, self.now);
            } else {
                q.b_to_a.clear();
                q.b_to_a_writes.clear();
                self.b.handle_link_down(id, self.now);
            }
        }
    }

    /// Replaces node a (the dialer) by a fresh process (new instance, nothing registered).
    pub fn restart_a(&mut self, cfg: SessionConfig) {
        let ids = self.link_ids();
        for id in ids {
            self.links.remove(&id);
            self.b.handle_link_down(id, self.now);
        }
        self.a = Session::new(cfg, Role::Dialer);
        self.a_info.instance += 100;
        self.a_events.clear();
    }

    fn flush_outputs(&mut self) -> bool {
        let mut any = false;
        while let Some(t) = self.a.poll_transmit(self.now) {
            any = true;
            *self
                .sent
                .entry((true, t.frame.header.msg_type))
                .or_default() += 1;
            let mut t = t;
            let mut done: Vec<_> = t.local_done.take().into_iter().collect();
            if let Some((data, target)) = t.take_one_sided() {
                // The queue pair completes a one-sided write once the partner's HCA has it:
                // when its marker is delivered (`place_one_sided`), not now.
                let tags = std::mem::take(&mut done);
                if let Some(q) = self.links.get_mut(&t.link) {
                    q.a_to_b_writes.push_back((target, data, tags));
                }
            }
            let link = t.link;
            let frame = t.frame;
            let bytes = frame.encoded_len() as u64;
            if let Some(q) = self.links.get_mut(&link) {
                q.a_to_b.push_back(frame);
            }
            self.a.handle_written(link, bytes, &done);
        }
        while let Some(t) = self.b.poll_transmit(self.now) {
            any = true;
            *self
                .sent
                .entry((false, t.frame.header.msg_type))
                .or_default() += 1;
            let mut t = t;
            let mut done: Vec<_> = t.local_done.take().into_iter().collect();
            if let Some((data, target)) = t.take_one_sided() {
                // The queue pair completes a one-sided write once the partner's HCA has it:
                // when its marker is delivered (`place_one_sided`), not now.
                let tags = std::mem::take(&mut done);
                if let Some(q) = self.links.get_mut(&t.link) {
                    q.b_to_a_writes.push_back((target, data, tags));
                }
            }
            let link = t.link;
            let frame = t.frame;
            let bytes = frame.encoded_len() as u64;
            if let Some(q) = self.links.get_mut(&link) {
                q.b_to_a.push_back(frame);
            }
            self.b.handle_written(link, bytes, &done);
        }
        while let Some(l) = self.a.poll_close_link() {
            self.kill_link(l);
        }
        while let Some(l) = self.b.poll_close_link() {
            self.kill_link(l);
        }
        any
    }

    fn drain_events(&mut self) {
        while let Some(ap) = self.a.poll_apply() {
            self.a_applies.push(ap);
        }
        while let Some(ap) = self.b.poll_apply() {
            self.b_applies.push(ap);
        }
        while let Some((id, ev)) = self.a.poll_event() {
            if let (true, ClientEvent::Data { seq, .. }) = (self.auto_consume, &ev) {
                self.a.consumed(id, *seq);
            }
            self.a_events.push((id, ev));
        }
        while let Some((id, ev)) = self.b.poll_event() {
            if let (true, ClientEvent::Data { seq, .. }) = (self.auto_consume, &ev) {
                self.b.consumed(id, *seq);
            }
            self.b_events.push((id, ev));
        }
    }

    /// Delivers one frame from a randomly chosen non-empty link direction. Returns false when
    /// every queue is empty.
    pub fn deliver_one(&mut self) -> bool {
        self.deliver_one_except(None)
    }

    /// Like [`Pair::deliver_one`], but never from link `held` (a slow link whose frames wait).
    pub fn deliver_one_except(&mut self, held: Option<LinkId>) -> bool {
        let mut candidates = Vec::new();
        for (id, q) in self.links.iter().filter(|(id, _)| Some(**id) != held) {
            if !q.a_to_b.is_empty() {
                candidates.push((*id, true));
            }
            if !q.b_to_a.is_empty() {
                candidates.push((*id, false));
            }
        }
        if candidates.is_empty() {
            return false;
        }
        let (id, to_b) = candidates[self.rng.below(candidates.len() as u64) as usize];
        let q = self.links.get_mut(&id).expect("candidate link exists");
        let frame = if to_b {
            q.a_to_b.pop_front()
        } else {
            q.b_to_a.pop_front()
        };
        let Some(frame) = frame else { return true };
        self.place_one_sided(id, to_b, &frame);
        if self.trace {
            let h = &frame.header;
            println!(
                "  link {id} {} {:?} {:?} client {} seq {} ack {} ({} bytes)",
                if to_b { "a->b" } else { "b->a" },
                h.msg_type,
                h.flags,
                h.client,
                h.seq,
                h.ack,
                frame.payload.len()
            );
        }
        let res = if to_b && frame.payload.len() > self.b_reader_max as usize {
            // What b's link reader does with a frame above its limit: skip it, hand the header.
            self.b.handle_oversize(id, frame.header, self.now)
        } else if to_b {
            self.b.handle_frame(id, frame, self.now)
        } else {
            self.a.handle_frame(id, frame, self.now)
        };
        if let Err(e) = res {
            panic!("protocol violation on link {id}: {e}");
        }
        true
    }

    /// A marker (a WRITE frame of just the write header) leaving `link`: the RDMA WRITE
    /// ahead of it is placed now.
    fn place_one_sided(&mut self, link: LinkId, to_b: bool, frame: &Frame) {
        let marker = frame.header.msg_type == peercm_cm_proto::MsgType::Write
            && frame.payload.len() == peercm_cm_proto::region::wire::WRITE_HEADER_BYTES;
        if !marker {
            return;
        }
        let Some(q) = self.links.get_mut(&link) else {
            return;
        };
        let w = if to_b {
            q.a_to_b_writes.pop_front()
        } else {
            q.b_to_a_writes.pop_front()
        };
        let (target, data, tags) = w.expect("every marker follows its RDMA WRITE");
        self.one_sided.push((to_b, target, data));
        // The sender's queue pair completes the WRITE and its marker.
        if to_b {
            self.a.handle_written(link, 0, &tags);
        } else {
            self.b.handle_written(link, 0, &tags);
        }
    }

    /// Hands every queued output of both sessions to the links (and closes the links they
    /// judged dead) and collects their events, without delivering anything. Returns whether any
    /// frame was transmitted.
    pub fn flush(&mut self) -> bool {
        let any = self.flush_outputs();
        self.drain_events();
        any
    }

    /// Frames queued on links, in both directions.
    pub fn in_flight(&self) -> usize {
        self.links
            .values()
            .map(|q| q.a_to_b.len() + q.b_to_a.len())
            .sum()
    }

    /// Delivers the oldest frame queued on `link` towards b (`to_b`) or towards a, after
    /// flushing outputs. Returns its type, or None when that queue is empty.
    pub fn deliver_on(&mut self, link: LinkId, to_b: bool) -> Option<peercm_cm_proto::MsgType> {
        self.flush();
        let q = self.links.get_mut(&link)?;
        let frame = if to_b {
            q.a_to_b.pop_front()
        } else {
            q.b_to_a.pop_front()
        }?;
        self.place_one_sided(link, to_b, &frame);
        let t = frame.header.msg_type;
        let res = if to_b && frame.payload.len() > self.b_reader_max as usize {
            self.b.handle_oversize(link, frame.header, self.now)
        } else if to_b {
            self.b.handle_frame(link, frame, self.now)
        } else {
            self.a.handle_frame(link, frame, self.now)
        };
        if let Err(e) = res {
            panic!("protocol violation on link {link}: {e}");
        }
        self.flush();
        Some(t)
    }

    /// Delivers frames on one link and direction until one of type `t` was delivered.
    /// Returns false if the queue ran dry first.
    pub fn deliver_until(&mut self, link: LinkId, to_b: bool, t: peercm_cm_proto::MsgType) -> bool {
        while let Some(got) = self.deliver_on(link, to_b) {
            if got == t {
                return true;
            }
        }
        false
    }

    /// Delivers everything queued on one link and direction (including what that provokes on
    /// the same queue).
    pub fn deliver_all_on(&mut self, link: LinkId, to_b: bool) {
        while self.deliver_on(link, to_b).is_some() {}
    }

    /// Type and sequence number of the frames queued on one link and direction, oldest first.
    pub fn queued(&self, link: LinkId, to_b: bool) -> Vec<(peercm_cm_proto::MsgType, u64)> {
        self.links
            .get(&link)
            .map(|q| if to_b { &q.a_to_b } else { &q.b_to_a })
            .map(|q| {
                q.iter()
                    .map(|f| (f.header.msg_type, f.header.seq))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Headers of the frames queued on one link and direction, oldest first.
    pub fn queued_headers(&self, link: LinkId, to_b: bool) -> Vec<peercm_cm_proto::Header> {
        self.links
            .get(&link)
            .map(|q| if to_b { &q.a_to_b } else { &q.b_to_a })
            .map(|q| q.iter().map(|f| f.header).collect())
            .unwrap_or_default()
    }

    /// Like [`Pair::drive`], but leaves whatever is queued on `held` where it is; links are
    /// served in a fixed order, so the run is deterministic.
    pub fn drive_except(&mut self, held: LinkId) {
        loop {
            let ids: Vec<LinkId> = self.link_ids().into_iter().filter(|l| *l != held).collect();
            let mut moved = false;
            for l in ids {
                for to_b in [true, false] {
                    moved |= self.deliver_on(l, to_b).is_some();
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// One step: flush both sides' outputs, collect events, deliver one frame. Returns whether
    /// anything moved.
    pub fn step(&mut self) -> bool {
        let out = self.flush_outputs();
        self.drain_events();
        let moved = self.deliver_one();
        out || moved
    }

    /// Runs until nothing moves (bounded). A consumed mark still waiting for its report
    /// interval counts as movement: virtual time goes on to when it may go (as the runtime's
    /// timer would), so async sends taken by the partner client complete.
    pub fn drive(&mut self) {
        for _ in 0..10_000_000 {
            let out = self.flush_outputs();
            self.drain_events();
            let moved = self.deliver_one();
            if !out && !moved {
                self.drain_events();
                let mark = [self.a.next_mark_report(), self.b.next_mark_report()]
                    .into_iter()
                    .flatten()
                    .min();
                match mark {
                    Some(at) if at > self.now => self.advance(at - self.now),
                    _ => return,
                }
            }
        }
        panic!("pair did not quiesce");
    }

    /// Frames of type `t` transmitted by a (`from_a`) or b so far.
    pub fn sent_count(&self, from_a: bool, t: peercm_cm_proto::MsgType) -> usize {
        self.sent.get(&(from_a, t)).copied().unwrap_or(0)
    }

    /// Advances virtual time (heartbeats and link timeouts fire).
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
    }

    /// Answers every pending sync message on b with `code_of(payload)`.
    pub fn b_reply_all(&mut self, code_of: impl Fn(&Bytes) -> i32) {
        let pending: Vec<(ClientId, u64, i32)> = self
            .b_events
            .iter()
            .filter_map(|(id, ev)| match ev {
                ClientEvent::Data {
                    seq,
                    payload,
                    reply_needed: true,
                } => Some((*id, *seq, code_of(payload))),
                _ => None,
            })
            .collect();
        for (id, seq, code) in pending {
            // Already-answered ones return NotAwaiting; that is fine here.
            let _ = self.b.reply(id, seq, code);
        }
    }
}

/// Payloads of data events for `client`, in delivery order.
pub fn delivered(events: &[(ClientId, ClientEvent)], client: ClientId) -> Vec<Bytes> {
    events
        .iter()
        .filter(|(id, _)| *id == client)
        .filter_map(|(_, e)| match e {
            ClientEvent::Data { payload, .. } => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

pub fn count(
    events: &[(ClientId, ClientEvent)],
    client: ClientId,
    pred: impl Fn(&ClientEvent) -> bool,
) -> usize {
    events
        .iter()
        .filter(|(id, e)| *id == client && pred(e))
        .count()
}

pub fn msg(i: u64) -> Bytes {
    Bytes::from(format!("msg-{i:08}"))
}

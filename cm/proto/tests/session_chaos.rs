//! Seeded randomized safety test of two sessions over the in-memory [`Pair`].
//!
//! Every seed runs a random program: sends on 2-3 clients in both directions with random send
//! models, random link kills (usually keeping one link, sometimes killing all, often the oldest
//! link, which is usually the control link), random link additions, random delivery
//! interleavings (including a "slow" link whose frames wait while the others overtake them),
//! random replies to synchronous messages in any order, and random time advances (each below
//! the link timeout, though silence adds up). Windows (2..=8), the share of synchronous sends
//! and the amount of link churn vary with the seed. Every payload names its sender side, client
//! and a per-stream message number.
//!
//! Checked after every step:
//! - per client stream, the messages delivered are strictly increasing (in order, no duplicate)
//!   and carry exactly the bytes that were sent;
//! - a completion matches the send model (async: `Acked` without code, sync: `Acked` with the
//!   code the partner client returned, local: `Transmitted`), happens at most once, and an
//!   `Acked` message was delivered exactly once;
//! - a NACK is only ever `ConnectionLost` (nothing else can happen in these programs).
//!
//! Checked at the end, after healing (a link, drive, answer every synchronous message, until
//! quiet): the session and every port are up again, nothing is outstanding, and every message is
//! either acknowledged or NACKed; a message that was not delivered was NACKed (nothing is lost
//! silently), and a gap in a delivered stream only ever covers NACKed messages.
//!
//! Environment: `PEERCM_CHAOS_SEEDS` (number of seeds, default 500), `PEERCM_CHAOS_FIRST_SEED`
//! (default 1), `PEERCM_CHAOS_TRACE=1` (print every action, frame and event: for one seed),
//! `PEERCM_CHAOS_KEEP_GOING=1` (run all seeds and list every failure).
//!
//! The deterministic tests at the end pin down the bugs this test and the session fuzz target
//! found, one scenario each.

mod common;

use bytes::Bytes;
use common::*;
use peercm_cm_proto::control::NackReason;
use peercm_cm_proto::frame::{Flags, Frame, MsgType};
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, LatencyClass, LinkId, SessionConfig, SessionState,
};
use peercm_cm_proto::stream::SendModel;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

const SIDES: [Side; 2] = [Side::A, Side::B];
const MODELS: [SendModel; 3] = [SendModel::Sync, SendModel::Async, SendModel::Local];
const STEPS: usize = 300;
const MAX_LINKS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    A,
    B,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    fn letter(self) -> char {
        match self {
            Side::A => 'A',
            Side::B => 'B',
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Send,
    Burst,
    Deliver,
    Answer,
    Kill,
    Add,
    Advance,
    Slow,
}

#[derive(Debug)]
struct Msg {
    model: SendModel,
    seq: u64,
    payload: Bytes,
    delivered: u32,
    acked: Option<Option<i32>>,
    transmitted: bool,
    nacked: Option<NackReason>,
}

/// One direction of one client: what the sender sent and what the receiver got.
#[derive(Debug, Default)]
struct Stream {
    msgs: Vec<Msg>,
    /// Sender's current sequence number -> message number, for sends not yet completed.
    outstanding: BTreeMap<u64, usize>,
    /// Message numbers in delivery order.
    delivered: Vec<usize>,
}

/// The code a partner client returns for message `n` of client `client`.
fn code_for(client: usize, n: usize) -> i32 {
    (client as i32) * 1_000_000 + n as i32
}

fn payload(side: Side, client: usize, n: usize) -> Bytes {
    Bytes::from(format!("{}{client}-{n:08}", side.letter()))
}

fn parse(p: &[u8]) -> Option<(Side, usize, usize)> {
    let s = std::str::from_utf8(p).ok()?;
    let side = match s.as_bytes().first()? {
        b'A' => Side::A,
        b'B' => Side::B,
        _ => return None,
    };
    let (c, n) = s[1..].split_once('-')?;
    Some((side, c.parse().ok()?, n.parse().ok()?))
}

struct Chaos {
    seed: u64,
    p: Pair,
    /// Client ids per side, by client index.
    ids: BTreeMap<Side, Vec<ClientId>>,
    /// Streams by (sending side, client index).
    streams: BTreeMap<(Side, usize), Stream>,
    /// Sync messages delivered to (side, client) and not yet answered: (seq, message number).
    to_answer: BTreeMap<(Side, usize), Vec<(u64, usize)>>,
    /// How far the events of each side have been checked.
    cursor: BTreeMap<Side, usize>,
    /// Acked messages whose delivery is checked once both sides' events are in.
    acked_unchecked: Vec<(Side, usize, usize)>,
    /// Print every event and action (`PEERCM_CHAOS_TRACE=1`, for a single failing seed).
    trace: bool,
    /// A link that currently delivers nothing.
    slow: Option<LinkId>,
}

impl Chaos {
    fn new(seed: u64) -> Self {
        let cfg = SessionConfig {
            window: 2 + (seed % 7) as u32,
            heartbeat_interval: Duration::from_millis(100),
            link_timeout: Duration::from_millis(1000),
            flow_high_water: 12,
            flow_low_water: 4,
            ..SessionConfig::default()
        };
        let mut p = Pair::with_config(seed, cfg);
        let n_clients = 2 + p.rng.below(2) as usize;
        let mut ids = BTreeMap::new();
        let mut streams = BTreeMap::new();
        for side in SIDES {
            ids.insert(side, Vec::new());
            for c in 0..n_clients {
                streams.insert((side, c), Stream::default());
            }
        }
        for c in 0..n_clients {
            let spec = ClientSpec {
                bandwidth_mbps: 10,
                latency: LatencyClass::Normal,
                model: SendModel::Async,
            };
            let name = format!("client{c}");
            let ia = p.a.register(&name, spec).expect("register on a");
            let ib = p.b.register(&name, spec).expect("register on b");
            // Source side on a, on b, or on both.
            match p.rng.below(3) {
                0 => {
                    p.a.connect(ia).expect("connect a");
                }
                1 => {
                    p.b.connect(ib).expect("connect b");
                }
                _ => {
                    p.a.connect(ia).expect("connect a");
                    p.b.connect(ib).expect("connect b");
                }
            }
            ids.get_mut(&Side::A).expect("side").push(ia);
            ids.get_mut(&Side::B).expect("side").push(ib);
        }
        let mut cursor = BTreeMap::new();
        cursor.insert(Side::A, 0);
        cursor.insert(Side::B, 0);
        Chaos {
            seed,
            p,
            ids,
            streams,
            to_answer: BTreeMap::new(),
            cursor,
            acked_unchecked: Vec::new(),
            trace: std::env::var_os("PEERCM_CHAOS_TRACE").is_some(),
            slow: None,
        }
        .traced()
    }

    fn traced(mut self) -> Self {
        self.p.trace = self.trace;
        self
    }

    fn client_index(&self, side: Side, id: ClientId) -> usize {
        self.ids[&side]
            .iter()
            .position(|&i| i == id)
            .unwrap_or_else(|| panic!("seed {}: event for unknown client {id}", self.seed))
    }

    fn stream(&mut self, key: (Side, usize)) -> &mut Stream {
        let seed = self.seed;
        self.streams
            .get_mut(&key)
            .unwrap_or_else(|| panic!("seed {seed}: no stream {key:?}"))
    }

    /// Moves outputs to the links and checks every new event.
    fn settle(&mut self) {
        self.p.flush();
        self.check_events();
    }

    fn check_events(&mut self) {
        let seed = self.seed;
        for side in SIDES {
            let start = self.cursor[&side];
            let events: Vec<(ClientId, ClientEvent)> = match side {
                Side::A => self.p.a_events[start..].to_vec(),
                Side::B => self.p.b_events[start..].to_vec(),
            };
            self.cursor.insert(side, start + events.len());
            for (id, ev) in events {
                let c = self.client_index(side, id);
                if self.trace {
                    println!("  {side:?}/client{c}: {ev:?}");
                }
                self.check_event(side, c, ev, seed);
            }
        }
        // An ACK can be seen on one side before the delivery on the other side is looked at
        // (both sides' events are collected together): check deliveries of acked messages now.
        for (side, c, n) in std::mem::take(&mut self.acked_unchecked) {
            let m = &self.streams[&(side, c)].msgs[n];
            assert_eq!(
                m.delivered, 1,
                "seed {seed}: {side:?}/client{c} #{n} Acked but delivered {} times",
                m.delivered
            );
        }
    }

    fn check_event(&mut self, side: Side, c: usize, ev: ClientEvent, seed: u64) {
        match ev {
            ClientEvent::Data {
                seq,
                payload,
                reply_needed,
            } => {
                let (from, pc, n) = parse(&payload)
                    .unwrap_or_else(|| panic!("seed {seed}: foreign payload {payload:?}"));
                assert_eq!(
                    (from, pc),
                    (side.other(), c),
                    "seed {seed}: {side:?}/client{c} got a message meant for another stream"
                );
                let s = self.stream((from, c));
                let m = s
                    .msgs
                    .get_mut(n)
                    .unwrap_or_else(|| panic!("seed {seed}: delivered message {n} was never sent"));
                assert_eq!(m.payload, payload, "seed {seed}: payload altered");
                assert_eq!(
                    reply_needed,
                    m.model == SendModel::Sync,
                    "seed {seed}: reply_needed does not match the send model of {from:?}/client{c} #{n}"
                );
                m.delivered += 1;
                if let Some(&last) = s.delivered.last() {
                    assert!(
                        n > last,
                        "seed {seed}: {from:?}/client{c} delivered #{n} after #{last} \
                         (duplicate or out of order); delivered so far {:?}",
                        s.delivered
                    );
                }
                s.delivered.push(n);
                if reply_needed {
                    self.to_answer.entry((side, c)).or_default().push((seq, n));
                }
            }
            ClientEvent::Acked { seq, code } => {
                let s = self.stream((side, c));
                let n = s.outstanding.remove(&seq).unwrap_or_else(|| {
                    panic!(
                        "seed {seed}: {side:?}/client{c} Acked seq {seq} that is not outstanding"
                    )
                });
                let m = &mut s.msgs[n];
                assert!(
                    m.acked.is_none() && m.nacked.is_none(),
                    "seed {seed}: {side:?}/client{c} #{n} completed twice ({m:?}, now Acked)"
                );
                m.acked = Some(code);
                match m.model {
                    SendModel::Async => assert_eq!(
                        code, None,
                        "seed {seed}: async #{n} of {side:?}/client{c} acked with a code"
                    ),
                    SendModel::Sync => assert_eq!(
                        code,
                        Some(code_for(c, n)),
                        "seed {seed}: sync #{n} of {side:?}/client{c} acked with the wrong code"
                    ),
                    SendModel::Local => {
                        panic!("seed {seed}: local #{n} of {side:?}/client{c} got Acked")
                    }
                }
                self.acked_unchecked.push((side, c, n));
            }
            ClientEvent::Transmitted { seq } => {
                let s = self.stream((side, c));
                let n = *s.outstanding.get(&seq).unwrap_or_else(|| {
                    panic!("seed {seed}: {side:?}/client{c} Transmitted seq {seq} not outstanding")
                });
                let m = &mut s.msgs[n];
                assert_eq!(
                    m.model,
                    SendModel::Local,
                    "seed {seed}: non-local #{n} of {side:?}/client{c} reported Transmitted"
                );
                assert!(
                    !m.transmitted && m.nacked.is_none(),
                    "seed {seed}: {side:?}/client{c} #{n} Transmitted twice or after a NACK"
                );
                m.transmitted = true;
            }
            ClientEvent::Nacked { seq, reason } => {
                let s = self.stream((side, c));
                let n = s.outstanding.remove(&seq).unwrap_or_else(|| {
                    panic!(
                        "seed {seed}: {side:?}/client{c} Nacked seq {seq} that is not outstanding"
                    )
                });
                let m = &mut s.msgs[n];
                assert!(
                    m.acked.is_none() && m.nacked.is_none(),
                    "seed {seed}: {side:?}/client{c} #{n} completed twice ({m:?}, now Nacked)"
                );
                assert_eq!(
                    reason,
                    NackReason::ConnectionLost,
                    "seed {seed}: {side:?}/client{c} #{n} Nacked for {reason:?}"
                );
                m.nacked = Some(reason);
            }
            ClientEvent::Down { .. } => {
                // Every send still outstanding was NACKed just before (same queue, in order),
                // except local ones completed silently by a cumulative ack after Transmitted.
                // The stream starts over at sequence 1: forget the old numbers.
                let s = self.stream((side, c));
                for (&seq, &n) in &s.outstanding {
                    let m = &s.msgs[n];
                    assert!(
                        m.model == SendModel::Local && m.transmitted,
                        "seed {seed}: {side:?}/client{c} went down with #{n} (seq {seq}, {m:?}) \
                         neither completed nor NACKed"
                    );
                }
                s.outstanding.clear();
                // Unanswered sync messages of the old session cannot be answered any more.
                self.to_answer.remove(&(side, c));
            }
            ClientEvent::Up | ClientEvent::FlowControl { .. } => {}
            ev @ (ClientEvent::Migrated { .. } | ClientEvent::PeerSwitched { .. }) => {
                panic!("seed {seed}: {ev:?} without placement or autoswitch configured")
            }
        }
    }

    fn session_up(&self, side: Side) -> bool {
        match side {
            Side::A => self.p.a.state() == SessionState::Up,
            Side::B => self.p.b.state() == SessionState::Up,
        }
    }

    fn send(&mut self, side: Side, c: usize, model: SendModel) {
        let id = self.ids[&side][c];
        let n = self.streams[&(side, c)].msgs.len();
        let data = payload(side, c, n);
        let res = match side {
            Side::A => self.p.a.send(id, data.clone(), model),
            Side::B => self.p.b.send(id, data.clone(), model),
        };
        if self.trace {
            println!("  {side:?}/client{c} send #{n} {model:?}: {res:?}");
        }
        if let Ok(seq) = res {
            let seed = self.seed;
            let s = self.stream((side, c));
            let clash = s.outstanding.insert(seq, n);
            assert!(
                clash.is_none(),
                "seed {seed}: {side:?}/client{c} reused seq {seq} of an outstanding send"
            );
            s.msgs.push(Msg {
                model,
                seq,
                payload: data,
                delivered: 0,
                acked: None,
                transmitted: false,
                nacked: None,
            });
        }
    }

    fn answer(&mut self, side: Side, c: usize, which: usize) {
        let Some(list) = self.to_answer.get_mut(&(side, c)) else {
            return;
        };
        if list.is_empty() {
            return;
        }
        let (seq, n) = list.swap_remove(which % list.len());
        let id = self.ids[&side][c];
        // The answer may race with a reset (then the stream no longer awaits it): fine.
        let _ = match side {
            Side::A => self.p.a.reply(id, seq, code_for(c, n)),
            Side::B => self.p.b.reply(id, seq, code_for(c, n)),
        };
    }

    fn answer_all(&mut self) {
        let keys: Vec<(Side, usize)> = self.to_answer.keys().copied().collect();
        for (side, c) in keys {
            while self
                .to_answer
                .get(&(side, c))
                .is_some_and(|l| !l.is_empty())
            {
                self.answer(side, c, 0);
            }
        }
    }

    fn step(&mut self) {
        let n_clients = self.ids[&Side::A].len() as u64;
        let links = self.p.link_ids();
        let action = self.pick_action();
        if self.trace {
            println!(
                "step: {action:?}, links {links:?}, a {:?}, b {:?}",
                self.p.a.state(),
                self.p.b.state()
            );
        }
        match action {
            Action::Send => {
                let side = SIDES[self.p.rng.below(2) as usize];
                let c = self.p.rng.below(n_clients) as usize;
                let model = self.pick_model();
                // Drain events first, so that completions of an older session are matched
                // before this send reuses their sequence numbers.
                self.settle();
                self.send(side, c, model);
            }
            Action::Burst => {
                let side = SIDES[self.p.rng.below(2) as usize];
                let c = self.p.rng.below(n_clients) as usize;
                self.settle();
                for _ in 0..self.p.rng.below(10) {
                    let model = self.pick_model();
                    self.send(side, c, model);
                }
            }
            Action::Deliver => {
                for _ in 0..=self.p.rng.below(4) {
                    self.p.flush();
                    self.p.deliver_one_except(self.slow);
                }
            }
            Action::Slow => {
                // One link stops delivering for a while (its frames wait while the others
                // overtake them), or all links are fair again.
                self.slow = match self.p.rng.below(3) {
                    0 => None,
                    _ if links.is_empty() => None,
                    _ => Some(links[self.p.rng.below(links.len() as u64) as usize]),
                };
            }
            Action::Answer => {
                // A few answers, in any order.
                let side = SIDES[self.p.rng.below(2) as usize];
                let c = self.p.rng.below(n_clients) as usize;
                for _ in 0..=self.p.rng.below(3) {
                    let which = self.p.rng.below(8) as usize;
                    self.answer(side, c, which);
                }
            }
            Action::Kill => {
                // Kill a link (often the slow one, with whatever waits on it); the last one
                // only now and then.
                if links.len() > 1 || (!links.is_empty() && self.p.rng.below(5) == 0) {
                    let victim = match (self.slow, self.p.rng.below(3)) {
                        (Some(l), 0) if links.contains(&l) => l,
                        // The oldest link: the session's control link, more often than not.
                        (_, 1) => links[0],
                        _ => links[self.p.rng.below(links.len() as u64) as usize],
                    };
                    self.p.kill_link(victim);
                }
            }
            Action::Add => {
                if links.len() < MAX_LINKS {
                    self.p.add_link();
                }
            }
            Action::Advance => {
                // Below the link timeout; silence still adds up across steps, so links
                // also die of timeouts now and then.
                let ms = self.p.rng.below(900);
                self.p.advance(Duration::from_millis(ms));
            }
        }
        self.settle();
    }

    /// A send model; every other seed favours synchronous sends (answers, and so ACKs with
    /// codes, in any order).
    fn pick_model(&mut self) -> SendModel {
        if self.seed & 1 == 0 && self.p.rng.below(2) == 0 {
            SendModel::Sync
        } else {
            MODELS[self.p.rng.below(3) as usize]
        }
    }

    /// Chooses the next action with weights that depend on the seed's churn profile: calm
    /// seeds mostly move traffic, stormy ones keep links (and so resets) coming and going.
    fn pick_action(&mut self) -> Action {
        let churn = [2, 6, 14][(self.seed % 3) as usize];
        let table = [
            (Action::Send, 30),
            (Action::Burst, 4),
            (Action::Deliver, 35),
            (Action::Answer, 10),
            (Action::Kill, churn),
            (Action::Add, churn),
            (Action::Advance, 4),
            (Action::Slow, 3),
        ];
        let total: u64 = table.iter().map(|(_, w)| w).sum();
        let mut r = self.p.rng.below(total);
        for (a, w) in table {
            if r < w {
                return a;
            }
            r -= w;
        }
        Action::Deliver
    }

    fn heal(&mut self) {
        let seed = self.seed;
        if self.p.link_ids().is_empty() {
            self.p.add_link();
        }
        let mut quiet_rounds = 0;
        for _ in 0..100 {
            let before = (self.p.a_events.len(), self.p.b_events.len());
            self.p.drive();
            self.check_events();
            self.answer_all();
            self.p.drive();
            self.check_events();
            if (self.p.a_events.len(), self.p.b_events.len()) == before
                && self.to_answer.values().all(Vec::is_empty)
            {
                quiet_rounds += 1;
                if quiet_rounds >= 2 {
                    break;
                }
            } else {
                quiet_rounds = 0;
            }
            // A link may have died of a timeout; keep one.
            if self.p.link_ids().is_empty() {
                self.p.add_link();
            }
        }
        assert_eq!(self.p.in_flight(), 0, "seed {seed}: frames still in flight");
        assert!(
            self.session_up(Side::A) && self.session_up(Side::B),
            "seed {seed}: after healing the sessions are {:?} / {:?}",
            self.p.a.state(),
            self.p.b.state()
        );
    }

    fn check_final(&mut self) {
        let seed = self.seed;
        for side in SIDES {
            for (c, &id) in self.ids[&side].iter().enumerate() {
                let (state, unacked) = match side {
                    Side::A => (self.p.a.port_state(id), self.p.a.unacked(id)),
                    Side::B => (self.p.b.port_state(id), self.p.b.unacked(id)),
                };
                assert!(
                    state.is_some_and(|s| s.is_up()),
                    "seed {seed}: {side:?}/client{c} port {state:?} after healing"
                );
                assert_eq!(
                    unacked, 0,
                    "seed {seed}: {side:?}/client{c} still has {unacked} unacknowledged sends"
                );
            }
        }
        for (&(side, c), s) in &self.streams {
            for (n, m) in s.msgs.iter().enumerate() {
                let completed = m.acked.is_some()
                    || m.nacked.is_some()
                    || (m.model == SendModel::Local && m.transmitted);
                assert!(
                    completed,
                    "seed {seed}: {side:?}/client{c} #{n} (seq {}, {m:?}) never completed",
                    m.seq
                );
                assert!(
                    m.delivered <= 1,
                    "seed {seed}: {side:?}/client{c} #{n} delivered {} times",
                    m.delivered
                );
                // (So a gap before a later delivery only ever covers NACKed messages.)
                assert!(
                    m.delivered == 1 || m.nacked.is_some(),
                    "seed {seed}: {side:?}/client{c} #{n} ({m:?}) silently lost; \
                     delivered: {:?}",
                    s.delivered
                );
            }
        }
    }
}

fn run_seed(seed: u64) -> usize {
    let mut ch = Chaos::new(seed);
    for _ in 0..=ch.p.rng.below(3) {
        ch.p.add_link();
    }
    for _ in 0..STEPS {
        ch.step();
    }
    ch.heal();
    ch.check_final();
    ch.streams.values().map(|s| s.msgs.len()).sum()
}

#[test]
fn randomized_sessions_never_lose_duplicate_or_reorder() {
    let seeds: u64 = std::env::var("PEERCM_CHAOS_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let first: u64 = std::env::var("PEERCM_CHAOS_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Survey mode: run every seed and list all failures instead of stopping at the first.
    let keep_going = std::env::var_os("PEERCM_CHAOS_KEEP_GOING").is_some();
    let started = Instant::now();
    let mut messages = 0;
    let mut failures = Vec::new();
    for seed in first..first + seeds {
        match catch_unwind(AssertUnwindSafe(|| run_seed(seed))) {
            Ok(n) => messages += n,
            Err(e) => {
                let text = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let line = format!(
                    "seed {seed} failed (rerun with PEERCM_CHAOS_FIRST_SEED={seed} \
                     PEERCM_CHAOS_SEEDS=1 PEERCM_CHAOS_TRACE=1): {text}"
                );
                if !keep_going {
                    panic!("{line}");
                }
                failures.push(line);
            }
        }
    }
    for f in &failures {
        println!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed",
        failures.len()
    );
    println!(
        "session chaos: {seeds} seeds (from {first}), {messages} messages sent, {:?}",
        started.elapsed()
    );
}

fn spec() -> ClientSpec {
    ClientSpec {
        bandwidth_mbps: 10,
        latency: LatencyClass::Normal,
        model: SendModel::Async,
    }
}

/// The acceptor must follow a restarted dialer, whose epochs start again from 1, even after
/// several resets of the old incarnation.
#[test]
fn dialer_restart_after_several_resets_comes_back_up() {
    let mut p = Pair::new(5);
    let ca = p.a.register("mirror", spec()).expect("register");
    let cb = p.b.register("mirror", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    for _ in 0..3 {
        let l = p.add_link();
        p.drive();
        assert_eq!(p.a.state(), SessionState::Up);
        p.kill_link(l);
        p.drive();
    }
    assert!(p.b.epoch() > 1);
    p.restart_a(SessionConfig::default());
    let ca = p.a.register("mirror", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    p.add_link();
    p.drive();
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up),
        "both sides up after the dialer restarted"
    );
    p.a.send(ca, msg(1), SendModel::Async).expect("send");
    p.drive();
    assert_eq!(delivered(&p.b_events, cb).last(), Some(&msg(1)));
}

// ----- Deterministic regressions for what the randomized test (and the fuzzer) found -----

fn up(p: &mut Pair) {
    p.drive();
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up)
    );
}

/// A sync ACK also carries the cumulative ack; the async sends it completes must be reported.
#[test]
fn sync_ack_completes_the_async_sends_it_acknowledges() {
    let mut p = Pair::new(3);
    let ca = p.a.register("m", spec()).expect("register");
    p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    let l = p.add_link();
    up(&mut p);
    let s1 = p.a.send(ca, msg(1), SendModel::Async).expect("send");
    let s2 = p.a.send(ca, msg(2), SendModel::Sync).expect("send");
    p.flush();
    // The partner's answer to the sync send arrives before any cumulative ACK.
    let ack = Frame::new(
        MsgType::Ack,
        Flags::empty(),
        ca,
        s2,
        s2,
        peercm_cm_proto::control::encode_code(5),
    );
    p.a.handle_frame(l, ack, p.now).expect("valid ACK");
    p.flush();
    let acked: Vec<_> = p
        .a_events
        .iter()
        .filter_map(|(_, e)| match e {
            ClientEvent::Acked { seq, code } => Some((*seq, *code)),
            _ => None,
        })
        .collect();
    assert_eq!(acked, vec![(s1, None), (s2, Some(5))]);
}

/// A RESET carrying the largest epoch must not overflow the dialer's next epoch.
#[test]
fn reset_with_the_largest_epoch_does_not_overflow() {
    let mut p = Pair::new(4);
    let l = p.add_link();
    up(&mut p);
    let reset = Frame::new(MsgType::Reset, Flags::empty(), 0, u64::MAX, 0, Bytes::new());
    p.a.handle_frame(l, reset, p.now).expect("RESET is valid");
    p.kill_link(l);
    p.add_link(); // the dialer starts a new reset: epoch + 1
    up(&mut p);
    assert_eq!(p.a.epoch(), u64::MAX);
}

/// DATA sent right after the sender came up may overtake, on another link, the READY that lets
/// the receiver come up. It must be kept, not dropped (nothing would ever replay it).
#[test]
fn data_overtaking_ready_is_kept_until_ready_arrives() {
    let mut p = Pair::new(6);
    let ca = p.a.register("m", spec()).expect("register");
    let cb = p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    let l1 = p.add_link();
    let l2 = p.add_link();
    p.deliver_all_on(l1, true); // RESET
    assert!(p.deliver_until(l1, false, MsgType::Ready)); // RESET-ACK, CLIENT-UP, READY
    assert_eq!(p.a.state(), SessionState::Up);
    assert_eq!(p.b.state(), SessionState::AwaitingReady);
    for i in 0..4 {
        p.a.send(ca, msg(i), SendModel::Async).expect("send");
    }
    p.flush();
    assert!(
        p.queued(l2, true).iter().any(|(t, _)| *t == MsgType::Data),
        "setup: some DATA goes on the second link"
    );
    p.deliver_all_on(l2, true); // DATA before a's READY
    assert_eq!(p.b.state(), SessionState::AwaitingReady);
    p.deliver_all_on(l1, true); // a's CLIENT-UP and READY
    p.drive();
    assert_eq!(
        delivered(&p.b_events, cb),
        (0..4).map(msg).collect::<Vec<_>>()
    );
    assert_eq!(
        count(&p.a_events, ca, |e| matches!(e, ClientEvent::Acked { .. })),
        4
    );
}

/// The control link dies after the dialer came up but before the acceptor got the dialer's
/// READY. The acceptor must not fall back to RESETTING (the up dialer would never reset it
/// again), and the dialer must repeat its READY.
#[test]
fn losing_the_control_link_before_the_last_ready_recovers() {
    let mut p = Pair::new(7);
    let ca = p.a.register("m", spec()).expect("register");
    let cb = p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    let l1 = p.add_link();
    let l2 = p.add_link();
    p.deliver_all_on(l1, true);
    assert!(p.deliver_until(l1, false, MsgType::Ready));
    assert_eq!(p.a.state(), SessionState::Up);
    assert_eq!(p.b.state(), SessionState::AwaitingReady);
    p.kill_link(l1); // a's READY dies with it
    p.drive();
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up)
    );
    p.a.send(ca, msg(1), SendModel::Async).expect("send");
    p.drive();
    assert_eq!(delivered(&p.b_events, cb), vec![msg(1)]);
    assert!(p.link_ids() == vec![l2]);
}

/// The dialer restarts a reset (new epoch) on a survivor while the acceptor, already up, has
/// DATA of the old epoch in flight on a third link. That DATA must not be taken as the new
/// epoch's (same sequence numbers, different messages).
#[test]
fn stale_data_from_before_a_reset_is_not_delivered() {
    let mut p = Pair::new(8);
    let ca = p.a.register("m", spec()).expect("register");
    let cb = p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    let l1 = p.add_link();
    let l2 = p.add_link();
    let l3 = p.add_link();
    p.deliver_all_on(l1, true); // RESET (epoch 1)
    assert!(p.deliver_until(l1, false, MsgType::ResetAck));
    assert_eq!(p.a.state(), SessionState::AwaitingReady);
    for l in [l2, l3] {
        p.deliver_all_on(l, true);
        p.deliver_all_on(l, false);
    }
    p.deliver_all_on(l1, true); // a's CLIENT-UP and READY: b is up, b's READY still queued
    assert_eq!(p.b.state(), SessionState::Up);
    assert_eq!(p.a.state(), SessionState::AwaitingReady);
    for i in 0..6 {
        p.b.send(cb, msg(i), SendModel::Async).expect("send");
    }
    p.flush();
    assert!(
        p.queued(l3, false).iter().any(|(t, _)| *t == MsgType::Data),
        "setup: some DATA of epoch 1 goes on the third link"
    );
    p.kill_link(l1); // a restarts the reset (epoch 2) on l2
    p.deliver_all_on(l2, true); // RESET(2): b goes down (NACKs its sends) and resets
    p.deliver_all_on(l2, false); // RESET-ACK(2), CLIENT-UP, READY: a is up
    p.deliver_all_on(l2, true); // a's READY: b is up
    assert_eq!(
        (p.a.state(), p.b.state()),
        (SessionState::Up, SessionState::Up)
    );
    p.deliver_all_on(l3, false); // the old DATA arrives at last
    assert!(
        delivered(&p.a_events, ca).is_empty(),
        "DATA of the old epoch was delivered: {:?}",
        delivered(&p.a_events, ca)
    );
    let seq = p.b.send(cb, msg(100), SendModel::Async).expect("send");
    p.drive();
    assert_eq!(delivered(&p.a_events, ca), vec![msg(100)]);
    assert!(p
        .b_events
        .iter()
        .any(|(_, e)| *e == ClientEvent::Acked { seq, code: None }));
    assert_eq!(
        count(&p.b_events, cb, |e| matches!(e, ClientEvent::Nacked { .. })),
        6
    );
}

/// Sync answers given out of order must still be re-sent for a replayed message whose first
/// ACK died with a link, however many other answers came after it.
#[test]
fn answer_lost_with_a_link_is_resent_after_out_of_order_answers() {
    let cfg = SessionConfig {
        window: 2,
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(9, cfg);
    let ca = p.a.register("m", spec()).expect("register");
    let cb = p.b.register("m", spec()).expect("register");
    p.a.connect(ca).expect("connect");
    for _ in 0..3 {
        p.add_link();
    }
    up(&mut p);
    let s1 = p.a.send(ca, msg(1), SendModel::Sync).expect("send");
    let s2 = p.a.send(ca, msg(2), SendModel::Sync).expect("send");
    p.drive();
    assert_eq!(delivered(&p.b_events, cb).len(), 2);
    // b answers 2 first; that ACK is held on its link (which later dies).
    p.b.reply(cb, s2, 22).expect("reply");
    p.flush();
    let held = p
        .link_ids()
        .into_iter()
        .find(|l| p.queued(*l, false).contains(&(MsgType::Ack, s2)))
        .expect("ACK of 2 queued");
    p.b.reply(cb, s1, 11).expect("reply");
    p.drive_except(held);
    assert!(p.a_events.contains(&(
        ca,
        ClientEvent::Acked {
            seq: s1,
            code: Some(11)
        }
    )));
    // The window moves on by one; b answers the next message too.
    let s3 = p.a.send(ca, msg(3), SendModel::Sync).expect("send");
    p.drive_except(held);
    assert_eq!(
        delivered(&p.b_events, cb).len(),
        3,
        "setup: message 3 avoided the held link"
    );
    p.b.reply(cb, s3, 33).expect("reply");
    p.drive_except(held);
    p.kill_link(held); // the ACK of 2 is lost; a replays 2
    p.drive();
    assert!(
        p.a_events.contains(&(
            ca,
            ClientEvent::Acked {
                seq: s2,
                code: Some(22)
            }
        )),
        "the answer to 2 was never re-sent: {:?}",
        p.a_events
    );
}

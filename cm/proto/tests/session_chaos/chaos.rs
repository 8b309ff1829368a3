//! The test world (two sessions over the in-memory pair, clients on both sides, the expected
//! streams), its setup from a seed, the client actions and the random program.

use super::*;

/// A message delivered to a client that has not taken it: (session epoch at delivery, seq,
/// message number).
pub(super) type Untaken = (u64, u64, usize);

pub(super) struct Chaos {
    pub(super) seed: u64,
    pub(super) p: Pair,
    /// Client ids per side, by client index.
    pub(super) ids: BTreeMap<Side, Vec<ClientId>>,
    /// Streams by (sending side, client index).
    pub(super) streams: BTreeMap<(Side, usize), Stream>,
    /// Sync messages delivered to (side, client) and not yet answered: (seq, message number).
    pub(super) to_answer: BTreeMap<(Side, usize), Vec<(u64, usize)>>,
    /// How far the events of each side have been checked.
    pub(super) cursor: BTreeMap<Side, usize>,
    /// Acked messages whose delivery is checked once both sides' events are in.
    pub(super) acked_unchecked: Vec<(Side, usize, usize)>,
    /// Print every event and action (`PEERCM_CHAOS_TRACE=1`, for a single failing seed).
    pub(super) trace: bool,
    /// A link that currently delivers nothing.
    pub(super) slow: Option<LinkId>,
    /// Messages delivered to (side, client) that the client has not taken yet: (session epoch
    /// at delivery, seq, message number). Clients take them only now and then (`Consume`), so
    /// async sends must wait for that, not for the delivery.
    pub(super) to_consume: BTreeMap<(Side, usize), Vec<Untaken>>,
    /// One seed in three: half the sends carry an acknowledgement timeout of 1-400 ms.
    pub(super) ack_timeouts: bool,
}

impl Chaos {
    pub(super) fn new(seed: u64) -> Self {
        let cfg = SessionConfig {
            window: 2 + (seed % 7) as u32,
            heartbeat_interval: Duration::from_millis(100),
            link_timeout: Duration::from_millis(1000),
            flow_high_water: 12,
            flow_low_water: 4,
            ..SessionConfig::default()
        };
        let mut p = Pair::with_config(seed, cfg);
        // Clients take their messages when the program says so (Action::Consume).
        p.auto_consume = false;
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
                bandwidth_mbytes_per_s: 10,
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
            to_consume: BTreeMap::new(),
            ack_timeouts: seed.is_multiple_of(3),
        }
        .traced()
    }

    pub(super) fn traced(mut self) -> Self {
        self.p.trace = self.trace;
        self
    }

    pub(super) fn client_index(&self, side: Side, id: ClientId) -> usize {
        self.ids[&side]
            .iter()
            .position(|&i| i == id)
            .unwrap_or_else(|| panic!("seed {}: event for unknown client {id}", self.seed))
    }

    pub(super) fn stream(&mut self, key: (Side, usize)) -> &mut Stream {
        let seed = self.seed;
        self.streams
            .get_mut(&key)
            .unwrap_or_else(|| panic!("seed {seed}: no stream {key:?}"))
    }

    pub(super) fn session_up(&self, side: Side) -> bool {
        match side {
            Side::A => self.p.a.state() == SessionState::Up,
            Side::B => self.p.b.state() == SessionState::Up,
        }
    }

    pub(super) fn send(&mut self, side: Side, c: usize, model: SendModel) {
        let id = self.ids[&side][c];
        let n = self.streams[&(side, c)].msgs.len();
        let data = payload(side, c, n);
        let ack_timeout = (self.ack_timeouts && self.p.rng.below(2) == 0)
            .then(|| Duration::from_millis(1 + self.p.rng.below(400)));
        let now = self.p.now;
        let opts = SendOptions { model, ack_timeout };
        let res = match (side, ack_timeout) {
            (Side::A, None) => self.p.a.send(id, data.clone(), model),
            (Side::B, None) => self.p.b.send(id, data.clone(), model),
            (Side::A, Some(_)) => self.p.a.send_with(id, data.clone(), opts, now),
            (Side::B, Some(_)) => self.p.b.send_with(id, data.clone(), opts, now),
        };
        if self.trace {
            println!("  {side:?}/client{c} send #{n} {model:?} {ack_timeout:?}: {res:?}");
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
                consumed: false,
                ack_timeout,
            });
        }
    }

    pub(super) fn answer(&mut self, side: Side, c: usize, which: usize) {
        let Some(list) = self.to_answer.get_mut(&(side, c)) else {
            return;
        };
        if list.is_empty() {
            return;
        }
        let (seq, n) = list.swap_remove(which % list.len());
        // A client answers what it has taken from its queue (in order): everything before.
        self.consume(side, c);
        let id = self.ids[&side][c];
        // The answer may race with a reset (then the stream no longer awaits it): fine.
        let _ = match side {
            Side::A => self.p.a.reply(id, seq, code_for(c, n)),
            Side::B => self.p.b.reply(id, seq, code_for(c, n)),
        };
    }

    /// The client (side, c) takes every delivered message of the current session from its
    /// queue and reports it; messages delivered in an older session are gone with it (never
    /// reported: the stream started over).
    pub(super) fn consume(&mut self, side: Side, c: usize) {
        let Some(list) = self.to_consume.remove(&(side, c)) else {
            return;
        };
        let epoch = match side {
            Side::A => self.p.a.epoch(),
            Side::B => self.p.b.epoch(),
        };
        let current: Vec<(u64, usize)> = list
            .into_iter()
            .filter(|(e, _, _)| *e == epoch)
            .map(|(_, seq, n)| (seq, n))
            .collect();
        let Some(&(upto, _)) = current.last() else {
            return;
        };
        for &(_, n) in &current {
            self.stream((side.other(), c)).msgs[n].consumed = true;
        }
        let id = self.ids[&side][c];
        match side {
            Side::A => self.p.a.consumed(id, upto),
            Side::B => self.p.b.consumed(id, upto),
        }
    }

    pub(super) fn consume_all(&mut self) {
        let keys: Vec<(Side, usize)> = self.to_consume.keys().copied().collect();
        for (side, c) in keys {
            self.consume(side, c);
        }
    }

    pub(super) fn answer_all(&mut self) {
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

    pub(super) fn step(&mut self) {
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
            Action::Consume => {
                let side = SIDES[self.p.rng.below(2) as usize];
                let c = self.p.rng.below(n_clients) as usize;
                self.settle();
                self.consume(side, c);
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
    pub(super) fn pick_model(&mut self) -> SendModel {
        if self.seed & 1 == 0 && self.p.rng.below(2) == 0 {
            SendModel::Sync
        } else {
            MODELS[self.p.rng.below(3) as usize]
        }
    }

    /// Chooses the next action with weights that depend on the seed's churn profile: calm
    /// seeds mostly move traffic, stormy ones keep links (and so resets) coming and going.
    pub(super) fn pick_action(&mut self) -> Action {
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
            (Action::Consume, 12),
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
}

//! Client actions (sends, bursts, answers, consumption) and the random program: picking and
//! running one action per step, and the routing check at the end of each step.

use super::*;

impl Chaos<'_> {
    // ----- client actions -----

    pub(super) fn send(&mut self, side: Side, c: usize, model: SendModel) {
        let inc = self.inc;
        let home = self.a_view;
        let (who, res) = match side {
            Side::A => {
                let n = self.streams[&(Who::A, c)].msgs.len();
                let data = payload(Who::A, c, n);
                (
                    Who::A,
                    (data.clone(), self.p.a.send(self.a_ids[c], data, model)),
                )
            }
            Side::B => {
                let n = self.streams[&(Who::B(inc), c)].msgs.len();
                let data = payload(Who::B(inc), c, n);
                (
                    Who::B(inc),
                    (data.clone(), self.p.b.send(self.b_ids[c], data, model)),
                )
            }
        };
        let (data, res) = res;
        if self.trace {
            println!("  {who:?}/client{c} send {data:?} {model:?}: {res:?}");
        }
        let Ok(seq) = res else {
            self.totals.refused += 1;
            return;
        };
        let ctx = self.ctx();
        let s = self.stream((who, c));
        let n = s.msgs.len();
        assert!(
            s.outstanding.insert(seq, n).is_none(),
            "{ctx}: {who:?}/client{c} reused seq {seq} of an outstanding send"
        );
        s.msgs.push(Msg {
            model,
            seq,
            payload: data,
            home,
            delivered: BTreeMap::new(),
            acked: None,
            transmitted: false,
            nacked: None,
            silent: false,
            orphaned: false,
        });
    }

    pub(super) fn answer(&mut self, side: Side, c: usize, which: usize) {
        let Some(list) = self.to_answer.get_mut(&(side, c)) else {
            return;
        };
        if list.is_empty() {
            return;
        }
        let (seq, n) = list.swap_remove(which % list.len());
        // The answer may race with a reset or a switch (then nothing awaits it): fine.
        let _ = match side {
            Side::A => self.p.a.reply(self.a_ids[c], seq, code_for(c, n)),
            Side::B => self.p.b.reply(self.b_ids[c], seq, code_for(c, n)),
        };
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

    /// Every client takes everything delivered to it.
    pub(super) fn consume_all(&mut self) {
        for c in 0..self.n_clients {
            self.p.a.consumed(self.a_ids[c], u64::MAX);
            self.p.b.consumed(self.b_ids[c], u64::MAX);
        }
    }

    /// Mostly the client's own model, now and then another one.
    pub(super) fn pick_model(&mut self, c: usize) -> SendModel {
        if self.p.rng.below(4) == 0 {
            MODELS[self.p.rng.below(3) as usize]
        } else {
            self.models[c]
        }
    }

    // ----- the program -----

    pub(super) fn pick_action(&mut self) -> Action {
        let churn = [1u64, 3, 6][(self.seed % 3) as usize];
        let down = self.partner_down;
        let table = [
            (Action::Send, 28),
            (Action::Burst, 4),
            (Action::Deliver, 38),
            (Action::Drive, 3),
            (Action::Answer, 10),
            (Action::Consume, if self.p.auto_consume { 0 } else { 8 }),
            (Action::Pause, 6),
            (Action::LongPause, 1),
            (Action::Slow, 2),
            (Action::RailFlap, churn / 2 + 1),
            (Action::RailUp, churn),
            (Action::RailLinkAdd, churn / 2 + 1),
            (Action::QpError, churn),
            (Action::HalfOpen, churn / 2 + 1),
            (Action::TcpDrop, churn / 2 + 1),
            (Action::TcpAdd, churn / 2 + 1),
            (Action::Crash, if down { 0 } else { 1 + churn / 5 }),
            (Action::Return, if down { 12 } else { 0 }),
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

    pub(super) fn step(&mut self) {
        self.step.set(self.step.get() + 1);
        let n_clients = self.n_clients as u64;
        let action = self.pick_action();
        let links = self.p.link_ids();
        if self.trace {
            println!(
                "step {}: {action:?}, links {:?}, a {:?} (holding {}), b {:?}",
                self.step.get(),
                links
                    .iter()
                    .map(|l| (
                        *l,
                        self.link_ic
                            .get(l)
                            .copied()
                            .unwrap_or(InterconnectId::new(99))
                    ))
                    .collect::<Vec<_>>(),
                self.p.a.state(),
                self.p.a.holding_since().is_some(),
                self.p.b.state()
            );
        }
        let down = self.partner_down;
        match action {
            Action::Send | Action::Burst => {
                let side = if self.p.rng.below(2) == 0 {
                    Side::A
                } else {
                    Side::B
                };
                let c = self.p.rng.below(n_clients) as usize;
                let count = if action == Action::Burst {
                    self.p.rng.below(10)
                } else {
                    1
                };
                // Drain events first, so that completions of an older session are matched
                // before a send reuses their sequence numbers.
                self.settle();
                for _ in 0..count {
                    let model = self.pick_model(c);
                    self.send(side, c, model);
                }
            }
            Action::Deliver => {
                for _ in 0..=self.p.rng.below(12) {
                    self.p.flush();
                    self.p.deliver_one_except(self.slow);
                }
            }
            Action::Drive => {
                // Everything queued (except on the slow link) arrives, in random order.
                for _ in 0..10_000 {
                    let out = self.p.flush();
                    if !self.p.deliver_one_except(self.slow) && !out {
                        break;
                    }
                }
            }
            Action::Answer => {
                let side = if self.p.rng.below(2) == 0 {
                    Side::A
                } else {
                    Side::B
                };
                let c = self.p.rng.below(n_clients) as usize;
                for _ in 0..=self.p.rng.below(3) {
                    let which = self.p.rng.below(8) as usize;
                    self.answer(side, c, which);
                }
            }
            Action::Consume => {
                // The client takes some of what was delivered (a stream that started over
                // after a reset clamps the number to what it has).
                let side = if self.p.rng.below(2) == 0 {
                    Side::A
                } else {
                    Side::B
                };
                let c = self.p.rng.below(n_clients) as usize;
                let upto = self.last_delivered.get(&(side, c)).copied().unwrap_or(0);
                let upto = upto.saturating_sub(self.p.rng.below(3));
                match side {
                    Side::A => self.p.a.consumed(self.a_ids[c], upto),
                    Side::B => self.p.b.consumed(self.b_ids[c], upto),
                }
            }
            Action::Pause => {
                let ms = self.p.rng.below(400);
                self.pause(Duration::from_millis(ms));
            }
            Action::LongPause => {
                // Every link times out at once (nothing is delivered meanwhile); a hold may
                // expire.
                let ms = 1_600 + self.p.rng.below(4_500);
                self.pause(Duration::from_millis(ms));
            }
            Action::Slow => {
                self.slow = match self.p.rng.below(3) {
                    0 => None,
                    _ if links.is_empty() => None,
                    _ => Some(links[self.p.rng.below(links.len() as u64) as usize]),
                };
            }
            Action::RailFlap => {
                // Adapter failure: every link of one rail at once.
                let rails: Vec<InterconnectId> = self
                    .rail_ids()
                    .into_iter()
                    .filter(|&r| !self.links_on(r).is_empty())
                    .collect();
                if !rails.is_empty() {
                    let r = rails[self.p.rng.below(rails.len() as u64) as usize];
                    if self.trace {
                        println!("  rail {r} fails");
                    }
                    for l in self.links_on(r) {
                        self.kill(l);
                    }
                }
            }
            Action::RailUp if !down => {
                let rails: Vec<InterconnectId> = self
                    .rail_ids()
                    .into_iter()
                    .filter(|&r| self.links_on(r).is_empty())
                    .collect();
                if !rails.is_empty() {
                    let r = rails[self.p.rng.below(rails.len() as u64) as usize];
                    for _ in 0..=self.p.rng.below(MAX_RAIL_LINKS as u64) {
                        self.link_up(r);
                    }
                }
            }
            Action::RailLinkAdd if !down => {
                let rails: Vec<InterconnectId> = self
                    .rail_ids()
                    .into_iter()
                    .filter(|&r| self.links_on(r).len() < MAX_RAIL_LINKS)
                    .collect();
                if !rails.is_empty() {
                    let r = rails[self.p.rng.below(rails.len() as u64) as usize];
                    self.link_up(r);
                }
            }
            Action::QpError => {
                let rdma: Vec<LinkId> = self
                    .a_links()
                    .into_iter()
                    .filter(|&l| {
                        self.p
                            .a
                            .link_interconnect(l)
                            .is_some_and(|ic| ic != InterconnectId::TCP)
                    })
                    .collect();
                if !rdma.is_empty() {
                    let l = rdma[self.p.rng.below(rdma.len() as u64) as usize];
                    self.kill(l);
                }
            }
            Action::HalfOpen => {
                // One end notices a link failure before the other.
                let both: Vec<LinkId> = links
                    .iter()
                    .copied()
                    .filter(|&l| {
                        self.p.a.link_interconnect(l).is_some()
                            && self.p.b.link_interconnect(l).is_some()
                    })
                    .collect();
                if !both.is_empty() {
                    let l = both[self.p.rng.below(both.len() as u64) as usize];
                    let on_a = self.p.rng.below(2) == 0;
                    if self.trace {
                        println!("  link {l} fails on {} only", if on_a { "a" } else { "b" });
                    }
                    self.p.fail_link_on_one_side(l, on_a);
                }
            }
            Action::TcpDrop => {
                let tcp = self.links_on(InterconnectId::TCP);
                if !tcp.is_empty() {
                    let l = tcp[self.p.rng.below(tcp.len() as u64) as usize];
                    self.kill(l);
                }
            }
            Action::TcpAdd if !down => {
                if self.links_on(InterconnectId::TCP).len() < MAX_TCP_LINKS {
                    self.link_up(InterconnectId::TCP);
                }
            }
            Action::Crash => self.crash(),
            Action::Return => self.partner_return(false),
            Action::RailUp | Action::RailLinkAdd | Action::TcpAdd => {} // partner down
        }
        self.end_step();
        if self.p.a.state() == SessionState::Up {
            self.totals.up_steps += 1;
        }
    }

    /// Applies the policy's moves, hands every output to the links (checking where a's DATA
    /// goes) and checks every event.
    pub(super) fn end_step(&mut self) {
        // Links neither end knows any more (dropped by one end, then by the other, or by a
        // crashed process) are gone.
        for l in self.p.link_ids() {
            if self.p.a.link_interconnect(l).is_none() && self.p.b.link_interconnect(l).is_none() {
                self.p.kill_link(l);
            }
        }
        let before: Vec<(LinkId, usize)> = self
            .p
            .link_ids()
            .into_iter()
            .map(|l| (l, self.p.queued(l, true).len()))
            .collect();
        self.sync_placement();
        self.p.flush();
        self.check_routing(&before);
        self.settle();
        self.nack_ok = None;
        if self
            .reset_request_pending
            .is_some_and(|e| self.p.a.epoch() > e || self.p.a.holding_since().is_some())
        {
            self.reset_request_pending = None; // a reset (or lost everything): done
        }
        let ctx = self.ctx();
        for (c, &id) in self.a_ids.iter().enumerate() {
            assert_eq!(
                self.p.a.placement(id),
                self.placement.assignment(id),
                "{ctx}: client{c}: the session's placement differs from the policy's assignment"
            );
        }
    }

    /// A placed client's DATA (new or replayed) goes on its interconnect's links while that
    /// has any. Checks the frames a just queued (after `before`, the queue lengths earlier).
    pub(super) fn check_routing(&self, before: &[(LinkId, usize)]) {
        if self.a_view != self.inc {
            return; // a still talks to a crashed incarnation: its client ids are not known
        }
        let ctx = self.ctx();
        for &(l, old) in before {
            let Some(&ic) = self.link_ic.get(&l) else {
                continue;
            };
            for h in self.p.queued_headers(l, true).iter().skip(old) {
                if h.msg_type != MsgType::Data {
                    continue;
                }
                let Some(c) = self
                    .b_ids
                    .iter()
                    .position(|&i| i == ClientId::new(h.client))
                else {
                    continue;
                };
                let placed = self.p.a.placement(self.a_ids[c]);
                if let Some(want) = placed.filter(|&p| !self.links_on(p).is_empty()) {
                    assert_eq!(
                        ic,
                        want,
                        "{ctx}: DATA of client{c} (wire seq {}) went on link {l} of interconnect \
                         {ic}, but the client is placed on {want}, which has links {:?}",
                        h.seq,
                        self.links_on(want)
                    );
                }
            }
        }
    }
}

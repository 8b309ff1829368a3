//! The liveness phase: heal everything (partner back, TCP and every rail with a link), drive to
//! quiescence on bounded virtual time, and check that every message completed and every client
//! is up, placed on RDMA and can still do a round trip.

use super::*;

impl Chaos<'_> {
    // ----- liveness -----

    /// What keeps the pair from being healed and quiet (empty: it is).
    pub(super) fn unquiet(&self) -> Vec<String> {
        let mut why = Vec::new();
        let (a, b) = (&self.p.a, &self.p.b);
        if a.state() != SessionState::Up || b.state() != SessionState::Up {
            why.push(format!("sessions {:?} / {:?}", a.state(), b.state()));
        }
        if a.holding_since().is_some() {
            why.push("a holds".into());
        }
        if self.switch_pending {
            why.push("a switch is unfinished".into());
        }
        if self.p.in_flight() > 0 {
            why.push(format!("{} frames in flight", self.p.in_flight()));
        }
        for l in self.p.link_ids() {
            let (ia, ib) = (a.link_interconnect(l), b.link_interconnect(l));
            if ia.is_none() != ib.is_none() {
                why.push(format!(
                    "link {l} known to one end only (a {ia:?}, b {ib:?})"
                ));
            }
        }
        for ((side, c), l) in &self.to_answer {
            if !l.is_empty() {
                why.push(format!("{side:?}/client{c}: {} unanswered", l.len()));
            }
        }
        for c in 0..self.n_clients {
            let (ia, ib) = (self.a_ids[c], self.b_ids[c]);
            let (pa, pb) = (a.port_state(ia), b.port_state(ib));
            if !pa.is_some_and(PortState::is_up) || !pb.is_some_and(PortState::is_up) {
                why.push(format!("client{c}: ports {pa:?} / {pb:?}"));
            }
            if a.unacked(ia) + b.unacked(ib) > 0 {
                why.push(format!(
                    "client{c}: unacknowledged a {} / b {}",
                    a.unacked(ia),
                    b.unacked(ib)
                ));
            }
            let placed = a.placement(ia);
            if !matches!(placed, Some(ic) if ic != InterconnectId::TCP) {
                why.push(format!("client{c} placed on {placed:?}"));
            }
        }
        why
    }

    /// Heals everything and drives to quiescence on bounded virtual time.
    pub(super) fn heal(&mut self) {
        self.phase = "liveness";
        self.slow = None;
        let started = self.p.now;
        while self.partner_down {
            let ctx = self.ctx();
            assert!(
                self.p.now.saturating_duration_since(started) < HEAL_BUDGET,
                "{ctx}: links to the crashed partner never timed out: {:?}",
                self.a_links()
            );
            self.partner_return(true);
            if self.partner_down {
                // A backup is only dialed once the silent links to the old partner are gone.
                self.step.set(self.step.get() + 1);
                self.pause(Duration::from_millis(300));
            }
            self.end_step();
        }
        let mut quiet_rounds = 0;
        while quiet_rounds < 3 {
            self.step.set(self.step.get() + 1);
            let ctx = self.ctx();
            assert!(
                self.p.now.saturating_duration_since(started) < HEAL_BUDGET,
                "{ctx}: no quiescence within {HEAL_BUDGET:?} of virtual time: {}",
                self.unquiet().join("; ")
            );
            if self.links_on(InterconnectId::TCP).is_empty() {
                self.link_up(InterconnectId::TCP);
            }
            for r in self.rail_ids() {
                if self.links_on(r).is_empty() {
                    self.link_up(r);
                }
            }
            self.end_step();
            self.p.drive();
            self.settle();
            self.answer_all();
            self.consume_all();
            self.p.drive();
            self.end_step();
            if self.unquiet().is_empty() {
                quiet_rounds += 1;
            } else {
                quiet_rounds = 0;
            }
            // Heartbeats keep the links alive, the policy's timer runs.
            self.pause(Duration::from_millis(50));
            self.end_step();
        }
    }

    pub(super) fn check_final(&mut self) {
        let ctx = self.ctx();
        assert_eq!(self.p.a.state(), SessionState::Up, "{ctx}: a not up");
        assert_eq!(self.p.b.state(), SessionState::Up, "{ctx}: b not up");
        for c in 0..self.n_clients {
            let (a, b) = (self.a_ids[c], self.b_ids[c]);
            assert_eq!(
                self.p.a.port_state(a),
                Some(PortState::Connected),
                "{ctx}: A/client{c} port"
            );
            let want = if self.b_connected[c] {
                PortState::Connected
            } else {
                PortState::ConnectedTo
            };
            assert_eq!(
                self.p.b.port_state(b),
                Some(want),
                "{ctx}: B{}/client{c} port",
                self.inc
            );
            assert_eq!(self.p.a.unacked(a), 0, "{ctx}: A/client{c} unacked");
            assert_eq!(self.p.b.unacked(b), 0, "{ctx}: B/client{c} unacked");
            let placed = self.p.a.placement(a);
            assert_eq!(
                placed,
                self.placement.assignment(a),
                "{ctx}: client{c}: the session and the policy disagree on its placement"
            );
            assert!(
                placed.is_some_and(|ic| self.rail_ids().contains(&ic)),
                "{ctx}: client{c} placed on {placed:?}, not on an RDMA rail, though every rail \
                 is usable"
            );
        }
        for ((who, c), s) in &self.streams {
            let current = match who {
                Who::A => true,
                Who::B(i) => *i == self.inc,
            };
            for (n, m) in s.msgs.iter().enumerate() {
                if !current {
                    assert!(
                        m.completed() || m.orphaned,
                        "{ctx}: {who:?}/client{c} #{n} ({m:?}) neither completed nor lost with \
                         its sender"
                    );
                    continue;
                }
                assert!(
                    m.completed(),
                    "{ctx}: {who:?}/client{c} #{n} (client seq {}, {m:?}) never completed",
                    m.seq
                );
                if m.nacked.is_none() {
                    let rx = match who {
                        Who::A => m.home,
                        Who::B(_) => AT_A,
                    };
                    assert_eq!(
                        m.delivered_at(rx),
                        1,
                        "{ctx}: {who:?}/client{c} #{n} ({m:?}) completed without a NACK but \
                         not delivered exactly once by {}",
                        rx_name(*who, rx)
                    );
                }
            }
        }
        // A last round trip on every client, both ways.
        self.step.set(self.step.get() + 1);
        let mut last = Vec::new();
        for c in 0..self.n_clients {
            for side in [Side::A, Side::B] {
                let who = match side {
                    Side::A => Who::A,
                    Side::B => Who::B(self.inc),
                };
                let before = self.streams[&(who, c)].msgs.len();
                self.send(side, c, SendModel::Async);
                assert_eq!(
                    self.streams[&(who, c)].msgs.len(),
                    before + 1,
                    "{ctx}: {who:?}/client{c}: the final send was refused"
                );
                last.push((who, c, before));
            }
        }
        for _ in 0..50 {
            self.p.drive();
            self.settle();
            // The clients take what they got (async sends complete only then).
            for ((side, c), upto) in self.last_delivered.clone() {
                match side {
                    Side::A => self.p.a.consumed(self.a_ids[c], upto),
                    Side::B => self.p.b.consumed(self.b_ids[c], upto),
                }
            }
            self.p.drive();
            self.settle();
            if last
                .iter()
                .all(|&(who, c, n)| self.streams[&(who, c)].msgs[n].acked.is_some())
            {
                break;
            }
            self.pause(Duration::from_millis(100));
            self.end_step();
        }
        for (who, c, n) in last {
            let m = &self.streams[&(who, c)].msgs[n];
            assert!(
                m.acked.is_some(),
                "{ctx}: {who:?}/client{c}: the final round trip did not complete ({m:?})"
            );
        }
    }
}

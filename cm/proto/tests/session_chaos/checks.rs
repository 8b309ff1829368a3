//! The checks: every event of both sides after each step (order, exactly-once delivery,
//! completions by send model, NACK reasons), then healing and the final checks (everything up,
//! nothing outstanding, nothing lost silently).

use super::*;

impl Chaos {
    /// Moves outputs to the links and checks every new event.
    pub(super) fn settle(&mut self) {
        self.p.flush();
        self.check_events();
    }

    pub(super) fn check_events(&mut self) {
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

    pub(super) fn check_event(&mut self, side: Side, c: usize, ev: ClientEvent, seed: u64) {
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
                let epoch = match side {
                    Side::A => self.p.a.epoch(),
                    Side::B => self.p.b.epoch(),
                };
                self.to_consume
                    .entry((side, c))
                    .or_default()
                    .push((epoch, seq, n));
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
                    SendModel::Async => {
                        assert_eq!(
                            code, None,
                            "seed {seed}: async #{n} of {side:?}/client{c} acked with a code"
                        );
                        // Acknowledged => taken by the partner client (issue 8, item 8).
                        assert!(
                            m.consumed,
                            "seed {seed}: async #{n} of {side:?}/client{c} Acked before the \
                             partner client took it"
                        );
                    }
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
                let timed = reason == NackReason::Timeout
                    && m.ack_timeout.is_some()
                    && m.model != SendModel::Local;
                assert!(
                    reason == NackReason::ConnectionLost || timed,
                    "seed {seed}: {side:?}/client{c} #{n} ({m:?}) Nacked for {reason:?}"
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
                // Unanswered sync messages of the old session cannot be answered any more,
                // and what it delivered cannot be reported as taken.
                self.to_answer.remove(&(side, c));
                self.to_consume.remove(&(side, c));
            }
            ClientEvent::Up | ClientEvent::FlowControl { .. } => {}
            ev @ (ClientEvent::Migrated { .. }
            | ClientEvent::PeerSwitched { .. }
            | ClientEvent::PartnerRegion { .. }) => {
                panic!("seed {seed}: {ev:?} without placement, autoswitch or regions configured")
            }
        }
    }

    pub(super) fn heal(&mut self) {
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
            self.consume_all();
            self.p.drive();
            self.check_events();
            if (self.p.a_events.len(), self.p.b_events.len()) == before
                && self.to_answer.values().all(Vec::is_empty)
                && self.to_consume.values().all(Vec::is_empty)
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

    pub(super) fn check_final(&mut self) {
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

//! The checks after every step: every event of both sides against the model (deliveries in order
//! and once per incarnation, completions once and of the right kind, NACKs and Down only when
//! allowed, PeerSwitched and Migrated only when due).

use super::*;

impl Chaos<'_> {
    // ----- events and invariants -----

    /// Moves outputs to the links and checks every new event.
    pub(super) fn settle(&mut self) {
        self.p.flush();
        self.check_events();
    }

    pub(super) fn check_events(&mut self) {
        let ctx = self.ctx();
        let a_new: Vec<(ClientId, ClientEvent)> = self.p.a_events[self.cursor_a..].to_vec();
        self.cursor_a += a_new.len();
        for (id, ev) in a_new {
            let c = self
                .a_ids
                .iter()
                .position(|&i| i == id)
                .unwrap_or_else(|| panic!("{ctx}: event for unknown client {id} on a"));
            if self.trace {
                println!("  A/client{c}: {ev:?}");
            }
            self.check_a_event(c, ev);
        }
        let b_new: Vec<(ClientId, ClientEvent)> = self.p.b_events[self.cursor_b..].to_vec();
        self.cursor_b += b_new.len();
        for (id, ev) in b_new {
            let c = self
                .b_ids
                .iter()
                .position(|&i| i == id)
                .unwrap_or_else(|| panic!("{ctx}: event for unknown client {id} on b"));
            if self.trace {
                println!("  B{}/client{c}: {ev:?}", self.inc);
            }
            self.check_b_event(c, ev);
        }
        self.reconcile_silent(Side::A);
        self.reconcile_silent(Side::B);
        // An ack can be seen before the delivery on the other side is looked at (both sides'
        // events are collected together): check deliveries of acknowledged messages now.
        for (who, c, n, rx) in std::mem::take(&mut self.acked_unchecked) {
            let m = &self.streams[&(who, c)].msgs[n];
            assert_eq!(
                m.delivered_at(rx),
                1,
                "{ctx}: {who:?}/client{c} #{n} acknowledged by {} but delivered there {} times \
                 ({m:?})",
                rx_name(who, rx),
                m.delivered_at(rx)
            );
        }
        for (c, q) in &self.expected_migrations {
            assert!(
                q.is_empty(),
                "{ctx}: client{c}: the policy moved it ({q:?}) but no Migrated event came"
            );
        }
    }

    /// Local sends complete silently when a cumulative ack covers them after `Transmitted`:
    /// the session's unacknowledged count tells how many did, and since cumulative acks cover
    /// a prefix of the stream, they are the oldest outstanding local sends.
    pub(super) fn reconcile_silent(&mut self, side: Side) {
        let ctx = self.ctx();
        let inc = self.inc;
        for c in 0..self.n_clients {
            let (who, unacked) = match side {
                Side::A => (Who::A, self.p.a.unacked(self.a_ids[c])),
                Side::B => (Who::B(inc), self.p.b.unacked(self.b_ids[c])),
            };
            let s = self.stream((who, c));
            let outstanding = s.outstanding.len();
            assert!(
                outstanding >= unacked,
                "{ctx}: {who:?}/client{c}: the session holds {unacked} unacknowledged sends, \
                 the test knows of {outstanding}"
            );
            let mut extra = outstanding - unacked;
            if extra == 0 {
                continue;
            }
            let mut order: Vec<(usize, u64)> =
                s.outstanding.iter().map(|(&q, &n)| (n, q)).collect();
            order.sort_unstable();
            let mut done = Vec::new();
            for (n, seq) in order {
                if extra == 0 {
                    break;
                }
                let m = &mut s.msgs[n];
                if m.model != SendModel::Local {
                    continue;
                }
                assert!(
                    m.transmitted,
                    "{ctx}: {who:?}/client{c} #{n} (local) completed without Transmitted"
                );
                m.silent = true;
                s.outstanding.remove(&seq);
                extra -= 1;
                let rx = match who {
                    Who::A => m.home,
                    Who::B(_) => AT_A,
                };
                done.push((who, c, n, rx));
            }
            self.acked_unchecked.extend(done);
            assert_eq!(
                extra,
                0,
                "{ctx}: {who:?}/client{c}: {extra} sends vanished from the session without \
                 completion (outstanding {:?})",
                self.streams[&(who, c)].outstanding
            );
        }
    }

    pub(super) fn check_a_event(&mut self, c: usize, ev: ClientEvent) {
        let ctx = self.ctx();
        let inc = self.a_view;
        match ev {
            ClientEvent::Data {
                seq,
                payload,
                reply_needed,
            } => {
                let (who, pc, n) =
                    parse(&payload).unwrap_or_else(|| panic!("{ctx}: foreign payload {payload:?}"));
                assert_eq!(
                    (who, pc),
                    (Who::B(inc), c),
                    "{ctx}: A/client{c} got {payload:?}, not from its namesake on the partner \
                     incarnation a is in session with ({inc})"
                );
                self.deliver_check(who, c, n, AT_A, &payload, reply_needed);
                self.last_delivered.insert((Side::A, c), seq);
                if reply_needed {
                    self.to_answer
                        .entry((Side::A, c))
                        .or_default()
                        .push((seq, n));
                }
            }
            ClientEvent::Acked { seq, code } => {
                let n = self.complete(Who::A, c, seq, "Acked");
                let s = self.stream((Who::A, c));
                let m = &mut s.msgs[n];
                check_code(&ctx, Who::A, c, n, m, code);
                assert_eq!(
                    m.home, inc,
                    "{ctx}: A/client{c} #{n} acknowledged by incarnation {inc} but destined for \
                     {}",
                    m.home
                );
                m.acked = Some((code, inc));
                self.acked_unchecked.push((Who::A, c, n, inc));
            }
            ClientEvent::Transmitted { seq } => self.transmitted(Who::A, c, seq),
            ClientEvent::Nacked { seq, reason } => {
                let allowed = self.nack_allowed();
                assert!(
                    !allowed.is_empty(),
                    "{ctx}: A/client{c} seq {seq} Nacked ({reason:?}) while a's hold did not \
                     end (no same-partner return, no expiry) and no restart was detected"
                );
                assert!(
                    allowed.iter().any(|(want, _)| *want == reason),
                    "{ctx}: A/client{c} seq {seq} Nacked for {reason:?}"
                );
                let n = self.complete(Who::A, c, seq, "Nacked");
                self.stream((Who::A, c)).msgs[n].nacked = Some(reason);
                self.totals.nacked += 1;
            }
            ClientEvent::Down { reason } => {
                let allowed = self.nack_allowed();
                assert!(
                    !allowed.is_empty(),
                    "{ctx}: A/client{c} Down ({reason:?}) while a's hold did not end and no \
                     restart was detected"
                );
                assert!(
                    allowed.iter().any(|(_, want)| *want == reason),
                    "{ctx}: A/client{c} Down for {reason:?}"
                );
                self.went_down(Who::A, c);
                self.to_answer.remove(&(Side::A, c));
                // Going down ends any switch under way: what it held was NACKed, and the next
                // link to the same node is that partner returning, not a switch.
                self.switch_pending = false;
                self.switch_seen.clear();
            }
            ClientEvent::Up | ClientEvent::FlowControl { .. } => {}
            ev @ ClientEvent::PartnerRegion { .. } => {
                panic!("{ctx}: {ev:?} without regions")
            }
            ClientEvent::Migrated { from, to } => {
                let got = self
                    .expected_migrations
                    .get_mut(&c)
                    .and_then(VecDeque::pop_front);
                assert_eq!(
                    got,
                    Some((from, to)),
                    "{ctx}: A/client{c} Migrated {from} -> {to}, the policy's move was {got:?}"
                );
                self.totals.migrations += 1;
            }
            ClientEvent::PeerSwitched { node, epoch } => {
                assert!(
                    self.switch_pending,
                    "{ctx}: A/client{c} PeerSwitched to {node} (epoch {epoch}) without a switch"
                );
                assert_eq!(
                    node, self.partner_node,
                    "{ctx}: A/client{c} PeerSwitched names {node}"
                );
                assert!(
                    self.switch_seen.insert(c),
                    "{ctx}: A/client{c} told PeerSwitched twice for one switch"
                );
                if self.switch_seen.len() == 1 {
                    assert!(
                        epoch > self.switch_epoch,
                        "{ctx}: PeerSwitched epoch {epoch} not above {}",
                        self.switch_epoch
                    );
                    self.switch_epoch = epoch;
                } else {
                    assert_eq!(epoch, self.switch_epoch, "{ctx}: one switch, two epochs");
                }
                if self.switch_seen.len() == self.n_clients {
                    self.switch_pending = false;
                    self.switch_seen.clear();
                    self.totals.switches += 1;
                }
            }
        }
    }

    pub(super) fn check_b_event(&mut self, c: usize, ev: ClientEvent) {
        let ctx = self.ctx();
        let inc = self.inc;
        let me = Who::B(inc);
        match ev {
            ClientEvent::Data {
                seq,
                payload,
                reply_needed,
            } => {
                let (who, pc, n) =
                    parse(&payload).unwrap_or_else(|| panic!("{ctx}: foreign payload {payload:?}"));
                assert_eq!(
                    (who, pc),
                    (Who::A, c),
                    "{ctx}: B{inc}/client{c} got {payload:?}, not from its namesake on a"
                );
                self.deliver_check(who, c, n, inc, &payload, reply_needed);
                self.last_delivered.insert((Side::B, c), seq);
                if reply_needed {
                    self.to_answer
                        .entry((Side::B, c))
                        .or_default()
                        .push((seq, n));
                }
            }
            ClientEvent::Acked { seq, code } => {
                let n = self.complete(me, c, seq, "Acked");
                let s = self.stream((me, c));
                let m = &mut s.msgs[n];
                check_code(&ctx, me, c, n, m, code);
                m.acked = Some((code, AT_A));
                self.acked_unchecked.push((me, c, n, AT_A));
            }
            ClientEvent::Transmitted { seq } => self.transmitted(me, c, seq),
            ClientEvent::Nacked { seq, reason } => {
                // b is the acceptor (no hold): losing every link or a reset NACKs at once.
                assert_eq!(
                    reason,
                    NackReason::ConnectionLost,
                    "{ctx}: B{inc}/client{c} seq {seq} Nacked for {reason:?}"
                );
                let n = self.complete(me, c, seq, "Nacked");
                self.stream((me, c)).msgs[n].nacked = Some(reason);
                self.totals.nacked += 1;
            }
            ClientEvent::Down { .. } => {
                self.went_down(me, c);
                self.to_answer.remove(&(Side::B, c));
            }
            ClientEvent::Up | ClientEvent::FlowControl { .. } => {}
            ev @ (ClientEvent::Migrated { .. }
            | ClientEvent::PeerSwitched { .. }
            | ClientEvent::PartnerRegion { .. }) => {
                panic!("{ctx}: B{inc}/client{c}: {ev:?} on the acceptor (no placement, no hold)")
            }
        }
    }

    /// A delivery of message `n` of (`who`, `c`) at receiver `rx` (a partner incarnation, or
    /// AT_A): once, in order, meant for it, and skipping only NACKed messages.
    pub(super) fn deliver_check(
        &mut self,
        who: Who,
        c: usize,
        n: usize,
        rx: u32,
        payload: &Bytes,
        reply_needed: bool,
    ) {
        let ctx = self.ctx();
        let s = self.stream((who, c));
        let Some(m) = s.msgs.get_mut(n) else {
            panic!("{ctx}: {who:?}/client{c} #{n} delivered but never sent");
        };
        assert_eq!(&m.payload, payload, "{ctx}: payload altered");
        assert_eq!(
            reply_needed,
            m.model == SendModel::Sync,
            "{ctx}: reply_needed does not match the send model of {who:?}/client{c} #{n}"
        );
        if who == Who::A {
            assert_eq!(
                m.home, rx,
                "{ctx}: A/client{c} #{n} delivered by incarnation {rx} but destined for {} \
                 ({m:?}): a backup got a message the old partner had acknowledged, or a \
                 message crossed partners",
                m.home
            );
        }
        let count = m.delivered.entry(rx).or_insert(0);
        *count += 1;
        assert_eq!(
            *count,
            1,
            "{ctx}: {who:?}/client{c} #{n} delivered twice by {}",
            rx_name(who, rx)
        );
        let list = s.delivered.entry(rx).or_default();
        if let Some(&last) = list.last() {
            assert!(
                n > last,
                "{ctx}: {who:?}/client{c} #{n} delivered by {} after #{last} (out of order)",
                rx_name(who, rx)
            );
        }
        list.push(n);
        // Nothing meant for this receiver was skipped unless it was NACKed.
        for (k, earlier) in s.msgs[..n].iter().enumerate() {
            let meant = who != Who::A || earlier.home == rx;
            if meant && earlier.delivered_at(rx) == 0 && earlier.nacked.is_none() {
                panic!(
                    "{ctx}: {who:?}/client{c} #{n} delivered by {} but #{k} ({earlier:?}) was \
                     skipped without a NACK",
                    rx_name(who, rx)
                );
            }
        }
    }

    /// Removes an outstanding send on its completion; returns its message number.
    pub(super) fn complete(&mut self, who: Who, c: usize, seq: u64, what: &str) -> usize {
        let ctx = self.ctx();
        let s = self.stream((who, c));
        let n = s.outstanding.remove(&seq).unwrap_or_else(|| {
            panic!("{ctx}: {who:?}/client{c} {what} seq {seq} that is not outstanding")
        });
        let m = &s.msgs[n];
        assert!(
            !m.completed(),
            "{ctx}: {who:?}/client{c} #{n} completed twice ({m:?}, now {what})"
        );
        n
    }

    pub(super) fn transmitted(&mut self, who: Who, c: usize, seq: u64) {
        let ctx = self.ctx();
        let s = self.stream((who, c));
        let n = *s.outstanding.get(&seq).unwrap_or_else(|| {
            panic!("{ctx}: {who:?}/client{c} Transmitted seq {seq} that is not outstanding")
        });
        let m = &mut s.msgs[n];
        assert_eq!(
            m.model,
            SendModel::Local,
            "{ctx}: {who:?}/client{c} #{n} ({:?}) reported Transmitted",
            m.model
        );
        assert!(
            !m.transmitted,
            "{ctx}: {who:?}/client{c} #{n} reported Transmitted twice"
        );
        m.transmitted = true;
    }

    /// Down: every send still outstanding was NACKed just before (same queue, in order), except
    /// local ones a cumulative ack completed silently after Transmitted.
    pub(super) fn went_down(&mut self, who: Who, c: usize) {
        let ctx = self.ctx();
        let s = self.stream((who, c));
        let left: Vec<(u64, usize)> = s.outstanding.iter().map(|(&q, &n)| (q, n)).collect();
        let mut done = Vec::new();
        for (seq, n) in left {
            let m = &mut s.msgs[n];
            assert!(
                m.model == SendModel::Local && m.transmitted,
                "{ctx}: {who:?}/client{c} went down with #{n} (seq {seq}, {m:?}) neither \
                 completed nor NACKed"
            );
            m.silent = true;
            let rx = match who {
                Who::A => m.home,
                Who::B(_) => AT_A,
            };
            done.push((who, c, n, rx));
        }
        s.outstanding.clear();
        self.acked_unchecked.extend(done);
    }
}

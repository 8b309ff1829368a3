//! Links, the partner and time: links coming up (with what `a` must do with them), kills, pauses
//! and long pauses, partner crashes and returns (restart or backup node), and keeping the
//! placement policy in step with the links `a` has.

use super::*;

impl Chaos<'_> {
    // ----- links, partner, time -----

    /// Brings a link up on `ic`, predicting what `a` must do with it: while it holds, a link to
    /// another node (or any link while a switch is unfinished) switches partner, and a link
    /// to the same node ends the hold with NACKs.
    pub(super) fn link_up(&mut self, ic: InterconnectId) -> LinkId {
        if self.a_view == self.inc
            && self.p.b.links().next().is_none()
            && !self.a_links().is_empty()
            && self.p.a.holding_since().is_none()
        {
            // b lost every link on its side only while a kept some: b has no session in this
            // epoch. Its heartbeat on the new link asks a to reset (RESET-REQUEST): a NACKs
            // what it had outstanding and tells its clients the partner reset.
            self.reset_request_pending = Some(self.p.a.epoch());
            if self.trace {
                println!("  b lost the session alone: a may reset (NACKs expected)");
            }
        }
        if self.p.a.holding_since().is_some() {
            self.settle();
            let switch = self.switch_pending || self.partner_node != self.p.b_info.node_id;
            if switch {
                self.begin_switch();
            } else {
                self.nack_ok = Some((NackReason::ConnectionLost, DownReason::ConnectionLost));
                self.totals.same_returns += 1;
                if self.trace {
                    println!("  same partner back while holding: NACKs expected");
                }
            }
        } else if self.a_view != self.inc && !self.a_links().is_empty() {
            // a still talks to the crashed incarnation over silent links: the new instance
            // tells it the partner restarted, and it drops the old session.
            self.settle();
            self.nack_ok = Some((NackReason::PeerRestarted, DownReason::PeerRestarted));
            // That ends an unfinished switch too: what it held is NACKed.
            self.switch_pending = false;
            self.switch_seen.clear();
            self.totals.restarts_seen += 1;
            if self.trace {
                println!("  partner restart detected over silent links: NACKs expected");
            }
        }
        let l = if ic == InterconnectId::TCP {
            self.p.add_link()
        } else {
            self.p.add_link_on(ic)
        };
        self.link_ic.insert(l, ic);
        self.partner_node = self.p.b_info.node_id.clone();
        self.a_view = self.inc;
        if self.trace {
            println!("  link {l} up on interconnect {ic}");
        }
        l
    }

    /// Why a may NACK or go Down now (empty: it may not).
    pub(super) fn nack_allowed(&self) -> Vec<(NackReason, DownReason)> {
        self.nack_ok
            .into_iter()
            .chain(
                self.reset_request_pending
                    .map(|_| (NackReason::ConnectionLost, DownReason::PeerReset)),
            )
            .collect()
    }

    /// A switch begins: every message a still holds goes to the new partner incarnation.
    pub(super) fn begin_switch(&mut self) {
        let ctx = self.ctx();
        for c in 0..self.n_clients {
            let unacked = self.p.a.unacked(self.a_ids[c]);
            let inc = self.inc;
            let s = self.stream((Who::A, c));
            assert_eq!(
                s.outstanding.len(),
                unacked,
                "{ctx}: A/client{c} holds {unacked} messages at the switch, the test counts {}",
                s.outstanding.len()
            );
            let kept: Vec<usize> = s.outstanding.values().copied().collect();
            for n in kept {
                s.msgs[n].home = inc;
            }
            // Messages of the old partner can no longer be answered.
            self.to_answer.remove(&(Side::A, c));
        }
        self.switch_pending = true;
        self.switch_seen.clear();
        if self.trace {
            println!("  switch to {} begins", self.p.b_info.node_id);
        }
    }

    pub(super) fn kill(&mut self, l: LinkId) {
        if self.trace {
            println!("  link {l} killed");
        }
        self.p.kill_link(l);
    }

    /// Advances virtual time; a hold that ends here expired (NACKs expected).
    pub(super) fn pause(&mut self, d: Duration) {
        let holding = self.p.a.holding_since().is_some();
        self.p.advance(d);
        if holding && self.p.a.holding_since().is_none() {
            self.nack_ok = Some((NackReason::ConnectionLost, DownReason::ConnectionLost));
            self.switch_pending = false;
            self.switch_seen.clear();
            self.totals.expiries += 1;
            if self.trace {
                println!("  hold expired: NACKs expected");
            }
        }
    }

    /// The partner crashes: every link is lost and a fresh process (the same node, or a backup
    /// node) stands behind, registered but not linked yet.
    pub(super) fn crash(&mut self) {
        self.settle();
        let ctx = self.ctx();
        // Its unfinished sends die with it.
        let inc = self.inc;
        for c in 0..self.n_clients {
            let s = self.stream((Who::B(inc), c));
            let lost: Vec<usize> = s.outstanding.values().copied().collect();
            for n in lost {
                s.msgs[n].orphaned = true;
            }
            s.outstanding.clear();
            self.to_answer.remove(&(Side::B, c));
        }
        let same = self.p.rng.below(2) == 0;
        let silent = self.p.rng.below(2) == 0;
        let cfg = self.cfg.clone();
        let node = if same {
            self.p.b_info.node_id.clone()
        } else {
            let others: Vec<&str> = PARTNER_NODES
                .iter()
                .copied()
                .filter(|n| *n != self.p.b_info.node_id)
                .collect();
            others[self.p.rng.below(others.len() as u64) as usize].to_string()
        };
        if silent {
            // TCP sees the crash at once, RDMA links only go silent.
            let rdma: Vec<LinkId> = self
                .p
                .link_ids()
                .into_iter()
                .filter(|l| {
                    self.link_ic
                        .get(l)
                        .is_some_and(|&ic| ic != InterconnectId::TCP)
                })
                .collect();
            self.p.crash_b_leaving_silent(&rdma, &node, cfg);
        } else if same {
            self.p.restart_b(cfg);
            assert!(
                self.p.link_ids().is_empty(),
                "{ctx}: links survived a crash"
            );
        } else {
            self.p.replace_b_with(&node, cfg);
            assert!(
                self.p.link_ids().is_empty(),
                "{ctx}: links survived a crash"
            );
        }
        self.inc += 1;
        self.cursor_b = 0;
        let live = self.p.link_ids();
        self.link_ic.retain(|l, _| live.contains(l));
        self.slow = None;
        self.register_on_b();
        self.partner_down = true;
        self.totals.crashes += 1;
        if self.trace {
            println!(
                "  partner crashed ({}); incarnation {} is node {} ({})",
                if silent {
                    "RDMA links go silent"
                } else {
                    "every link closes"
                },
                self.inc,
                self.p.b_info.node_id,
                if same { "same node" } else { "backup" }
            );
        }
    }

    /// The partner (whichever stands behind) is reachable again: TCP first, rails maybe. The
    /// runtime only dials a backup once every link to the old partner is gone; the same node
    /// restarting is dialed at once (a keeps TCP connections up).
    pub(super) fn partner_return(&mut self, every_rail: bool) {
        if self.p.b_info.node_id != self.partner_node && !self.a_links().is_empty() {
            return;
        }
        self.partner_down = false;
        self.link_up(InterconnectId::TCP);
        for r in self.rail_ids() {
            if every_rail || self.p.rng.below(2) == 0 {
                self.link_up(r);
            }
        }
    }

    // ----- placement -----

    /// Feeds the policy (usability from the live links, bytes sent, its timer) and applies its
    /// moves to `a`.
    pub(super) fn sync_placement(&mut self) {
        let ctx = self.ctx();
        let now = self.p.now;
        let live: BTreeSet<InterconnectId> = self
            .a_links()
            .into_iter()
            .filter_map(|l| self.p.a.link_interconnect(l))
            .collect();
        let mut infos = vec![(
            InterconnectId::TCP,
            InterconnectKind::Tcp,
            10_000,
            "tcp".to_string(),
        )];
        for (id, cap, dom) in &self.rails {
            infos.push((*id, InterconnectKind::Rdma, *cap, dom.clone()));
        }
        for (id, kind, capacity_mbits_per_s, failure_domain) in infos {
            let now_usable = live.contains(&id);
            if self.usable.get(&id) != Some(&now_usable) {
                self.usable.insert(id, now_usable);
                self.placement.upsert_interconnect(
                    InterconnectInfo {
                        id,
                        kind,
                        capacity_mbits_per_s,
                        failure_domain,
                        usable: now_usable,
                    },
                    now,
                );
            }
        }
        for c in 0..self.n_clients {
            let id = self.a_ids[c];
            let total = self.p.a.client_bytes_out(id);
            let fed = self.bytes_fed.entry(c).or_insert(0);
            let delta = total.saturating_sub(*fed);
            *fed = total;
            if delta > 0 {
                self.placement
                    .record_bytes(id, delta.saturating_mul(self.byte_scale), now);
            }
        }
        if self.placement.poll_timeout().is_some_and(|t| t <= now) {
            self.placement.handle_timeout(now);
        }
        while let Some(mv) = self.placement.poll_move() {
            let c = self
                .a_ids
                .iter()
                .position(|&i| i == mv.client)
                .unwrap_or_else(|| panic!("{ctx}: move of unknown client {}", mv.client));
            let prev = self
                .p
                .a
                .place(mv.client, mv.to)
                .unwrap_or_else(|e| panic!("{ctx}: place({}) refused: {e}", mv.client));
            if self.trace {
                println!(
                    "  placement: client{c} {:?} -> {} ({:?})",
                    mv.from, mv.to, mv.reason
                );
            }
            assert_eq!(
                prev, mv.from,
                "{ctx}: client{c} was placed on {prev:?} in the session but the policy moved it \
                 from {:?}",
                mv.from
            );
            if let Some(from) = prev.filter(|&f| f != mv.to) {
                self.expected_migrations
                    .entry(c)
                    .or_default()
                    .push_back((from, mv.to));
            }
            self.totals.moves += 1;
        }
    }
}

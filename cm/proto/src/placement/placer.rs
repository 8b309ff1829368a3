//! Forced placement (rules 1, 3, 4, 5): every client that is not on a candidate interconnect
//! (new, displaced by a failure, or leaving or joining TCP) is placed at once by a greedy pass in
//! decreasing demand order, honouring the failure-domain rule. Not rate limited.

use std::collections::BTreeSet;
use std::time::Instant;

use super::snapshot::Snap;
use super::{InterconnectId, InterconnectKind, Move, MoveReason, Placement};
use crate::session::ClientId;

impl Placement {
    /// Rule 3 target choice for client `c` (not placed in `snap`) among `targets`: prefer those
    /// without a heavy client that stay at or below `hot_utilization`, then the lowest resulting
    /// utilization, then the lowest id.
    pub(super) fn pick_target(
        &self,
        snap: &Snap,
        c: ClientId,
        targets: &[InterconnectId],
    ) -> Option<InterconnectId> {
        let best = |set: &mut dyn Iterator<Item = InterconnectId>| {
            set.map(|l| (self.util_with(snap, l, c), l))
                .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                .map(|(_, l)| l)
        };
        let hot = self.cfg.hot_utilization;
        let mut roomy = targets
            .iter()
            .copied()
            .filter(|&l| !self.hosts_heavy(snap, l, Some(c)) && self.util_with(snap, l, c) <= hot);
        best(&mut roomy).or_else(|| best(&mut targets.iter().copied()))
    }

    /// Forced placement target for client `c` (rules 3, 4, 5).
    fn choose_link(
        &self,
        snap: &Snap,
        c: ClientId,
        cands: &[InterconnectId],
    ) -> Option<InterconnectId> {
        let mut allowed: Vec<InterconnectId> = cands.to_vec();
        let rdma = cands
            .iter()
            .any(|&l| self.kind(l) == Some(InterconnectKind::Rdma));
        if rdma {
            let restricted: Vec<InterconnectId> = if self.is_critical(c) {
                match self.heaviest(snap).and_then(|h| snap.at.get(&h)) {
                    Some(&hl) => {
                        let hd = self.domain(hl);
                        allowed
                            .iter()
                            .copied()
                            .filter(|&l| self.rdma_outside(l, hd))
                            .collect()
                    }
                    None => Vec::new(),
                }
            } else {
                let d = snap.demand(c);
                let becomes_heaviest = d > 0.0
                    && match self.heaviest(snap) {
                        None => true,
                        Some(h) => {
                            let hd = snap.demand(h);
                            d > hd || (d == hd && c < h)
                        }
                    };
                if becomes_heaviest {
                    let critical_domains: BTreeSet<&str> = snap
                        .at
                        .iter()
                        .filter(|&(&x, _)| self.is_critical(x))
                        .map(|(_, &l)| self.domain(l))
                        .collect();
                    allowed
                        .iter()
                        .copied()
                        .filter(|&l| {
                            self.capacity(l) > 0 && !critical_domains.contains(self.domain(l))
                        })
                        .collect()
                } else {
                    Vec::new()
                }
            };
            if !restricted.is_empty() {
                allowed = restricted;
            }
        }
        self.pick_target(snap, c, &allowed)
    }

    /// Forced placement of every client not on a candidate (rules 1, 3, 4, 5).
    pub(super) fn reconcile(&mut self, now: Instant) {
        let cands = self.candidates();
        if cands.is_empty() {
            return;
        }
        // Nothing to place (the common case on every timer tick): skip the snapshot, whose
        // cost grows with the number of clients.
        let placed = |c: &super::Client| c.assigned.is_some_and(|l| cands.contains(&l));
        if self.clients.values().all(placed) {
            return;
        }
        let mut snap = self.snapshot(now, &cands);
        let mut displaced: Vec<ClientId> = self
            .clients
            .keys()
            .copied()
            .filter(|c| !snap.at.contains_key(c))
            .collect();
        if displaced.is_empty() {
            return;
        }
        displaced.sort_by(|&a, &b| {
            self.is_critical(a)
                .cmp(&self.is_critical(b))
                .then(snap.demand(b).total_cmp(&snap.demand(a)))
                .then(a.cmp(&b))
        });
        for c in displaced {
            let Some(to) = self.choose_link(&snap, c, &cands) else {
                continue;
            };
            snap.place(c, to);
            let to_kind = self.kind(to);
            let Some(client) = self.clients.get_mut(&c) else {
                continue;
            };
            let reason = match (client.assigned_kind, to_kind) {
                _ if client.assigned.is_none() => MoveReason::Initial,
                (Some(InterconnectKind::Tcp), Some(InterconnectKind::Rdma)) => {
                    MoveReason::BackToRdma
                }
                (Some(InterconnectKind::Rdma), Some(InterconnectKind::Tcp)) => {
                    MoveReason::FallbackToTcp
                }
                _ => MoveReason::InterconnectDown,
            };
            self.commit(c, to, reason);
        }
    }

    /// Records a decision and queues its move.
    pub(super) fn commit(&mut self, c: ClientId, to: InterconnectId, reason: MoveReason) {
        let kind = self.kind(to);
        if let Some(link) = self.links.get_mut(&to) {
            link.recovering = false;
        }
        if let Some(client) = self.clients.get_mut(&c) {
            let from = client.assigned.replace(to);
            client.assigned_kind = kind;
            self.moves.push_back(Move {
                client: c,
                from,
                to,
                reason,
            });
        }
    }
}

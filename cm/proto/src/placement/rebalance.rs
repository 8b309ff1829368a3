//! Voluntary moves (rules 6 and 7), made on the rebalance timer: failure-domain repair,
//! heavy-client isolation, relief of hot interconnects with hysteresis (`min_improvement`) and
//! spreading onto empty ones; each client at most once per evaluation and per
//! `min_move_interval`, and only onto interconnects usable for `failback_hold`.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::time::Instant;

use super::snapshot::Snap;
use super::{InterconnectId, MoveReason, Placement, HEAVY_SHARE};
use crate::session::ClientId;

impl Placement {
    /// Rules 6 and 7: voluntary moves.
    pub(super) fn evaluate(&mut self, now: Instant) {
        self.reconcile(now);
        let cands = self.candidates();
        if cands.len() < 2 {
            return; // nowhere to move anything to
        }
        let hold = self.cfg.failback_hold;
        let settled: Vec<InterconnectId> = cands
            .iter()
            .copied()
            .filter(|l| {
                self.links
                    .get(l)
                    .and_then(|l| l.usable_since)
                    .is_some_and(|since| now.saturating_duration_since(since) >= hold)
            })
            .collect();
        let recovering: BTreeSet<InterconnectId> = cands
            .iter()
            .copied()
            .filter(|l| self.links.get(l).is_some_and(|l| l.recovering))
            .collect();
        let mut snap = self.snapshot(now, &cands);
        let mut moved = BTreeSet::new();
        while let Some((c, to)) = self.best_voluntary(&snap, &cands, &settled, &moved, now) {
            snap.place(c, to);
            moved.insert(c);
            let reason = if recovering.contains(&to) {
                MoveReason::Failback
            } else {
                MoveReason::Rebalance
            };
            if let Some(client) = self.clients.get_mut(&c) {
                client.last_voluntary = Some(now);
            }
            self.commit(c, to, reason);
        }
    }

    fn may_move(&self, c: ClientId, moved: &BTreeSet<ClientId>, now: Instant) -> bool {
        !moved.contains(&c)
            && self.clients.get(&c).is_some_and(|x| {
                !matches!(x.last_voluntary,
                    Some(t) if now.saturating_duration_since(t) < self.cfg.min_move_interval)
            })
    }

    /// The best voluntary move (client, target) by the priorities of rule 6, if any.
    fn best_voluntary(
        &self,
        snap: &Snap,
        cands: &[InterconnectId],
        settled: &[InterconnectId],
        moved: &BTreeSet<ClientId>,
        now: Instant,
    ) -> Option<(ClientId, InterconnectId)> {
        let hot = self.cfg.hot_utilization;
        let base = self.violations(snap, cands, None);
        let safe =
            |c: ClientId, t: InterconnectId| self.violations(snap, cands, Some((c, t))) <= base;
        let without = |c: ClientId| {
            let mut s = snap.clone();
            s.unplace(c);
            s
        };

        // (a) Rule 4 repair: a Critical client out of the heaviest client's failure domain.
        if base > 0 {
            if let Some(&hl) = self.heaviest(snap).and_then(|h| snap.at.get(&h)) {
                let hd = self.domain(hl);
                let targets: Vec<InterconnectId> = settled
                    .iter()
                    .copied()
                    .filter(|&t| self.rdma_outside(t, hd))
                    .collect();
                for (&c, &l) in &snap.at {
                    if !self.is_critical(c) || self.domain(l) != hd || !self.may_move(c, moved, now)
                    {
                        continue;
                    }
                    if let Some(t) = self.pick_target(&without(c), c, &targets) {
                        return Some((c, t));
                    }
                }
            }
        }

        // (b) Isolation: the other clients off a heavy client's interconnect.
        for &l in cands {
            if snap.count(l) < 2 {
                continue;
            }
            let Some(h) = snap.heaviest_on(l) else {
                continue;
            };
            if snap.demand(h) <= f64::from(self.capacity(l)) / 8.0 * HEAVY_SHARE {
                continue;
            }
            let mut others: Vec<ClientId> = snap
                .on(l)
                .into_iter()
                .filter(|&c| c != h && self.may_move(c, moved, now))
                .collect();
            others.sort_by(|&a, &b| snap.demand(b).total_cmp(&snap.demand(a)).then(a.cmp(&b)));
            for c in others {
                let best = settled
                    .iter()
                    .copied()
                    .filter(|&t| {
                        t != l
                            && !self.hosts_heavy(snap, t, None)
                            && self.util_with(snap, t, c) <= hot
                            && safe(c, t)
                    })
                    .map(|t| (self.util_with(snap, t, c), t))
                    .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                if let Some((_, t)) = best {
                    return Some((c, t));
                }
            }
        }

        // (c) Hot interconnect: the move lowering the pair's higher utilization the most.
        let min_improvement = self.min_improvement();
        let mut best: Option<(f64, bool, ClientId, InterconnectId)> = None;
        for &l in cands {
            let ul = self.util(snap, l);
            if ul.partial_cmp(&hot) != Some(Ordering::Greater) {
                continue;
            }
            let h = snap.heaviest_on(l);
            for c in snap.on(l) {
                if !self.may_move(c, moved, now) {
                    continue;
                }
                let ul_after = self.util_without(snap, l, c);
                for &t in settled {
                    if t == l {
                        continue;
                    }
                    let old = ul.max(self.util(snap, t));
                    let new = ul_after.max(self.util_with(snap, t, c));
                    let improves = new < old && new <= old * (1.0 - min_improvement);
                    if !improves || !safe(c, t) {
                        continue;
                    }
                    let key = (new, Some(c) == h, c, t);
                    if !matches!(best, Some(b) if cmp_key(&key, &b) != Ordering::Less) {
                        best = Some(key);
                    }
                }
            }
        }
        if let Some((_, _, c, t)) = best {
            return Some((c, t));
        }

        // (d) Spreading / failback: fill an empty interconnect from one with 2+ clients.
        for &e in settled {
            if snap.count(e) != 0 {
                continue;
            }
            let mut best: Option<(f64, bool, ClientId)> = None;
            for &l in cands {
                if l == e || snap.count(l) < 2 {
                    continue;
                }
                let h = snap.heaviest_on(l);
                let ul = self.util(snap, l);
                for c in snap.on(l) {
                    if !self.may_move(c, moved, now) {
                        continue;
                    }
                    let new = self
                        .util_without(snap, l, c)
                        .max(self.util_with(snap, e, c));
                    let not_worse =
                        matches!(new.partial_cmp(&ul), Some(Ordering::Less | Ordering::Equal));
                    if !not_worse || !safe(c, e) {
                        continue;
                    }
                    let gain = if new == ul { 0.0 } else { ul - new };
                    let key = (gain, Some(c) == h, c);
                    // Largest gain first, then not the heaviest client of its link, then id.
                    let worse_than_best = matches!(best, Some(b)
                        if b.0.total_cmp(&key.0).then(key.1.cmp(&b.1)).then(key.2.cmp(&b.2))
                            != Ordering::Less);
                    if !worse_than_best {
                        best = Some(key);
                    }
                }
            }
            if let Some((_, _, c)) = best {
                return Some((c, e));
            }
        }
        None
    }
}

fn cmp_key(
    a: &(f64, bool, ClientId, InterconnectId),
    b: &(f64, bool, ClientId, InterconnectId),
) -> Ordering {
    a.0.total_cmp(&b.0)
        .then(a.1.cmp(&b.1))
        .then(a.2.cmp(&b.2))
        .then(a.3.cmp(&b.3))
}

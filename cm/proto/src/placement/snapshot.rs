//! The working copy of an assignment ([`Snap`]) and the measures the rules are stated in:
//! candidates (rule 1), effective demand and utilization (rule 2), heavy clients (rule 3), the
//! heaviest client and rule 4 violations.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::rate::decayed_rate;
use super::{InterconnectId, InterconnectKind, Placement, BYTES_PER_MB, HEAVY_SHARE};
use crate::session::{ClientId, LatencyClass};

/// Working copy of the placement of the clients on the candidate interconnects.
///
/// Besides the assignment it keeps the placed clients ranked by demand, per interconnect and
/// (non-Critical ones) overall, so the questions the rules ask while placing thousands of
/// clients ("does this interconnect carry a heavy client", "who is the heaviest client") cost
/// a logarithm, not a pass over every client.
#[derive(Debug, Clone, Default)]
pub(super) struct Snap {
    /// Effective demand of every client, MB/s.
    pub(super) demand: BTreeMap<ClientId, f64>,
    /// Clients currently on a candidate interconnect.
    pub(super) at: BTreeMap<ClientId, InterconnectId>,
    pub(super) load: BTreeMap<InterconnectId, f64>,
    pub(super) count: BTreeMap<InterconnectId, usize>,
    /// Critical clients (left out of `ranked`).
    pub(super) critical: BTreeSet<ClientId>,
    /// Placed clients of each interconnect by demand.
    on_ranked: BTreeMap<InterconnectId, BTreeSet<Rank>>,
    /// Placed non-Critical clients with a positive demand, by demand.
    ranked: BTreeSet<Rank>,
}

/// Orders clients by demand, then by lowest id first: the last element of a set of ranks is
/// the highest demand, ties to the lowest id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Rank(u64, Reverse<ClientId>);

impl Rank {
    fn new(demand: f64, c: ClientId) -> Self {
        // The IEEE 754 total order as an unsigned key (the order of `f64::total_cmp`).
        let b = demand.to_bits();
        let key = if b >> 63 == 1 { !b } else { b | 1 << 63 };
        Rank(key, Reverse(c))
    }

    fn client(self) -> ClientId {
        self.1 .0
    }
}

impl Snap {
    pub(super) fn demand(&self, c: ClientId) -> f64 {
        self.demand.get(&c).copied().unwrap_or(0.0)
    }

    pub(super) fn load(&self, l: InterconnectId) -> f64 {
        self.load.get(&l).copied().unwrap_or(0.0)
    }

    pub(super) fn count(&self, l: InterconnectId) -> usize {
        self.count.get(&l).copied().unwrap_or(0)
    }

    pub(super) fn place(&mut self, c: ClientId, l: InterconnectId) {
        self.unplace(c);
        let d = self.demand(c);
        self.at.insert(c, l);
        *self.load.entry(l).or_insert(0.0) += d;
        *self.count.entry(l).or_insert(0) += 1;
        let r = Rank::new(d, c);
        self.on_ranked.entry(l).or_default().insert(r);
        if d > 0.0 && !self.critical.contains(&c) {
            self.ranked.insert(r);
        }
    }

    pub(super) fn unplace(&mut self, c: ClientId) {
        if let Some(l) = self.at.remove(&c) {
            let d = self.demand(c);
            let n = self.count(l).saturating_sub(1);
            self.count.insert(l, n);
            let rest = if n == 0 {
                0.0
            } else {
                (self.load(l) - d).max(0.0)
            };
            self.load.insert(l, rest);
            let r = Rank::new(d, c);
            if let Some(set) = self.on_ranked.get_mut(&l) {
                set.remove(&r);
            }
            self.ranked.remove(&r);
        }
    }

    pub(super) fn on(&self, l: InterconnectId) -> Vec<ClientId> {
        self.on_ranked
            .get(&l)
            .map(|set| {
                let mut v: Vec<ClientId> = set.iter().map(|r| r.client()).collect();
                v.sort();
                v
            })
            .unwrap_or_default()
    }

    /// The client with the highest demand on `l` (ties to the lowest id).
    pub(super) fn heaviest_on(&self, l: InterconnectId) -> Option<ClientId> {
        self.on_ranked
            .get(&l)
            .and_then(|set| set.last())
            .map(|r| r.client())
    }

    /// The clients on `l` with the highest demands, highest first.
    fn top_on(&self, l: InterconnectId) -> impl Iterator<Item = ClientId> + '_ {
        self.on_ranked
            .get(&l)
            .into_iter()
            .flat_map(|set| set.iter().rev().map(|r| r.client()))
    }

    /// The placed non-Critical client with the highest positive demand (ties to the lowest id).
    fn heaviest_ranked(&self) -> Option<ClientId> {
        self.ranked.last().map(|r| r.client())
    }
}

/// Utilization of an interconnect of `capacity_mbits_per_s` carrying `count` clients of total effective
/// demand `load` MB/s (rule 2).
pub(super) fn utilization(capacity_mbits_per_s: u32, load: f64, count: usize) -> f64 {
    let cap = f64::from(capacity_mbits_per_s) / 8.0;
    if cap > 0.0 {
        load / cap
    } else if count > 0 {
        f64::INFINITY
    } else {
        0.0
    }
}

impl Placement {
    /// Rule 1: the usable RDMA interconnects, else the usable TCP ones, in id order.
    pub(super) fn candidates(&self) -> Vec<InterconnectId> {
        let usable = |kind| {
            self.links
                .values()
                .filter(|l| l.info.usable && l.info.kind == kind)
                .map(|l| l.info.id)
                .collect::<Vec<_>>()
        };
        let rdma = usable(InterconnectKind::Rdma);
        if rdma.is_empty() {
            usable(InterconnectKind::Tcp)
        } else {
            rdma
        }
    }

    pub(super) fn snapshot(&self, now: Instant, cands: &[InterconnectId]) -> Snap {
        let half_life = self.half_life_secs();
        let mut snap = Snap::default();
        for (&cid, c) in &self.clients {
            let rate = decayed_rate(c, now, half_life) / BYTES_PER_MB;
            snap.demand.insert(cid, f64::from(c.declared).max(rate));
            if c.latency == LatencyClass::Critical {
                snap.critical.insert(cid);
            }
        }
        for (&cid, c) in &self.clients {
            if let Some(l) = c.assigned.filter(|l| cands.contains(l)) {
                snap.place(cid, l);
            }
        }
        snap
    }

    pub(super) fn util(&self, snap: &Snap, l: InterconnectId) -> f64 {
        utilization(self.capacity(l), snap.load(l), snap.count(l))
    }

    /// Utilization of `l` with client `c` (not on `l`) added.
    pub(super) fn util_with(&self, snap: &Snap, l: InterconnectId, c: ClientId) -> f64 {
        utilization(
            self.capacity(l),
            snap.load(l) + snap.demand(c),
            snap.count(l) + 1,
        )
    }

    /// Utilization of `l` with client `c` (on `l`) taken away.
    pub(super) fn util_without(&self, snap: &Snap, l: InterconnectId, c: ClientId) -> f64 {
        let n = snap.count(l).saturating_sub(1);
        let load = if n == 0 {
            0.0
        } else {
            (snap.load(l) - snap.demand(c)).max(0.0)
        };
        utilization(self.capacity(l), load, n)
    }

    /// Whether `l` carries a heavy client (rule 3) other than `except`.
    pub(super) fn hosts_heavy(
        &self,
        snap: &Snap,
        l: InterconnectId,
        except: Option<ClientId>,
    ) -> bool {
        let half = f64::from(self.capacity(l)) / 8.0 * HEAVY_SHARE;
        // The two highest demands decide: `except` may be one of them.
        snap.top_on(l)
            .filter(|&c| Some(c) != except)
            .take(1)
            .any(|c| snap.demand(c) > half)
    }

    /// Rule 4: the placed non-Critical client with the highest positive demand (ties to the
    /// lowest id).
    pub(super) fn heaviest(&self, snap: &Snap) -> Option<ClientId> {
        snap.heaviest_ranked()
    }

    /// Whether `l` is an RDMA interconnect with non-zero capacity outside failure domain
    /// `domain` (a zero-capacity port does not count as another failure domain for rule 4).
    pub(super) fn rdma_outside(&self, l: InterconnectId, domain: &str) -> bool {
        self.kind(l) == Some(InterconnectKind::Rdma)
            && self.capacity(l) > 0
            && self.domain(l) != domain
    }

    /// Whether some candidate is an RDMA interconnect outside failure domain `domain`.
    fn other_rdma_domain(&self, cands: &[InterconnectId], domain: &str) -> bool {
        cands.iter().any(|&l| self.rdma_outside(l, domain))
    }

    /// Number of Critical clients violating rule 4, with client `ov.0` on `ov.1` if given.
    pub(super) fn violations(
        &self,
        snap: &Snap,
        cands: &[InterconnectId],
        ov: Option<(ClientId, InterconnectId)>,
    ) -> usize {
        let link_of = |c: ClientId| match ov {
            Some((oc, ol)) if oc == c => Some(ol),
            _ => snap.at.get(&c).copied(),
        };
        let Some(hl) = self.heaviest(snap).and_then(link_of) else {
            return 0;
        };
        let hd = self.domain(hl);
        if !self.other_rdma_domain(cands, hd) {
            return 0;
        }
        snap.at
            .keys()
            .filter(|&&c| self.is_critical(c))
            .filter(|&&c| link_of(c).is_some_and(|l| self.domain(l) == hd))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::PlacementConfig;
    use std::time::Duration;

    #[test]
    fn placement_utilization_units_and_zero_capacity() {
        // 25 Gb/s = 3125 MB/s.
        assert!((utilization(25_000, 3125.0, 1) - 1.0).abs() < 1e-12);
        assert!((utilization(25_000, 2000.0, 1) - 0.64).abs() < 1e-12);
        assert_eq!(utilization(0, 0.0, 0), 0.0);
        assert!(utilization(0, 0.0, 1).is_infinite());
        assert!(utilization(0, 5.0, 2).is_infinite());
        assert_eq!(utilization(10_000, 0.0, 0), 0.0);
    }

    #[test]
    fn placement_effective_demand_is_max_of_declared_and_measured() {
        let mut p = Placement::new(PlacementConfig::default());
        let t0 = Instant::now();
        let c1 = ClientId::new(1);
        p.add_client(c1, 100, LatencyClass::Normal, t0);
        let snap = p.snapshot(t0, &[]);
        assert_eq!(snap.demand(c1), 100.0);
        // A burst: ln 2 x 1000 MB/s right after it.
        p.record_bytes(c1, 1_000_000_000, t0);
        let snap = p.snapshot(t0, &[]);
        assert!((snap.demand(c1) - 1000.0 * std::f64::consts::LN_2).abs() < 1e-6);
        let snap = p.snapshot(t0 + Duration::from_secs(30), &[]);
        assert_eq!(snap.demand(c1), 100.0);
    }
}

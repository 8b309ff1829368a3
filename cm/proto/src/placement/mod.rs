//! The IO-free bandwidth placement policy: which client runs on which interconnect \[CCM\].
//!
//! This module owns one decision and nothing else: given the interconnects to the partner node
//! (several RDMA HCA ports plus the TCP fallback) and the registered clients with their demand,
//! it assigns every client to one interconnect and says when and why a client must move. It does
//! no IO and reads no clock: the runtime feeds link changes, client registrations and measured
//! bytes with the current time as `now`, calls [`Placement::handle_timeout`] when
//! [`Placement::poll_timeout`] says so, and drains the decisions with [`Placement::poll_move`]
//! (in the style of `quinn-proto`). It uses no threads and no randomness, and iterates only
//! ordered maps, so the same inputs always produce the same moves.
//!
//! # Units
//!
//! Client demand is declared in **MB/s** (megabytes, 10^6 bytes, per second). Interconnect
//! capacity is in **Mb/s** (megabits, 10^6 bits, per second) as the verbs layer reports it
//! (port speed x width, e.g. `25_000` for 25 Gb/s); it is divided by 8 to compare with demand.
//!
//! # Rules
//!
//! 1. **RDMA first.** The *candidates* are the usable RDMA interconnects, or the usable TCP ones
//!    when no RDMA interconnect is usable. When the last RDMA interconnect goes, every client
//!    moves to TCP ([`MoveReason::FallbackToTcp`]); as soon as one RDMA interconnect is usable
//!    again, every client leaves TCP at once ([`MoveReason::BackToRdma`], with no
//!    `failback_hold`: RDMA is the better path, and the hold only governs voluntary moves). As
//!    link changes arrive one at a time, the first RDMA interconnect back takes every client;
//!    the ones that follow get load by rule 7. When no interconnect at all is usable, clients
//!    keep their last assignment and nothing is emitted until one is.
//! 2. **Demand.** The effective demand of a client is max(declared demand, smoothed measured
//!    rate); the measured rate is an exponentially decaying average of the bytes reported by
//!    [`Placement::record_bytes`] with half-life `rate_half_life`. The utilization of an
//!    interconnect is the sum of its clients' effective demands / (capacity_mbits_per_s / 8). A
//!    zero-capacity interconnect has utilization 0 when it carries no client and infinity
//!    otherwise.
//! 3. **Placement.** A client that needs a place (new, displaced, or leaving TCP) goes to the
//!    candidate with the lowest *resulting* utilization, ties to the lowest id. Several clients
//!    placed at once are placed in decreasing demand order (LPT greedy; non-Critical clients
//!    before Critical ones so that rule 4 knows where the heaviest client is). A client needing
//!    more than half of an interconnect (a *heavy* client) is left alone there: others are
//!    placed on an interconnect without a heavy client whenever one can take them without
//!    becoming hot.
//! 4. **Failure domains.** A Critical client never shares the failure domain of the heaviest
//!    non-Critical client (highest effective demand, ties to the lowest id) when another
//!    usable RDMA failure domain exists (one with a port of non-zero capacity). With a single
//!    HCA it shares.
//! 5. **Adapter failure.** When an interconnect becomes unusable or is removed, its clients are
//!    placed again at once by rule 3 ([`MoveReason::InterconnectDown`], no rate limit),
//!    honouring rule 4: a displaced client that becomes the heaviest avoids the domains of
//!    Critical clients when it can.
//! 6. **Adaptive rebalance.** Every `rebalance_interval`, [`Placement::handle_timeout`] makes
//!    *voluntary* moves ([`MoveReason::Rebalance`] / [`MoveReason::Failback`]), in this order of
//!    priority: (a) move a Critical client out of the heaviest client's failure domain (rule 4
//!    repair, e.g. when the heaviest client changes or a second HCA becomes usable); (b) move
//!    the other clients off a heavy client's interconnect onto one without a heavy client that
//!    stays at or below `hot_utilization` ("when one client's demand grows far beyond the
//!    others', the manager migrates the other clients off its interconnect"); (c) on
//!    a hot interconnect (utilization > `hot_utilization`), move the client whose move lowers
//!    the higher utilization of the two interconnects involved the most, and only if it lowers
//!    it by at least the fraction `min_improvement` (relative: new <= old x (1 -
//!    min_improvement)); (d) fill an empty interconnect from one that holds two or more clients
//!    when that does not raise the higher utilization of the two. No voluntary move may create a
//!    rule 4 violation. A client moves voluntarily at most once per evaluation and at most once
//!    per `min_move_interval`; forced moves (rules 1, 3, 5) are not limited and do not count.
//! 7. **Failback.** A voluntary move only targets an interconnect that has been usable without
//!    interruption for `failback_hold`. So a returning interconnect gets load back through rule
//!    6 once the hold has passed: at least the spreading of 6(d), so that no usable link stays
//!    empty while another holds two or more clients (unless rule 4 forbids every such move,
//!    e.g. for the second port of the heavy client's HCA). A voluntary move onto an interconnect
//!    that became usable while clients existed and had received no client before the evaluation
//!    is reported as [`MoveReason::Failback`]; every other voluntary move as
//!    [`MoveReason::Rebalance`].
//! 8. **Determinism.** Same inputs, same moves.
//!
//! [`Placement::assignment`] reflects every decision at once, including moves not yet drained
//! by [`Placement::poll_move`]; the `from` of each move is the previous assignment.
//!
//! Layout: this file holds [`Placement`] and its inputs and outputs; `types` the vocabulary
//! (interconnects, config, moves, loads); `snapshot` the working copy of an assignment and the
//! measures the rules use (utilization, heavy and heaviest clients, rule 4 violations); `placer`
//! the greedy forced placement (rules 1, 3, 4, 5); `rebalance` the voluntary moves (rules 6, 7:
//! hysteresis, rate limit, failback hold); `rate` the measured-rate average (rule 2).

#![deny(missing_docs)]

mod placer;
mod rate;
mod rebalance;
mod snapshot;
mod types;

pub use types::{
    InterconnectInfo, InterconnectKind, InterconnectLoad, Move, MoveReason, PlacementConfig,
};

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::session::{ClientId, LatencyClass};
use rate::decayed_rate;
use snapshot::utilization;

pub use crate::ids::InterconnectId;

/// Bytes in one MB (demand and rates are in MB/s).
const BYTES_PER_MB: f64 = 1_000_000.0;
/// A client needing more than this share of an interconnect's capacity is "heavy" (rule 3).
const HEAVY_SHARE: f64 = 0.5;
/// Floor applied to `rate_half_life` and `rebalance_interval` (a zero value would divide by
/// zero or make the timer fire continuously).
const MIN_DURATION: Duration = Duration::from_millis(1);

#[derive(Debug, Clone)]
struct Link {
    info: InterconnectInfo,
    /// Start of the current usable period.
    usable_since: Option<Instant>,
    /// Became usable while clients existed and has received no client since.
    recovering: bool,
}

#[derive(Debug, Clone)]
struct Client {
    declared: u32,
    latency: LatencyClass,
    assigned: Option<InterconnectId>,
    /// Kind of `assigned` when it was assigned (the interconnect may since have been removed).
    assigned_kind: Option<InterconnectKind>,
    /// Smoothed measured rate in bytes per second, as of `rate_at`.
    rate: f64,
    rate_at: Option<Instant>,
    last_voluntary: Option<Instant>,
}

/// The bandwidth placement policy (see the module documentation for the rules).
#[derive(Debug, Clone)]
pub struct Placement {
    cfg: PlacementConfig,
    links: BTreeMap<InterconnectId, Link>,
    clients: BTreeMap<ClientId, Client>,
    moves: VecDeque<Move>,
    next_eval: Option<Instant>,
}

impl Placement {
    /// A policy with no interconnect and no client.
    pub fn new(cfg: PlacementConfig) -> Self {
        Placement {
            cfg,
            links: BTreeMap::new(),
            clients: BTreeMap::new(),
            moves: VecDeque::new(),
            next_eval: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &PlacementConfig {
        &self.cfg
    }

    /// Adds an interconnect, or updates its kind, capacity, failure domain and usability.
    ///
    /// Clients are re-placed at once when needed: those on an interconnect that is no longer
    /// usable (rule 5), all of them when the first RDMA interconnect becomes usable while they
    /// are on TCP or when the last one goes (rule 1), and those without an interconnect yet.
    pub fn upsert_interconnect(&mut self, info: InterconnectInfo, now: Instant) {
        let was_usable = self.links.get(&info.id).is_some_and(|l| l.info.usable);
        let prev = self.links.remove(&info.id);
        let (usable_since, recovering) = match (info.usable, was_usable, prev) {
            (false, _, _) => (None, false),
            (true, true, Some(p)) => (p.usable_since, p.recovering),
            // Recovering: load may come back to it (reported as failback), unless clients still
            // point at it (kept through an outage of everything).
            (true, _, _) => {
                let has_clients = self.clients.values().any(|c| c.assigned == Some(info.id));
                (Some(now), !self.clients.is_empty() && !has_clients)
            }
        };
        self.links.insert(
            info.id,
            Link {
                info,
                usable_since,
                recovering,
            },
        );
        self.reconcile(now);
    }

    /// Removes an interconnect; its clients are re-placed at once as for a failure (rule 5).
    /// Unknown ids are ignored.
    pub fn remove_interconnect(&mut self, id: InterconnectId, now: Instant) {
        if self.links.remove(&id).is_some() {
            self.reconcile(now);
        }
    }

    /// Registers a client with its declared demand in MB/s and places it at once (a move with
    /// reason [`MoveReason::Initial`]) if an interconnect is usable. Registering a known client
    /// again updates its demand and latency class and keeps its assignment.
    pub fn add_client(
        &mut self,
        client: ClientId,
        demand_mbytes_per_s: u32,
        latency: LatencyClass,
        now: Instant,
    ) {
        self.add_clients([(client, demand_mbytes_per_s, latency)], now);
    }

    /// [`Placement::add_client`] for many clients at once (client, demand in MB/s, latency
    /// class), placed by one pass: a burst of registrations costs one placement of the burst,
    /// not one pass over every client per registration.
    pub fn add_clients(
        &mut self,
        clients: impl IntoIterator<Item = (ClientId, u32, LatencyClass)>,
        now: Instant,
    ) {
        for (client, demand_mbytes_per_s, latency) in clients {
            self.insert_client(client, demand_mbytes_per_s, latency);
        }
        if self.next_eval.is_none() && !self.clients.is_empty() {
            self.next_eval = now.checked_add(self.rebalance_interval());
        }
        self.reconcile(now);
    }

    fn insert_client(&mut self, client: ClientId, demand_mbytes_per_s: u32, latency: LatencyClass) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.declared = demand_mbytes_per_s;
            c.latency = latency;
        } else {
            self.clients.insert(
                client,
                Client {
                    declared: demand_mbytes_per_s,
                    latency,
                    assigned: None,
                    assigned_kind: None,
                    rate: 0.0,
                    rate_at: None,
                    last_voluntary: None,
                },
            );
        }
    }

    /// Updates the declared demand (MB/s) of a client; the next evaluation acts on it. Unknown
    /// clients are ignored.
    pub fn set_demand(&mut self, client: ClientId, demand_mbytes_per_s: u32, _now: Instant) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.declared = demand_mbytes_per_s;
        }
    }

    /// Forgets a client, and the moves of it not yet drained. Emits nothing.
    pub fn remove_client(&mut self, client: ClientId) {
        if self.clients.remove(&client).is_some() {
            self.moves.retain(|m| m.client != client);
            if self.clients.is_empty() {
                self.next_eval = None;
            }
        }
    }

    /// Periodic re-evaluation: when the deadline of [`Placement::poll_timeout`] has passed, makes
    /// the voluntary moves of rule 6 (with the decayed rates of `now`) and re-arms the timer.
    /// Calling it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.next_eval {
            Some(t) if now >= t => {}
            _ => return,
        }
        self.evaluate(now);
        self.next_eval = if self.clients.is_empty() {
            None
        } else {
            now.checked_add(self.rebalance_interval())
        };
    }

    /// When [`Placement::handle_timeout`] wants to be called next (`None` without clients).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_eval
    }

    /// The next move to apply, in decision order.
    pub fn poll_move(&mut self) -> Option<Move> {
        self.moves.pop_front()
    }

    /// The interconnect a client is assigned to (including moves not yet drained); `None` for an
    /// unknown client or one never placed.
    pub fn assignment(&self, client: ClientId) -> Option<InterconnectId> {
        self.clients.get(&client).and_then(|c| c.assigned)
    }

    /// Load of every known interconnect in id order, with the rates as of `now`.
    pub fn loads(&self, now: Instant) -> Vec<InterconnectLoad> {
        let half_life = self.half_life_secs();
        self.links
            .values()
            .map(|link| {
                let id = link.info.id;
                let mut declared = 0.0;
                let mut measured = 0.0;
                let mut effective = 0.0;
                let mut clients = Vec::new();
                for (&cid, c) in &self.clients {
                    if c.assigned != Some(id) {
                        continue;
                    }
                    let rate = decayed_rate(c, now, half_life) / BYTES_PER_MB;
                    declared += f64::from(c.declared);
                    measured += rate;
                    effective += f64::from(c.declared).max(rate);
                    clients.push(cid);
                }
                InterconnectLoad {
                    id,
                    kind: link.info.kind,
                    capacity_mbits_per_s: link.info.capacity_mbits_per_s,
                    usable: link.info.usable,
                    declared_mbytes_per_s: declared,
                    measured_mbytes_per_s: measured,
                    utilization: utilization(
                        link.info.capacity_mbits_per_s,
                        effective,
                        clients.len(),
                    ),
                    clients,
                }
            })
            .collect()
    }

    /// True when clients are placed on TCP, which happens only while no RDMA interconnect is
    /// usable (false without clients).
    pub fn on_tcp(&self) -> bool {
        self.clients
            .values()
            .any(|c| c.assigned_kind == Some(InterconnectKind::Tcp))
    }

    // ---- internals ----

    fn rebalance_interval(&self) -> Duration {
        self.cfg.rebalance_interval.max(MIN_DURATION)
    }

    fn min_improvement(&self) -> f64 {
        self.cfg.min_improvement.clamp(0.0, 1.0)
    }

    fn is_critical(&self, c: ClientId) -> bool {
        self.clients
            .get(&c)
            .is_some_and(|c| c.latency == LatencyClass::Critical)
    }

    fn capacity(&self, l: InterconnectId) -> u32 {
        self.links
            .get(&l)
            .map_or(0, |l| l.info.capacity_mbits_per_s)
    }

    fn kind(&self, l: InterconnectId) -> Option<InterconnectKind> {
        self.links.get(&l).map(|l| l.info.kind)
    }

    fn domain(&self, l: InterconnectId) -> &str {
        self.links
            .get(&l)
            .map_or("", |l| l.info.failure_domain.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client {
            declared: 0,
            latency: LatencyClass::Normal,
            assigned: None,
            assigned_kind: None,
            rate: 0.0,
            rate_at: None,
            last_voluntary: None,
        }
    }

    #[test]
    fn placement_degenerate_config_does_not_panic() {
        let cfg = PlacementConfig {
            hot_utilization: f64::NAN,
            min_improvement: f64::NAN,
            min_move_interval: Duration::ZERO,
            failback_hold: Duration::MAX,
            rate_half_life: Duration::ZERO,
            rebalance_interval: Duration::ZERO,
        };
        let mut p = Placement::new(cfg);
        let t0 = Instant::now();
        for id in 1..=2 {
            p.upsert_interconnect(
                InterconnectInfo {
                    id: InterconnectId::new(id),
                    kind: InterconnectKind::Rdma,
                    capacity_mbits_per_s: 25_000,
                    failure_domain: format!("mlx5_{id}"),
                    usable: true,
                },
                t0,
            );
        }
        let (c1, c2) = (ClientId::new(1), ClientId::new(2));
        p.add_client(c1, 5000, LatencyClass::Bulk, t0);
        p.add_client(c2, 5000, LatencyClass::Normal, t0);
        p.record_bytes(c1, u64::MAX, t0);
        let mut now = t0;
        for _ in 0..20 {
            now += Duration::from_millis(1);
            p.handle_timeout(now);
        }
        assert!(p.poll_timeout().is_some());
        assert!(p.loads(now).iter().all(|l| !l.utilization.is_nan()));
        let mut c = client();
        c.rate = 1.0;
        c.rate_at = Some(t0);
        assert!(decayed_rate(&c, now, 0.001).is_finite());
    }
}

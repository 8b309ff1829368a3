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
//!    interconnect is the sum of its clients' effective demands / (capacity_mbps / 8). A
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
//!    repair, e.g. when the heaviest client changes or a second HCA becomes usable); (b) move the other clients off a heavy client's interconnect onto one without a
//!    heavy client that stays at or below `hot_utilization` ("when one client's demand grows far
//!    beyond the others', the manager migrates the other clients off its interconnect"); (c) on
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
//!    e.g. for the second port of the heavy client's HCA). A voluntary move onto an interconnect that
//!    became usable while clients existed and had received no client before the evaluation is
//!    reported as [`MoveReason::Failback`]; every other voluntary move as
//!    [`MoveReason::Rebalance`].
//! 8. **Determinism.** Same inputs, same moves.
//!
//! [`Placement::assignment`] reflects every decision at once, including moves not yet drained
//! by [`Placement::poll_move`]; the `from` of each move is the previous assignment.

#![deny(missing_docs)]

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::session::{ClientId, LatencyClass};

/// Identifies one interconnect to the partner node (an HCA port, or TCP), chosen by the runtime.
pub type InterconnectId = u32;

/// Bytes in one MB (demand and rates are in MB/s).
const BYTES_PER_MB: f64 = 1_000_000.0;
/// A client needing more than this share of an interconnect's capacity is "heavy" (rule 3).
const HEAVY_SHARE: f64 = 0.5;
/// Floor applied to `rate_half_life` and `rebalance_interval` (a zero value would divide by
/// zero or make the timer fire continuously).
const MIN_DURATION: Duration = Duration::from_millis(1);

/// The kind of an interconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InterconnectKind {
    /// The TCP fallback: used only when no RDMA interconnect is usable.
    Tcp,
    /// An RDMA HCA port.
    Rdma,
}

/// What the runtime knows about one interconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterconnectInfo {
    /// Its id.
    pub id: InterconnectId,
    /// RDMA or TCP.
    pub kind: InterconnectKind,
    /// Capacity in megabits per second (port speed x width, e.g. `25_000` for 25 Gb/s).
    pub capacity_mbps: u32,
    /// Interconnects that fail together share a failure domain: the HCA device name for RDMA
    /// ports (two ports of one HCA share it), `"tcp"` for TCP.
    pub failure_domain: String,
    /// The port is active and the link to the peer is established.
    pub usable: bool,
}

/// Tunables of the placement policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementConfig {
    /// An interconnect whose utilization is above this is hot (default 0.85).
    pub hot_utilization: f64,
    /// Hysteresis: a move off a hot interconnect must lower the higher utilization of the two
    /// interconnects involved by at least this fraction of it (default 0.10; clamped to 0..=1).
    pub min_improvement: f64,
    /// A client moved voluntarily is not moved voluntarily again before this (default 5 s).
    pub min_move_interval: Duration,
    /// An interconnect must have been usable without interruption this long before voluntary
    /// moves (rebalance, failback) may target it (default 2 s).
    pub failback_hold: Duration,
    /// Half-life of the measured-rate average (default 1 s; at least 1 ms).
    pub rate_half_life: Duration,
    /// How often [`Placement::handle_timeout`] re-evaluates while clients exist (default 250 ms;
    /// at least 1 ms).
    pub rebalance_interval: Duration,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            hot_utilization: 0.85,
            min_improvement: 0.10,
            min_move_interval: Duration::from_secs(5),
            failback_hold: Duration::from_secs(2),
            rate_half_life: Duration::from_secs(1),
            rebalance_interval: Duration::from_millis(250),
        }
    }
}

/// Why a client moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MoveReason {
    /// First placement of a client (it had no interconnect yet).
    Initial,
    /// Its interconnect became unusable or was removed (forced, immediate).
    InterconnectDown,
    /// Voluntary: failure-domain repair, heavy-client isolation, hot interconnect or spreading.
    Rebalance,
    /// Voluntary: load moved onto an interconnect that came back (after `failback_hold`).
    Failback,
    /// No RDMA interconnect is usable any more: the client goes to TCP (forced, immediate).
    FallbackToTcp,
    /// An RDMA interconnect is usable again: the client leaves TCP (forced, immediate).
    BackToRdma,
}

impl MoveReason {
    /// Whether the move is voluntary (rate-limited by `min_move_interval`): `Rebalance` and
    /// `Failback`. The others are forced by a link change or a registration.
    pub fn is_voluntary(self) -> bool {
        matches!(self, MoveReason::Rebalance | MoveReason::Failback)
    }
}

/// One decision for the runtime to apply to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Move {
    /// The client.
    pub client: ClientId,
    /// Its previous interconnect (`None` for a first placement).
    pub from: Option<InterconnectId>,
    /// Its new interconnect.
    pub to: InterconnectId,
    /// Why.
    pub reason: MoveReason,
}

/// Load of one interconnect, for status output and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct InterconnectLoad {
    /// The interconnect.
    pub id: InterconnectId,
    /// Its kind.
    pub kind: InterconnectKind,
    /// Its capacity in megabits per second.
    pub capacity_mbps: u32,
    /// Whether it is usable.
    pub usable: bool,
    /// Sum of the declared demands of its clients, MB/s.
    pub declared_mbytes_per_s: f64,
    /// Sum of the smoothed measured rates of its clients, MB/s.
    pub measured_mbytes_per_s: f64,
    /// Sum of the effective demands / (capacity_mbps / 8); see rule 2 for zero capacity.
    pub utilization: f64,
    /// Its clients (assigned to it, including a last assignment kept while nothing is usable),
    /// in id order.
    pub clients: Vec<ClientId>,
}

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

/// Working copy of the placement of the clients on the candidate interconnects.
#[derive(Debug, Clone, Default)]
struct Snap {
    /// Effective demand of every client, MB/s.
    demand: BTreeMap<ClientId, f64>,
    /// Clients currently on a candidate interconnect.
    at: BTreeMap<ClientId, InterconnectId>,
    load: BTreeMap<InterconnectId, f64>,
    count: BTreeMap<InterconnectId, usize>,
}

impl Snap {
    fn demand(&self, c: ClientId) -> f64 {
        self.demand.get(&c).copied().unwrap_or(0.0)
    }

    fn load(&self, l: InterconnectId) -> f64 {
        self.load.get(&l).copied().unwrap_or(0.0)
    }

    fn count(&self, l: InterconnectId) -> usize {
        self.count.get(&l).copied().unwrap_or(0)
    }

    fn place(&mut self, c: ClientId, l: InterconnectId) {
        self.unplace(c);
        let d = self.demand(c);
        self.at.insert(c, l);
        *self.load.entry(l).or_insert(0.0) += d;
        *self.count.entry(l).or_insert(0) += 1;
    }

    fn unplace(&mut self, c: ClientId) {
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
        }
    }

    fn on(&self, l: InterconnectId) -> Vec<ClientId> {
        self.at
            .iter()
            .filter(|&(_, &at)| at == l)
            .map(|(&c, _)| c)
            .collect()
    }

    /// The client with the highest demand on `l` (ties to the lowest id).
    fn heaviest_on(&self, l: InterconnectId) -> Option<ClientId> {
        let mut best: Option<(ClientId, f64)> = None;
        for c in self.on(l) {
            let d = self.demand(c);
            if !matches!(best, Some((_, bd)) if d <= bd) {
                best = Some((c, d));
            }
        }
        best.map(|(c, _)| c)
    }
}

/// Utilization of an interconnect of `capacity_mbps` carrying `count` clients of total effective
/// demand `load` MB/s (rule 2).
fn utilization(capacity_mbps: u32, load: f64, count: usize) -> f64 {
    let cap = f64::from(capacity_mbps) / 8.0;
    if cap > 0.0 {
        load / cap
    } else if count > 0 {
        f64::INFINITY
    } else {
        0.0
    }
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
        if self.next_eval.is_none() {
            self.next_eval = now.checked_add(self.rebalance_interval());
        }
        self.reconcile(now);
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

    /// Reports `bytes` sent by a client up to `now`, feeding its measured rate: an exponentially
    /// decaying average (half-life `rate_half_life`) in which each report adds
    /// `bytes x ln 2 / half_life` bytes/s, so a steady stream of R bytes/s converges to R.
    /// Report at least every `rebalance_interval` for a smooth estimate. Unknown clients are
    /// ignored.
    pub fn record_bytes(&mut self, client: ClientId, bytes: u64, now: Instant) {
        let half_life = self.half_life_secs();
        if let Some(c) = self.clients.get_mut(&client) {
            let decayed = decayed_rate(c, now, half_life);
            // u64 -> f64 loses precision only above 2^53 bytes, irrelevant for a rate.
            let bytes = bytes as f64;
            c.rate = decayed + bytes * std::f64::consts::LN_2 / half_life;
            c.rate_at = Some(c.rate_at.map_or(now, |t| t.max(now)));
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
                    capacity_mbps: link.info.capacity_mbps,
                    usable: link.info.usable,
                    declared_mbytes_per_s: declared,
                    measured_mbytes_per_s: measured,
                    utilization: utilization(link.info.capacity_mbps, effective, clients.len()),
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

    fn half_life_secs(&self) -> f64 {
        self.cfg.rate_half_life.max(MIN_DURATION).as_secs_f64()
    }

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
        self.links.get(&l).map_or(0, |l| l.info.capacity_mbps)
    }

    fn kind(&self, l: InterconnectId) -> Option<InterconnectKind> {
        self.links.get(&l).map(|l| l.info.kind)
    }

    fn domain(&self, l: InterconnectId) -> &str {
        self.links
            .get(&l)
            .map_or("", |l| l.info.failure_domain.as_str())
    }

    /// Rule 1: the usable RDMA interconnects, else the usable TCP ones, in id order.
    fn candidates(&self) -> Vec<InterconnectId> {
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

    fn snapshot(&self, now: Instant, cands: &[InterconnectId]) -> Snap {
        let half_life = self.half_life_secs();
        let mut snap = Snap::default();
        for (&cid, c) in &self.clients {
            let rate = decayed_rate(c, now, half_life) / BYTES_PER_MB;
            snap.demand.insert(cid, f64::from(c.declared).max(rate));
        }
        for (&cid, c) in &self.clients {
            if let Some(l) = c.assigned.filter(|l| cands.contains(l)) {
                snap.place(cid, l);
            }
        }
        snap
    }

    fn util(&self, snap: &Snap, l: InterconnectId) -> f64 {
        utilization(self.capacity(l), snap.load(l), snap.count(l))
    }

    /// Utilization of `l` with client `c` (not on `l`) added.
    fn util_with(&self, snap: &Snap, l: InterconnectId, c: ClientId) -> f64 {
        utilization(
            self.capacity(l),
            snap.load(l) + snap.demand(c),
            snap.count(l) + 1,
        )
    }

    /// Utilization of `l` with client `c` (on `l`) taken away.
    fn util_without(&self, snap: &Snap, l: InterconnectId, c: ClientId) -> f64 {
        let n = snap.count(l).saturating_sub(1);
        let load = if n == 0 {
            0.0
        } else {
            (snap.load(l) - snap.demand(c)).max(0.0)
        };
        utilization(self.capacity(l), load, n)
    }

    /// Whether `l` carries a heavy client (rule 3) other than `except`.
    fn hosts_heavy(&self, snap: &Snap, l: InterconnectId, except: Option<ClientId>) -> bool {
        let half = f64::from(self.capacity(l)) / 8.0 * HEAVY_SHARE;
        snap.on(l)
            .into_iter()
            .any(|c| Some(c) != except && snap.demand(c) > half)
    }

    /// Rule 4: the placed non-Critical client with the highest positive demand (ties to the
    /// lowest id).
    fn heaviest(&self, snap: &Snap) -> Option<ClientId> {
        let mut best: Option<(ClientId, f64)> = None;
        for &c in snap.at.keys() {
            let d = snap.demand(c);
            if self.is_critical(c) || d <= 0.0 {
                continue;
            }
            if !matches!(best, Some((_, bd)) if d <= bd) {
                best = Some((c, d));
            }
        }
        best.map(|(c, _)| c)
    }

    /// Whether `l` is an RDMA interconnect with non-zero capacity outside failure domain
    /// `domain` (a zero-capacity port does not count as another failure domain for rule 4).
    fn rdma_outside(&self, l: InterconnectId, domain: &str) -> bool {
        self.kind(l) == Some(InterconnectKind::Rdma)
            && self.capacity(l) > 0
            && self.domain(l) != domain
    }

    /// Whether some candidate is an RDMA interconnect outside failure domain `domain`.
    fn other_rdma_domain(&self, cands: &[InterconnectId], domain: &str) -> bool {
        cands.iter().any(|&l| self.rdma_outside(l, domain))
    }

    /// Number of Critical clients violating rule 4, with client `ov.0` on `ov.1` if given.
    fn violations(
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

    /// Rule 3 target choice for client `c` (not placed in `snap`) among `targets`: prefer those
    /// without a heavy client that stay at or below `hot_utilization`, then the lowest resulting
    /// utilization, then the lowest id.
    fn pick_target(
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
    fn reconcile(&mut self, now: Instant) {
        let cands = self.candidates();
        if cands.is_empty() {
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
    fn commit(&mut self, c: ClientId, to: InterconnectId, reason: MoveReason) {
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

    /// Rules 6 and 7: voluntary moves.
    fn evaluate(&mut self, now: Instant) {
        self.reconcile(now);
        let cands = self.candidates();
        if cands.is_empty() {
            return;
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

/// A client's smoothed rate in bytes/s as of `now` (decayed since the last report).
fn decayed_rate(c: &Client, now: Instant, half_life_secs: f64) -> f64 {
    match c.rate_at {
        Some(t) => {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            c.rate * 0.5f64.powf(dt / half_life_secs)
        }
        None => 0.0,
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
    fn placement_default_config_values() {
        let cfg = PlacementConfig::default();
        assert_eq!(cfg.hot_utilization, 0.85);
        assert_eq!(cfg.min_improvement, 0.10);
        assert_eq!(cfg.min_move_interval, Duration::from_secs(5));
        assert_eq!(cfg.failback_hold, Duration::from_secs(2));
        assert_eq!(cfg.rate_half_life, Duration::from_secs(1));
        assert_eq!(cfg.rebalance_interval, Duration::from_millis(250));
    }

    #[test]
    fn placement_voluntary_reasons() {
        assert!(MoveReason::Rebalance.is_voluntary());
        assert!(MoveReason::Failback.is_voluntary());
        for r in [
            MoveReason::Initial,
            MoveReason::InterconnectDown,
            MoveReason::FallbackToTcp,
            MoveReason::BackToRdma,
        ] {
            assert!(!r.is_voluntary());
        }
    }

    #[test]
    fn placement_rate_ewma_converges_and_decays() {
        let mut p = Placement::new(PlacementConfig::default());
        let t0 = Instant::now();
        p.add_client(1, 0, LatencyClass::Bulk, t0);
        let mut now = t0;
        // 800 MB/s reported every 250 ms for 10 s.
        for _ in 0..40 {
            now += Duration::from_millis(250);
            p.record_bytes(1, 200_000_000, now);
        }
        let c = &p.clients[&1];
        let rate = decayed_rate(c, now, 1.0) / BYTES_PER_MB;
        assert!((rate - 800.0).abs() < 800.0 * 0.12, "{rate}");
        // Silence for one half-life halves it; for a minute makes it negligible.
        let half = decayed_rate(c, now + Duration::from_secs(1), 1.0) / BYTES_PER_MB;
        assert!((half - rate / 2.0).abs() < 1e-6);
        assert!(decayed_rate(c, now + Duration::from_secs(60), 1.0) < 1.0);
        // Time going backwards does not panic nor grow the rate.
        assert_eq!(decayed_rate(c, t0, 1.0), c.rate);
    }

    #[test]
    fn placement_effective_demand_is_max_of_declared_and_measured() {
        let mut p = Placement::new(PlacementConfig::default());
        let t0 = Instant::now();
        p.add_client(1, 100, LatencyClass::Normal, t0);
        let snap = p.snapshot(t0, &[]);
        assert_eq!(snap.demand(1), 100.0);
        // A burst: ln 2 x 1000 MB/s right after it.
        p.record_bytes(1, 1_000_000_000, t0);
        let snap = p.snapshot(t0, &[]);
        assert!((snap.demand(1) - 1000.0 * std::f64::consts::LN_2).abs() < 1e-6);
        let snap = p.snapshot(t0 + Duration::from_secs(30), &[]);
        assert_eq!(snap.demand(1), 100.0);
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
                    id,
                    kind: InterconnectKind::Rdma,
                    capacity_mbps: 25_000,
                    failure_domain: format!("mlx5_{id}"),
                    usable: true,
                },
                t0,
            );
        }
        p.add_client(1, 5000, LatencyClass::Bulk, t0);
        p.add_client(2, 5000, LatencyClass::Normal, t0);
        p.record_bytes(1, u64::MAX, t0);
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

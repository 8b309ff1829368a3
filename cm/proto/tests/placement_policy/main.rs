//! Tests of the bandwidth placement policy (`peercm_cm_proto::placement`), one or more per rule,
//! with 2 and 3 HCAs, plus a property test over random operation sequences.
//!
//! The standard cast: a heavy NVRAM-log mirror (2000 MB/s, Bulk), two light clients (50 MB/s,
//! Normal) and a heartbeat (1 MB/s, Critical), over 25 Gb/s HCA ports (3125 MB/s) and a TCP
//! fallback. Every test drives the policy through `Rig`, which checks on every drained move that
//! `from` is the previous assignment and keeps a log of the moves with their time.
//!
//! Test names start with `placement_` so that `cargo test -p peercm-cm-proto placement` runs them.
//!
//! Layout: this file holds the rig and the standard cast; `initial` tests rules 3 and 4 (initial
//! placement, failure domains), `failover` rules 5, 7 and 1 (adapter failure, failback, TCP
//! fallback), `rebalance` rule 6 and the edge cases, `random` the property test.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use peercm_cm_proto::placement::{
    InterconnectId, InterconnectInfo, InterconnectKind, Move, MoveReason, Placement,
    PlacementConfig,
};
use peercm_cm_proto::session::{ClientId, LatencyClass};
use proptest::prelude::*;

mod failover;
mod initial;
mod random;
mod rebalance;

const TCP: InterconnectId = InterconnectId::TCP;
const HEAVY: ClientId = ClientId::new(1);
const LIGHT1: ClientId = ClientId::new(2);
const LIGHT2: ClientId = ClientId::new(3);
const HB: ClientId = ClientId::new(4);
const STEP: Duration = Duration::from_millis(250);

/// Interconnect `n` (0 = TCP, `n` = HCA port / rail `n`).
fn ic(n: u32) -> InterconnectId {
    InterconnectId::new(n)
}

/// Client `n`.
fn cid(n: u32) -> ClientId {
    ClientId::new(n)
}

fn rdma(id: InterconnectId, domain: &str, usable: bool) -> InterconnectInfo {
    InterconnectInfo {
        id,
        kind: InterconnectKind::Rdma,
        capacity_mbits_per_s: 25_000,
        failure_domain: domain.to_string(),
        usable,
    }
}

fn tcp(usable: bool) -> InterconnectInfo {
    InterconnectInfo {
        id: TCP,
        kind: InterconnectKind::Tcp,
        capacity_mbits_per_s: 10_000,
        failure_domain: "tcp".to_string(),
        usable,
    }
}

/// Failure domain of HCA port `id` in the standard rigs: one HCA per port.
fn hca(id: InterconnectId) -> String {
    format!("mlx5_{}", id.get() - 1)
}

struct Rig {
    p: Placement,
    t0: Instant,
    now: Instant,
    model: BTreeMap<ClientId, Option<InterconnectId>>,
    log: Vec<(Instant, Move)>,
}

impl Rig {
    fn empty() -> Self {
        let t0 = Instant::now();
        Rig {
            p: Placement::new(PlacementConfig::default()),
            t0,
            now: t0,
            model: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    /// TCP (id 0) plus `hcas` HCA ports (ids 1..=hcas), each its own failure domain.
    fn new(hcas: u32) -> Self {
        let mut rig = Rig::empty();
        rig.link(tcp(true));
        for id in 1..=hcas {
            rig.link(rdma(ic(id), &hca(ic(id)), true));
        }
        rig
    }

    fn link(&mut self, info: InterconnectInfo) -> Vec<Move> {
        self.p.upsert_interconnect(info, self.now);
        self.drain()
    }

    fn set_usable(&mut self, id: InterconnectId, usable: bool) -> Vec<Move> {
        let info = if id == TCP {
            tcp(usable)
        } else {
            rdma(id, &hca(id), usable)
        };
        self.link(info)
    }

    fn add(&mut self, client: ClientId, demand: u32, latency: LatencyClass) -> Vec<Move> {
        self.model.entry(client).or_insert(None);
        self.p.add_client(client, demand, latency, self.now);
        self.drain()
    }

    fn standard_clients(&mut self) {
        self.add(HEAVY, 2000, LatencyClass::Bulk);
        self.add(LIGHT1, 50, LatencyClass::Normal);
        self.add(LIGHT2, 50, LatencyClass::Normal);
        self.add(HB, 1, LatencyClass::Critical);
    }

    fn remove(&mut self, client: ClientId) -> Vec<Move> {
        self.model.remove(&client);
        self.p.remove_client(client);
        self.drain()
    }

    fn drain(&mut self) -> Vec<Move> {
        let mut out = Vec::new();
        while let Some(m) = self.p.poll_move() {
            let prev = self.model.get(&m.client).copied();
            assert_eq!(
                prev,
                Some(m.from),
                "from must be the previous assignment: {m:?}"
            );
            self.model.insert(m.client, Some(m.to));
            self.log.push((self.now, m));
            out.push(m);
        }
        for (&c, &a) in &self.model {
            assert_eq!(self.p.assignment(c), a, "assignment of client {c}");
        }
        out
    }

    /// Advances time in rebalance steps, calling `handle_timeout` at each; returns the moves.
    fn advance(&mut self, d: Duration) -> Vec<Move> {
        self.advance_with(d, |_, _| {})
    }

    /// Like `advance`, calling `feed(placement, now)` before each `handle_timeout`.
    fn advance_with(
        &mut self,
        d: Duration,
        mut feed: impl FnMut(&mut Placement, Instant),
    ) -> Vec<Move> {
        let end = self.now + d;
        let mut out = Vec::new();
        while self.now < end {
            self.now += STEP;
            feed(&mut self.p, self.now);
            self.p.handle_timeout(self.now);
            out.extend(self.drain());
        }
        out
    }

    fn at(&self, c: ClientId) -> InterconnectId {
        self.p.assignment(c).unwrap()
    }

    fn clients_on(&self, id: InterconnectId) -> Vec<ClientId> {
        self.model
            .iter()
            .filter(|&(_, &a)| a == Some(id))
            .map(|(&c, _)| c)
            .collect()
    }

    fn voluntary_count(&self) -> usize {
        self.log
            .iter()
            .filter(|(_, m)| m.reason.is_voluntary())
            .count()
    }

    /// No client moved voluntarily twice within `min_move_interval`.
    fn assert_rate_limited(&self) {
        let gap = PlacementConfig::default().min_move_interval;
        let mut last: BTreeMap<ClientId, Instant> = BTreeMap::new();
        for (t, m) in &self.log {
            if !m.reason.is_voluntary() {
                continue;
            }
            if let Some(prev) = last.insert(m.client, *t) {
                assert!(
                    *t - prev >= gap,
                    "client {} moved twice within {gap:?}",
                    m.client
                );
            }
        }
    }
}

fn reasons(moves: &[Move]) -> Vec<MoveReason> {
    moves.iter().map(|m| m.reason).collect()
}

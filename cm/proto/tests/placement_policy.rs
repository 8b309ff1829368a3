//! Tests of the bandwidth placement policy (`peercm_cm_proto::placement`), one or more per rule,
//! with 2 and 3 HCAs, plus a property test over random operation sequences.
//!
//! The standard cast: a heavy NVRAM-log mirror (2000 MB/s, Bulk), two light clients (50 MB/s,
//! Normal) and a heartbeat (1 MB/s, Critical), over 25 Gb/s HCA ports (3125 MB/s) and a TCP
//! fallback. Every test drives the policy through `Rig`, which checks on every drained move that
//! `from` is the previous assignment and keeps a log of the moves with their time.
//!
//! Test names start with `placement_` so that `cargo test -p peercm-cm-proto placement` runs them.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use peercm_cm_proto::placement::{
    InterconnectId, InterconnectInfo, InterconnectKind, Move, MoveReason, Placement,
    PlacementConfig,
};
use peercm_cm_proto::session::{ClientId, LatencyClass};
use proptest::prelude::*;

const TCP: InterconnectId = 0;
const HEAVY: ClientId = 1;
const LIGHT1: ClientId = 2;
const LIGHT2: ClientId = 3;
const HB: ClientId = 4;
const STEP: Duration = Duration::from_millis(250);

fn rdma(id: InterconnectId, domain: &str, usable: bool) -> InterconnectInfo {
    InterconnectInfo {
        id,
        kind: InterconnectKind::Rdma,
        capacity_mbps: 25_000,
        failure_domain: domain.to_string(),
        usable,
    }
}

fn tcp(usable: bool) -> InterconnectInfo {
    InterconnectInfo {
        id: TCP,
        kind: InterconnectKind::Tcp,
        capacity_mbps: 10_000,
        failure_domain: "tcp".to_string(),
        usable,
    }
}

/// Failure domain of HCA port `id` in the standard rigs: one HCA per port.
fn hca(id: InterconnectId) -> String {
    format!("mlx5_{}", id - 1)
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
            rig.link(rdma(id, &hca(id), true));
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

// ---- rule 3: initial placement ----

#[test]
fn placement_initial_two_hcas_heavy_alone_lights_share_heartbeat_apart() {
    let mut rig = Rig::new(2);
    rig.standard_clients();
    assert!(rig
        .log
        .iter()
        .all(|(_, m)| m.reason == MoveReason::Initial && m.from.is_none()));
    assert_eq!(rig.clients_on(1), vec![HEAVY]);
    assert_eq!(rig.clients_on(2), vec![LIGHT1, LIGHT2, HB]);
    assert!(!rig.p.on_tcp());
    // Nothing to improve: quiet.
    assert!(rig.advance(Duration::from_secs(30)).is_empty());
}

#[test]
fn placement_initial_three_hcas_spreads_lights() {
    let mut rig = Rig::new(3);
    rig.standard_clients();
    assert_eq!(rig.clients_on(1), vec![HEAVY]);
    assert_eq!(rig.at(LIGHT1), 2);
    assert_eq!(rig.at(LIGHT2), 3);
    assert_ne!(
        rig.at(HB),
        1,
        "heartbeat must not share the heavy client's HCA"
    );
    assert!(rig.advance(Duration::from_secs(30)).is_empty());
}

#[test]
fn placement_lpt_minimizes_the_most_loaded_interconnect() {
    let mut rig = Rig::new(2);
    for (c, d) in [(10, 1200), (11, 1000), (12, 800), (13, 600)] {
        rig.add(c, d, LatencyClass::Normal);
    }
    assert_eq!(rig.clients_on(1), vec![10, 13]);
    assert_eq!(rig.clients_on(2), vec![11, 12]);
    let loads = rig.p.loads(rig.now);
    let util: Vec<f64> = loads
        .iter()
        .filter(|l| l.id != TCP)
        .map(|l| l.utilization)
        .collect();
    assert!((util[0] - 1800.0 / 3125.0).abs() < 1e-9 && (util[1] - util[0]).abs() < 1e-9);
}

#[test]
fn placement_displaced_clients_are_placed_in_decreasing_demand_order() {
    // Registered in increasing demand order on port 1 alone; ports 2 and 3 come up at the same
    // instant (so no voluntary move happens), then port 1 fails: the four displaced clients are
    // placed largest first (LPT) onto 2 and 3, balancing them at 1800 / 1800 MB/s.
    let mut rig = Rig::new(1);
    rig.link(rdma(2, "mlx5_1", false));
    rig.link(rdma(3, "mlx5_2", false));
    for (c, d) in [(13, 600), (12, 800), (11, 1000), (10, 1200)] {
        rig.add(c, d, LatencyClass::Normal);
    }
    assert_eq!(rig.clients_on(1), vec![10, 11, 12, 13]);
    assert!(rig.link(rdma(2, "mlx5_1", true)).is_empty());
    assert!(rig.link(rdma(3, "mlx5_2", true)).is_empty());
    let moves = rig.set_usable(1, false);
    assert_eq!(
        moves.iter().map(|m| m.client).collect::<Vec<_>>(),
        vec![10, 11, 12, 13]
    );
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::InterconnectDown));
    assert_eq!(rig.clients_on(2), vec![10, 13]);
    assert_eq!(rig.clients_on(3), vec![11, 12]);
}

#[test]
fn placement_heavy_client_gets_a_link_to_itself_when_the_rest_fits_elsewhere() {
    // Pure LPT would put the 300 MB/s client next to the 1700 MB/s one (2000 < 2100); the
    // heavy client (> 50% of a port) keeps its port because the other one can take it.
    let mut rig = Rig::new(2);
    rig.add(20, 1700, LatencyClass::Bulk);
    rig.add(21, 1000, LatencyClass::Normal);
    rig.add(22, 800, LatencyClass::Normal);
    rig.add(23, 300, LatencyClass::Normal);
    assert_eq!(rig.clients_on(1), vec![20]);
    assert_eq!(rig.clients_on(2), vec![21, 22, 23]);
    assert!(rig.advance(Duration::from_secs(20)).is_empty());
}

#[test]
fn placement_ties_go_to_the_lowest_id() {
    let mut rig = Rig::new(3);
    let moves = rig.add(7, 10, LatencyClass::Normal);
    assert_eq!(
        moves,
        vec![Move {
            client: 7,
            from: None,
            to: 1,
            reason: MoveReason::Initial
        }]
    );
}

// ---- rule 4: failure domains ----

#[test]
fn placement_single_hca_critical_shares_the_heavy_domain() {
    let mut rig = Rig::new(1);
    rig.standard_clients();
    assert_eq!(rig.clients_on(1), vec![HEAVY, LIGHT1, LIGHT2, HB]);
    assert!(rig.advance(Duration::from_secs(20)).is_empty());
}

#[test]
fn placement_critical_avoids_both_ports_of_the_heavy_hca() {
    // Ports 1 and 2 on one HCA, port 3 on another.
    let mut rig = Rig::empty();
    rig.link(tcp(true));
    rig.link(rdma(1, "mlx5_0", true));
    rig.link(rdma(2, "mlx5_0", true));
    rig.link(rdma(3, "mlx5_1", true));
    rig.standard_clients();
    assert_eq!(rig.at(HEAVY), 1);
    assert_eq!(rig.at(HB), 3);
    assert!(rig.advance(Duration::from_secs(20)).is_empty());
}

#[test]
fn placement_reverse_registration_order_converges_to_the_same_shape() {
    // Heartbeat and lights first: the heavy client avoids the heartbeat's HCA, then (once the
    // ports are settled) the lights are moved off the heavy client's port, once, then quiet.
    let mut rig = Rig::new(2);
    rig.add(HB, 1, LatencyClass::Critical);
    rig.add(LIGHT2, 50, LatencyClass::Normal);
    rig.add(LIGHT1, 50, LatencyClass::Normal);
    rig.add(HEAVY, 2000, LatencyClass::Bulk);
    assert_eq!(rig.at(HB), 1);
    assert_eq!(rig.at(HEAVY), 2);
    let moves = rig.advance(Duration::from_secs(30));
    assert_eq!(moves.len(), 2, "{moves:?}");
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::Rebalance && m.to == 1));
    assert_eq!(rig.clients_on(2), vec![HEAVY]);
    assert_eq!(rig.clients_on(1), vec![LIGHT1, LIGHT2, HB]);
}

#[test]
fn placement_critical_follows_when_the_heaviest_client_changes() {
    // The heaviest client is a light one once the mirror goes: the heartbeat leaves its HCA.
    let mut rig = Rig::new(2);
    rig.standard_clients();
    rig.now += Duration::from_secs(3);
    assert!(rig.remove(HEAVY).is_empty(), "removal emits nothing");
    let moves = rig.advance(Duration::from_secs(20));
    assert_eq!(
        moves,
        vec![Move {
            client: HB,
            from: Some(2),
            to: 1,
            reason: MoveReason::Rebalance
        }]
    );
    assert_eq!(rig.clients_on(2), vec![LIGHT1, LIGHT2]);
}

// ---- rule 5: adapter failure, rule 7: failback ----

#[test]
fn placement_port_flap_on_busy_link_forced_move_then_failback_after_hold() {
    let mut rig = Rig::new(2);
    rig.standard_clients();
    rig.advance(Duration::from_secs(3));
    let moves = rig.set_usable(1, false);
    assert_eq!(
        moves,
        vec![Move {
            client: HEAVY,
            from: Some(1),
            to: 2,
            reason: MoveReason::InterconnectDown
        }]
    );
    rig.advance(Duration::from_secs(1));
    let up_at = rig.now;
    assert!(rig.set_usable(1, true).is_empty());
    let hold = PlacementConfig::default().failback_hold;
    assert!(
        rig.advance(hold - STEP).is_empty(),
        "nothing moves back during the hold"
    );
    let moves = rig.advance(Duration::from_secs(20));
    assert_eq!(moves.len(), 3, "{moves:?}");
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::Failback && m.to == 1));
    assert!(rig
        .log
        .iter()
        .filter(|(_, m)| m.reason == MoveReason::Failback)
        .all(|(t, _)| *t >= up_at + hold));
    assert_eq!(rig.clients_on(2), vec![HEAVY]);
    assert_eq!(rig.clients_on(1), vec![LIGHT1, LIGHT2, HB]);
    rig.assert_rate_limited();
}

#[test]
fn placement_port_flap_three_hcas_keeps_heartbeat_apart() {
    let mut rig = Rig::new(3);
    rig.standard_clients();
    rig.advance(Duration::from_secs(3));
    let hb_at = rig.at(HB);
    let moves = rig.set_usable(1, false);
    assert_eq!(moves.len(), 1);
    assert_eq!(moves[0].reason, MoveReason::InterconnectDown);
    assert_ne!(
        moves[0].to, hb_at,
        "the heavy client avoids the heartbeat's HCA"
    );
    rig.advance(Duration::from_secs(5));
    assert_ne!(rig.at(HB), rig.at(HEAVY));
    rig.set_usable(1, true);
    rig.advance(Duration::from_secs(30));
    // Settled: heavy alone, heartbeat apart, no port empty while another holds 2+ clients.
    let heavy_at = rig.at(HEAVY);
    assert_eq!(rig.clients_on(heavy_at), vec![HEAVY]);
    assert_ne!(hca(rig.at(HB)), hca(heavy_at));
    let counts: Vec<usize> = (1..=3).map(|id| rig.clients_on(id).len()).collect();
    assert!(
        !(counts.contains(&0) && counts.iter().any(|&n| n >= 2)),
        "{counts:?}"
    );
    assert!(rig.advance(Duration::from_secs(30)).is_empty());
    rig.assert_rate_limited();
}

#[test]
fn placement_remove_interconnect_acts_like_a_failure() {
    let mut rig = Rig::new(3);
    rig.standard_clients();
    let victims = rig.clients_on(2);
    rig.p.remove_interconnect(2, rig.now);
    let moves = rig.drain();
    assert_eq!(moves.len(), victims.len());
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::InterconnectDown && m.from == Some(2)));
    assert_ne!(hca(rig.at(HB)), hca(rig.at(HEAVY)));
    // Unknown ids are ignored.
    rig.p.remove_interconnect(99, rig.now);
    assert!(rig.drain().is_empty());
}

// ---- rule 1: RDMA first, TCP fallback ----

#[test]
fn placement_all_rdma_down_falls_back_to_tcp_and_comes_back_at_once() {
    let mut rig = Rig::new(2);
    rig.standard_clients();
    rig.advance(Duration::from_secs(3));
    assert_eq!(
        reasons(&rig.set_usable(1, false)),
        vec![MoveReason::InterconnectDown]
    );
    let moves = rig.set_usable(2, false);
    assert_eq!(moves.len(), 4);
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::FallbackToTcp && m.to == TCP));
    assert!(rig.p.on_tcp());
    assert!(
        rig.advance(Duration::from_secs(10)).is_empty(),
        "TCP carries all, quietly"
    );

    // One port back: everyone leaves TCP at once, no hold.
    let moves = rig.set_usable(2, true);
    assert_eq!(moves.len(), 4);
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::BackToRdma && m.from == Some(TCP)));
    assert!(!rig.p.on_tcp());
    assert!(rig.clients_on(TCP).is_empty());

    // The second port back: after the hold the others leave the heavy client's port.
    rig.set_usable(1, true);
    rig.advance(Duration::from_secs(20));
    let heavy_at = rig.at(HEAVY);
    assert_eq!(rig.clients_on(heavy_at), vec![HEAVY]);
    assert!(rig.clients_on(TCP).is_empty());
    rig.assert_rate_limited();
}

#[test]
fn placement_nothing_usable_keeps_last_assignment_and_emits_nothing() {
    let mut rig = Rig::new(1);
    rig.standard_clients();
    assert!(rig.set_usable(TCP, false).is_empty());
    assert!(rig.set_usable(1, false).is_empty(), "nowhere to go");
    assert_eq!(rig.at(HEAVY), 1);
    assert!(rig.add(9, 10, LatencyClass::Normal).is_empty());
    assert_eq!(rig.p.assignment(9), None);
    assert!(rig.advance(Duration::from_secs(10)).is_empty());
    // TCP comes back first: fallback for the placed ones, initial placement for the new one.
    let moves = rig.set_usable(TCP, true);
    assert_eq!(moves.len(), 5);
    for m in &moves {
        let want = if m.client == 9 {
            MoveReason::Initial
        } else {
            MoveReason::FallbackToTcp
        };
        assert_eq!(m.reason, want, "{m:?}");
        assert_eq!(m.to, TCP);
    }
    assert!(rig.p.on_tcp());
    let moves = rig.set_usable(1, true);
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::BackToRdma && m.to == 1));
    assert_eq!(moves.len(), 5);
}

#[test]
fn placement_clients_added_before_any_interconnect_are_placed_when_one_appears() {
    let mut rig = Rig::empty();
    rig.add(HEAVY, 2000, LatencyClass::Bulk);
    rig.add(HB, 1, LatencyClass::Critical);
    assert_eq!(rig.p.assignment(HEAVY), None);
    let moves = rig.link(rdma(1, "mlx5_0", true));
    assert_eq!(moves.len(), 2);
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::Initial && m.to == 1));
}

// ---- rule 6: adaptive rebalance ----

#[test]
fn placement_measured_growth_isolates_the_heavy_client_once_then_quiet() {
    let mut rig = Rig::new(2);
    rig.add(30, 500, LatencyClass::Bulk);
    rig.add(31, 500, LatencyClass::Normal);
    rig.add(32, 100, LatencyClass::Normal);
    assert_eq!(rig.clients_on(1), vec![30, 32]);
    // Client 30 now really sends 2600 MB/s (reported every 250 ms).
    let moves = rig.advance_with(Duration::from_secs(30), |p, now| {
        p.record_bytes(30, 2600 * 250_000, now);
    });
    assert_eq!(
        moves,
        vec![Move {
            client: 32,
            from: Some(1),
            to: 2,
            reason: MoveReason::Rebalance
        }]
    );
    let load1 = &rig.p.loads(rig.now)[1];
    assert!(
        (load1.measured_mbytes_per_s - 2600.0).abs() < 300.0,
        "{load1:?}"
    );
}

#[test]
fn placement_hot_link_moves_the_client_that_helps_most_once() {
    let mut rig = Rig::new(2);
    rig.add(40, 100, LatencyClass::Normal);
    rig.add(41, 200, LatencyClass::Normal);
    rig.add(42, 100, LatencyClass::Normal);
    assert_eq!(rig.clients_on(1), vec![40, 42]);
    rig.advance(Duration::from_secs(3));
    rig.p.set_demand(40, 1300, rig.now);
    rig.p.set_demand(42, 1500, rig.now);
    assert!(rig.drain().is_empty(), "set_demand emits nothing by itself");
    // Port 1 at 89.6%: moving 40 leaves 48% / 48%, moving 42 48.0% / 54.4%.
    let moves = rig.advance(Duration::from_secs(30));
    assert_eq!(
        moves,
        vec![Move {
            client: 40,
            from: Some(1),
            to: 2,
            reason: MoveReason::Rebalance
        }]
    );
}

#[test]
fn placement_hysteresis_ignores_small_improvements() {
    // Port 1 hot (87.7%) but the only moves lower the maximum by less than 10%.
    let mut rig = Rig::new(2);
    rig.add(50, 1000, LatencyClass::Normal);
    rig.add(51, 1000, LatencyClass::Normal);
    rig.add(52, 1000, LatencyClass::Normal);
    rig.add(53, 1000, LatencyClass::Normal);
    rig.advance(Duration::from_secs(3));
    // 1: 50, 52 -> 2000; 2: 51, 53 -> 2000. Make port 1 hot: 1400 + 1340 = 2740 (87.7%), port
    // 2: 1000 + 1000. Moving 52 (1340) gives 1400 / 3340: worse. Nothing helps enough.
    rig.p.set_demand(50, 1400, rig.now);
    rig.p.set_demand(52, 1340, rig.now);
    assert!(rig.advance(Duration::from_secs(20)).is_empty());
}

#[test]
fn placement_oscillating_measurements_make_a_bounded_number_of_moves() {
    // Port 1 swings around the hot threshold (80% .. 93%) every 2 s for two minutes.
    let mut rig = Rig::new(2);
    rig.add(60, 100, LatencyClass::Normal);
    rig.add(61, 200, LatencyClass::Normal);
    rig.add(62, 100, LatencyClass::Normal);
    assert_eq!(rig.clients_on(1), vec![60, 62]);
    rig.p.set_demand(62, 1300, rig.now);
    let mut tick = 0u32;
    rig.advance_with(Duration::from_secs(120), |p, now| {
        tick += 1;
        let mbps: u64 = if (tick / 8) & 1 == 0 { 1200 } else { 1600 };
        p.record_bytes(60, mbps * 250_000, now);
        p.record_bytes(61, 200 * 250_000, now);
    });
    assert!(rig.voluntary_count() <= 2, "{:?}", rig.log);
    rig.assert_rate_limited();
}

#[test]
fn placement_rate_limit_bounds_moves_even_without_hysteresis() {
    // No hysteresis at all and two clients whose measured rates swap every second: the
    // per-client rate limit alone bounds the moves.
    let cfg = PlacementConfig {
        min_improvement: 0.0,
        ..PlacementConfig::default()
    };
    let mut rig = Rig::empty();
    rig.p = Placement::new(cfg.clone());
    rig.link(rdma(1, "mlx5_0", true));
    rig.link(rdma(2, "mlx5_1", true));
    for c in 70..74 {
        rig.add(c, 10, LatencyClass::Normal);
    }
    let mut tick = 0u32;
    let secs = 60;
    rig.advance_with(Duration::from_secs(secs), |p, now| {
        tick += 1;
        let phase = (tick / 4) & 1 == 0;
        for c in 70..74u32 {
            let high = (c & 1 == 0) == phase;
            let mbps: u64 = if high { 1500 } else { 200 };
            p.record_bytes(c, mbps * 250_000, now);
        }
    });
    rig.assert_rate_limited();
    let per_client_bound = (secs / cfg.min_move_interval.as_secs() + 1) as usize;
    assert!(rig.voluntary_count() <= 4 * per_client_bound);
}

#[test]
fn placement_one_voluntary_move_per_client_per_evaluation() {
    // Six clients crowd port 1 while ports 2 and 3 are down; when these return, several clients
    // move in the same evaluation, but none twice.
    let mut rig = Rig::new(1);
    rig.link(rdma(2, "mlx5_1", false));
    rig.link(rdma(3, "mlx5_2", false));
    for c in 80..86 {
        rig.add(c, 300 + 100 * (c - 80), LatencyClass::Normal);
    }
    rig.add(HB, 1, LatencyClass::Critical);
    assert_eq!(rig.clients_on(1).len(), 7);
    rig.advance(Duration::from_secs(3));
    rig.set_usable(2, true);
    rig.set_usable(3, true);
    rig.advance(Duration::from_secs(30));
    let mut per_eval: BTreeMap<Instant, Vec<ClientId>> = BTreeMap::new();
    for (t, m) in rig.log.iter().filter(|(_, m)| m.reason.is_voluntary()) {
        per_eval.entry(*t).or_default().push(m.client);
    }
    assert!(per_eval.values().any(|cs| cs.len() >= 2), "{per_eval:?}");
    for cs in per_eval.values() {
        let mut unique = cs.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), cs.len(), "{cs:?}");
    }
    assert!((1..=3).all(|id| !rig.clients_on(id).is_empty()));
    rig.assert_rate_limited();
}

// ---- removal, timer, edge cases ----

#[test]
fn placement_removed_client_loses_its_pending_moves() {
    let mut rig = Rig::new(2);
    rig.p.add_client(5, 10, LatencyClass::Normal, rig.now);
    rig.p.remove_client(5);
    assert_eq!(rig.p.poll_move(), None);
    assert_eq!(rig.p.assignment(5), None);
    assert_eq!(rig.p.poll_timeout(), None, "no clients, no timer");
}

#[test]
fn placement_timer_is_armed_while_clients_exist() {
    let mut rig = Rig::new(2);
    assert_eq!(rig.p.poll_timeout(), None);
    rig.add(1, 10, LatencyClass::Normal);
    let t = rig.p.poll_timeout().unwrap();
    assert_eq!(t, rig.t0 + PlacementConfig::default().rebalance_interval);
    rig.p.handle_timeout(rig.t0 + Duration::from_millis(1));
    assert_eq!(rig.p.poll_timeout(), Some(t), "an early call does nothing");
    rig.p.handle_timeout(t);
    assert_eq!(
        rig.p.poll_timeout(),
        Some(t + PlacementConfig::default().rebalance_interval)
    );
    rig.remove(1);
    assert_eq!(rig.p.poll_timeout(), None);
}

#[test]
fn placement_zero_capacity_links_never_panic() {
    let mut rig = Rig::empty();
    let mut zero = rdma(1, "mlx5_0", true);
    zero.capacity_mbps = 0;
    rig.link(zero.clone());
    rig.link(rdma(2, "mlx5_1", true));
    rig.standard_clients();
    assert!(
        rig.clients_on(1).is_empty(),
        "a zero-capacity port takes nothing while another can"
    );
    let loads = rig.p.loads(rig.now);
    assert_eq!(loads[0].utilization, 0.0);
    rig.advance(Duration::from_secs(10));
    // Only zero-capacity ports left: clients still get one, utilization is infinite, no panic.
    rig.set_usable(2, false);
    assert_eq!(rig.clients_on(1).len(), 4);
    assert!(rig.p.loads(rig.now)[0].utilization.is_infinite());
    rig.advance(Duration::from_secs(10));
    rig.assert_rate_limited();
}

#[test]
fn placement_is_deterministic() {
    fn script() -> Vec<Move> {
        let mut rig = Rig::new(3);
        rig.standard_clients();
        rig.advance_with(Duration::from_secs(5), |p, now| {
            p.record_bytes(LIGHT1, 900 * 250_000, now)
        });
        rig.set_usable(1, false);
        rig.advance(Duration::from_secs(1));
        rig.set_usable(2, false);
        rig.set_usable(3, false);
        rig.set_usable(1, true);
        rig.advance_with(Duration::from_secs(20), |p, now| {
            p.record_bytes(LIGHT2, 1200 * 250_000, now)
        });
        rig.set_usable(3, true);
        rig.advance(Duration::from_secs(20));
        rig.log.into_iter().map(|(_, m)| m).collect()
    }
    let a = script();
    assert!(a.len() > 8);
    assert_eq!(a, script());
}

// ---- property test: random operation sequences ----

#[derive(Debug, Clone)]
enum Op {
    Link {
        id: InterconnectId,
        usable: bool,
        cap: u32,
    },
    RemoveLink {
        id: InterconnectId,
    },
    Add {
        client: ClientId,
        demand: u32,
        lat: u8,
    },
    SetDemand {
        client: ClientId,
        demand: u32,
    },
    RemoveClient {
        client: ClientId,
    },
    Bytes {
        client: ClientId,
        mbps: u64,
    },
    Tick {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u32..5, any::<bool>(), prop::sample::select(vec![0u32, 10_000, 25_000, 25_000, 56_000, 100_000]))
            .prop_map(|(id, usable, cap)| Op::Link { id, usable, cap }),
        1 => (0u32..5).prop_map(|id| Op::RemoveLink { id }),
        3 => (0u32..6, 0u32..3000, 0u8..3).prop_map(|(client, demand, lat)| Op::Add { client, demand, lat }),
        2 => (0u32..6, 0u32..3000).prop_map(|(client, demand)| Op::SetDemand { client, demand }),
        1 => (0u32..6).prop_map(|client| Op::RemoveClient { client }),
        3 => (0u32..6, 0u64..4000).prop_map(|(client, mbps)| Op::Bytes { client, mbps }),
        5 => (0u64..3000).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn info_for(id: InterconnectId, usable: bool, cap: u32) -> InterconnectInfo {
    // 0: TCP; 1 and 2: two ports of one HCA; 3, 4: one HCA each.
    let (kind, domain) = match id {
        0 => (InterconnectKind::Tcp, "tcp".to_string()),
        1 | 2 => (InterconnectKind::Rdma, "mlx5_0".to_string()),
        n => (InterconnectKind::Rdma, format!("mlx5_{}", n - 2)),
    };
    InterconnectInfo {
        id,
        kind,
        capacity_mbps: cap,
        failure_domain: domain,
        usable,
    }
}

/// Runs the ops, checking the invariants after each; returns every move in order.
fn run_checked(ops: &[Op]) -> Result<Vec<Move>, TestCaseError> {
    let cfg = PlacementConfig::default();
    let mut p = Placement::new(cfg.clone());
    let t0 = Instant::now();
    let mut now = t0;
    let mut links: BTreeMap<InterconnectId, (InterconnectKind, bool)> = BTreeMap::new();
    let mut infos: BTreeMap<InterconnectId, InterconnectInfo> = BTreeMap::new();
    let mut specs: BTreeMap<ClientId, (u32, LatencyClass)> = BTreeMap::new();
    let mut model: BTreeMap<ClientId, Option<InterconnectId>> = BTreeMap::new();
    let mut last_voluntary: BTreeMap<ClientId, Instant> = BTreeMap::new();
    let mut all = Vec::new();

    let quiet = (0..240).map(|_| Op::Tick { ms: 250 });
    let n_ops = ops.len();
    for (i, op) in ops.iter().cloned().chain(quiet).enumerate() {
        match op {
            Op::Link { id, usable, cap } => {
                let info = info_for(id, usable, cap);
                links.insert(id, (info.kind, usable));
                infos.insert(id, info.clone());
                p.upsert_interconnect(info, now);
            }
            Op::RemoveLink { id } => {
                links.remove(&id);
                infos.remove(&id);
                p.remove_interconnect(id, now);
            }
            Op::Add {
                client,
                demand,
                lat,
            } => {
                let latency = [
                    LatencyClass::Critical,
                    LatencyClass::Normal,
                    LatencyClass::Bulk,
                ][lat as usize];
                model.entry(client).or_insert(None);
                specs.insert(client, (demand, latency));
                p.add_client(client, demand, latency, now);
            }
            Op::SetDemand { client, demand } => {
                if let Some(spec) = specs.get_mut(&client) {
                    spec.0 = demand;
                }
                p.set_demand(client, demand, now);
            }
            Op::RemoveClient { client } => {
                model.remove(&client);
                specs.remove(&client);
                last_voluntary.remove(&client);
                p.remove_client(client);
            }
            Op::Bytes { client, mbps } => p.record_bytes(client, mbps * 250_000, now),
            Op::Tick { ms } => {
                now += Duration::from_millis(ms);
                p.handle_timeout(now);
            }
        }
        let usable = |kind| {
            links
                .iter()
                .filter(|(_, &(k, u))| u && k == kind)
                .map(|(&id, _)| id)
                .collect::<Vec<_>>()
        };
        let rdma = usable(InterconnectKind::Rdma);
        let tcp = usable(InterconnectKind::Tcp);
        let cands = if rdma.is_empty() {
            tcp.clone()
        } else {
            rdma.clone()
        };

        while let Some(m) = p.poll_move() {
            prop_assert_eq!(model.get(&m.client).copied(), Some(m.from), "from: {:?}", m);
            prop_assert!(cands.contains(&m.to), "to a candidate: {:?} {:?}", m, cands);
            match op {
                Op::Tick { .. } => prop_assert!(m.reason.is_voluntary(), "{:?}", m),
                Op::Link { .. } | Op::RemoveLink { .. } => prop_assert!(!m.reason.is_voluntary()),
                Op::Add { client, .. } => {
                    prop_assert_eq!(m.client, client);
                    prop_assert_eq!(m.reason, MoveReason::Initial);
                }
                _ => prop_assert!(false, "no move expected after {:?}: {:?}", op, m),
            }
            if m.reason.is_voluntary() {
                if let Some(prev) = last_voluntary.insert(m.client, now) {
                    prop_assert!(now - prev >= cfg.min_move_interval, "rate limit: {:?}", m);
                }
            }
            // Once the random part is over and everything settled, nothing moves any more.
            prop_assert!(
                i < n_ops + 120,
                "still moving 30 s after the last input: {:?}",
                m
            );
            model.insert(m.client, Some(m.to));
            all.push(m);
        }
        for (&c, &a) in &model {
            prop_assert_eq!(p.assignment(c), a);
            if !cands.is_empty() {
                prop_assert!(
                    a.is_some_and(|a| cands.contains(&a)),
                    "client {} on {:?}, candidates {:?}",
                    c,
                    a,
                    cands
                );
            }
        }
        if !rdma.is_empty() {
            prop_assert!(!p.on_tcp());
        } else if !tcp.is_empty() && !model.is_empty() {
            prop_assert!(p.on_tcp());
        }
        let loads = p.loads(now);
        prop_assert!(loads.iter().all(|l| !l.utilization.is_nan()));
        let placed: usize = loads.iter().map(|l| l.clients.len()).sum();
        prop_assert_eq!(
            placed,
            model
                .values()
                .filter(|a| a.is_some_and(|a| links.contains_key(&a)))
                .count()
        );
    }
    check_settled(&infos, &specs, &model)?;
    Ok(all)
}

/// After a minute without input (rates decayed, holds and rate limits over): rule 4 holds, and
/// with equal port capacities and one port per HCA no usable port is empty while another holds
/// two or more clients.
fn check_settled(
    infos: &BTreeMap<InterconnectId, InterconnectInfo>,
    specs: &BTreeMap<ClientId, (u32, LatencyClass)>,
    model: &BTreeMap<ClientId, Option<InterconnectId>>,
) -> Result<(), TestCaseError> {
    let rdma: Vec<&InterconnectInfo> = infos
        .values()
        .filter(|i| i.usable && i.kind == InterconnectKind::Rdma)
        .collect();
    if rdma.is_empty() {
        return Ok(());
    }
    let on = |id: InterconnectId| model.values().filter(|a| **a == Some(id)).count();
    let domain_of = |c: &ClientId| {
        model[c]
            .and_then(|id| infos.get(&id))
            .map(|i| i.failure_domain.clone())
    };
    let heaviest = specs
        .iter()
        .filter(|(_, (d, lat))| *d > 0 && *lat != LatencyClass::Critical)
        .fold(None::<(ClientId, u32)>, |best, (&c, &(d, _))| match best {
            Some((_, bd)) if bd >= d => best,
            _ => Some((c, d)),
        });
    if let Some((h, _)) = heaviest {
        let hd = domain_of(&h);
        let other = rdma
            .iter()
            .any(|i| i.capacity_mbps > 0 && Some(&i.failure_domain) != hd.as_ref());
        if other {
            for (c, (_, lat)) in specs {
                if *lat == LatencyClass::Critical {
                    prop_assert_ne!(
                        domain_of(c),
                        hd.clone(),
                        "critical {} shares the heaviest {}'s domain",
                        c,
                        h
                    );
                }
            }
        }
    }
    // (With two ports of one HCA, rule 4 may legitimately keep the second port of the heavy
    // client's HCA empty, so the spreading check needs distinct failure domains.)
    let caps: Vec<u32> = rdma.iter().map(|i| i.capacity_mbps).collect();
    let domains: std::collections::BTreeSet<&str> =
        rdma.iter().map(|i| i.failure_domain.as_str()).collect();
    if caps[0] > 0 && caps.iter().all(|&c| c == caps[0]) && domains.len() == rdma.len() {
        let empty = rdma.iter().any(|i| on(i.id) == 0);
        let crowded = rdma.iter().any(|i| on(i.id) >= 2);
        prop_assert!(
            !(empty && crowded),
            "an empty port next to a crowded one: {:?}",
            model
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn placement_prop_invariants_hold_and_runs_are_deterministic(random in prop::collection::vec(op(), 1..80)) {
        // Start from TCP plus two HCAs, then anything goes.
        let mut ops = vec![
            Op::Link { id: 0, usable: true, cap: 10_000 },
            Op::Link { id: 1, usable: true, cap: 25_000 },
            Op::Link { id: 3, usable: true, cap: 25_000 },
        ];
        ops.extend(random);
        let first = run_checked(&ops)?;
        let second = run_checked(&ops)?;
        prop_assert_eq!(first, second);
    }
}

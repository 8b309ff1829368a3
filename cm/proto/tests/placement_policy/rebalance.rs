//! Rule 6 (adaptive rebalance: isolation, hot links, hysteresis, rate limits) and the edge
//! cases (removal, timer, zero capacity, determinism).

use super::*;

// ---- rule 6: adaptive rebalance ----

#[test]
fn placement_measured_growth_isolates_the_heavy_client_once_then_quiet() {
    let mut rig = Rig::new(2);
    rig.add(cid(30), 500, LatencyClass::Bulk);
    rig.add(cid(31), 500, LatencyClass::Normal);
    rig.add(cid(32), 100, LatencyClass::Normal);
    assert_eq!(rig.clients_on(ic(1)), vec![cid(30), cid(32)]);
    // Client 30 now really sends 2600 MB/s (reported every 250 ms).
    let moves = rig.advance_with(Duration::from_secs(30), |p, now| {
        p.record_bytes(cid(30), 2600 * 250_000, now);
    });
    assert_eq!(
        moves,
        vec![Move {
            client: cid(32),
            from: Some(ic(1)),
            to: ic(2),
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
    rig.add(cid(40), 100, LatencyClass::Normal);
    rig.add(cid(41), 200, LatencyClass::Normal);
    rig.add(cid(42), 100, LatencyClass::Normal);
    assert_eq!(rig.clients_on(ic(1)), vec![cid(40), cid(42)]);
    rig.advance(Duration::from_secs(3));
    rig.p.set_demand(cid(40), 1300, rig.now);
    rig.p.set_demand(cid(42), 1500, rig.now);
    assert!(rig.drain().is_empty(), "set_demand emits nothing by itself");
    // Port 1 at 89.6%: moving 40 leaves 48% / 48%, moving 42 48.0% / 54.4%.
    let moves = rig.advance(Duration::from_secs(30));
    assert_eq!(
        moves,
        vec![Move {
            client: cid(40),
            from: Some(ic(1)),
            to: ic(2),
            reason: MoveReason::Rebalance
        }]
    );
}

#[test]
fn placement_hysteresis_ignores_small_improvements() {
    // Port 1 hot (87.7%) but the only moves lower the maximum by less than 10%.
    let mut rig = Rig::new(2);
    rig.add(cid(50), 1000, LatencyClass::Normal);
    rig.add(cid(51), 1000, LatencyClass::Normal);
    rig.add(cid(52), 1000, LatencyClass::Normal);
    rig.add(cid(53), 1000, LatencyClass::Normal);
    rig.advance(Duration::from_secs(3));
    // 1: 50, 52 -> 2000; 2: 51, 53 -> 2000. Make port 1 hot: 1400 + 1340 = 2740 (87.7%), port
    // 2: 1000 + 1000. Moving 52 (1340) gives 1400 / 3340: worse. Nothing helps enough.
    rig.p.set_demand(cid(50), 1400, rig.now);
    rig.p.set_demand(cid(52), 1340, rig.now);
    assert!(rig.advance(Duration::from_secs(20)).is_empty());
}

#[test]
fn placement_oscillating_measurements_make_a_bounded_number_of_moves() {
    // Port 1 swings around the hot threshold (80% .. 93%) every 2 s for two minutes.
    let mut rig = Rig::new(2);
    rig.add(cid(60), 100, LatencyClass::Normal);
    rig.add(cid(61), 200, LatencyClass::Normal);
    rig.add(cid(62), 100, LatencyClass::Normal);
    assert_eq!(rig.clients_on(ic(1)), vec![cid(60), cid(62)]);
    rig.p.set_demand(cid(62), 1300, rig.now);
    let mut tick = 0u32;
    rig.advance_with(Duration::from_secs(120), |p, now| {
        tick += 1;
        let mbps: u64 = if (tick / 8) & 1 == 0 { 1200 } else { 1600 };
        p.record_bytes(cid(60), mbps * 250_000, now);
        p.record_bytes(cid(61), 200 * 250_000, now);
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
    rig.link(rdma(ic(1), "mlx5_0", true));
    rig.link(rdma(ic(2), "mlx5_1", true));
    for c in 70..74 {
        rig.add(cid(c), 10, LatencyClass::Normal);
    }
    let mut tick = 0u32;
    let secs = 60;
    rig.advance_with(Duration::from_secs(secs), |p, now| {
        tick += 1;
        let phase = (tick / 4) & 1 == 0;
        for c in 70..74u32 {
            let high = (c & 1 == 0) == phase;
            let mbps: u64 = if high { 1500 } else { 200 };
            p.record_bytes(cid(c), mbps * 250_000, now);
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
    rig.link(rdma(ic(2), "mlx5_1", false));
    rig.link(rdma(ic(3), "mlx5_2", false));
    for c in 80..86 {
        rig.add(cid(c), 300 + 100 * (c - 80), LatencyClass::Normal);
    }
    rig.add(HB, 1, LatencyClass::Critical);
    assert_eq!(rig.clients_on(ic(1)).len(), 7);
    rig.advance(Duration::from_secs(3));
    rig.set_usable(ic(2), true);
    rig.set_usable(ic(3), true);
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
    assert!((1..=3).all(|id| !rig.clients_on(ic(id)).is_empty()));
    rig.assert_rate_limited();
}

// ---- removal, timer, edge cases ----

#[test]
fn placement_removed_client_loses_its_pending_moves() {
    let mut rig = Rig::new(2);
    rig.p.add_client(cid(5), 10, LatencyClass::Normal, rig.now);
    rig.p.remove_client(cid(5));
    assert_eq!(rig.p.poll_move(), None);
    assert_eq!(rig.p.assignment(cid(5)), None);
    assert_eq!(rig.p.poll_timeout(), None, "no clients, no timer");
}

#[test]
fn placement_timer_is_armed_while_clients_exist() {
    let mut rig = Rig::new(2);
    assert_eq!(rig.p.poll_timeout(), None);
    rig.add(cid(1), 10, LatencyClass::Normal);
    let t = rig.p.poll_timeout().unwrap();
    assert_eq!(t, rig.t0 + PlacementConfig::default().rebalance_interval);
    rig.p.handle_timeout(rig.t0 + Duration::from_millis(1));
    assert_eq!(rig.p.poll_timeout(), Some(t), "an early call does nothing");
    rig.p.handle_timeout(t);
    assert_eq!(
        rig.p.poll_timeout(),
        Some(t + PlacementConfig::default().rebalance_interval)
    );
    rig.remove(cid(1));
    assert_eq!(rig.p.poll_timeout(), None);
}

#[test]
fn placement_zero_capacity_links_never_panic() {
    let mut rig = Rig::empty();
    let mut zero = rdma(ic(1), "mlx5_0", true);
    zero.capacity_mbits_per_s = 0;
    rig.link(zero.clone());
    rig.link(rdma(ic(2), "mlx5_1", true));
    rig.standard_clients();
    assert!(
        rig.clients_on(ic(1)).is_empty(),
        "a zero-capacity port takes nothing while another can"
    );
    let loads = rig.p.loads(rig.now);
    assert_eq!(loads[0].utilization, 0.0);
    rig.advance(Duration::from_secs(10));
    // Only zero-capacity ports left: clients still get one, utilization is infinite, no panic.
    rig.set_usable(ic(2), false);
    assert_eq!(rig.clients_on(ic(1)).len(), 4);
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
        rig.set_usable(ic(1), false);
        rig.advance(Duration::from_secs(1));
        rig.set_usable(ic(2), false);
        rig.set_usable(ic(3), false);
        rig.set_usable(ic(1), true);
        rig.advance_with(Duration::from_secs(20), |p, now| {
            p.record_bytes(LIGHT2, 1200 * 250_000, now)
        });
        rig.set_usable(ic(3), true);
        rig.advance(Duration::from_secs(20));
        rig.log.into_iter().map(|(_, m)| m).collect()
    }
    let a = script();
    assert!(a.len() > 8);
    assert_eq!(a, script());
}

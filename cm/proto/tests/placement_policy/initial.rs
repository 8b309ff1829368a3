//! Rules 3 and 4: initial placement (LPT greedy, heavy clients alone, ties) and failure
//! domains (the heartbeat away from the heavy client's HCA).

use super::*;

// ---- rule 3: initial placement ----

#[test]
fn placement_initial_two_hcas_heavy_alone_lights_share_heartbeat_apart() {
    let mut rig = Rig::new(2);
    rig.standard_clients();
    assert!(rig
        .log
        .iter()
        .all(|(_, m)| m.reason == MoveReason::Initial && m.from.is_none()));
    assert_eq!(rig.clients_on(ic(1)), vec![HEAVY]);
    assert_eq!(rig.clients_on(ic(2)), vec![LIGHT1, LIGHT2, HB]);
    assert!(!rig.p.on_tcp());
    // Nothing to improve: quiet.
    assert!(rig.advance(Duration::from_secs(30)).is_empty());
}

#[test]
fn placement_initial_three_hcas_spreads_lights() {
    let mut rig = Rig::new(3);
    rig.standard_clients();
    assert_eq!(rig.clients_on(ic(1)), vec![HEAVY]);
    assert_eq!(rig.at(LIGHT1), ic(2));
    assert_eq!(rig.at(LIGHT2), ic(3));
    assert_ne!(
        rig.at(HB),
        ic(1),
        "heartbeat must not share the heavy client's HCA"
    );
    assert!(rig.advance(Duration::from_secs(30)).is_empty());
}

#[test]
fn placement_lpt_minimizes_the_most_loaded_interconnect() {
    let mut rig = Rig::new(2);
    for (c, d) in [(10, 1200), (11, 1000), (12, 800), (13, 600)] {
        rig.add(cid(c), d, LatencyClass::Normal);
    }
    assert_eq!(rig.clients_on(ic(1)), vec![cid(10), cid(13)]);
    assert_eq!(rig.clients_on(ic(2)), vec![cid(11), cid(12)]);
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
    rig.link(rdma(ic(2), "mlx5_1", false));
    rig.link(rdma(ic(3), "mlx5_2", false));
    for (c, d) in [(13, 600), (12, 800), (11, 1000), (10, 1200)] {
        rig.add(cid(c), d, LatencyClass::Normal);
    }
    assert_eq!(
        rig.clients_on(ic(1)),
        vec![cid(10), cid(11), cid(12), cid(13)]
    );
    assert!(rig.link(rdma(ic(2), "mlx5_1", true)).is_empty());
    assert!(rig.link(rdma(ic(3), "mlx5_2", true)).is_empty());
    let moves = rig.set_usable(ic(1), false);
    assert_eq!(
        moves.iter().map(|m| m.client).collect::<Vec<_>>(),
        vec![cid(10), cid(11), cid(12), cid(13)]
    );
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::InterconnectDown));
    assert_eq!(rig.clients_on(ic(2)), vec![cid(10), cid(13)]);
    assert_eq!(rig.clients_on(ic(3)), vec![cid(11), cid(12)]);
}

#[test]
fn placement_heavy_client_gets_a_link_to_itself_when_the_rest_fits_elsewhere() {
    // Pure LPT would put the 300 MB/s client next to the 1700 MB/s one (2000 < 2100); the
    // heavy client (> 50% of a port) keeps its port because the other one can take it.
    let mut rig = Rig::new(2);
    rig.add(cid(20), 1700, LatencyClass::Bulk);
    rig.add(cid(21), 1000, LatencyClass::Normal);
    rig.add(cid(22), 800, LatencyClass::Normal);
    rig.add(cid(23), 300, LatencyClass::Normal);
    assert_eq!(rig.clients_on(ic(1)), vec![cid(20)]);
    assert_eq!(rig.clients_on(ic(2)), vec![cid(21), cid(22), cid(23)]);
    assert!(rig.advance(Duration::from_secs(20)).is_empty());
}

#[test]
fn placement_ties_go_to_the_lowest_id() {
    let mut rig = Rig::new(3);
    let moves = rig.add(cid(7), 10, LatencyClass::Normal);
    assert_eq!(
        moves,
        vec![Move {
            client: cid(7),
            from: None,
            to: ic(1),
            reason: MoveReason::Initial
        }]
    );
}

// ---- rule 4: failure domains ----

#[test]
fn placement_single_hca_critical_shares_the_heavy_domain() {
    let mut rig = Rig::new(1);
    rig.standard_clients();
    assert_eq!(rig.clients_on(ic(1)), vec![HEAVY, LIGHT1, LIGHT2, HB]);
    assert!(rig.advance(Duration::from_secs(20)).is_empty());
}

#[test]
fn placement_critical_avoids_both_ports_of_the_heavy_hca() {
    // Ports 1 and 2 on one HCA, port 3 on another.
    let mut rig = Rig::empty();
    rig.link(tcp(true));
    rig.link(rdma(ic(1), "mlx5_0", true));
    rig.link(rdma(ic(2), "mlx5_0", true));
    rig.link(rdma(ic(3), "mlx5_1", true));
    rig.standard_clients();
    assert_eq!(rig.at(HEAVY), ic(1));
    assert_eq!(rig.at(HB), ic(3));
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
    assert_eq!(rig.at(HB), ic(1));
    assert_eq!(rig.at(HEAVY), ic(2));
    let moves = rig.advance(Duration::from_secs(30));
    assert_eq!(moves.len(), 2, "{moves:?}");
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::Rebalance && m.to == ic(1)));
    assert_eq!(rig.clients_on(ic(2)), vec![HEAVY]);
    assert_eq!(rig.clients_on(ic(1)), vec![LIGHT1, LIGHT2, HB]);
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
            from: Some(ic(2)),
            to: ic(1),
            reason: MoveReason::Rebalance
        }]
    );
    assert_eq!(rig.clients_on(ic(2)), vec![LIGHT1, LIGHT2]);
}

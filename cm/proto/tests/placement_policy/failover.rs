//! Rules 5, 7 and 1: adapter failure (forced moves), failback after the hold, and the TCP
//! fallback when no RDMA interconnect is usable.

use super::*;

// ---- rule 5: adapter failure, rule 7: failback ----

#[test]
fn placement_port_flap_on_busy_link_forced_move_then_failback_after_hold() {
    let mut rig = Rig::new(2);
    rig.standard_clients();
    rig.advance(Duration::from_secs(3));
    let moves = rig.set_usable(ic(1), false);
    assert_eq!(
        moves,
        vec![Move {
            client: HEAVY,
            from: Some(ic(1)),
            to: ic(2),
            reason: MoveReason::InterconnectDown
        }]
    );
    rig.advance(Duration::from_secs(1));
    let up_at = rig.now;
    assert!(rig.set_usable(ic(1), true).is_empty());
    let hold = PlacementConfig::default().failback_hold;
    assert!(
        rig.advance(hold - STEP).is_empty(),
        "nothing moves back during the hold"
    );
    let moves = rig.advance(Duration::from_secs(20));
    assert_eq!(moves.len(), 3, "{moves:?}");
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::Failback && m.to == ic(1)));
    assert!(rig
        .log
        .iter()
        .filter(|(_, m)| m.reason == MoveReason::Failback)
        .all(|(t, _)| *t >= up_at + hold));
    assert_eq!(rig.clients_on(ic(2)), vec![HEAVY]);
    assert_eq!(rig.clients_on(ic(1)), vec![LIGHT1, LIGHT2, HB]);
    rig.assert_rate_limited();
}

#[test]
fn placement_port_flap_three_hcas_keeps_heartbeat_apart() {
    let mut rig = Rig::new(3);
    rig.standard_clients();
    rig.advance(Duration::from_secs(3));
    let hb_at = rig.at(HB);
    let moves = rig.set_usable(ic(1), false);
    assert_eq!(moves.len(), 1);
    assert_eq!(moves[0].reason, MoveReason::InterconnectDown);
    assert_ne!(
        moves[0].to, hb_at,
        "the heavy client avoids the heartbeat's HCA"
    );
    rig.advance(Duration::from_secs(5));
    assert_ne!(rig.at(HB), rig.at(HEAVY));
    rig.set_usable(ic(1), true);
    rig.advance(Duration::from_secs(30));
    // Settled: heavy alone, heartbeat apart, no port empty while another holds 2+ clients.
    let heavy_at = rig.at(HEAVY);
    assert_eq!(rig.clients_on(heavy_at), vec![HEAVY]);
    assert_ne!(hca(rig.at(HB)), hca(heavy_at));
    let counts: Vec<usize> = (1..=3).map(|id| rig.clients_on(ic(id)).len()).collect();
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
    let victims = rig.clients_on(ic(2));
    rig.p.remove_interconnect(ic(2), rig.now);
    let moves = rig.drain();
    assert_eq!(moves.len(), victims.len());
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::InterconnectDown && m.from == Some(ic(2))));
    assert_ne!(hca(rig.at(HB)), hca(rig.at(HEAVY)));
    // Unknown ids are ignored.
    rig.p.remove_interconnect(ic(99), rig.now);
    assert!(rig.drain().is_empty());
}

// ---- rule 1: RDMA first, TCP fallback ----

#[test]
fn placement_all_rdma_down_falls_back_to_tcp_and_comes_back_at_once() {
    let mut rig = Rig::new(2);
    rig.standard_clients();
    rig.advance(Duration::from_secs(3));
    assert_eq!(
        reasons(&rig.set_usable(ic(1), false)),
        vec![MoveReason::InterconnectDown]
    );
    let moves = rig.set_usable(ic(2), false);
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
    let moves = rig.set_usable(ic(2), true);
    assert_eq!(moves.len(), 4);
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::BackToRdma && m.from == Some(TCP)));
    assert!(!rig.p.on_tcp());
    assert!(rig.clients_on(TCP).is_empty());

    // The second port back: after the hold the others leave the heavy client's port.
    rig.set_usable(ic(1), true);
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
    assert!(rig.set_usable(ic(1), false).is_empty(), "nowhere to go");
    assert_eq!(rig.at(HEAVY), ic(1));
    assert!(rig.add(cid(9), 10, LatencyClass::Normal).is_empty());
    assert_eq!(rig.p.assignment(cid(9)), None);
    assert!(rig.advance(Duration::from_secs(10)).is_empty());
    // TCP comes back first: fallback for the placed ones, initial placement for the new one.
    let moves = rig.set_usable(TCP, true);
    assert_eq!(moves.len(), 5);
    for m in &moves {
        let want = if m.client == cid(9) {
            MoveReason::Initial
        } else {
            MoveReason::FallbackToTcp
        };
        assert_eq!(m.reason, want, "{m:?}");
        assert_eq!(m.to, TCP);
    }
    assert!(rig.p.on_tcp());
    let moves = rig.set_usable(ic(1), true);
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::BackToRdma && m.to == ic(1)));
    assert_eq!(moves.len(), 5);
}

#[test]
fn placement_clients_added_before_any_interconnect_are_placed_when_one_appears() {
    let mut rig = Rig::empty();
    rig.add(HEAVY, 2000, LatencyClass::Bulk);
    rig.add(HB, 1, LatencyClass::Critical);
    assert_eq!(rig.p.assignment(HEAVY), None);
    let moves = rig.link(rdma(ic(1), "mlx5_0", true));
    assert_eq!(moves.len(), 2);
    assert!(moves
        .iter()
        .all(|m| m.reason == MoveReason::Initial && m.to == ic(1)));
}

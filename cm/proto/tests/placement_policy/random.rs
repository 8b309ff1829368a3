//! Property test: random operation sequences, with the invariants checked after every
//! operation and the settled shape checked at the end.

use super::*;

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
            .prop_map(|(id, usable, cap)| Op::Link { id: ic(id), usable, cap }),
        1 => (0u32..5).prop_map(|id| Op::RemoveLink { id: ic(id) }),
        3 => (0u32..6, 0u32..3000, 0u8..3).prop_map(|(client, demand, lat)| Op::Add { client: cid(client), demand, lat }),
        2 => (0u32..6, 0u32..3000).prop_map(|(client, demand)| Op::SetDemand { client: cid(client), demand }),
        1 => (0u32..6).prop_map(|client| Op::RemoveClient { client: cid(client) }),
        3 => (0u32..6, 0u64..4000).prop_map(|(client, mbps)| Op::Bytes { client: cid(client), mbps }),
        5 => (0u64..3000).prop_map(|ms| Op::Tick { ms }),
    ]
}

fn info_for(id: InterconnectId, usable: bool, cap: u32) -> InterconnectInfo {
    // 0: TCP; 1 and 2: two ports of one HCA; 3, 4: one HCA each.
    let (kind, domain) = match id.get() {
        0 => (InterconnectKind::Tcp, "tcp".to_string()),
        1 | 2 => (InterconnectKind::Rdma, "mlx5_0".to_string()),
        n => (InterconnectKind::Rdma, format!("mlx5_{}", n - 2)),
    };
    InterconnectInfo {
        id,
        kind,
        capacity_mbits_per_s: cap,
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
            .any(|i| i.capacity_mbits_per_s > 0 && Some(&i.failure_domain) != hd.as_ref());
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
    let caps: Vec<u32> = rdma.iter().map(|i| i.capacity_mbits_per_s).collect();
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
            Op::Link { id: ic(0), usable: true, cap: 10_000 },
            Op::Link { id: ic(1), usable: true, cap: 25_000 },
            Op::Link { id: ic(3), usable: true, cap: 25_000 },
        ];
        ops.extend(random);
        let first = run_checked(&ops)?;
        let second = run_checked(&ops)?;
        prop_assert_eq!(first, second);
    }
}

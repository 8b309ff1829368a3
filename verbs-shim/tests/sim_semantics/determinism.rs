//! Determinism: the same seed and the same calls give the same trace; another seed changes it.

use crate::common::{connect, expect, one, pair, params, End};
use peercm_verbs_shim::sim::harness::{seed_from_env, standard_fabric};
use peercm_verbs_shim::sim::TraceEvent;
use peercm_verbs_shim::types::{AsyncEvent, QpParams, RemoteMr, WcStatus};
use std::time::Duration;

fn workload(seed: u64) -> Vec<TraceEvent> {
    let f = standard_fabric(seed).unwrap();
    f.set_latency(
        ("n1", "rxe0", 1),
        Duration::from_micros(30),
        Duration::from_micros(60),
    )
    .unwrap();
    f.set_loss(("n1", "rxe0", 1), 0.2).unwrap();
    let forever = QpParams {
        retry_count: 7,
        ..params()
    };
    let (a, b) = pair(&f, forever, forever);
    for i in 0..30 {
        b.recv(i, i * 64, 64);
    }
    for i in 0..30 {
        a.send(i, 0, 64);
        expect(&a.scq, i, WcStatus::Success);
        expect(&b.rcq, i, WcStatus::Success);
    }
    let bad = RemoteMr {
        rkey: !b.mr.rkey(),
        ..b.mr.remote()
    };
    a.write(100, bad, 0, 64);
    expect(&a.scq, 100, WcStatus::RemAccessErr);
    let (c, _d) = {
        let mut c = End::on(&f, "n1", "rxe1", params());
        let mut d = End::on(&f, "n2", "rxe1", params());
        connect(&mut c, &mut d);
        (c, d)
    };
    c.send(1, 0, 8);
    f.cut_cable(("n1", "rxe1", 1)).unwrap();
    f.restore_cable(("n1", "rxe1", 1)).unwrap();
    let _ = one(&c.scq);
    f.trace()
}

#[test]
fn same_seed_same_trace() {
    let seed = seed_from_env(0xD5EED);
    let t1 = workload(seed);
    let t2 = workload(seed);
    let completions = t1
        .iter()
        .filter(|t| matches!(t, TraceEvent::Completion { .. }))
        .count();
    assert!(
        completions >= 62,
        "trace too short: {completions} completions"
    );
    assert!(t1.iter().any(|t| matches!(
        t,
        TraceEvent::Async {
            event: AsyncEvent::PortError { .. },
            ..
        }
    )));
    if t1 != t2 {
        let at = t1
            .iter()
            .zip(&t2)
            .position(|(x, y)| x != y)
            .unwrap_or(t1.len().min(t2.len()));
        panic!(
            "seed {seed:#x}: traces differ at entry {at}: {:?} vs {:?}",
            t1.get(at),
            t2.get(at)
        );
    }
    let t3 = workload(seed ^ 0xFFFF);
    assert_ne!(t1, t3, "a different seed should change QPNs and keys");
}

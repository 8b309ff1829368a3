//! Every scenario of the shared suite ([`scenarios::all`]) against the simulated fabric: two
//! nodes (n1 client, n2 server), two HCAs each (rxe0, rxe1) with one cable per pair, the client
//! and server halves on two threads joined by an in-memory exchange.

#![allow(clippy::unwrap_used)]

use peercm_verbs_shim::scenarios::{self, Env, HcaSel, Outcome, Scenario, Side};
use peercm_verbs_shim::sim::harness::{
    fast_params, run_pair, seed_from_env, standard_fabric, standard_hcas, FaultMode, MemExchange,
    PairResult, SimFaults,
};
use peercm_verbs_shim::sim::SimFabric;
use std::time::{Duration, Instant};

/// One-way latency on every cable, so requests are really in flight when faults hit.
const LATENCY: Duration = Duration::from_micros(20);

fn fabric(seed: u64) -> SimFabric {
    let f = standard_fabric(seed).unwrap();
    for dev in ["rxe0", "rxe1"] {
        f.set_latency(("n1", dev, 1), LATENCY, Duration::from_micros(10))
            .unwrap();
    }
    f
}

fn print(side: &str, o: &Outcome) {
    let details: Vec<String> = o.details.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "scenario {} {side}: PASS {} ({:.1} ms)",
        o.name,
        details.join(" "),
        o.elapsed.as_secs_f64() * 1e3
    );
}

fn run_one(seed: u64, name: &'static str, scenario: Scenario, mode: FaultMode) -> PairResult {
    let f = fabric(seed);
    let r = run_pair(
        &f,
        ("n1", "n2"),
        &standard_hcas(),
        fast_params(),
        mode,
        name,
        scenario,
    );
    match (&r.client, &r.server) {
        (Ok(c), Ok(s)) => {
            print("client", c);
            print("server", s);
        }
        _ => {
            let trace = f.trace();
            let tail = trace.len().saturating_sub(40);
            for t in &trace[tail..] {
                eprintln!("  trace: {t:?}");
            }
            panic!(
                "scenario {name} ({mode:?}) failed with seed {seed:#x}:\n  client: {:?}\n  server: {:?}",
                r.client, r.server
            );
        }
    }
    r
}

#[test]
fn every_scenario_passes_on_the_simulator() {
    let seed = seed_from_env(0x5EED_0001);
    let all = scenarios::all();
    assert!(
        all.len() >= 7,
        "the suite lost scenarios: {:?}",
        all.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    for (name, scenario) in all {
        run_one(seed, name, scenario, FaultMode::PortDown);
    }
}

#[test]
fn cable_cut_passes_when_both_ends_go_down() {
    // The simulator's own cable cut takes the server's port down too; the server half must
    // not care which way the link went.
    let seed = seed_from_env(0x5EED_0002);
    let r = run_one(seed, "cable_cut", scenarios::cable_cut, FaultMode::CutCable);
    let client = r.client.unwrap();
    let first = client
        .details
        .iter()
        .find(|(k, _)| k == "first_error_status")
        .unwrap();
    assert!(
        ["LocQpOpErr", "WrFlushErr", "RetryExcErr"].contains(&first.1.as_str()),
        "first error {first:?}"
    );
}

#[test]
fn cable_cut_without_latency_needs_the_probe() {
    // With zero latency the burst completes before the cut, so the scenario's probe request is
    // what fails: the path the real lane takes when the fault script is slower than the burst.
    let seed = seed_from_env(0x5EED_0003);
    let f = standard_fabric(seed).unwrap();
    let r = run_pair(
        &f,
        ("n1", "n2"),
        &standard_hcas(),
        fast_params(),
        FaultMode::PortDown,
        "cable_cut",
        scenarios::cable_cut,
    );
    let client = r.client.unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    r.server.unwrap_or_else(|e| panic!("seed {seed:#x}: {e}"));
    print("client", &client);
    let get = |k: &str| {
        client
            .details
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("qp0_probe_needed"), "true");
    assert_eq!(get("first_error_status"), "WrFlushErr");
}

#[test]
fn a_failing_side_makes_the_partner_fail_fast() {
    // The client is given only one HCA, so cable_cut fails on it at once; the server (which
    // has both) must learn that through the ABORT message rather than time out.
    let seed = seed_from_env(0x5EED_0004);
    let f = standard_fabric(seed).unwrap();
    let hcas = standard_hcas();
    let (mut cx, mut sx) = MemExchange::pair();
    let env = |node: &str, side: Side, hcas: &[HcaSel]| Env {
        provider: f.provider(node),
        hcas: hcas.to_vec(),
        side,
        faults: Box::new(SimFaults::new(&f, node, hcas, FaultMode::PortDown)),
        params: fast_params(),
    };
    let mut cenv = env("n1", Side::Client, &hcas[..1]);
    let mut senv = env("n2", Side::Server, &hcas);
    let t = Instant::now();
    let (c, s) = std::thread::scope(|sc| {
        let server = sc.spawn(move || scenarios::cable_cut(&mut senv, &mut sx));
        let c = scenarios::cable_cut(&mut cenv, &mut cx);
        drop(cx);
        (c, server.join().unwrap())
    });
    let c = c.unwrap_err();
    assert!(c.what.contains("needs HCA 1"), "{c}");
    let s = s.unwrap_err();
    assert!(
        s.what.contains("the partner failed") && s.what.contains("needs HCA 1"),
        "{s}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn cable_cut_refuses_retry_forever() {
    let seed = seed_from_env(0x5EED_0005);
    let f = standard_fabric(seed).unwrap();
    let mut params = fast_params();
    params.retry_count = 7;
    let r = run_pair(
        &f,
        ("n1", "n2"),
        &standard_hcas(),
        params,
        FaultMode::PortDown,
        "cable_cut",
        scenarios::cable_cut,
    );
    for e in [r.client.unwrap_err(), r.server.unwrap_err()] {
        assert!(
            e.what.contains("retry_count <= 6") || e.what.contains("the partner failed"),
            "{e}"
        );
    }
}

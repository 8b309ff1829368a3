//! Devices, ports and injected faults: port capacity and state, cable cuts, one-sided port
//! down, QPs on a down port, fatal QP errors, stalled responders and latency.

use crate::common::{event, expect, fabric, nothing, pair, params, ACK_TIMEOUT};
use peercm_verbs_shim::sim::harness::{seed_from_env, STANDARD_CAPACITY_GBPS};
use peercm_verbs_shim::sim::SimFabric;
use peercm_verbs_shim::types::{
    AsyncEvent, LinkLayer, PortState, QpParams, QpState, VerbsUnavailable, WcStatus,
};
use peercm_verbs_shim::VerbsError;
use std::time::{Duration, Instant};

#[test]
fn devices_report_ports_capacity_and_state() {
    let f = fabric(0x63);
    let devs = f.provider("n1").devices().unwrap();
    let names: Vec<&str> = devs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["rxe0", "rxe1"]);
    for (d, cap) in devs.iter().zip(STANDARD_CAPACITY_GBPS) {
        assert_eq!(d.ports.len(), 1);
        let p = &d.ports[0];
        assert_eq!(
            (p.port, p.state, p.link_layer, p.capacity_mbits_per_s),
            (1, PortState::Active, LinkLayer::Ethernet, cap * 1000)
        );
        assert_eq!(p.gids.len(), 2);
    }
    assert_ne!(devs[0].guid, devs[1].guid);
    // Multi-port device: capacity per port.
    f.add_node("n3").unwrap();
    f.add_device_ports("n3", "mlx5_0", &[100, 200]).unwrap();
    f.cable(("n3", "mlx5_0", 2), ("n2", "rxe1", 1)).unwrap_err(); // rxe1 already cabled
    f.add_device("n2", "rxe2", 40).unwrap();
    f.cable(("n3", "mlx5_0", 2), ("n2", "rxe2", 1)).unwrap();
    let d = f.provider("n3").open("mlx5_0").unwrap().info();
    let caps: Vec<(u8, u32, PortState)> = d
        .ports
        .iter()
        .map(|p| (p.port, p.capacity_mbits_per_s, p.state))
        .collect();
    assert_eq!(
        caps,
        [
            (1, 100_000, PortState::Down),
            (2, 200_000, PortState::Active)
        ]
    );
    // Cabling rules and unknown names.
    assert!(f.cable(("n1", "rxe0", 1), ("n1", "rxe1", 1)).is_err());
    assert!(f.add_node("n1").is_err());
    assert_eq!(
        f.provider("nowhere").devices(),
        Err(VerbsUnavailable::NoDevice)
    );
    assert!(matches!(
        f.provider("n1").open("mlx9"),
        Err(VerbsError::NoSuchDevice(_))
    ));
}

#[test]
fn cable_cut_downs_both_ends_and_restore_brings_them_back() {
    let f = SimFabric::new(seed_from_env(0x64));
    for n in ["n1", "n2"] {
        f.add_node(n).unwrap();
        f.add_device(n, "rxe0", 25).unwrap();
    }
    f.cable(("n1", "rxe0", 1), ("n2", "rxe0", 1)).unwrap();
    f.set_latency(("n1", "rxe0", 1), Duration::from_millis(2), Duration::ZERO)
        .unwrap();
    let (a, b) = pair(&f, params(), params());
    for i in 0..3 {
        b.recv(i, 0, 8);
    }
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    f.cut_cable(("n2", "rxe0", 1)).unwrap();
    // The in-flight requests fail at once: both completions are queued by `cut_cable` itself,
    // not after the 2 ms latency or an ACK timeout, so a poll that does not wait finds them.
    // (How long that takes in real time is a figure, measured by `benches/sim_timing.rs`,
    // not a pass/fail goal.)
    let failed: Vec<(u64, WcStatus)> = a
        .scq
        .poll(8)
        .unwrap()
        .iter()
        .map(|wc| (wc.wr_id, wc.status))
        .collect();
    assert_eq!(
        failed,
        [(1, WcStatus::LocQpOpErr), (2, WcStatus::WrFlushErr)],
        "the in-flight request failed at once"
    );
    assert_eq!(event(&a.dev), Some(AsyncEvent::PortError { port: 1 }));
    assert_eq!(event(&b.dev), Some(AsyncEvent::PortError { port: 1 }));
    for i in 0..3 {
        expect(&b.rcq, i, WcStatus::WrFlushErr);
    }
    // A device whose every port is down is still listed (as libibverbs does), with its
    // port DOWN, and can still be opened and watched: its PORT_ACTIVE comes when the cable
    // returns.
    let listed = f.provider("n1").devices().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].ports[0].state, PortState::Down);
    assert_eq!(f.port_state(("n1", "rxe0", 1)).unwrap(), PortState::Down);
    let watcher = f.provider("n1").open("rxe0").unwrap();
    f.restore_cable(("n1", "rxe0", 1)).unwrap();
    assert_eq!(event(&a.dev), Some(AsyncEvent::PortActive { port: 1 }));
    assert_eq!(event(&b.dev), Some(AsyncEvent::PortActive { port: 1 }));
    assert_eq!(
        event(&watcher),
        Some(AsyncEvent::PortActive { port: 1 }),
        "a device opened while its port was down hears PORT_ACTIVE"
    );
    assert_eq!(
        f.provider("n1").devices().unwrap()[0].ports[0].state,
        PortState::Active
    );
    // Errored QPs stay errored; new ones work.
    let mut a = a;
    assert_eq!(a.qp.state(), QpState::Err);
    assert_eq!(
        a.qp.to_rts(&params(), 0),
        Err(VerbsError::InvalidTransition {
            from: QpState::Err,
            to: QpState::Rts
        })
    );
    let (a2, b2) = pair(&f, params(), params());
    b2.recv(1, 0, 8);
    a2.send(1, 0, 8);
    expect(&a2.scq, 1, WcStatus::Success);
}

#[test]
fn one_sided_port_down_times_out_the_partner() {
    let f = fabric(0x65);
    let (a, b) = pair(&f, params(), params());
    for i in 0..2 {
        b.recv(i, 0, 8);
    }
    f.set_port_down("n1", "rxe0", 1).unwrap();
    assert_eq!(event(&a.dev), Some(AsyncEvent::PortError { port: 1 }));
    assert_eq!(a.qp.state(), QpState::Err);
    // The partner's port stays up and it hears nothing...
    assert_eq!(f.port_state(("n2", "rxe0", 1)).unwrap(), PortState::Active);
    assert_eq!(
        b.dev.next_async_event(Duration::from_millis(5)).unwrap(),
        None
    );
    assert_eq!(b.qp.state(), QpState::Rts);
    // ...until it sends: (retry_count + 1) ACK timeouts later, RETRY_EXC_ERR.
    let t = Instant::now();
    b.send(7, 0, 8);
    expect(&b.scq, 7, WcStatus::RetryExcErr);
    let took = t.elapsed();
    assert!(took >= ACK_TIMEOUT * 4, "timed out after {took:?}");
    for i in 0..2 {
        expect(&b.rcq, i, WcStatus::WrFlushErr);
    }
    // A send on the local side's QP (now ERR) flushes.
    a.send(8, 0, 8);
    expect(&a.scq, 8, WcStatus::WrFlushErr);
    f.set_port_up("n1", "rxe0", 1).unwrap();
    assert_eq!(event(&a.dev), Some(AsyncEvent::PortActive { port: 1 }));
    assert_eq!(a.qp.state(), QpState::Err);
}

#[test]
fn a_qp_connected_on_a_down_port_fails_its_first_request() {
    let f = fabric(0x66);
    f.set_port_down("n1", "rxe0", 1).unwrap();
    let (a, _b) = pair(&f, params(), params());
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    expect(&a.scq, 1, WcStatus::LocQpOpErr);
    expect(&a.scq, 2, WcStatus::WrFlushErr);
}

#[test]
fn fail_qp_raises_qp_fatal_and_flushes() {
    let f = fabric(0x67);
    let (a, b) = pair(&f, params(), params());
    b.recv(1, 0, 8);
    b.recv(2, 0, 8);
    f.fail_qp("n2", b.qp.qpn()).unwrap();
    assert_eq!(event(&b.dev), Some(AsyncEvent::QpFatal { qpn: b.qp.qpn() }));
    assert_eq!(
        a.dev.next_async_event(Duration::ZERO).unwrap(),
        None,
        "only the owner's context hears it"
    );
    expect(&b.rcq, 1, WcStatus::WrFlushErr);
    expect(&b.rcq, 2, WcStatus::WrFlushErr);
    assert_eq!(b.qp.state(), QpState::Err);
    assert!(f.fail_qp("n1", b.qp.qpn()).is_err(), "that QP is not on n1");
}

#[test]
fn a_stalled_responder_gives_retry_exceeded() {
    let f = fabric(0x68);
    let (a, b) = pair(&f, params(), params());
    b.recv(1, 0, 8);
    f.stall_responder("n2").unwrap();
    let t = Instant::now();
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    expect(&a.scq, 1, WcStatus::RetryExcErr);
    let took = t.elapsed();
    assert!(
        took >= ACK_TIMEOUT * 4,
        "gave up after {took:?}, expected (3 + 1) x {ACK_TIMEOUT:?}"
    );
    // That it gives up at all is checked by `expect` (bounded wait); how soon after the last
    // ACK timeout is a figure, measured by `benches/sim_timing.rs`.
    expect(&a.scq, 2, WcStatus::WrFlushErr);
    nothing(&b.rcq, Duration::ZERO);
}

#[test]
fn a_released_responder_resumes_when_retrying_forever() {
    let f = fabric(0x69);
    let forever = QpParams {
        retry_count: 7,
        ..params()
    };
    let (a, b) = pair(&f, forever, params());
    b.recv(1, 0, 8);
    f.stall_responder("n2").unwrap();
    a.send(1, 0, 8);
    nothing(&a.scq, ACK_TIMEOUT * 12);
    f.release_responder("n2").unwrap();
    expect(&a.scq, 1, WcStatus::Success);
    expect(&b.rcq, 1, WcStatus::Success);
}

#[test]
fn latency_delays_completions() {
    let f = fabric(0x6a);
    f.set_latency(("n1", "rxe0", 1), Duration::from_millis(3), Duration::ZERO)
        .unwrap();
    let (a, b) = pair(&f, params(), params());
    b.recv(1, 0, 8);
    let t = Instant::now();
    a.send(1, 0, 8);
    expect(&a.scq, 1, WcStatus::Success);
    assert!(
        t.elapsed() >= Duration::from_millis(6),
        "a round trip took {:?}",
        t.elapsed()
    );
}

/// `set_loss_from`: everything leaving one end is lost (that end's requests exhaust their
/// retries), while the other end's requests still arrive and complete.
#[test]
fn loss_from_one_end_loses_that_direction_only() {
    let f = fabric(0x10f);
    let (a, b) = pair(&f, params(), params());
    f.set_loss_from(("n1", "rxe0", 1), 1.0).unwrap();
    assert!(f.set_loss_from(("n1", "rxe0", 1), 1.5).is_err());
    // b -> a gets through, and the bytes land.
    b.mr.write(0, b"from b").unwrap();
    b.write(1, a.mr.remote(), 0, 6);
    expect(&b.scq, 1, WcStatus::Success);
    assert_eq!(a.mr.read(0, 6).unwrap(), b"from b");
    // a -> b is black-holed: retransmitted, then RetryExcErr.
    a.write(2, b.mr.remote(), 0, 6);
    expect(&a.scq, 2, WcStatus::RetryExcErr);
}

//! Failures on the simulated fabric: a port going down or a cable cut mid-stream, a local
//! close or `fail`, and fencing. Every link must close exactly once with a typed reason,
//! deliver nothing afterwards, and never panic.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_rdma_link::{LinkCloseReason, RdmaLinkConfig, RequestKind};
use peercm_verbs_shim::scenarios::FaultInjector;
use peercm_verbs_shim::sim::harness::{seed_from_env, standard_hcas, FaultMode, SimFaults};
use peercm_verbs_shim::WcStatus;
use std::time::Duration;

const MAX_PAYLOAD: usize = 64 << 10;

fn cfg(link_id: u64) -> RdmaLinkConfig {
    RdmaLinkConfig {
        ring_bytes: 256 << 10,
        recv_depth: 32,
        max_payload_bytes: MAX_PAYLOAD as u32,
        ..test_cfg(link_id)
    }
}

/// Asserts what a side saw after a failure: one `closed`, nothing after it, and a reason
/// the fault explains.
fn assert_failed(name: &str, seen: &Seen, ok: impl Fn(&LinkCloseReason) -> bool) {
    assert_eq!(
        seen.closed.len(),
        1,
        "{name}: closed exactly once: {:?}",
        seen.closed
    );
    assert_eq!(
        seen.after_closed, 0,
        "{name}: nothing delivered after closed"
    );
    assert!(
        ok(&seen.closed[0]),
        "{name}: unexpected reason {:?}",
        seen.closed[0]
    );
}

fn transport_failure(r: &LinkCloseReason) -> bool {
    matches!(
        r,
        LinkCloseReason::Completion {
            status: WcStatus::LocQpOpErr | WcStatus::WrFlushErr | WcStatus::RetryExcErr,
            ..
        }
    )
}

/// Streams both ways; after side a has received 300 frames, takes n1's port down (`mode`).
fn fault_mid_stream(mode: FaultMode, seed: u64) {
    let f = fabric(seed);
    // Latency, so requests are really in flight when the fault hits.
    f.set_latency(
        ("n1", "rxe0", 1),
        Duration::from_micros(20),
        Duration::from_micros(10),
    )
    .unwrap();
    let (a, b) = connect_pair(&f, cfg(1), cfg(2));
    let mut faults = SimFaults::new(&f, "n1", &standard_hcas(), mode);
    let (seen_a, seen_b, sent_a, sent_b) = std::thread::scope(|s| {
        let sa = s.spawn(|| send_stream(&a.link, seed, 1, 1_000_000, MAX_PAYLOAD));
        let sb = s.spawn(|| send_stream(&b.link, seed, 2, 1_000_000, MAX_PAYLOAD));
        let wb = s.spawn(|| drain(&b.events, 1, 2, Duration::from_secs(30)));
        // Side a: watch 300 frames arrive, then cut, then drain to the end.
        let mut first = Seen::default();
        while first.frames < 300 {
            match next(
                &a.events,
                Duration::from_secs(30),
                "streaming before the fault",
            ) {
                Some(Event::Frame(fr)) => {
                    check_frame(&fr, 2, first.frames);
                    first.frames += 1;
                }
                Some(Event::Written { .. }) => {}
                other => panic!("before the fault: {other:?}"),
            }
        }
        faults.cut(0).unwrap();
        let mut rest = Seen::default();
        // Frames after the fault continue the same sequence.
        loop {
            let Some(ev) = next(
                &a.events,
                Duration::from_secs(30),
                "draining a after the fault",
            ) else {
                break;
            };
            if !rest.closed.is_empty() {
                rest.after_closed += 1;
            }
            match ev {
                Event::Frame(fr) => {
                    check_frame(&fr, 2, first.frames + rest.frames);
                    rest.frames += 1;
                }
                Event::Written { .. } => {}
                Event::Oversize(h) => panic!("no frame is above the limit here: {h:?}"),
                Event::Closed(r) => rest.closed.push(r),
            }
        }
        rest.frames += first.frames;
        (
            rest,
            wb.join().unwrap(),
            sa.join().unwrap(),
            sb.join().unwrap(),
        )
    });
    println!(
        "{mode:?} (seed {seed:#x}): a sent {sent_a} received {} closed {:?}; b sent {sent_b} received {} closed {:?}",
        seen_a.frames, seen_a.closed, seen_b.frames, seen_b.closed
    );
    assert_failed("a (port down)", &seen_a, transport_failure);
    assert_failed("b (partner)", &seen_b, transport_failure);
    assert!(a.link.is_closed() && b.link.is_closed());
    assert!(!a.link.send(data_frame(1, 0, 10), None));
    assert!(seen_a.frames >= 300 && sent_a < 1_000_000 && sent_b < 1_000_000);
}

#[test]
fn port_down_on_one_side_mid_stream_closes_both_links() {
    fault_mid_stream(FaultMode::PortDown, seed_from_env(0xD0_0001));
}

#[test]
fn cable_cut_mid_stream_closes_both_links() {
    fault_mid_stream(FaultMode::CutCable, seed_from_env(0xD0_0002));
}

#[test]
fn fail_and_close_report_their_reason_once_and_the_idle_partner_notices() {
    let seed = seed_from_env(0xD0_0003);
    let f = fabric(seed);
    let (a, b) = connect_pair(&f, cfg(1), cfg(2));
    assert!(a.link.send(data_frame(1, 0, 100), Some(mark(1, 0))));
    match next(&b.events, Duration::from_secs(5), "first frame") {
        Some(Event::Frame(fr)) => check_frame(&fr, 1, 0),
        other => panic!("{other:?}"),
    }
    // The manager saw PORT_ERR: first reason wins, later ones are ignored.
    a.link.fail(LinkCloseReason::PortDown);
    a.link.close();
    assert_eq!(
        a.link.wait_closed(Duration::from_secs(5)),
        Some(LinkCloseReason::PortDown)
    );
    let seen_a = drain(&a.events, 2, 1, Duration::from_secs(5));
    assert_failed("a", &seen_a, |r| *r == LinkCloseReason::PortDown);
    // b sends no data: the credit it owes for a's frame (returned after `credit_idle_us`)
    // or else a probe finds a's queue pair gone.
    let seen_b = drain(&b.events, 1, 2, Duration::from_secs(10));
    assert_failed("b", &seen_b, |r| {
        matches!(
            r,
            LinkCloseReason::Completion {
                status: WcStatus::RetryExcErr,
                request: RequestKind::Probe | RequestKind::Credit,
                ..
            }
        )
    });
    if let LinkCloseReason::Completion {
        request: RequestKind::Probe,
        ..
    } = seen_b.closed[0]
    {
        assert!(b.link.stats().probes_sent >= 1);
    }
}

#[test]
fn dropping_the_handle_closes_the_link() {
    let seed = seed_from_env(0xD0_0004);
    let f = fabric(seed);
    let (a, b) = connect_pair(&f, cfg(1), cfg(2));
    let events = a.events;
    drop(a.link);
    let seen = drain(&events, 2, 1, Duration::from_secs(5));
    assert_failed("a", &seen, |r| *r == LinkCloseReason::Closed);
    b.link.close();
    drain(&b.events, 1, 2, Duration::from_secs(5));
}

#[test]
fn fencing_makes_the_partners_next_write_fail_with_a_remote_access_error() {
    let seed = seed_from_env(0xD0_0005);
    let f = fabric(seed);
    let (a, b) = connect_pair(&f, cfg(1), cfg(2));
    // Traffic both ways works before the fence.
    for i in 0..20 {
        assert!(a.link.send(data_frame(1, i, 1000), None));
        assert!(b.link.send(data_frame(2, i, 1000), None));
    }
    for (node, peer) in [(&a, 2), (&b, 1)] {
        let mut got = 0;
        while got < 20 {
            match next(
                &node.events,
                Duration::from_secs(5),
                "traffic before the fence",
            ) {
                Some(Event::Frame(fr)) => {
                    check_frame(&fr, peer, got);
                    got += 1;
                }
                Some(Event::Written { .. }) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    a.link.fence().unwrap();
    a.link.fence().unwrap(); // idempotent
                             // The zombie partner keeps writing: its WRITE into the fenced ring fails on its side.
    assert!(b.link.send(data_frame(2, 20, 1000), None));
    let seen_b = drain(&b.events, 1, 2, Duration::from_secs(10));
    assert_failed("b (zombie)", &seen_b, |r| {
        matches!(
            r,
            LinkCloseReason::Completion {
                status: WcStatus::RemAccessErr,
                request: RequestKind::Data,
                ..
            }
        )
    });
    // The fenced side received nothing more and closes as fenced.
    let seen_a = drain(&a.events, 2, 1, Duration::from_secs(10));
    assert_eq!(seen_a.frames, 0, "nothing delivered from the fenced ring");
    assert_failed("a (fenced)", &seen_a, |r| *r == LinkCloseReason::Fenced);
}

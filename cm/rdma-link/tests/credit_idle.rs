//! When credit goes back (`credit_idle_us`): a request/response exchange returns its credit in
//! batches, not one credit message per message; with the old rule (0: whenever the completion
//! queue is idle) it costs about one per message; and a sender whose next frame needs ring
//! space that consumed, un-credited frames hold still gets it once the timer runs out.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_rdma_link::RdmaLinkConfig;
use peercm_verbs_shim::sim::harness::seed_from_env;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn cfg(link_id: u64, credit_idle_us: u64) -> RdmaLinkConfig {
    RdmaLinkConfig {
        credit_idle_us,
        ..test_cfg(link_id)
    }
}

/// The next frame of `node`, checked as frame `i` of direction `dir`.
fn expect_frame(node: &Node, dir: u32, i: u64) {
    loop {
        match next(
            &node.events,
            WAIT,
            &format!("waiting for frame {i} of dir {dir}"),
        ) {
            Some(Event::Frame(f)) => {
                check_frame(&f, dir, i);
                return;
            }
            Some(Event::Written { .. }) => {}
            other => panic!("frame {i} of dir {dir}: {other:?}"),
        }
    }
}

/// `n` rounds of a request from a and its response from b, one at a time; the credit
/// messages both sides sent.
fn ping_pong(seed: u64, credit_idle_us: u64, n: u64) -> u64 {
    let f = fabric(seed);
    let (a, b) = connect_pair(&f, cfg(1, credit_idle_us), cfg(2, credit_idle_us));
    for i in 0..n {
        assert!(a.link.send(data_frame(1, i, 64), None));
        expect_frame(&b, 1, i);
        assert!(b.link.send(data_frame(2, i, 64), None));
        expect_frame(&a, 2, i);
    }
    let (sa, sb) = (a.link.stats(), b.link.stats());
    assert_eq!((sa.frames_received, sb.frames_received), (n, n));
    a.link.close();
    b.link.close();
    sa.credit_msgs_sent + sb.credit_msgs_sent
}

#[test]
fn a_request_response_exchange_returns_credit_in_batches() {
    let seed = seed_from_env(0xC4ED_0001);
    let n = 200;
    // The default window is 128 messages, a batch 32: at most n / 32 per side, plus what the
    // timer returns at the end (the long timer never runs out mid-exchange).
    let batched = ping_pong(seed, peercm_cm_rdma_link::MAX_CREDIT_IDLE_US, n);
    assert!(
        batched <= 2 * (n / 32 + 1),
        "{batched} credit messages for {n} requests and {n} responses (seed {seed:#x})"
    );
    // Returned whenever the queue is idle: every message is followed by an idle moment.
    let eager = ping_pong(seed, 0, n);
    assert!(
        eager >= n,
        "only {eager} credit messages for {n} exchanges with credit_idle_us = 0 (seed {seed:#x})"
    );
}

#[test]
fn a_frame_waiting_for_ring_space_gets_it_when_the_timer_runs_out() {
    let seed = seed_from_env(0xC4ED_0002);
    let max_payload = 64 << 10;
    let ring = 2 * (max_payload + 36);
    // One batch is the whole window or ring: only the timer returns credit here.
    let big = |link_id| RdmaLinkConfig {
        ring_bytes: ring,
        max_payload_bytes: max_payload as u32,
        credit_batch_divisor: 1,
        credit_idle_us: 2_000,
        ..test_cfg(link_id)
    };
    let f = fabric(seed);
    let (a, b) = connect_pair(&f, big(1), big(2));
    // Each frame takes 40% of the ring: the third waits until the first two are credited.
    let len = ring * 2 / 5;
    let n = 20;
    for i in 0..n {
        assert!(a.link.send(data_frame(1, i, len), Some(mark(1, i))));
    }
    for i in 0..n {
        expect_frame(&b, 1, i);
    }
    let (sa, sb) = (a.link.stats(), b.link.stats());
    assert!(sa.credit_stalls > 0, "the sender never waited: {sa:?}");
    assert!(sb.credit_msgs_sent > 0, "no credit went back: {sb:?}");
    a.link.close();
    b.link.close();
}

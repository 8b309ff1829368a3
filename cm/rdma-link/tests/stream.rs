//! Bulk traffic on a connected pair over the simulated fabric: 10,000 frames of mixed sizes
//! (1 B ..= 256 KiB) each way at once, through a ring small enough to wrap many times and a
//! receive depth small enough that credit flows all the time; and the same with the link
//! threads busy polling their completion queues.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_rdma_link::{LinkCloseReason, RdmaLinkConfig};
use peercm_verbs_shim::sim::harness::seed_from_env;
use std::time::{Duration, Instant};

const MAX_PAYLOAD: usize = 256 << 10;

fn cfg(link_id: u64, ring_bytes: usize, busy_poll_us: u64) -> RdmaLinkConfig {
    RdmaLinkConfig {
        ring_bytes,
        busy_poll_us,
        recv_depth: 16,
        max_payload_bytes: MAX_PAYLOAD as u32,
        ..test_cfg(link_id)
    }
}

/// Checks the peer's frames and this side's written marks until `n` of each arrived.
fn watch(node: &Node, peer: u32, me: u32, n: u64, seed: u64) -> Seen {
    let mut seen = Seen::default();
    while seen.frames < n || seen.written_marks < n {
        let what = format!(
            "dir {me} waiting: {} frames received, {} written (seed {seed:#x})",
            seen.frames, seen.written_marks
        );
        match next(&node.events, Duration::from_secs(60), &what) {
            Some(Event::Frame(fr)) => {
                check_frame(&fr, peer, seen.frames);
                seen.frames += 1;
            }
            Some(Event::Written { bytes, local_done }) => {
                seen.written_bytes += bytes;
                for d in local_done {
                    assert_eq!(d, mark(me, seen.written_marks));
                    seen.written_marks += 1;
                }
            }
            Some(Event::Oversize(h)) => panic!("dir {me}: no frame is above the limit: {h:?}"),
            Some(Event::Closed(r)) => panic!("dir {me}: link closed mid-stream: {r}"),
            None => panic!("dir {me}: sink gone mid-stream"),
        }
    }
    seen
}

/// Streams `n` frames each way at once, checks everything arrived, then closes both.
fn stream_both_ways(
    seed: u64,
    (a_ring, b_ring): (usize, usize),
    n: u64,
    min_wraps: u64,
    busy_poll_us: u64,
) {
    let f = fabric(seed);
    let (a, b) = connect_pair(
        &f,
        cfg(1, a_ring, busy_poll_us),
        cfg(2, b_ring, busy_poll_us),
    );
    let t0 = Instant::now();
    let (sent_a, sent_b, seen_a, seen_b) = std::thread::scope(|s| {
        let sa = s.spawn(|| send_stream(&a.link, seed, 1, n, MAX_PAYLOAD));
        let sb = s.spawn(|| send_stream(&b.link, seed, 2, n, MAX_PAYLOAD));
        // Each side checks the peer's frames and its own written marks until all arrived.
        let wa = s.spawn(|| watch(&a, 2, 1, n, seed));
        let wb = s.spawn(|| watch(&b, 1, 2, n, seed));
        (
            sa.join().unwrap(),
            sb.join().unwrap(),
            wa.join().unwrap(),
            wb.join().unwrap(),
        )
    });
    let took = t0.elapsed();
    assert_eq!((sent_a, sent_b), (n, n), "every send accepted");
    assert_eq!((seen_a.frames, seen_b.frames), (n, n));
    let (sa, sb) = (a.link.stats(), b.link.stats());
    println!("seed {seed:#x}: {n} frames each way in {took:?}\n  a: {sa:?}\n  b: {sb:?}");
    for (name, st, seen) in [("a", sa, &seen_a), ("b", sb, &seen_b)] {
        assert_eq!(st.frames_sent, n, "{name}");
        assert_eq!(st.frames_received, n, "{name}");
        assert_eq!(
            st.bytes_sent, seen.written_bytes,
            "{name}: written bytes = bytes sent"
        );
        assert_eq!(st.frames_queued, 0, "{name}");
        assert!(
            st.credit_msgs_sent > 0 && st.credit_msgs_received > 0,
            "{name}: credit flows"
        );
        if busy_poll_us > 0 {
            assert!(
                st.busy_poll_hits > 0,
                "{name}: completions found by polling"
            );
        } else {
            assert_eq!(st.busy_poll_hits, 0, "{name}: no busy polling");
        }
    }
    assert_eq!(sa.bytes_sent, sb.bytes_received);
    assert_eq!(sb.bytes_sent, sa.bytes_received);
    // The wrap counts agree on both ends of each direction.
    assert_eq!(sa.ring_wraps_sent, sb.ring_wraps_received);
    assert_eq!(sb.ring_wraps_sent, sa.ring_wraps_received);
    assert!(
        sa.ring_wraps_sent >= min_wraps && sb.ring_wraps_sent >= min_wraps,
        "the rings wrapped many times"
    );
    assert!(
        sa.credit_stalls + sb.credit_stalls > 0,
        "senders had to wait for credit"
    );

    // Close both: each hears `closed` exactly once, last.
    a.link.close();
    b.link.close();
    for (name, node, peer, me) in [("a", &a, 2, 1), ("b", &b, 1, 2)] {
        let seen = drain(&node.events, peer, me, Duration::from_secs(10));
        assert_eq!(seen.frames, 0, "{name}: nothing after the stream");
        assert_eq!(seen.after_closed, 0, "{name}: nothing after closed");
        assert_eq!(seen.closed.len(), 1, "{name}: closed exactly once");
        assert!(
            matches!(
                seen.closed[0],
                LinkCloseReason::Closed | LinkCloseReason::Completion { .. }
            ),
            "{name}: {:?}",
            seen.closed[0]
        );
    }
    assert_eq!(a.link.close_reason(), Some(LinkCloseReason::Closed));
    assert!(
        !a.link.send(data_frame(1, 0, 1), None),
        "a closed link refuses"
    );
}

#[test]
fn ten_thousand_mixed_frames_each_way_wrap_the_ring_and_flow_credit() {
    let seed = seed_from_env(0x00C0_FFEE);
    // Just above two of the largest frames: large frames wrap all the time.
    stream_both_ways(seed, (640 << 10, 640 << 10), 10_000, 200, 0);
}

#[test]
fn rings_of_different_sizes_work_both_ways() {
    let seed = seed_from_env(0x0A5F_1234);
    stream_both_ways(seed, (600 << 10, 1 << 20), 2_000, 20, 0);
}

#[test]
fn busy_polling_links_stream_the_same() {
    let seed = seed_from_env(0x0B05_7F01);
    stream_both_ways(seed, (640 << 10, 640 << 10), 2_000, 40, 5_000);
}

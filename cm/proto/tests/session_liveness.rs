//! Issue 8, item 12: a busy link is not judged dead because the runtime was late. With a fake
//! clock: a timer that fires long after it was due, while the partner's frames wait unread,
//! does not close the link (the frames then arrive and it lives on); a link that is really
//! silent still dies, one grace period (a heartbeat interval) later at most.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use peercm_cm_proto::session::{SessionConfig, SessionState};
use std::time::Duration;

const HB: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(500);

fn live_pair(seed: u64) -> Pair {
    let cfg = SessionConfig {
        heartbeat_interval: HB,
        link_timeout: TIMEOUT,
        ..SessionConfig::default()
    };
    let mut p = Pair::with_config(seed, cfg);
    p.add_link();
    p.drive();
    for _ in 0..5 {
        p.advance(HB);
        p.drive();
    }
    assert_eq!(p.a.state(), SessionState::Up);
    p
}

/// Node a's process is descheduled while b keeps sending heartbeats, which wait in a's socket.
/// When a resumes, its timer (due 500 ms after the last receipt) fires 400 ms late, before its
/// reader has run. (Only a's verdict is under test: b's timer is not run.)
#[test]
fn a_late_timer_with_input_waiting_does_not_kill_the_link() {
    let mut p = live_pair(1);
    let due = p.a.poll_timeout().unwrap();
    let resumed = p.now + Duration::from_millis(900);
    while p.now + HB <= resumed {
        p.now += HB;
        p.flush(); // b's heartbeats are queued towards a, not delivered
    }
    assert!(
        p.in_flight() > 0,
        "precondition: b's frames wait for a's reader"
    );
    assert!(
        p.now.saturating_duration_since(due) > HB,
        "precondition: the timer is late"
    );
    p.a.handle_timer(due, p.now);
    assert!(
        p.a.poll_close_link().is_none(),
        "a late timer judged a link silent while its frames were waiting to be read"
    );
    assert_eq!(p.a.state(), SessionState::Up);
    // The reader runs: the waiting frames arrive, and the link lives on, on time again.
    p.drive();
    for _ in 0..10 {
        p.advance(HB);
        p.drive();
    }
    assert_eq!(p.a.state(), SessionState::Up);
    assert_eq!(p.link_ids().len(), 1);
}

/// The same late timer on a partner that really went silent: the grace ends and the link dies,
/// whether the next timer is on time or late again.
#[test]
fn a_really_silent_link_still_dies_after_one_grace_period() {
    for late_again in [false, true] {
        let mut p = live_pair(2);
        let due = p.a.poll_timeout().unwrap();
        p.now += Duration::from_millis(900); // b sends nothing any more
        p.a.handle_timer(due, p.now);
        assert!(p.a.poll_close_link().is_none(), "the grace period");
        let grace_end = p.now + HB;
        let next = p.a.poll_timeout().unwrap();
        assert!(
            next <= grace_end,
            "the session asks to be woken at the grace's end"
        );
        let (due, now) = if late_again {
            (next, grace_end + Duration::from_millis(700))
        } else {
            (grace_end, grace_end)
        };
        p.now = now;
        p.a.handle_timer(due, p.now);
        assert!(
            p.a.poll_close_link().is_some(),
            "a silent link outlived its grace (late again: {late_again})"
        );
        assert_eq!(p.a.state(), SessionState::Down);
    }
}

/// A timer on time judges at once, as before: no grace without a stall.
#[test]
fn an_on_time_timer_closes_a_silent_link_at_once() {
    let mut p = live_pair(3);
    let due = p.a.poll_timeout().unwrap();
    p.now += TIMEOUT;
    let due = due.max(p.now - Duration::from_millis(10));
    p.a.handle_timer(due, p.now);
    assert!(p.a.poll_close_link().is_some());
    assert_eq!(p.a.state(), SessionState::Down);
}

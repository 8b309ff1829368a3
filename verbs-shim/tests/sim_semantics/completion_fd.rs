//! The completion fd: readable while completions wait, driven by the engine thread when nobody
//! calls into the fabric, drained by `poll`.

use crate::common::{fabric, pair, params};
use std::time::Duration;

#[allow(unsafe_code)]
fn readable(fd: std::os::fd::RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n == 1 && p.revents & libc::POLLIN != 0
}

#[test]
fn the_completion_fd_is_readable_while_completions_wait() {
    let f = fabric(0x6b);
    f.set_latency(("n1", "rxe0", 1), Duration::from_millis(2), Duration::ZERO)
        .unwrap();
    let (a, b) = pair(&f, params(), params());
    let fd = a
        .scq
        .completion_fd()
        .expect("the simulator offers an eventfd");
    assert_eq!(a.scq.completion_fd(), Some(fd), "the same fd every time");
    assert!(!readable(fd, 0));
    b.recv(1, 0, 8);
    b.recv(2, 0, 8);
    a.send(1, 0, 8);
    a.send(2, 0, 8);
    // Nobody calls into the fabric: the engine thread must deliver and signal.
    assert!(readable(fd, 2000), "the fd did not fire");
    let first = a.scq.poll(1).unwrap();
    assert_eq!(first.len(), 1);
    if first[0].wr_id == 1 && a.scq.poll(0).unwrap().is_empty() {
        // One may remain (or arrive): the fd stays readable while it does.
        assert!(readable(fd, 2000));
        assert_eq!(a.scq.poll(8).unwrap().len(), 1);
    }
    assert!(!readable(fd, 0), "drained by poll");
}

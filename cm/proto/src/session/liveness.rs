//! Link liveness when the runtime itself was late: [`Session::handle_timer`].
//!
//! A link is judged silent after `link_timeout` without input. That verdict assumes the runtime
//! ran on time: if the whole process was descheduled (a loaded host, a VM without CPU), the
//! timer fires late and the link's frames may be waiting, unread, in a socket or a completion
//! queue whose reader has not run yet since the process resumed. Judging then would close a
//! link that is delivering. So a timer that fires more than one `heartbeat_interval` after it
//! was due grants each link that looks silent one grace period of `heartbeat_interval`: the
//! readers get to deliver what is ready, and a link that was only unread comes back to life.
//! The grace is granted once per silence (keyed on the link's last receipt), so a link that is
//! really silent still dies, at most one grace period later, however late the timers keep
//! firing.

use crate::session::{LinkId, Session};
use std::time::Instant;

/// A grace period granted to a link that looked silent when a late timer fired.
#[derive(Debug, Clone, Copy)]
pub(super) struct StallGrace {
    /// The link's last receipt when the grace was granted: new input ends the grace.
    last_rx: Instant,
    /// The verdict is held off until then.
    until: Instant,
}

impl Session {
    /// Timer input, telling when the timer was due: as [`Session::handle_timeout`], but if the
    /// runtime was late (`now` more than one heartbeat interval past `due`), links that look
    /// silent get one grace period to deliver what is ready before they are judged (see the
    /// module docs). A runtime passes the deadline it slept until as `due`.
    pub fn handle_timer(&mut self, due: Instant, now: Instant) {
        let late = now.saturating_duration_since(due);
        if late > self.cfg.heartbeat_interval {
            let until = now + self.cfg.heartbeat_interval;
            let timeout = self.cfg.link_timeout;
            for (id, l) in &self.links {
                let silent = now.saturating_duration_since(l.last_rx) >= timeout;
                let granted = self
                    .stall_grace
                    .get(id)
                    .is_some_and(|g| g.last_rx == l.last_rx);
                if silent && !granted {
                    tracing::info!(
                        link = id.get(),
                        late_ms = late.as_millis() as u64,
                        grace_ms = self.cfg.heartbeat_interval.as_millis() as u64,
                        "timer fired late: the link gets a grace period before a silence verdict"
                    );
                    self.stall_grace.insert(
                        *id,
                        StallGrace {
                            last_rx: l.last_rx,
                            until,
                        },
                    );
                }
            }
        }
        self.handle_timeout(now);
        let links = &self.links;
        self.stall_grace
            .retain(|id, g| links.get(id).is_some_and(|l| l.last_rx == g.last_rx));
    }

    /// Whether link `id`, last heard from at `last_rx`, is judged silent at `now`.
    pub(super) fn judged_silent(&self, id: LinkId, last_rx: Instant, now: Instant) -> bool {
        now.saturating_duration_since(last_rx) >= self.cfg.link_timeout
            && !self
                .stall_grace
                .get(&id)
                .is_some_and(|g| g.last_rx == last_rx && now < g.until)
    }

    /// The end of every grace period still running (for [`Session::poll_timeout`]).
    pub(super) fn grace_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.stall_grace.iter().filter_map(|(id, g)| {
            self.links
                .get(id)
                .filter(|l| l.last_rx == g.last_rx)
                .map(|_| g.until)
        })
    }
}

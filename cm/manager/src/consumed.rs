//! Consumption reports from a [`crate::ClientHandle`] to the manager: what completes the
//! partner's async sends (issue 8, item 8) and grants it credit.
//!
//! Every `Data` event a client takes is reported, but not by one command each: the handle
//! records the latest taken sequence number here and sends a command only when none is pending;
//! the manager takes the latest value when it gets to the command. A busy client thus costs the
//! manager at most one command per turn of its loop.
//!
//! A report must never name a message of an older session: after a reset the receive stream
//! starts over at 1, and a late report of an old sequence number would mark new messages the
//! client has not taken yet as taken. Both ends count the session boundaries a client passes,
//! `Down` and `PeerSwitched` (every reset of a client's receive stream is announced by one of
//! them, ahead of the new session's messages): the handle as it takes them, the manager as it
//! forwards them. A report made before the handle took the latest boundary is stale and dropped.

use peercm_cm_proto::session::ClientEvent;
use std::sync::Mutex;

/// The latest taken sequence number of one client, shared by its handle and the manager.
#[derive(Debug, Default)]
pub(crate) struct ConsumedReport {
    state: Mutex<ReportState>,
}

#[derive(Debug, Default)]
struct ReportState {
    /// Session boundaries the handle had taken when it took `seq`.
    boundaries: u64,
    seq: u64,
    /// A command is on its way to the manager.
    pending: bool,
}

impl ConsumedReport {
    /// Handle side: the client took `seq` after `boundaries` session boundaries. Returns
    /// whether a command must be sent (none is pending).
    pub(crate) fn record(&self, boundaries: u64, seq: u64) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.boundaries = boundaries;
        s.seq = seq;
        !std::mem::replace(&mut s.pending, true)
    }

    /// Manager side: the latest report, (boundaries, seq); the next take sends a command again.
    pub(crate) fn take(&self) -> (u64, u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.pending = false;
        (s.boundaries, s.seq)
    }
}

/// Whether an event ends the client's current session (its receive stream starts over).
pub(crate) fn is_boundary(ev: &ClientEvent) -> bool {
    matches!(
        ev,
        ClientEvent::Down { .. } | ClientEvent::PeerSwitched { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_command_per_batch_and_the_latest_value_wins() {
        let r = ConsumedReport::default();
        assert!(r.record(0, 1), "first take: send a command");
        assert!(!r.record(0, 2), "one is pending");
        assert!(!r.record(0, 3));
        assert_eq!(r.take(), (0, 3));
        assert!(r.record(1, 1), "taken: the next one sends again");
        assert_eq!(r.take(), (1, 1));
    }
}

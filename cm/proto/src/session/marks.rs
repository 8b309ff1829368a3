//! Consumed-mark reports: which clients' consumed marks (what completes the partner's async
//! sends) still have to reach the partner, and when a FLOW of their own may carry them. Each
//! client gets at most one such FLOW per `consumed_report_interval` (the first at once), so a
//! busy stream is not answered with a frame per message; an ACK or FLOW sent for the client
//! meanwhile carries the mark and ends the wait.

use super::ClientId;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// Pending mark reports, ordered by when they may go (`None`: at once).
#[derive(Debug, Default)]
pub(super) struct MarkReports {
    due: BTreeMap<ClientId, Option<Instant>>,
    queue: BTreeSet<(Option<Instant>, ClientId)>,
}

impl MarkReports {
    /// Client `id`'s mark moved; a FLOW of its own may carry it from `ready_at` on. A report
    /// already pending keeps its time.
    pub(super) fn insert(&mut self, id: ClientId, ready_at: Option<Instant>) {
        if let Entry::Vacant(e) = self.due.entry(id) {
            e.insert(ready_at);
            self.queue.insert((ready_at, id));
        }
    }

    /// A frame carried `id`'s mark (or the client is gone).
    pub(super) fn remove(&mut self, id: ClientId) {
        if let Some(at) = self.due.remove(&id) {
            self.queue.remove(&(at, id));
        }
    }

    pub(super) fn clear(&mut self) {
        self.due.clear();
        self.queue.clear();
    }

    /// The next client whose report may go at `now`, taken off the list.
    pub(super) fn pop_ready(&mut self, now: Instant) -> Option<ClientId> {
        let &(at, id) = self.queue.first()?;
        if at.is_some_and(|t| t > now) {
            return None;
        }
        self.queue.pop_first();
        self.due.remove(&id);
        Some(id)
    }

    /// The earliest time a waiting report may go (reports that may go at once not counted).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.queue.iter().find_map(|(at, _)| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn reports_go_in_time_order_once_each() {
        let t0 = Instant::now();
        let mut m = MarkReports::default();
        m.insert(ClientId::new(1), Some(t0 + Duration::from_millis(2)));
        m.insert(ClientId::new(2), None);
        m.insert(ClientId::new(3), Some(t0 + Duration::from_millis(1)));
        m.insert(ClientId::new(3), None); // already pending: keeps its time
        assert_eq!(m.next_deadline(), Some(t0 + Duration::from_millis(1)));
        assert_eq!(m.pop_ready(t0), Some(ClientId::new(2)));
        assert_eq!(m.pop_ready(t0), None, "the others wait");
        m.remove(ClientId::new(3)); // a frame carried it
        assert_eq!(m.next_deadline(), Some(t0 + Duration::from_millis(2)));
        assert_eq!(
            m.pop_ready(t0 + Duration::from_millis(5)),
            Some(ClientId::new(1))
        );
        assert_eq!(m.pop_ready(t0 + Duration::from_millis(5)), None);
    }
}

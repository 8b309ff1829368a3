//! Acknowledgement timeouts of a send stream: each sync or async send may carry a timeout; its
//! deadline is armed when the send is pushed (or, pushed without the clock, by the next
//! [`SendStream::arm`]). When it passes ([`SendStream::expire`]) the send is *timed out*: its
//! client is told at once, but the message stays as long as the wire needs it (until the
//! partner has received it: the receiver delivers in sequence, so a message that was never
//! sent or could still be lost must still go) and then completes silently. A completion that
//! comes for a timed-out send is late: it is dropped and only counted
//! ([`SendCompletion::Late`]).

use super::{SendCompletion, SendModel, SendStream};
use std::time::Instant;

/// Timed-out sends remembered after their release, to count their late completions.
const MAX_REMEMBERED_LATE: usize = 4096;

impl SendStream {
    pub(super) fn arm_one(&mut self, seq: u64, now: Instant) {
        if let Some(u) = self.unacked.get_mut(&seq) {
            if let (Some(t), None, false) = (u.timeout, u.deadline, u.told()) {
                let d = now + t;
                u.deadline = Some(d);
                self.deadlines.insert((d, seq));
            }
        }
    }

    /// Arms the deadlines of sends pushed without the clock. Returns whether any was armed.
    pub fn arm(&mut self, now: Instant) -> bool {
        let seqs = std::mem::take(&mut self.unarmed);
        let any = !seqs.is_empty();
        for seq in seqs {
            self.arm_one(seq, now);
        }
        any
    }

    /// Whether sends wait for [`SendStream::arm`].
    pub fn has_unarmed(&self) -> bool {
        !self.unarmed.is_empty()
    }

    /// The earliest armed acknowledgement deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Times out every send whose deadline is at or before `now`, oldest deadline first, and
    /// returns their send ids (the client's numbers) for `Nacked { Timeout }`.
    pub fn expire(&mut self, now: Instant) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Some(&(d, seq)) = self.deadlines.first() {
            if d > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(u) = self.unacked.get_mut(&seq) else {
                continue;
            };
            u.deadline = None;
            u.timed_out = true;
            ids.push(u.client_seq);
            if seq <= self.acked_upto {
                // The partner has it already: nothing left for the wire to do.
                if let Some(u) = self.take(seq) {
                    self.remember_late(seq, u.model);
                }
            }
        }
        ids
    }

    /// Remembers a released timed-out send (wire `seq`) so that its late completion is counted.
    pub(super) fn remember_late(&mut self, seq: u64, model: SendModel) {
        self.released_late.insert(seq, model);
        while self.released_late.len() > MAX_REMEMBERED_LATE {
            self.released_late.pop_first();
        }
    }

    /// Late completions of released timed-out async sends the consumed mark `upto` covers.
    pub(super) fn late_upto(&mut self, upto: u64) -> Vec<SendCompletion> {
        let seqs: Vec<u64> = self
            .released_late
            .range(..=upto)
            .filter(|(_, m)| **m == SendModel::Async)
            .map(|(s, _)| *s)
            .collect();
        seqs.into_iter()
            .filter_map(|s| self.released_late.remove(&s))
            .map(|_| SendCompletion::Late)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn a_sync_send_times_out_once_and_its_late_code_is_only_counted() {
        let t0 = Instant::now();
        let mut s = SendStream::new(8, 8);
        let id = s.push_with(b("s"), SendModel::Sync, Some(T), Some(t0));
        let other = s.push(b("o"), SendModel::Sync);
        assert_eq!(s.next_deadline(), Some(t0 + T));
        while s.next_transmit().is_some() {}
        assert!(s.expire(t0 + T - Duration::from_millis(1)).is_empty());
        assert_eq!(s.expire(t0 + T), vec![id]);
        assert!(s.expire(t0 + T * 2).is_empty(), "once");
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.drain_unacked(), vec![other], "not NACKed twice");
    }

    #[test]
    fn a_timed_out_send_is_kept_for_the_wire_until_received_then_completes_late() {
        let t0 = Instant::now();
        let mut s = SendStream::new(8, 8);
        s.push_with(b("s"), SendModel::Sync, Some(T), Some(t0));
        s.push(b("a"), SendModel::Async);
        assert_eq!(
            s.expire(t0 + T),
            vec![1],
            "timed out before it was even sent"
        );
        assert_eq!(
            s.next_transmit().unwrap().0,
            1,
            "still goes: no gap in the sequence"
        );
        assert_eq!(s.next_transmit().unwrap().0, 2);
        assert_eq!(s.replay_all(), 2, "replayed like any other until received");
        while s.next_transmit().is_some() {}
        assert!(s.on_cumulative_ack(2).is_empty(), "released silently");
        assert_eq!(s.unacked_len(), 1, "only the async send is left");
        assert_eq!(s.on_code(1, 0), Some(SendCompletion::Late));
        assert_eq!(s.on_code(1, 0), None, "a duplicate is not counted twice");
        assert_eq!(
            s.on_consumed(2),
            vec![SendCompletion::Acked { seq: 2, code: None }]
        );
    }

    #[test]
    fn async_timeouts_a_rebase_and_arming_without_the_clock() {
        let t0 = Instant::now();
        let mut s = SendStream::new(8, 8);
        s.push(b("x"), SendModel::Async);
        let id = s.push_with(b("a"), SendModel::Async, Some(T), None);
        s.push_with(b("l"), SendModel::Local, Some(T), Some(t0));
        assert!(s.has_unarmed());
        assert_eq!(s.next_deadline(), None, "a local send has no ack timeout");
        assert!(s.arm(t0));
        assert_eq!(s.next_deadline(), Some(t0 + T));
        while s.next_transmit().is_some() {}
        s.on_cumulative_ack(3);
        assert_eq!(s.expire(t0 + T), vec![id]);
        assert_eq!(s.unacked_len(), 1, "received: released at once");
        assert_eq!(
            s.on_consumed(3),
            vec![
                SendCompletion::Acked { seq: 1, code: None },
                SendCompletion::Late
            ]
        );
        // A rebase keeps deadlines (renumbered) and drops what timed out.
        let mut r = SendStream::new(8, 8);
        r.push(b("x"), SendModel::Sync);
        r.push_with(b("y"), SendModel::Sync, Some(T), Some(t0));
        r.push_with(b("z"), SendModel::Sync, Some(T * 2), Some(t0));
        assert_eq!(r.expire(t0 + T), vec![2]);
        assert_eq!(r.rebase(8), 2);
        assert_eq!(r.next_deadline(), Some(t0 + T * 2));
        assert_eq!(
            r.expire(t0 + T * 2),
            vec![3],
            "send id kept, wire seq 2 now"
        );
        assert_eq!(r.drain_unacked(), vec![1]);
    }
}

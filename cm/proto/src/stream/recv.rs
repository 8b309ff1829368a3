//! The receiving half of a client stream: in-order delivery through a bounded reorder buffer,
//! duplicate detection, credit granted as the client consumes, and the return codes remembered
//! for replayed synchronous messages.

use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// A message ready for the receiving client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Sequence number.
    pub seq: u64,
    /// Whether the client must reply with a return code.
    pub sync: bool,
    /// The message.
    pub payload: Bytes,
    /// A one-sided write (its payload is the WRITE payload) for the runtime to place, not a
    /// message for the client: the session answers it with a placement code and counts it as
    /// consumed itself ([`RecvStream::settle_writes`]).
    pub write: bool,
}

/// What [`RecvStream::handle_data`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecvOutcome {
    /// Messages now deliverable, in order.
    pub deliveries: Vec<Delivery>,
    /// A duplicate of a sync message whose code is known: ACK it again with this code.
    pub reack_code: Option<(u64, i32)>,
    /// The frame was a duplicate.
    pub duplicate: bool,
}

/// The partner broke the stream rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Sequence numbers start at 1.
    #[error("sequence number 0 is invalid")]
    ZeroSeq,
    /// The partner sent beyond the credit granted to it.
    #[error("sequence {seq} is beyond the granted credit {credit}")]
    BeyondCredit {
        /// Offending sequence.
        seq: u64,
        /// Credit granted.
        credit: u64,
    },
}

/// The local client answered a message it may not answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// No synchronous message with this sequence number awaits a reply.
    #[error("no synchronous message {0} is awaiting a reply")]
    NotAwaiting(u64),
}

/// A message or write waiting in the reorder buffer.
#[derive(Debug)]
struct Entry {
    sync: bool,
    write: bool,
    payload: Bytes,
}

/// The receiving half of one client's stream.
#[derive(Debug)]
pub struct RecvStream {
    delivered: u64,
    /// Messages waiting for an earlier one; `None` marks a refused one (a hole filled).
    reorder: BTreeMap<u64, Option<Entry>>,
    /// Delivered writes above the consumed mark: the client never takes them, so the mark
    /// passes over them as soon as everything before them is taken.
    writes: BTreeSet<u64>,
    window: u32,
    consumed: u64,
    /// The consumed mark as last put in a frame for the partner.
    reported: u64,
    granted: u64,
    awaiting_reply: BTreeSet<u64>,
    /// Return codes of the highest answered sequence numbers (at most `window` of them). Kept
    /// by sequence number, not by answer order: every sync message the partner may still
    /// replay lies within one window above its oldest unacknowledged one, so the `window`
    /// highest codes are enough, whatever order the client answered in.
    codes: BTreeMap<u64, i32>,
}

impl RecvStream {
    /// A fresh stream granting `window` messages of credit.
    pub fn new(window: u32) -> Self {
        let window = window.max(1);
        RecvStream {
            delivered: 0,
            reorder: BTreeMap::new(),
            writes: BTreeSet::new(),
            window,
            consumed: 0,
            reported: 0,
            granted: u64::from(window),
            awaiting_reply: BTreeSet::new(),
            codes: BTreeMap::new(),
        }
    }

    /// Highest sequence delivered in order (the cumulative ack value).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Credit currently granted to the partner.
    pub fn credit(&self) -> u64 {
        self.consumed + u64::from(self.window)
    }

    /// Messages waiting for an earlier one.
    pub fn reorder_len(&self) -> usize {
        self.reorder.len()
    }

    /// Handles one DATA frame.
    pub fn handle_data(
        &mut self,
        seq: u64,
        sync: bool,
        payload: Bytes,
    ) -> Result<RecvOutcome, RecvError> {
        self.accept(
            seq,
            Some(Entry {
                sync,
                write: false,
                payload,
            }),
        )
    }

    /// Handles one WRITE frame: an entry of the stream like a sync message (the session
    /// answers it with its placement code), delivered in order as a [`Delivery`] with `write`
    /// set.
    pub fn handle_write(&mut self, seq: u64, payload: Bytes) -> Result<RecvOutcome, RecvError> {
        self.accept(
            seq,
            Some(Entry {
                sync: true,
                write: true,
                payload,
            }),
        )
    }

    /// Message `seq` was refused (too large to take): it takes its place in the stream, so the
    /// messages after it are delivered, but it is never delivered itself (the sender is told
    /// with a NACK). Checked like a DATA frame (a duplicate is reported as one).
    pub fn skip(&mut self, seq: u64) -> Result<RecvOutcome, RecvError> {
        self.accept(seq, None)
    }

    fn accept(&mut self, seq: u64, msg: Option<Entry>) -> Result<RecvOutcome, RecvError> {
        let sync = msg.as_ref().is_some_and(|e| e.sync);
        if seq == 0 {
            return Err(RecvError::ZeroSeq);
        }
        let mut out = RecvOutcome::default();
        if seq <= self.delivered || self.reorder.contains_key(&seq) {
            out.duplicate = true;
            if sync {
                out.reack_code = self.codes.get(&seq).map(|code| (seq, *code));
            }
            return Ok(out);
        }
        // The partner may only send what we granted; allow anything we ever granted, since a
        // grant can be in flight while the client consumes.
        let limit = self.granted.max(self.credit());
        if seq > limit {
            return Err(RecvError::BeyondCredit { seq, credit: limit });
        }
        self.reorder.insert(seq, msg);
        while let Some(next) = self.reorder.remove(&(self.delivered + 1)) {
            self.delivered += 1;
            let Some(Entry {
                sync,
                write,
                payload,
            }) = next
            else {
                continue; // refused: its place is filled, nothing to deliver
            };
            if sync {
                self.awaiting_reply.insert(self.delivered);
            }
            if write {
                self.writes.insert(self.delivered);
            }
            out.deliveries.push(Delivery {
                seq: self.delivered,
                sync,
                payload,
                write,
            });
        }
        Ok(out)
    }

    /// The local client returned `code` for `seq`.
    pub fn reply(&mut self, seq: u64, code: i32) -> Result<(), ReplyError> {
        if !self.awaiting_reply.remove(&seq) {
            return Err(ReplyError::NotAwaiting(seq));
        }
        self.codes.insert(seq, code);
        while self.codes.len() > self.window as usize {
            self.codes.pop_first();
        }
        Ok(())
    }

    /// The local client took every message up to `seq`. Returns the new credit when it has
    /// advanced by at least a quarter window since the last grant (worth a FLOW frame at once).
    /// Otherwise only the consumed mark moved ([`RecvStream::mark_pending`]): the session
    /// reports it on the next ACK or FLOW for this client, or in a FLOW of its own, rate
    /// limited, so a busy stream does not answer every message with a frame.
    pub fn consume(&mut self, seq: u64) -> Option<u64> {
        let mut seq = seq.min(self.delivered);
        // Writes right after what the client took are consumed with it (nobody takes them).
        self.writes.retain(|&w| w > seq);
        while self.writes.first() == Some(&(seq + 1)) {
            self.writes.pop_first();
            seq += 1;
        }
        if seq <= self.consumed {
            return None;
        }
        self.consumed = seq;
        let credit = self.credit();
        if credit >= self.granted + u64::from(self.window / 4).max(1) {
            self.granted = credit;
            Some(credit)
        } else {
            None
        }
    }

    /// Moves the consumed mark over delivered writes that directly follow it (the client never
    /// takes a write). Returns new credit as [`RecvStream::consume`] does.
    pub fn settle_writes(&mut self) -> Option<u64> {
        self.consume(self.consumed)
    }

    /// Highest sequence the local client has taken (the consumed mark).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Whether the consumed mark moved since it was last put in a frame ([`RecvStream::take_mark`]).
    pub fn mark_pending(&self) -> bool {
        self.consumed > self.reported
    }

    /// The consumed mark, for a frame about to carry it (ACK or FLOW): it is then reported.
    pub fn take_mark(&mut self) -> u64 {
        self.reported = self.consumed;
        self.consumed
    }

    /// The remembered return codes, by sequence number (to send again after a link loss:
    /// their first ACK may have died with the link; the sender ignores duplicates).
    pub fn codes(&self) -> impl Iterator<Item = (u64, i32)> + '_ {
        self.codes.iter().map(|(s, c)| (*s, *c))
    }

    /// Marks the current credit as announced (after a re-announce on link loss).
    pub fn regrant(&mut self) -> u64 {
        self.granted = self.granted.max(self.credit());
        self.granted
    }

    /// Starts over after a session reset.
    pub fn reset(&mut self) {
        *self = RecvStream::new(self.window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn receiver_reorders_and_drops_duplicates() {
        let mut r = RecvStream::new(8);
        let o = r.handle_data(2, false, b("two")).unwrap();
        assert!(o.deliveries.is_empty());
        let o = r.handle_data(1, false, b("one")).unwrap();
        assert_eq!(
            o.deliveries.iter().map(|d| d.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(r.handle_data(2, false, b("two")).unwrap().duplicate);
        assert!(r
            .handle_data(1, false, b("one"))
            .unwrap()
            .deliveries
            .is_empty());
        assert_eq!(r.delivered(), 2);
    }

    #[test]
    fn receiver_reacks_duplicate_sync_with_known_code() {
        let mut r = RecvStream::new(8);
        r.handle_data(1, true, b("s")).unwrap();
        assert_eq!(r.reply(1, 7), Ok(()));
        assert_eq!(r.reply(1, 7), Err(ReplyError::NotAwaiting(1)));
        let o = r.handle_data(1, true, b("s")).unwrap();
        assert_eq!(o.reack_code, Some((1, 7)));
    }

    #[test]
    fn receiver_enforces_credit_and_grants_more_on_consumption() {
        let mut r = RecvStream::new(4);
        assert_eq!(
            r.handle_data(5, false, b("x")),
            Err(RecvError::BeyondCredit { seq: 5, credit: 4 })
        );
        assert_eq!(r.handle_data(0, false, b("x")), Err(RecvError::ZeroSeq));
        for s in 1..=4 {
            r.handle_data(s, false, b("x")).unwrap();
        }
        assert_eq!(r.consume(1), Some(5));
        assert_eq!(r.consume(1), None);
        assert!(r.handle_data(5, false, b("x")).is_ok());
    }

    #[test]
    fn consumed_mark_is_pending_until_a_frame_takes_it() {
        let mut r = RecvStream::new(8);
        for s in 1..=3 {
            r.handle_data(s, false, b("x")).unwrap();
        }
        assert!(!r.mark_pending());
        assert_eq!(
            r.consume(1),
            None,
            "less than a quarter window: no FLOW for credit"
        );
        assert!(r.mark_pending(), "but the mark moved");
        assert_eq!(
            r.consume(9),
            Some(11),
            "never beyond what was delivered; a quarter window more credit is worth a FLOW"
        );
        assert_eq!(r.consumed(), 3);
        assert_eq!(r.take_mark(), 3);
        assert!(!r.mark_pending());
        assert_eq!(r.take_mark(), 3, "a repeated report says the same");
    }
}

//! Immediates, the sender's credit window and the receiver's credit batching: pure
//! bookkeeping, no IO.
//!
//! # Immediates
//!
//! Every message is an RDMA WRITE_WITH_IMM and consumes one posted receive at the partner:
//!
//! - **data**: bit 31 clear, bits 0..31 = the encoded frame's length `L` (at least the 36-byte
//!   header, so never 0); the frame is in the partner's ring where [`crate::ring`] says;
//! - **credit**: bit 31 set, bits 0..31 = `n >= 1`, the number of the partner's data messages
//!   consumed (in order) since the previous credit; zero-length, remote offset 0.
//!
//! # Why the data window is half the receive depth
//!
//! Let `R` be the smaller of the two sides' `recv_depth` and `W = R / 2`
//! ([`data_window`]). A sender never has more than `W` data messages un-credited. Each side
//! reposts a receive as soon as it polls the completion that consumed it, so the receives a
//! side has not reposted yet are taken by messages it has not processed yet:
//!
//! - the partner's data messages: all un-credited, so at most `W`;
//! - the partner's credit messages: each returns credit for at least one of *our* data
//!   messages, disjoint from the others' and still un-credited in our books (we have not
//!   processed those credits), so at most `W` as well.
//!
//! `2 * W <= R` receives are therefore always enough: no message ever finds the receive queue
//! empty (no RNR NAK), whatever `rnr_retry_count` is, and credit messages need no credit of
//! their own -- so the two sides can never deadlock waiting for each other's credit. The other
//! `R - W` receives are the reserve that covers credit messages.

use crate::ring::{Placement, RingError, SendRing};
use std::collections::VecDeque;
use thiserror::Error;

/// Bit 31 of an immediate: set on credit messages.
pub const CREDIT_FLAG: u32 = 1 << 31;

/// What an immediate says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imm {
    /// A frame of `len` encoded bytes was written into the ring.
    Data {
        /// Encoded length.
        len: u32,
    },
    /// The partner consumed `msgs` of our data messages.
    Credit {
        /// Messages consumed.
        msgs: u32,
    },
}

/// An immediate that means nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ImmError {
    /// A data immediate with length 0.
    #[error("data immediate with length 0")]
    EmptyData,
    /// A credit immediate returning no credit.
    #[error("credit immediate returning 0 messages")]
    EmptyCredit,
    /// A count or length does not fit 31 bits.
    #[error("{0} does not fit the 31 bits of an immediate")]
    TooBig(u32),
}

impl Imm {
    /// The 32-bit immediate.
    pub fn encode(self) -> Result<u32, ImmError> {
        match self {
            Imm::Data { len: 0 } => Err(ImmError::EmptyData),
            Imm::Credit { msgs: 0 } => Err(ImmError::EmptyCredit),
            Imm::Data { len } | Imm::Credit { msgs: len } if len & CREDIT_FLAG != 0 => {
                Err(ImmError::TooBig(len))
            }
            Imm::Data { len } => Ok(len),
            Imm::Credit { msgs } => Ok(CREDIT_FLAG | msgs),
        }
    }

    /// Parses an immediate.
    pub fn decode(imm: u32) -> Result<Imm, ImmError> {
        let value = imm & !CREDIT_FLAG;
        match (imm & CREDIT_FLAG != 0, value) {
            (false, 0) => Err(ImmError::EmptyData),
            (true, 0) => Err(ImmError::EmptyCredit),
            (false, len) => Ok(Imm::Data { len }),
            (true, msgs) => Ok(Imm::Credit { msgs }),
        }
    }
}

/// The most data messages a sender may have un-credited, given both sides' receive depths.
pub fn data_window(local_recv_depth: u32, remote_recv_depth: u32) -> u32 {
    (local_recv_depth.min(remote_recv_depth) / 2).max(1)
}

/// Why the next message cannot go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// `W` data messages are un-credited.
    Window,
    /// The partner's ring has no room for it.
    Ring,
}

/// The partner broke the credit rules, or the QP reported completions out of order.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WindowError {
    /// More credit returned than messages un-credited.
    #[error("partner returned credit for {credited} messages, only {uncredited} are un-credited")]
    OverCredit {
        /// Credit returned.
        credited: u64,
        /// Messages un-credited.
        uncredited: u64,
    },
    /// A send completion for a message that is not the oldest uncompleted one.
    #[error("send completion for message {got}, expected {expected:?}")]
    OutOfOrder {
        /// Completed sequence number.
        got: u64,
        /// The oldest uncompleted one, if any.
        expected: Option<u64>,
    },
    /// Ring bookkeeping failed.
    #[error(transparent)]
    Ring(#[from] RingError),
}

#[derive(Debug)]
struct Entry<T> {
    seq: u64,
    len: u64,
    footprint: u64,
    tag: T,
}

/// One message whose WRITE completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed<T> {
    /// Encoded bytes.
    pub len: u64,
    /// What the caller attached to it.
    pub tag: T,
}

/// The sender's books: messages written into the partner's ring that are not yet both
/// completed locally (the HCA is done reading the staging copy) and credited by the partner
/// (it is done reading the ring copy). Only then is the message's footprint freed -- in the
/// partner's ring and, since staging mirrors it, in the local staging region. RC completes
/// sends in order and credit counts messages in order, so both sets are prefixes of the
/// queue.
#[derive(Debug)]
pub struct SendWindow<T> {
    ring: SendRing,
    window: u32,
    inflight: VecDeque<Entry<T>>,
    completed: usize,
    credited: usize,
    next_seq: u64,
}

impl<T: Default> SendWindow<T> {
    /// Books for a partner ring of `ring_bytes` and a window of `window` data messages.
    pub fn new(ring_bytes: u64, window: u32) -> Self {
        SendWindow {
            ring: SendRing::new(ring_bytes),
            window: window.max(1),
            inflight: VecDeque::new(),
            completed: 0,
            credited: 0,
            next_seq: 0,
        }
    }

    /// The ring.
    pub fn ring(&self) -> &SendRing {
        &self.ring
    }

    /// The window in messages.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// Data messages not credited yet.
    pub fn uncredited(&self) -> usize {
        self.inflight.len() - self.credited
    }

    /// Data messages whose WRITE has not completed yet (send-queue entries in use).
    pub fn uncompleted(&self) -> usize {
        self.inflight.len() - self.completed
    }

    /// Places a message of `len` bytes if the window and the ring allow; returns its sequence
    /// number and placement, or why it must wait (with the tag back).
    pub fn try_push(&mut self, len: u64, tag: T) -> Result<(u64, Placement), (Stall, T)> {
        if self.uncredited() >= self.window as usize {
            return Err((Stall::Window, tag));
        }
        match self.ring.reserve(len) {
            Ok(Some(p)) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.inflight.push_back(Entry {
                    seq,
                    len,
                    footprint: p.footprint,
                    tag,
                });
                Ok((seq, p))
            }
            // A length the ring can never take is refused by the caller before it gets here;
            // treat it as a ring stall rather than panic.
            Ok(None) | Err(_) => Err((Stall::Ring, tag)),
        }
    }

    /// The WRITE of message `seq` completed successfully.
    pub fn complete(&mut self, seq: u64) -> Result<Completed<T>, WindowError> {
        let expected = self.inflight.get(self.completed).map(|e| e.seq);
        let Some(e) = self
            .inflight
            .get_mut(self.completed)
            .filter(|e| e.seq == seq)
        else {
            return Err(WindowError::OutOfOrder { got: seq, expected });
        };
        let done = Completed {
            len: e.len,
            tag: std::mem::take(&mut e.tag),
        };
        self.completed += 1;
        self.reap()?;
        Ok(done)
    }

    /// The partner returned credit for `msgs` data messages.
    pub fn credit(&mut self, msgs: u64) -> Result<(), WindowError> {
        let uncredited = self.uncredited() as u64;
        if msgs > uncredited {
            return Err(WindowError::OverCredit {
                credited: msgs,
                uncredited,
            });
        }
        self.credited += msgs as usize;
        self.reap()
    }

    fn reap(&mut self) -> Result<(), WindowError> {
        while self.completed > 0 && self.credited > 0 {
            let Some(e) = self.inflight.pop_front() else {
                break;
            };
            self.completed -= 1;
            self.credited -= 1;
            self.ring.release(e.footprint)?;
        }
        Ok(())
    }
}

/// The receiver's credit owed to the partner, and when to return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditOwed {
    msgs: u32,
    bytes: u64,
    batch_msgs: u32,
    batch_bytes: u64,
}

impl CreditOwed {
    /// Return credit once `batch_msgs` messages or `batch_bytes` ring bytes are owed (or, for
    /// less, once it has been owed `credit_idle_us`: the link thread's timer).
    pub fn new(batch_msgs: u32, batch_bytes: u64) -> Self {
        CreditOwed {
            msgs: 0,
            bytes: 0,
            batch_msgs: batch_msgs.max(1),
            batch_bytes: batch_bytes.max(1),
        }
    }

    /// One data message with this ring footprint was consumed.
    pub fn consumed(&mut self, footprint: u64) {
        self.msgs = self.msgs.saturating_add(1);
        self.bytes = self.bytes.saturating_add(footprint);
    }

    /// Whether any credit is owed.
    pub fn any(&self) -> bool {
        self.msgs > 0
    }

    /// Whether a batch is complete.
    pub fn due(&self) -> bool {
        self.msgs >= self.batch_msgs || self.bytes >= self.batch_bytes
    }

    /// Messages owed.
    pub fn msgs(&self) -> u32 {
        self.msgs
    }

    /// The credit was sent: start over.
    pub fn reset(&mut self) {
        self.msgs = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn immediates_round_trip_and_nonsense_is_refused() {
        for imm in [
            Imm::Data { len: 36 },
            Imm::Credit { msgs: 1 },
            Imm::Data { len: (1 << 31) - 1 },
        ] {
            assert_eq!(Imm::decode(imm.encode().unwrap()), Ok(imm));
        }
        assert_eq!(Imm::decode(0x8000_0005), Ok(Imm::Credit { msgs: 5 }));
        assert_eq!(Imm::decode(0), Err(ImmError::EmptyData));
        assert_eq!(Imm::decode(CREDIT_FLAG), Err(ImmError::EmptyCredit));
        assert_eq!(
            Imm::Data { len: 1 << 31 }.encode(),
            Err(ImmError::TooBig(1 << 31))
        );
        assert_eq!(Imm::Credit { msgs: 0 }.encode(), Err(ImmError::EmptyCredit));
    }

    #[test]
    fn the_window_is_half_the_smaller_receive_depth() {
        assert_eq!(data_window(256, 256), 128);
        assert_eq!(data_window(256, 16), 8);
        assert_eq!(data_window(2, 3), 1);
    }

    #[test]
    fn space_frees_only_when_completed_and_credited() {
        let mut w: SendWindow<Option<u8>> = SendWindow::new(100, 2);
        let (s0, _) = w.try_push(50, Some(0)).unwrap();
        let (s1, _) = w.try_push(50, Some(1)).unwrap();
        assert_eq!(w.try_push(1, None).unwrap_err().0, Stall::Window);
        w.credit(2).unwrap();
        assert_eq!(w.uncredited(), 0);
        assert_eq!(
            w.try_push(1, None).unwrap_err().0,
            Stall::Ring,
            "not completed yet"
        );
        assert_eq!(
            w.complete(s1),
            Err(WindowError::OutOfOrder {
                got: s1,
                expected: Some(s0)
            })
        );
        assert_eq!(
            w.complete(s0).unwrap(),
            Completed {
                len: 50,
                tag: Some(0)
            }
        );
        assert_eq!(w.ring().used(), 50);
        assert!(w.try_push(50, None).is_ok());
        assert!(matches!(
            w.credit(2),
            Err(WindowError::OverCredit {
                credited: 2,
                uncredited: 1
            })
        ));
    }

    #[test]
    fn credit_batches_by_messages_or_bytes() {
        let mut o = CreditOwed::new(3, 1000);
        assert!(!o.any() && !o.due());
        o.consumed(10);
        o.consumed(10);
        assert!(o.any() && !o.due());
        o.consumed(10);
        assert!(o.due());
        o.reset();
        o.consumed(1000);
        assert!(o.due() && o.msgs() == 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u64),
        /// The receiver consumes up to n delivered messages; credit goes back in a batch.
        Consume(u32),
        /// Up to n send completions.
        Complete(u32),
    }

    proptest! {
        /// The full loop: sender books, receiver ring and credit batching. Offsets agree, the
        /// window and the ring bound what is in flight, and everything drains.
        #[test]
        fn credit_loop_keeps_both_sides_in_step(
            size in 2u64..4000,
            window in 1u32..16,
            batch in 1u32..8,
            ops in prop::collection::vec(prop_oneof![
                3 => (1u64..=1000).prop_map(Op::Push),
                1 => (1u32..6).prop_map(Op::Consume),
                1 => (1u32..6).prop_map(Op::Complete),
            ], 1..300),
        ) {
            let max = crate::ring::max_message_bytes(size);
            let mut w: SendWindow<u64> = SendWindow::new(size, window);
            let mut r = crate::ring::RecvRing::new(size);
            let mut owed = CreditOwed::new(batch, size / 4);
            // Messages written but not consumed by the receiver, and not completed locally.
            let mut unread: VecDeque<(u64, Placement)> = VecDeque::new();
            let mut uncompleted: VecDeque<u64> = VecDeque::new();
            let mut pushed = 0u64;
            for op in ops {
                match op {
                    Op::Push(len) => {
                        let len = 1 + (len - 1) % max;
                        if let Ok((seq, p)) = w.try_push(len, pushed) {
                            pushed += 1;
                            unread.push_back((len, p));
                            uncompleted.push_back(seq);
                        }
                    }
                    Op::Consume(n) => {
                        for _ in 0..n {
                            let Some((len, p)) = unread.pop_front() else { break };
                            let got = r.accept(len).unwrap();
                            prop_assert_eq!(got, p);
                            owed.consumed(got.footprint);
                        }
                        // Return credit when due, or (idle) whenever anything is owed.
                        if owed.any() && (owed.due() || unread.is_empty()) {
                            w.credit(u64::from(owed.msgs())).unwrap();
                            owed.reset();
                        }
                    }
                    Op::Complete(n) => {
                        for _ in 0..n {
                            let Some(seq) = uncompleted.pop_front() else { break };
                            let c = w.complete(seq).unwrap();
                            prop_assert_eq!(c.tag, seq);
                        }
                    }
                }
                prop_assert!(w.uncredited() <= window as usize);
                prop_assert!(w.ring().used() <= size);
                prop_assert_eq!(w.ring().tail(), r.position() + unread.iter().map(|(_, p)| p.footprint).sum::<u64>());
            }
            // Drain: consume and complete everything; the ring must empty.
            while let Some((len, p)) = unread.pop_front() {
                prop_assert_eq!(r.accept(len).unwrap(), p);
                owed.consumed(p.footprint);
            }
            if owed.any() {
                w.credit(u64::from(owed.msgs())).unwrap();
            }
            while let Some(seq) = uncompleted.pop_front() {
                w.complete(seq).unwrap();
            }
            prop_assert_eq!(w.ring().used(), 0);
            prop_assert_eq!(w.uncredited(), 0);
            prop_assert_eq!(w.uncompleted(), 0);
        }
    }
}

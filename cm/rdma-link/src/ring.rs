//! The receive ring's layout rule, shared by sender and receiver: pure arithmetic, no IO.
//!
//! # The wrap rule
//!
//! The ring is `S` bytes (the *receiver's* `ring_bytes`, sent in its endpoint). Sender and
//! receiver each keep a byte *position* that only grows, starting at 0 (the sender's tail, the
//! receiver's read position); the offset in the ring is `position % S`. For a message of `L`
//! encoded bytes (`1 <= L <= S / 2`):
//!
//! - with `o = position % S`, if `o + L <= S` the message is at offset `o` and the position
//!   advances by `L`;
//! - otherwise the bytes `o..S` are skipped (never written), the message is at offset 0 and the
//!   position advances by `(S - o) + L`.
//!
//! That advance is the message's *footprint*. Both sides apply the rule to the same sequence of
//! lengths in the same (queue-pair) order, so they always agree on every offset and the
//! immediate only has to carry `L`. A footprint is less than `2 * L` (a skipped tail is shorter
//! than the message that did not fit), so `L <= S / 2` guarantees that every message fits an
//! empty ring, whatever the current offset.
//!
//! The sender frees a message's footprint once the receiver has returned credit for it (and its
//! own WRITE has completed, see [`crate::credit::SendWindow`]). Messages are freed in order, so
//! the occupied positions are always the contiguous range `head..tail` with
//! `tail - head <= S`: nothing the receiver has not consumed is ever overwritten.

use thiserror::Error;

/// Where one message goes in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Offset of the message's first byte in the ring.
    pub offset: u64,
    /// How far the position advances (the skipped tail, if any, plus the message).
    pub footprint: u64,
    /// Whether the message wrapped to offset 0, skipping the ring's tail.
    pub wrapped: bool,
}

/// Applies the wrap rule to a message of `len` bytes at `position` in a ring of `size` bytes.
///
/// Callers check `1 <= len <= size / 2` first ([`max_message_bytes`]).
pub fn place(position: u64, len: u64, size: u64) -> Placement {
    let o = position % size.max(1);
    if o + len <= size {
        Placement {
            offset: o,
            footprint: len,
            wrapped: false,
        }
    } else {
        Placement {
            offset: 0,
            footprint: (size - o) + len,
            wrapped: true,
        }
    }
}

/// The largest message a ring of `size` bytes takes: half of it (see the module doc).
pub fn max_message_bytes(size: u64) -> u64 {
    size / 2
}

/// A message cannot be placed or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RingError {
    /// The length is 0 or above half the ring.
    #[error("message of {len} bytes does not fit a {size}-byte ring (1..={max} bytes)")]
    BadLength {
        /// The message length.
        len: u64,
        /// The ring size.
        size: u64,
        /// The largest acceptable length.
        max: u64,
    },
    /// More bytes released than are in use (a bookkeeping bug).
    #[error("releasing {footprint} bytes from a ring with {used} in use")]
    OverRelease {
        /// What was to be released.
        footprint: u64,
        /// What is in use.
        used: u64,
    },
}

fn check_len(len: u64, size: u64) -> Result<(), RingError> {
    let max = max_message_bytes(size);
    if len == 0 || len > max {
        return Err(RingError::BadLength { len, size, max });
    }
    Ok(())
}

/// The sender's view of the partner's ring: the tail where the next message goes and the head
/// below which everything has been freed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRing {
    size: u64,
    head: u64,
    tail: u64,
}

impl SendRing {
    /// An empty ring of `size` bytes (at least 2).
    pub fn new(size: u64) -> Self {
        SendRing {
            size: size.max(2),
            head: 0,
            tail: 0,
        }
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes between head and tail (messages not freed yet, with their skipped tails).
    pub fn used(&self) -> u64 {
        self.tail - self.head
    }

    /// Bytes free.
    pub fn free(&self) -> u64 {
        self.size - self.used()
    }

    /// The tail position (total bytes ever placed, skipped tails included).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Where a message of `len` bytes would go, without placing it: `Ok(None)` if it does not
    /// fit now (wait for credit), an error if it can never fit.
    pub fn peek(&self, len: u64) -> Result<Option<Placement>, RingError> {
        check_len(len, self.size)?;
        let p = place(self.tail, len, self.size);
        Ok((p.footprint <= self.free()).then_some(p))
    }

    /// Places a message of `len` bytes if it fits now (see [`Self::peek`]).
    pub fn reserve(&mut self, len: u64) -> Result<Option<Placement>, RingError> {
        let p = self.peek(len)?;
        if let Some(p) = p {
            self.tail += p.footprint;
        }
        Ok(p)
    }

    /// Frees the oldest message's footprint.
    pub fn release(&mut self, footprint: u64) -> Result<(), RingError> {
        let used = self.used();
        if footprint > used {
            return Err(RingError::OverRelease { footprint, used });
        }
        self.head += footprint;
        Ok(())
    }
}

/// The receiver's read position in its own ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvRing {
    size: u64,
    position: u64,
}

impl RecvRing {
    /// A ring of `size` bytes, read position 0.
    pub fn new(size: u64) -> Self {
        RecvRing {
            size: size.max(2),
            position: 0,
        }
    }

    /// Ring size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The read position (total bytes consumed, skipped tails included).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Where the next message, of `len` bytes (from its immediate), is; advances past it.
    pub fn accept(&mut self, len: u64) -> Result<Placement, RingError> {
        check_len(len, self.size)?;
        let p = place(self.position, len, self.size);
        self.position += p.footprint;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn exact_fit_does_not_wrap_and_the_next_message_starts_at_zero() {
        let mut s = SendRing::new(100);
        assert_eq!(s.reserve(50).unwrap().unwrap().offset, 0);
        let p = s.reserve(50).unwrap().unwrap();
        assert_eq!((p.offset, p.footprint, p.wrapped), (50, 50, false));
        assert_eq!(s.reserve(1).unwrap(), None, "ring full");
        s.release(50).unwrap();
        let p = s.reserve(10).unwrap().unwrap();
        assert_eq!((p.offset, p.wrapped), (0, false));
    }

    #[test]
    fn a_message_that_does_not_fit_the_tail_wraps_and_pays_for_it() {
        let mut s = SendRing::new(100);
        let mut r = RecvRing::new(100);
        for len in [30, 30, 30] {
            let a = s.reserve(len).unwrap().unwrap();
            assert_eq!(a, r.accept(len).unwrap());
        }
        s.release(30).unwrap();
        s.release(30).unwrap();
        // Tail at 90: 20 bytes do not fit 90..100, so the message goes to 0 and skips 10.
        let p = s.reserve(20).unwrap().unwrap();
        assert_eq!((p.offset, p.footprint, p.wrapped), (0, 30, true));
        assert_eq!(r.accept(20).unwrap(), p);
        assert_eq!(s.used(), 60);
    }

    #[test]
    fn lengths_outside_one_to_half_the_ring_are_refused() {
        let mut s = SendRing::new(100);
        assert!(matches!(s.reserve(0), Err(RingError::BadLength { .. })));
        assert!(matches!(
            s.reserve(51),
            Err(RingError::BadLength { max: 50, .. })
        ));
        assert!(s.reserve(50).unwrap().is_some());
        let mut r = RecvRing::new(100);
        assert!(r.accept(51).is_err() && r.accept(0).is_err());
        assert_eq!(r.position(), 0, "a refused length does not move the reader");
        assert!(matches!(
            s.release(51),
            Err(RingError::OverRelease { used: 50, .. })
        ));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// The sender places a message (if it fits).
        Send(u64),
        /// The receiver consumes up to n delivered messages and the sender frees them.
        Consume(usize),
    }

    fn ops(size: u64) -> impl Strategy<Value = Vec<Op>> {
        let max = max_message_bytes(size);
        prop::collection::vec(
            prop_oneof![
                3 => (1..=max).prop_map(Op::Send),
                1 => (1usize..8).prop_map(Op::Consume),
            ],
            1..400,
        )
    }

    proptest! {
        /// Sender and receiver agree on every offset, the used space stays within the ring,
        /// and no live message overlaps another (nothing unread is ever overwritten).
        #[test]
        fn sender_and_receiver_always_agree(
            (size, ops) in (2u64..5000).prop_flat_map(|s| (Just(s), ops(s)))
        ) {
            let mut s = SendRing::new(size);
            let mut r = RecvRing::new(size);
            // Data ranges (offset, len) and footprints of messages not freed yet, oldest first.
            let mut live: VecDeque<(u64, u64)> = VecDeque::new();
            let mut footprints: VecDeque<u64> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Send(len) => {
                        let free_before = s.free();
                        if let Some(p) = s.reserve(len).unwrap() {
                            prop_assert!(p.footprint <= free_before);
                            prop_assert!(p.offset + len <= size);
                            if p.wrapped {
                                prop_assert!(p.offset == 0 && p.footprint < 2 * len);
                            } else {
                                prop_assert_eq!(p.footprint, len);
                            }
                            for &(o, l) in &live {
                                prop_assert!(
                                    p.offset + len <= o || o + l <= p.offset,
                                    "{:?} overlaps live message at {}+{}", p, o, l
                                );
                            }
                            live.push_back((p.offset, len));
                            footprints.push_back(p.footprint);
                            // The receiver finds it at the same offset.
                            prop_assert_eq!(r.accept(len).unwrap(), p);
                        } else {
                            // It really does not fit now, and it would fit an empty ring.
                            let p = place(s.tail(), len, size);
                            prop_assert!(p.footprint > s.free());
                            prop_assert!(p.footprint <= size);
                        }
                    }
                    Op::Consume(n) => {
                        for _ in 0..n {
                            let Some(fp) = footprints.pop_front() else { break };
                            live.pop_front();
                            s.release(fp).unwrap();
                        }
                    }
                }
                prop_assert!(s.used() <= size);
                prop_assert_eq!(s.used() + s.free(), size);
                prop_assert_eq!(s.tail(), r.position());
            }
            // Draining everything empties the ring exactly.
            while let Some(fp) = footprints.pop_front() {
                s.release(fp).unwrap();
            }
            prop_assert_eq!(s.used(), 0);
        }
    }
}

//! The write-staging allocator: where the data of each one-sided write is copied before the
//! HCA reads it. Pure arithmetic, no IO.
//!
//! The write-staging region is `S` bytes ([`crate::RdmaLinkConfig::write_staging_bytes`]).
//! Writes are posted and complete in queue-pair order, so the region is used as a FIFO, like
//! the receive ring ([`crate::ring`]): a write of `L` bytes (`1 <= L <= S`) goes at the tail
//! offset `o` if `o + L <= S`, else the tail `o..S` is skipped and it goes at offset 0; its
//! *footprint* (the skipped tail plus `L`) must fit the free space, or the write waits. Space
//! is freed in the same order when each write's completion arrives.
//!
//! Unlike the ring, nobody else has to agree on the offsets, so an **empty** allocator restarts
//! at offset 0: a write of up to the whole region always fits once everything before it has
//! completed, and nothing can wait forever.

use thiserror::Error;

/// Where one write's data goes in the staging region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Offset of the first byte.
    pub offset: u64,
    /// Bytes taken from the free space (the skipped tail, if any, plus the data).
    pub footprint: u64,
}

/// A write cannot be staged at all, or space is released that was never taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum StagingError {
    /// The length is 0 or above the region's size.
    #[error("a write of {len} bytes cannot be staged in a {size}-byte region (1..={size} bytes)")]
    BadLength {
        /// The write's length.
        len: u64,
        /// The region's size.
        size: u64,
    },
    /// More released than is in use (a bookkeeping bug).
    #[error("releasing {footprint} staging bytes with {used} in use")]
    OverRelease {
        /// What was to be released.
        footprint: u64,
        /// What is in use.
        used: u64,
    },
}

/// The FIFO books of one write-staging region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagingAlloc {
    size: u64,
    /// Offset where the next write goes (before the wrap rule).
    tail: u64,
    /// Bytes in use (footprints of writes not completed yet).
    used: u64,
}

impl StagingAlloc {
    /// An empty allocator for a region of `size` bytes (0: nothing can be staged).
    pub fn new(size: u64) -> Self {
        StagingAlloc {
            size,
            tail: 0,
            used: 0,
        }
    }

    /// Region size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Where a write of `len` bytes would go, without taking the space: `Ok(None)` if it must
    /// wait for completions, an error if it can never be staged.
    pub fn peek(&self, len: u64) -> Result<Option<Slot>, StagingError> {
        if len == 0 || len > self.size {
            return Err(StagingError::BadLength {
                len,
                size: self.size,
            });
        }
        // An empty region restarts at 0, so the whole of it is available.
        let o = if self.used == 0 { 0 } else { self.tail };
        let slot = if o + len <= self.size {
            Slot {
                offset: o,
                footprint: len,
            }
        } else {
            Slot {
                offset: 0,
                footprint: (self.size - o) + len,
            }
        };
        Ok((slot.footprint <= self.size - self.used).then_some(slot))
    }

    /// Takes the space for a write of `len` bytes if it fits now (see [`Self::peek`]).
    pub fn reserve(&mut self, len: u64) -> Result<Option<Slot>, StagingError> {
        let slot = self.peek(len)?;
        if let Some(s) = slot {
            self.used += s.footprint;
            self.tail = s.offset + len;
        }
        Ok(slot)
    }

    /// The oldest write still staged completed: frees its footprint.
    pub fn release(&mut self, footprint: u64) -> Result<(), StagingError> {
        if footprint > self.used {
            return Err(StagingError::OverRelease {
                footprint,
                used: self.used,
            });
        }
        self.used -= footprint;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn writes_go_in_order_and_wrap_over_a_skipped_tail() {
        let mut a = StagingAlloc::new(100);
        let s0 = a.reserve(60).unwrap().unwrap();
        assert_eq!(
            s0,
            Slot {
                offset: 0,
                footprint: 60
            }
        );
        let s1 = a.reserve(30).unwrap().unwrap();
        assert_eq!(s1.offset, 60);
        assert_eq!(
            a.reserve(20).unwrap(),
            None,
            "10 free at the tail, 0 at the head"
        );
        a.release(60).unwrap();
        // 10 bytes at the tail skipped, 20 at the head.
        assert_eq!(
            a.reserve(20).unwrap(),
            Some(Slot {
                offset: 0,
                footprint: 30
            })
        );
        assert_eq!(a.used(), 60);
        a.release(30).unwrap();
        a.release(30).unwrap();
        assert_eq!(a.used(), 0);
    }

    #[test]
    fn an_empty_region_takes_a_write_of_its_whole_size() {
        let mut a = StagingAlloc::new(100);
        a.reserve(70).unwrap().unwrap();
        assert_eq!(a.reserve(100).unwrap(), None);
        a.release(70).unwrap();
        assert_eq!(
            a.reserve(100).unwrap(),
            Some(Slot {
                offset: 0,
                footprint: 100
            })
        );
    }

    #[test]
    fn impossible_lengths_and_over_release_are_errors() {
        let mut a = StagingAlloc::new(100);
        assert_eq!(
            a.peek(0),
            Err(StagingError::BadLength { len: 0, size: 100 })
        );
        assert_eq!(
            a.peek(101),
            Err(StagingError::BadLength {
                len: 101,
                size: 100
            })
        );
        assert!(StagingAlloc::new(0).peek(1).is_err());
        assert_eq!(
            a.release(1),
            Err(StagingError::OverRelease {
                footprint: 1,
                used: 0
            })
        );
    }

    proptest! {
        /// Live writes never overlap, stay inside the region, and every write fits once the
        /// ones before it are released.
        #[test]
        fn live_writes_never_overlap(
            size in 1u64..5000,
            ops in prop::collection::vec((any::<bool>(), 1u64..5000), 1..400),
        ) {
            let mut a = StagingAlloc::new(size);
            let mut live: VecDeque<(u64, u64, u64)> = VecDeque::new(); // offset, len, footprint
            for (push, len) in ops {
                let len = 1 + (len - 1) % size;
                if push {
                    if let Some(s) = a.reserve(len).unwrap() {
                        prop_assert!(s.offset + len <= size);
                        for &(o, l, _) in &live {
                            prop_assert!(s.offset + len <= o || o + l <= s.offset,
                                "[{}, +{}) overlaps [{}, +{})", s.offset, len, o, l);
                        }
                        live.push_back((s.offset, len, s.footprint));
                    } else {
                        prop_assert!(!live.is_empty(), "an empty region refused {} bytes", len);
                    }
                } else if let Some((_, _, f)) = live.pop_front() {
                    a.release(f).unwrap();
                }
                prop_assert_eq!(a.used(), live.iter().map(|l| l.2).sum::<u64>());
                prop_assert!(a.used() <= size);
            }
        }
    }
}

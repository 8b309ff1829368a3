//! The region messages on the wire.
//!
//! REGION frames (session control, bulk lane) carry a postcard-encoded [`RegionMsg`]: advertise
//! a region with its per-rail address and rkey, or release it. At most
//! [`MAX_REGION_PAYLOAD_BYTES`]; every field is checked against the bounds of
//! [`crate::region`] on both sides ([`RegionInfo::validate`]).
//!
//! WRITE frames (the TCP emulation of a one-sided write) are on the hot path and use a fixed
//! layout, big-endian, in the frame's payload:
//!
//! ```text
//! offset size field
//!  0     4    region id (in the receiving node's numbering of the destination client)
//!  4     8    offset into the region
//! 12     n    the bytes to place (n >= 1)
//! ```
//!
//! The frame header names the destination client and carries the write's sequence number in
//! that client's send stream (the same sequence space as DATA, so a send issued after a write
//! is delivered after the write is placed).

use super::{RegionId, MAX_RAILS_PER_REGION, MAX_REGION_BYTES};
use crate::control::{self, ControlError};
use crate::ids::InterconnectId;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Largest REGION payload (an advertisement with the most rails and the longest name is far
/// below it).
pub const MAX_REGION_PAYLOAD_BYTES: usize = 4096;
/// Bytes of a WRITE payload before the data.
pub const WRITE_HEADER_BYTES: usize = 12;

/// A REGION or WRITE payload is malformed or out of bounds. The sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RegionError {
    /// The payload is longer than [`MAX_REGION_PAYLOAD_BYTES`].
    #[error("REGION payload of {len} bytes, above the maximum of {max}")]
    Oversize {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Not a valid encoding.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which payload.
        what: &'static str,
        /// Decoder detail.
        detail: String,
    },
    /// The region name breaks the name rules.
    #[error(transparent)]
    Name(#[from] ControlError),
    /// The region length is 0 or above [`MAX_REGION_BYTES`].
    #[error("region length {len} outside 1..={MAX_REGION_BYTES}")]
    Length {
        /// The advertised length.
        len: u64,
    },
    /// More rail keys than [`MAX_RAILS_PER_REGION`].
    #[error("{count} rail keys, above the maximum of {MAX_RAILS_PER_REGION}")]
    TooManyRails {
        /// How many.
        count: usize,
    },
    /// A rail key for the TCP interconnect (TCP writes need no key) or a second key for the
    /// same rail.
    #[error("rail key for interconnect {rail} is invalid (TCP, or listed twice)")]
    BadRail {
        /// The rail.
        rail: InterconnectId,
    },
    /// A rail's remote address plus the region length overflows the address space.
    #[error("rail {rail}: address {addr:#x} + length {len} overflows")]
    AddressOverflow {
        /// The rail.
        rail: InterconnectId,
        /// The advertised address.
        addr: u64,
        /// The region length.
        len: u64,
    },
}

/// The remote address and rkey of a region on one RDMA rail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RailKey {
    /// The rail (never [`InterconnectId::TCP`]).
    pub rail: InterconnectId,
    /// The region's address in the advertising node's registration on that rail's HCA.
    pub addr: u64,
    /// The rkey that grants the partner remote write access on that rail.
    pub rkey: u32,
}

/// A region as advertised to the partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// The advertising node's id of the client holding the region (as in CLIENT-UP).
    pub client: u32,
    /// The region's id within that client.
    pub region: RegionId,
    /// The region's name (the name rules of client names).
    pub name: String,
    /// Its length in bytes (1..=[`MAX_REGION_BYTES`]).
    pub len: u64,
    /// Address and rkey per RDMA rail (none on a TCP-only node).
    pub rails: Vec<RailKey>,
}

impl RegionInfo {
    /// Checks the bounds of an advertisement (the advertiser before sending, the partner on
    /// receipt).
    pub fn validate(&self) -> Result<(), RegionError> {
        control::validate_name("region name", &self.name)?;
        if self.len == 0 || self.len > MAX_REGION_BYTES {
            return Err(RegionError::Length { len: self.len });
        }
        if self.rails.len() > MAX_RAILS_PER_REGION {
            return Err(RegionError::TooManyRails {
                count: self.rails.len(),
            });
        }
        for (i, k) in self.rails.iter().enumerate() {
            if k.rail.is_tcp() || self.rails[..i].iter().any(|o| o.rail == k.rail) {
                return Err(RegionError::BadRail { rail: k.rail });
            }
            if k.addr.checked_add(self.len).is_none() {
                return Err(RegionError::AddressOverflow {
                    rail: k.rail,
                    addr: k.addr,
                    len: self.len,
                });
            }
        }
        Ok(())
    }

    /// The key for `rail`, if the region advertised one.
    pub fn rail(&self, rail: InterconnectId) -> Option<RailKey> {
        self.rails.iter().copied().find(|k| k.rail == rail)
    }
}

/// The payload of a REGION frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegionMsg {
    /// A region is available (or, if already advertised, replaced: a new registration).
    Advertise(RegionInfo),
    /// A region was released: no write into it may be issued any more.
    Release {
        /// The advertising node's id of the client.
        client: u32,
        /// The region.
        region: RegionId,
    },
}

impl RegionMsg {
    /// Encodes the message. Callers validate an advertisement first; the receiver refuses an
    /// invalid one.
    pub fn encode(&self) -> Bytes {
        control::encode(self)
    }

    /// Decodes and validates a REGION payload. Never panics; refuses trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, RegionError> {
        if bytes.len() > MAX_REGION_PAYLOAD_BYTES {
            return Err(RegionError::Oversize {
                len: bytes.len(),
                max: MAX_REGION_PAYLOAD_BYTES,
            });
        }
        let msg: RegionMsg = control::decode("REGION", bytes).map_err(|e| match e {
            ControlError::Malformed { what, detail }
            | ControlError::OutOfBounds { what, detail } => RegionError::Malformed { what, detail },
        })?;
        if let RegionMsg::Advertise(info) = &msg {
            info.validate()?;
        }
        Ok(msg)
    }
}

/// The payload of a WRITE frame: place `data` at `offset` of `region`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFrame {
    /// The destination region (in the receiving node's numbering).
    pub region: RegionId,
    /// Where in the region.
    pub offset: u64,
    /// The bytes (at least one).
    pub data: Bytes,
}

impl WriteFrame {
    /// Encodes the payload.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(WRITE_HEADER_BYTES + self.data.len());
        b.put_u32(self.region.get());
        b.put_u64(self.offset);
        b.put_slice(&self.data);
        b.freeze()
    }

    /// Decodes a WRITE payload without copying the data. Never panics. Bounds against the
    /// region are the receiver's table's business ([`super::LocalRegions::check_apply`]).
    pub fn decode(mut payload: Bytes) -> Result<Self, RegionError> {
        if payload.len() <= WRITE_HEADER_BYTES {
            return Err(RegionError::Malformed {
                what: "WRITE",
                detail: format!(
                    "{} bytes: a write carries a {WRITE_HEADER_BYTES}-byte header and at least \
                     one byte of data",
                    payload.len()
                ),
            });
        }
        let region = RegionId::new(payload.get_u32());
        let offset = payload.get_u64();
        Ok(WriteFrame {
            region,
            offset,
            data: payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RegionInfo {
        RegionInfo {
            client: 3,
            region: RegionId::new(1),
            name: "nvlog".into(),
            len: 64 << 20,
            rails: vec![
                RailKey {
                    rail: InterconnectId::rail(1),
                    addr: 0x7f00_0000_0000,
                    rkey: 0x1234,
                },
                RailKey {
                    rail: InterconnectId::rail(2),
                    addr: 0x7f00_0000_0000,
                    rkey: 0x5678,
                },
            ],
        }
    }

    #[test]
    fn advertise_and_release_round_trip() {
        let a = RegionMsg::Advertise(info());
        assert_eq!(RegionMsg::decode(&a.encode()), Ok(a));
        let r = RegionMsg::Release {
            client: 3,
            region: RegionId::new(9),
        };
        assert_eq!(RegionMsg::decode(&r.encode()), Ok(r));
        assert_eq!(
            info().rail(InterconnectId::rail(2)).map(|k| k.rkey),
            Some(0x5678)
        );
        assert_eq!(info().rail(InterconnectId::TCP), None);
    }

    #[test]
    fn malformed_and_trailing_bytes_refused() {
        let mut b = RegionMsg::Advertise(info()).encode().to_vec();
        b.push(0);
        assert!(matches!(
            RegionMsg::decode(&b),
            Err(RegionError::Malformed { what: "REGION", .. })
        ));
        assert!(matches!(
            RegionMsg::decode(&[7]),
            Err(RegionError::Malformed { .. })
        ));
        assert!(matches!(
            RegionMsg::decode(&[]),
            Err(RegionError::Malformed { .. })
        ));
        let big = vec![0u8; MAX_REGION_PAYLOAD_BYTES + 1];
        assert_eq!(
            RegionMsg::decode(&big),
            Err(RegionError::Oversize {
                len: MAX_REGION_PAYLOAD_BYTES + 1,
                max: MAX_REGION_PAYLOAD_BYTES
            })
        );
    }

    /// Each bound is refused on receipt (the decoder validates), not only by the sender.
    #[test]
    fn out_of_bounds_advertisements_refused_on_decode() {
        let refused = |f: &dyn Fn(&mut RegionInfo)| {
            let mut i = info();
            f(&mut i);
            RegionMsg::decode(&RegionMsg::Advertise(i).encode()).unwrap_err()
        };
        assert!(matches!(
            refused(&|i| i.name = "bad name".into()),
            RegionError::Name(_)
        ));
        assert!(matches!(
            refused(&|i| i.name = "x".repeat(65)),
            RegionError::Name(_)
        ));
        assert_eq!(refused(&|i| i.len = 0), RegionError::Length { len: 0 });
        assert_eq!(
            refused(&|i| i.len = MAX_REGION_BYTES + 1),
            RegionError::Length {
                len: MAX_REGION_BYTES + 1
            }
        );
        assert_eq!(
            refused(&|i| {
                i.rails = (1..=17)
                    .map(|k| RailKey {
                        rail: InterconnectId::rail(k),
                        addr: 0,
                        rkey: k,
                    })
                    .collect()
            }),
            RegionError::TooManyRails { count: 17 }
        );
        assert_eq!(
            refused(&|i| i.rails[1].rail = InterconnectId::rail(1)),
            RegionError::BadRail {
                rail: InterconnectId::rail(1)
            }
        );
        assert_eq!(
            refused(&|i| i.rails[0].rail = InterconnectId::TCP),
            RegionError::BadRail {
                rail: InterconnectId::TCP
            }
        );
        assert!(matches!(
            refused(&|i| i.rails[0].addr = u64::MAX - 10),
            RegionError::AddressOverflow { .. }
        ));
        // The largest region and the most rails are fine.
        let mut ok = info();
        ok.len = MAX_REGION_BYTES;
        ok.rails = (1..=16)
            .map(|k| RailKey {
                rail: InterconnectId::rail(k),
                addr: u64::MAX - MAX_REGION_BYTES,
                rkey: k,
            })
            .collect();
        ok.name = "n".repeat(64);
        let a = RegionMsg::Advertise(ok);
        let bytes = a.encode();
        assert!(bytes.len() <= MAX_REGION_PAYLOAD_BYTES);
        assert_eq!(RegionMsg::decode(&bytes), Ok(a));
    }

    #[test]
    fn write_frame_round_trip_and_short_payloads_refused() {
        let w = WriteFrame {
            region: RegionId::new(7),
            offset: u64::MAX - 1,
            data: Bytes::from_static(b"abc"),
        };
        let enc = w.encode();
        assert_eq!(enc.len(), WRITE_HEADER_BYTES + 3);
        assert_eq!(&enc[..4], &7u32.to_be_bytes());
        assert_eq!(&enc[4..12], &(u64::MAX - 1).to_be_bytes());
        assert_eq!(WriteFrame::decode(enc), Ok(w));
        for n in 0..=WRITE_HEADER_BYTES {
            assert!(
                matches!(
                    WriteFrame::decode(Bytes::from(vec![1u8; n])),
                    Err(RegionError::Malformed { what: "WRITE", .. })
                ),
                "{n} bytes"
            );
        }
    }
}

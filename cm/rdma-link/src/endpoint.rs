//! [`LocalEndpoint`]: what one side sends the other over the authenticated bootstrap session
//! so both can connect their queue pairs ("slam connect"), and the checks a side applies to
//! the partner's.

use crate::config::{RdmaLinkConfig, MAX_RECV_DEPTH, MAX_RING_BYTES, MIN_RECV_DEPTH};
use crate::error::EndpointError;
use peercm_cm_proto::frame::HEADER_LEN;
use peercm_verbs_shim::{QpEndpoint, RemoteMr};
use serde::{Deserialize, Serialize};

/// One side of an RDMA link, as the partner needs it: plain data, serde-serializable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    /// The queue pair: number, initial PSN, GID, path MTU, LID.
    pub qp: QpEndpoint,
    /// The receive ring the partner writes frames into (address, rkey, length).
    pub ring: RemoteMr,
    /// Size of the ring in bytes (equals `ring.len`); the partner wraps by it.
    pub ring_bytes: u64,
    /// Receives this side keeps posted; the data window is half the smaller of both sides'.
    pub recv_depth: u32,
    /// Largest frame payload this side accepts; the partner sends at most the smaller of its
    /// own and this.
    pub max_payload_bytes: u32,
}

impl LocalEndpoint {
    /// The largest payload a side configured with `cfg` sends to this (partner) endpoint:
    /// the smaller of both sides' `max_payload_bytes`.
    pub fn send_max_payload_bytes(&self, cfg: &RdmaLinkConfig) -> u32 {
        cfg.max_payload_bytes.min(self.max_payload_bytes)
    }

    /// Checks that this endpoint, received from the partner, works with `cfg` on our side:
    /// a ring matching its region, able to hold two of the largest frames we will send it
    /// ([`Self::send_max_payload_bytes`]), addressable by an immediate, and a supported
    /// receive depth.
    pub fn check_remote(&self, cfg: &RdmaLinkConfig) -> Result<(), EndpointError> {
        if self.ring.len != self.ring_bytes {
            return Err(EndpointError::RingLengthMismatch {
                ring_bytes: self.ring_bytes,
                mr_len: self.ring.len,
            });
        }
        if self.ring.addr.checked_add(self.ring.len).is_none() {
            return Err(EndpointError::RingAddressOverflow {
                addr: self.ring.addr,
                len: self.ring.len,
            });
        }
        let max_frame_bytes = HEADER_LEN as u64 + u64::from(self.send_max_payload_bytes(cfg));
        let need = 2 * max_frame_bytes;
        if self.ring_bytes < need {
            return Err(EndpointError::RingTooSmall {
                ring_bytes: self.ring_bytes,
                max_frame_bytes,
                need,
            });
        }
        if self.ring_bytes > MAX_RING_BYTES as u64 {
            return Err(EndpointError::RingTooLarge {
                ring_bytes: self.ring_bytes,
                max: MAX_RING_BYTES as u64,
            });
        }
        if !(MIN_RECV_DEPTH..=MAX_RECV_DEPTH).contains(&self.recv_depth) {
            return Err(EndpointError::RecvDepth {
                recv_depth: self.recv_depth,
                min: MIN_RECV_DEPTH,
                max: MAX_RECV_DEPTH,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ring_bytes: u64) -> LocalEndpoint {
        LocalEndpoint {
            qp: QpEndpoint {
                qpn: 0x11,
                psn: 0x1234,
                gid: [7; 16],
                mtu_bytes: 1024,
                lid: 0,
            },
            ring: RemoteMr {
                addr: 0x1000,
                rkey: 0xabc,
                len: ring_bytes,
            },
            ring_bytes,
            recv_depth: 64,
            max_payload_bytes: 1000,
        }
    }

    #[test]
    fn round_trips_through_serde() {
        let e = sample(1 << 20);
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<LocalEndpoint>(&text).unwrap(), e);
    }

    #[test]
    fn checks_name_what_is_wrong() {
        let cfg = RdmaLinkConfig {
            max_payload_bytes: 1000,
            ring_bytes: 4096,
            ..RdmaLinkConfig::default()
        };
        sample(4096).check_remote(&cfg).unwrap();
        let mut smaller = sample(1000);
        smaller.max_payload_bytes = 100;
        assert_eq!(smaller.send_max_payload_bytes(&cfg), 100);
        smaller.check_remote(&cfg).unwrap();
        assert_eq!(
            sample(2071).check_remote(&cfg),
            Err(EndpointError::RingTooSmall {
                ring_bytes: 2071,
                max_frame_bytes: 1036,
                need: 2072
            })
        );
        let mut e = sample(4096);
        e.ring.len = 100;
        assert!(matches!(
            e.check_remote(&cfg),
            Err(EndpointError::RingLengthMismatch { .. })
        ));
        let mut e = sample(4096);
        e.recv_depth = 1;
        assert!(matches!(
            e.check_remote(&cfg),
            Err(EndpointError::RecvDepth { .. })
        ));
        let mut e = sample(4096);
        e.ring.addr = u64::MAX - 10;
        assert!(matches!(
            e.check_remote(&cfg),
            Err(EndpointError::RingAddressOverflow { .. })
        ));
        let big = (MAX_RING_BYTES as u64) * 2;
        assert!(matches!(
            sample(big).check_remote(&cfg),
            Err(EndpointError::RingTooLarge { .. })
        ));
    }
}

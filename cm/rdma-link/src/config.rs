//! [`RdmaLinkConfig`]: the sizes, queue depths and timers of one RDMA link, with units in the
//! field names, defaults, and validation.

use crate::error::RdmaLinkError;
use peercm_cm_proto::frame::{DEFAULT_MAX_PAYLOAD_BYTES, HEADER_LEN};
use peercm_cm_proto::session::LinkId;
use peercm_verbs_shim::{Access, QpParams};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The largest receive ring: its lengths must fit the 31 bits of an immediate.
pub const MAX_RING_BYTES: usize = 1 << 30;
/// The smallest receive depth (a data window of one message).
pub const MIN_RECV_DEPTH: u32 = 2;
/// The largest receive depth.
pub const MAX_RECV_DEPTH: u32 = 8192;
/// The longest busy-polling stretch ([`RdmaLinkConfig::busy_poll_us`]): 10 ms.
pub const MAX_BUSY_POLL_US: u64 = 10_000;
/// The longest a smaller-than-a-batch credit may stay owed
/// ([`RdmaLinkConfig::credit_idle_us`]): 100 ms.
pub const MAX_CREDIT_IDLE_US: u64 = 100_000;
/// The largest write-staging region (and so the largest one-sided write).
pub const MAX_WRITE_STAGING_BYTES: usize = 1 << 30;

/// Configuration of one RDMA link. Both sides should use the same values; what must agree is
/// checked when connecting (see [`crate::LocalEndpoint`]).
///
/// # Failure detection
///
/// A partner that stops answering is noticed by the transport: a request is retransmitted
/// every `qp.ack_timeout_us` and fails with `RETRY_EXC_ERR` after `qp.retry_count` retries,
/// i.e. after about `(retry_count + 1) * ack_timeout` -- with the defaults 7 x 67 ms ~ 0.47 s
/// -- provided a request is outstanding. [`Self::probe_interval_ms`] makes sure one is: a link
/// that has posted nothing for that long posts a zero-length RDMA WRITE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RdmaLinkConfig {
    /// The manager's id for this link: names the thread (`peercm-rdma-<id>`) and the tracing
    /// span. Default 0.
    pub link_id: LinkId,
    /// Local port (from 1). Default 1.
    pub port: u8,
    /// GID index addressing the partner (RoCEv2 over IPv4: the IPv4-mapped entry, often 1 on
    /// rdma_rxe). Default 0.
    pub gid_index: u8,
    /// Size of the receive ring the partner writes frames into; the send-staging region has
    /// the partner's ring size. At least `2 * (max_payload_bytes + 36)`, at most
    /// [`MAX_RING_BYTES`]. Default 4 MiB.
    pub ring_bytes: usize,
    /// Receives kept posted. Half of the smaller of both sides' values is the window of
    /// un-credited data messages, the rest is reserved for credit messages (see
    /// [`crate::credit`]). [`MIN_RECV_DEPTH`]..=[`MAX_RECV_DEPTH`]. Default 256.
    pub recv_depth: u32,
    /// Largest frame payload sent or accepted; a larger frame is refused by
    /// [`crate::RdmaLink::try_send`], a larger incoming one closes the link. Default
    /// [`DEFAULT_MAX_PAYLOAD_BYTES`] (1 MiB).
    pub max_payload_bytes: u32,
    /// Credit is returned once `1 / credit_batch_divisor` of the data window or of the ring has
    /// been consumed (see [`Self::credit_idle_us`] for less). 1..=64. Default 4.
    pub credit_batch_divisor: u32,
    /// Credit smaller than a batch is returned once it has been owed this long (0: as soon
    /// as the completion queue is idle). Batches alone keep a partner sending whenever its
    /// frames are small against the ring; this bounds the wait of one whose next frame needs
    /// ring space that consumed, un-credited frames still hold. Returning it at once instead
    /// would cost a credit message for nearly every message of a request/response exchange
    /// (each a packet, a receive and a wake-up on both sides). At most
    /// [`MAX_CREDIT_IDLE_US`]. Default 5,000 (5 ms).
    pub credit_idle_us: u64,
    /// Queue-pair parameters: ACK timeout, retries, RNR timer, MTU. `port` and `gid_index`
    /// above override the ones in here, and the partner is only granted `REMOTE_WRITE`.
    /// Default [`QpParams::default`]: ACK timeout 67 ms, 6 retries, RNR retries 7 (forever),
    /// MTU 1024.
    pub qp: QpParams,
    /// Longest the link thread waits on the completion channel before it looks for a close
    /// request (a close also wakes it by flushing the queue pair). 1..=60000. Default 100 ms.
    pub cq_wait_timeout_ms: u64,
    /// A link that has posted nothing for this long posts a zero-length RDMA WRITE, so a
    /// silent partner is detected even when there is nothing to send (0 = never). Default
    /// 1000 ms.
    pub probe_interval_ms: u64,
    /// Size of the write-staging region: the data of each one-sided write
    /// ([`crate::RdmaLink::send_with_write`]) is copied there and written from there, and a
    /// write waits while the region is full (see [`crate::staging`]). This is also the largest
    /// one-sided write the link takes. 0 disables one-sided writes (no region is registered and
    /// every write is refused with [`crate::SendError::WriteTooLarge`]); at most
    /// [`MAX_WRITE_STAGING_BYTES`]. Default 4 MiB, the ring's default: as many bytes of writes
    /// in flight as of frames.
    pub write_staging_bytes: usize,
    /// Busy polling: while the link is in a latency-bound exchange (at most 4 send-queue
    /// entries of its own in flight, and one of them outstanding or anything posted or
    /// completed less than this long ago) the link thread polls the completion queue,
    /// yielding the CPU between polls, for up to this long before it blocks on the
    /// completion channel. With more in flight it blocks at once: completions then come in
    /// batches, and spinning would take the CPU from the producer. A completion then costs no channel wake-up (on rdma_rxe a
    /// `poll`, a `read` and an `ioctl` into the kernel), at the price of a CPU kept busy
    /// while traffic flows. 0 = never (block at once; the default). At most
    /// [`MAX_BUSY_POLL_US`].
    pub busy_poll_us: u64,
}

impl Default for RdmaLinkConfig {
    fn default() -> Self {
        RdmaLinkConfig {
            link_id: LinkId::new(0),
            port: 1,
            gid_index: 0,
            ring_bytes: 4 << 20,
            recv_depth: 256,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            credit_batch_divisor: 4,
            credit_idle_us: 5_000,
            qp: QpParams::default(),
            cq_wait_timeout_ms: 100,
            probe_interval_ms: 1000,
            write_staging_bytes: 4 << 20,
            busy_poll_us: 0,
        }
    }
}

impl RdmaLinkConfig {
    /// The largest encoded frame: header plus `max_payload_bytes`.
    pub fn max_frame_bytes(&self) -> usize {
        HEADER_LEN + self.max_payload_bytes as usize
    }

    /// The smallest ring that takes two of the largest frames.
    pub fn min_ring_bytes(&self) -> usize {
        2 * self.max_frame_bytes()
    }

    /// The QP parameters actually used: [`Self::qp`] with `port` and `gid_index` from this
    /// config and access rights limited to local and remote write.
    pub fn qp_params(&self) -> QpParams {
        QpParams {
            port: self.port,
            gid_index: self.gid_index,
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            ..self.qp
        }
    }

    /// [`Self::cq_wait_timeout_ms`] as a duration.
    pub fn cq_wait_timeout(&self) -> Duration {
        Duration::from_millis(self.cq_wait_timeout_ms)
    }

    /// [`Self::busy_poll_us`] as a duration, `None` when busy polling is off.
    pub fn busy_poll(&self) -> Option<Duration> {
        (self.busy_poll_us > 0).then(|| Duration::from_micros(self.busy_poll_us))
    }

    /// [`Self::credit_idle_us`] as a duration.
    pub fn credit_idle(&self) -> Duration {
        Duration::from_micros(self.credit_idle_us)
    }

    /// [`Self::probe_interval_ms`] as a duration, `None` when probing is off.
    pub fn probe_interval(&self) -> Option<Duration> {
        (self.probe_interval_ms > 0).then(|| Duration::from_millis(self.probe_interval_ms))
    }

    /// Checks every bound documented on the fields.
    pub fn validate(&self) -> Result<(), RdmaLinkError> {
        let bad = |s: String| Err(RdmaLinkError::Config(s));
        if self.ring_bytes < self.min_ring_bytes() {
            return bad(format!(
                "ring_bytes {} is below 2 x (max_payload_bytes {} + {HEADER_LEN}-byte header) = {}",
                self.ring_bytes,
                self.max_payload_bytes,
                self.min_ring_bytes()
            ));
        }
        if self.ring_bytes > MAX_RING_BYTES {
            return bad(format!(
                "ring_bytes {} is above the maximum of {MAX_RING_BYTES}",
                self.ring_bytes
            ));
        }
        if !(MIN_RECV_DEPTH..=MAX_RECV_DEPTH).contains(&self.recv_depth) {
            return bad(format!(
                "recv_depth {} is outside {MIN_RECV_DEPTH}..={MAX_RECV_DEPTH}",
                self.recv_depth
            ));
        }
        if !(1..=64).contains(&self.credit_batch_divisor) {
            return bad(format!(
                "credit_batch_divisor {} is outside 1..=64",
                self.credit_batch_divisor
            ));
        }
        if !(1..=60_000).contains(&self.cq_wait_timeout_ms) {
            return bad(format!(
                "cq_wait_timeout_ms {} is outside 1..=60000",
                self.cq_wait_timeout_ms
            ));
        }
        if self.write_staging_bytes > MAX_WRITE_STAGING_BYTES {
            return bad(format!(
                "write_staging_bytes {} is above the maximum of {MAX_WRITE_STAGING_BYTES}",
                self.write_staging_bytes
            ));
        }
        if self.busy_poll_us > MAX_BUSY_POLL_US {
            return bad(format!(
                "busy_poll_us {} is above the maximum of {MAX_BUSY_POLL_US}",
                self.busy_poll_us
            ));
        }
        if self.credit_idle_us > MAX_CREDIT_IDLE_US {
            return bad(format!(
                "credit_idle_us {} is above the maximum of {MAX_CREDIT_IDLE_US}",
                self.credit_idle_us
            ));
        }
        if self.port == 0 {
            return bad("port 0 does not exist (ports count from 1)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let c = RdmaLinkConfig::default();
        c.validate().unwrap();
        assert_eq!(c.ring_bytes, 4 << 20);
        assert_eq!(c.recv_depth, 256);
        assert_eq!(c.max_payload_bytes, DEFAULT_MAX_PAYLOAD_BYTES);
        assert_eq!(c.qp.ack_timeout_us, 67_000);
        assert_eq!((c.qp.retry_count, c.qp.rnr_retry_count), (6, 7));
        assert_eq!(c.cq_wait_timeout(), Duration::from_millis(100));
        assert_eq!(c.write_staging_bytes, 4 << 20);
        RdmaLinkConfig {
            write_staging_bytes: 0,
            ..c.clone()
        }
        .validate()
        .unwrap();
        assert!(!c.qp_params().access.contains(Access::REMOTE_READ));
    }

    #[test]
    fn a_ring_smaller_than_two_frames_is_refused() {
        let c = RdmaLinkConfig {
            max_payload_bytes: 1000,
            ring_bytes: 2 * 1036 - 1,
            ..RdmaLinkConfig::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("ring_bytes 2071"), "{e}");
        RdmaLinkConfig {
            ring_bytes: 2 * 1036,
            ..c
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn other_bounds_are_checked() {
        let d = RdmaLinkConfig::default();
        for c in [
            RdmaLinkConfig {
                recv_depth: 1,
                ..d.clone()
            },
            RdmaLinkConfig {
                credit_batch_divisor: 0,
                ..d.clone()
            },
            RdmaLinkConfig {
                cq_wait_timeout_ms: 0,
                ..d.clone()
            },
            RdmaLinkConfig {
                port: 0,
                ..d.clone()
            },
            RdmaLinkConfig {
                ring_bytes: MAX_RING_BYTES + 1,
                ..d.clone()
            },
            RdmaLinkConfig {
                write_staging_bytes: MAX_WRITE_STAGING_BYTES + 1,
                ..d.clone()
            },
            RdmaLinkConfig {
                busy_poll_us: MAX_BUSY_POLL_US + 1,
                ..d.clone()
            },
            RdmaLinkConfig {
                credit_idle_us: MAX_CREDIT_IDLE_US + 1,
                ..d.clone()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}

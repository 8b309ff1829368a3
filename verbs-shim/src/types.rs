//! Plain descriptions of RDMA devices, ports and queue-pair endpoints, plus the typed reasons
//! the verbs path can be unavailable.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why RDMA cannot be used on this host; the manager falls back to TCP and reports this.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum VerbsUnavailable {
    /// libibverbs could not be loaded.
    #[error("libibverbs is not installed or could not be loaded: {0}")]
    LibraryMissing(String),
    /// The library loaded but lists no RDMA device. (Devices whose ports are all down are
    /// listed: port state is not availability, see [`PortState`].)
    #[error("no RDMA device found")]
    NoDevice,
}

impl VerbsUnavailable {
    /// A stable code for scripts and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            VerbsUnavailable::LibraryMissing(_) => "library_missing",
            VerbsUnavailable::NoDevice => "no_device",
        }
    }
}

/// Port state as reported by the device. A port that is not ACTIVE makes its device no less
/// available: providers list it, it can be opened and watched, and a PORT_ACTIVE async event
/// says when it can carry traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortState {
    /// Link down.
    Down,
    /// Initializing.
    Init,
    /// Armed.
    Armed,
    /// Usable.
    Active,
    /// Anything else the device reported.
    Other(u8),
}

/// The port's link layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkLayer {
    /// Native InfiniBand.
    InfiniBand,
    /// RoCE (soft-RoCE included).
    Ethernet,
}

/// One port of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// Port number (from 1).
    pub port: u8,
    /// State.
    pub state: PortState,
    /// Link layer.
    pub link_layer: LinkLayer,
    /// Capacity from active speed and width, in Mb/s (SDR 1x = 2500).
    pub capacity_mbits_per_s: u32,
    /// GID table entries in use.
    pub gids: Vec<[u8; 16]>,
}

/// One RDMA device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device name, e.g. `rxe0` or `mlx5_0`.
    pub name: String,
    /// Node GUID.
    pub guid: u64,
    /// Ports.
    pub ports: Vec<PortInfo>,
}

/// What one side of a reliable-connected QP tells the other over the bootstrap session, so
/// both can move their QPs straight to ready-to-send ("slam connect").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpEndpoint {
    /// Queue pair number.
    pub qpn: u32,
    /// Initial packet sequence number.
    pub psn: u32,
    /// GID to address.
    pub gid: [u8; 16],
    /// Path MTU in bytes.
    pub mtu_bytes: u32,
    /// LID (InfiniBand link layer; 0 on RoCE).
    pub lid: u16,
}

bitflags::bitflags! {
    /// Memory-region access rights.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    #[serde(transparent)]
    pub struct Access: u32 {
        /// The local HCA may write (needed for receives and RDMA READ targets).
        const LOCAL_WRITE = 1;
        /// The partner may RDMA WRITE into the region.
        const REMOTE_WRITE = 1 << 1;
        /// The partner may RDMA READ from the region.
        const REMOTE_READ = 1 << 2;
    }
}

/// What the partner needs to RDMA into a region: its address and rkey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteMr {
    /// Virtual address of the region's first byte on the partner.
    pub addr: u64,
    /// Remote key.
    pub rkey: u32,
    /// Length in bytes.
    pub len: u64,
}

/// Queue-pair states, as in the kernel (`enum ibv_qp_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QpState {
    /// Freshly created or reset.
    Reset,
    /// Initialized: receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained.
    Sqd,
    /// Send queue error.
    Sqe,
    /// Error: every outstanding request completes with WR_FLUSH_ERR.
    Err,
}

/// Connection parameters for INIT -> RTR -> RTS, with units in their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpParams {
    /// Local port (from 1).
    pub port: u8,
    /// GID index used to address the partner (RoCEv2: the IPv4-mapped entry).
    pub gid_index: u8,
    /// Local ACK timeout. Encoded as the nearest exponent `e` with 4.096 us * 2^e >= this;
    /// 0 means infinite.
    pub ack_timeout_us: u64,
    /// Transport retries before RETRY_EXC_ERR (0..=7; rdma_rxe treats 7 as "forever").
    pub retry_count: u8,
    /// Receiver-not-ready retries (7 = forever).
    pub rnr_retry_count: u8,
    /// Minimum RNR NAK timer, encoded as in the IB spec (kernel table), 0..=31.
    pub min_rnr_timer_code: u8,
    /// Outstanding RDMA READs as initiator / responder.
    pub max_rd_atomic: u8,
    /// Path MTU in bytes (256, 512, 1024, 2048, 4096).
    pub mtu_bytes: u32,
    /// Access rights granted to the partner on this QP.
    pub access: Access,
}

impl Default for QpParams {
    fn default() -> Self {
        QpParams {
            port: 1,
            gid_index: 0,
            ack_timeout_us: 67_000, // exponent 14: 4.096 us * 2^14 = 67 ms
            retry_count: 6,
            rnr_retry_count: 7,
            min_rnr_timer_code: 12,
            max_rd_atomic: 1,
            mtu_bytes: 1024,
            access: Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
        }
    }
}

impl QpParams {
    /// The IB timeout exponent for `ack_timeout_us` (0 = infinite, else 1..=31).
    pub fn ack_timeout_exponent(&self) -> u8 {
        if self.ack_timeout_us == 0 {
            return 0;
        }
        let mut e = 1u8;
        while e < 31 && 4.096f64 * f64::from(1u32 << e) < self.ack_timeout_us as f64 {
            e += 1;
        }
        e
    }
}

/// Queue sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpCaps {
    /// Outstanding send work requests.
    pub max_send_wr: u32,
    /// Outstanding receive work requests.
    pub max_recv_wr: u32,
    /// Scatter/gather entries per request.
    pub max_sge: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_sge: 1,
        }
    }
}

/// Completion status, typed (`enum ibv_wc_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WcStatus {
    /// Success.
    Success,
    /// Local length error.
    LocLenErr,
    /// Local QP operation error (e.g. the port went down under the QP).
    LocQpOpErr,
    /// Local protection error (bad lkey or access).
    LocProtErr,
    /// Flushed: the QP entered the error state before this request ran.
    WrFlushErr,
    /// Memory-window bind error.
    MwBindErr,
    /// Bad response from the partner.
    BadRespErr,
    /// Local access error.
    LocAccessErr,
    /// Invalid request at the partner.
    RemInvReqErr,
    /// Remote access error (bad rkey, bounds or rights).
    RemAccessErr,
    /// Remote operation error.
    RemOpErr,
    /// Transport retries exhausted: the partner stopped answering.
    RetryExcErr,
    /// Receiver-not-ready retries exhausted.
    RnrRetryExcErr,
    /// Any other status, by its numeric code.
    Other(u32),
}

impl WcStatus {
    /// From the numeric `ibv_wc_status`.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => WcStatus::Success,
            1 => WcStatus::LocLenErr,
            2 => WcStatus::LocQpOpErr,
            4 => WcStatus::LocProtErr,
            5 => WcStatus::WrFlushErr,
            6 => WcStatus::MwBindErr,
            7 => WcStatus::BadRespErr,
            8 => WcStatus::LocAccessErr,
            9 => WcStatus::RemInvReqErr,
            10 => WcStatus::RemAccessErr,
            11 => WcStatus::RemOpErr,
            12 => WcStatus::RetryExcErr,
            13 => WcStatus::RnrRetryExcErr,
            other => WcStatus::Other(other),
        }
    }
}

/// What a completion completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WcOpcode {
    /// A send.
    Send,
    /// An RDMA WRITE (with or without immediate).
    RdmaWrite,
    /// An RDMA READ.
    RdmaRead,
    /// A receive (of a send).
    Recv,
    /// A receive consumed by an RDMA WRITE with immediate.
    RecvRdmaWithImm,
    /// Unknown (error completions may not carry a valid opcode).
    Other(u32),
}

/// One work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkCompletion {
    /// The request's id.
    pub wr_id: u64,
    /// Status.
    pub status: WcStatus,
    /// Opcode (only meaningful on success).
    pub opcode: WcOpcode,
    /// Bytes received (receives only).
    pub byte_len: u32,
    /// Immediate data, if any (host byte order).
    pub imm: Option<u32>,
    /// Local QP number.
    pub qpn: u32,
}

/// A local buffer slice of a registered region: the one scatter/gather entry of a request.
#[derive(Clone)]
pub struct Sge {
    /// The region.
    pub mr: std::sync::Arc<dyn crate::api::MemoryRegion>,
    /// Offset into the region.
    pub offset: u64,
    /// Length in bytes.
    pub len: u32,
}

impl std::fmt::Debug for Sge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sge(lkey {:#x} +{} len {})",
            self.mr.lkey(),
            self.offset,
            self.len
        )
    }
}

/// A send-queue work request.
#[derive(Debug, Clone)]
pub enum SendWr {
    /// SEND: consumes a receive at the partner.
    Send {
        /// Id reported in the completion.
        wr_id: u64,
        /// What to send.
        local: Sge,
        /// Immediate data.
        imm: Option<u32>,
    },
    /// RDMA WRITE into the partner's region; with `imm`, also consumes a receive there.
    Write {
        /// Id reported in the completion.
        wr_id: u64,
        /// What to write.
        local: Sge,
        /// Where (`remote.addr` + `remote_offset`).
        remote: RemoteMr,
        /// Offset into the remote region.
        remote_offset: u64,
        /// WRITE_WITH_IMM when set.
        imm: Option<u32>,
    },
    /// RDMA READ from the partner's region into `local`.
    Read {
        /// Id reported in the completion.
        wr_id: u64,
        /// Where to put the data.
        local: Sge,
        /// What to read.
        remote: RemoteMr,
        /// Offset into the remote region.
        remote_offset: u64,
    },
}

/// A receive-queue work request.
#[derive(Debug, Clone)]
pub struct RecvWr {
    /// Id reported in the completion.
    pub wr_id: u64,
    /// Where to receive.
    pub local: Sge,
}

/// An asynchronous device event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AsyncEvent {
    /// A port became ACTIVE.
    PortActive {
        /// Port.
        port: u8,
    },
    /// A port left ACTIVE.
    PortError {
        /// Port.
        port: u8,
    },
    /// A QP hit a fatal error.
    QpFatal {
        /// QP number.
        qpn: u32,
    },
    /// A CQ overran or failed.
    CqError,
    /// The device failed.
    DeviceFatal,
    /// Anything else, by its `ibv_event_type` code.
    Other {
        /// Code.
        code: u32,
    },
}

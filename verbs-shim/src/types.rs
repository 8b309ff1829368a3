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
    /// The library loaded but lists no RDMA device.
    #[error("no RDMA device found")]
    NoDevice,
    /// Devices exist but none has an ACTIVE port.
    #[error("no RDMA port is ACTIVE")]
    NoActivePort,
    /// This build has no verbs backend yet.
    #[error("this build of peercm has no verbs backend yet; using TCP")]
    BackendNotBuilt,
}

/// Port state as reported by the device.
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
    /// Capacity from active speed and width, in Gb/s.
    pub capacity_gbps: u32,
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
}

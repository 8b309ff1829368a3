//! Client memory regions (issue 9, foundations): the IO-free vocabulary and rules of the region
//! exchange and of one-sided writes.
//!
//! A client on the receiving side registers a **region**: a named, fixed-size memory-mapped
//! file, registered on every HCA the node uses. Its manager advertises it to the partner over
//! the authenticated session (REGION frames, [`wire::RegionMsg`]), with the remote address and
//! rkey of each RDMA rail. The partner's clients then write into it one-sided: an RDMA WRITE on
//! the client's rail, or over TCP a WRITE frame ([`wire::WriteFrame`]) that the receiving
//! manager applies into the mapped file before acknowledging.
//!
//! This module holds no memory and does no IO:
//! - [`wire`]: the REGION and WRITE payloads, their bounded encoders and panic-free decoders.
//! - [`table`]: the partner's region table (what a writer may write, with typed refusals) and
//!   this node's region table (whether an arriving WRITE frame may be applied).
//!
//! Bounds (enforced by the advertiser before sending and by the receiver on decode):
//! [`MAX_REGIONS_PER_CLIENT`], [`MAX_REGIONS_PER_NODE`], [`MAX_REGION_BYTES`],
//! [`MAX_RAILS_PER_REGION`] and the region name rules of [`crate::control::validate_name`].
//! See docs/protocol.md ("Regions").

pub mod table;
pub mod wire;

pub use crate::ids::RegionId;
pub use table::{LocalRegions, PartnerRegions, WriteError, WriteRefusal};
pub use wire::{RailKey, RegionError, RegionInfo, RegionMsg, WriteFrame};

/// Most regions one client may hold at once.
pub const MAX_REGIONS_PER_CLIENT: usize = 64;
/// Most regions one node may hold at once (over all its clients); also the most the partner's
/// region table keeps.
pub const MAX_REGIONS_PER_NODE: usize = 1024;
/// Largest region, in bytes (1 TiB). A region is never empty.
pub const MAX_REGION_BYTES: u64 = 1 << 40;
/// Most RDMA rails one region advertises a key for (one per interconnect).
pub const MAX_RAILS_PER_REGION: usize = 16;

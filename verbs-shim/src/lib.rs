//! verbs-shim: peercm's RDMA verbs layer. This is the only crate in the workspace that may hold
//! `unsafe` (FFI to rdma-core's libibverbs). Everything above it sees a safe API.
//!
//! Status: this is the public API sketch the manager is written against. The real libibverbs
//! backend, the simulated HCA and the soft-RoCE test lane land with the verbs issue. Until
//! then [`unavailable`] reports [`VerbsUnavailable::BackendNotBuilt`], so the manager takes the
//! TCP path and says why.
//!
//! - [`types`]: device, port and endpoint descriptions (what `peercm devices` prints).
//! - [`provider`]: the [`provider::VerbsProvider`] trait both backends will implement.

pub mod provider;
pub mod types;

pub use provider::{unavailable, VerbsProvider};
pub use types::{DeviceInfo, LinkLayer, PortInfo, PortState, QpEndpoint, VerbsUnavailable};

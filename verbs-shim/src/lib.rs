//! verbs-shim: peercm's RDMA verbs layer. This is the only crate in the workspace that may hold
//! `unsafe` (FFI to rdma-core's libibverbs). Everything above it sees one safe API, implemented
//! by two backends:
//!
//! - [`real`]: rdma-core's libibverbs, loaded at run time through `rdma-mummy-sys`, so one
//!   peercm binary starts on hosts with no rdma-core and no RDMA device (it reports a typed
//!   [`VerbsUnavailable`] reason and the manager uses TCP).
//! - [`sim`]: in-process simulated HCAs with RC semantics, per-port capacity and seeded fault
//!   injection, for fast deterministic tests.
//!
//! Both obey the same kernel QP state-transition table ([`qp_state`]) and report the same typed
//! completion statuses, so the shared scenario suite (`scenarios`, test code behind the
//! `scenarios` feature) runs unchanged against either: against the simulator in `cargo test`,
//! against rdma_rxe in the soft-RoCE lane.
//!
//! - [`types`]: device, port, endpoint and work-completion descriptions.
//! - [`api`]: the object-safe traits (provider, device, PD, MR, CQ, QP) both backends implement.
//! - [`error`]: the error type, [`VerbsError`].
//! - [`mapped`]: [`mapped::MappedFile`], a locked file mapped shared, that a region can be
//!   registered over (client regions).
//! - `teardown`: what a `Drop` does when destroying a verbs object fails (it leaks: memory the
//!   HCA may still write into is never freed), shared by both backends.

pub mod api;
pub mod error;
pub mod mapped;
pub mod qp_state;
pub mod real;
#[cfg(feature = "scenarios")]
pub mod scenarios;
pub mod sim;
mod teardown;
pub mod types;

pub use api::{CompletionQueue, Device, MemoryRegion, ProtectionDomain, Provider, QueuePair};
pub use error::VerbsError;
pub use mapped::{MapError, MappedFile};
pub use types::*;

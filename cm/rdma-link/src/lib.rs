//! peercm's RDMA transport: one framed, reliable, flow-controlled link per RC queue pair.
//!
//! Both sides write frames straight into each other's memory: every frame is one RDMA
//! WRITE_WITH_IMM into the partner's **receive ring**, the immediate carrying its length;
//! consumed space comes back as **credit** in zero-length WRITE_WITH_IMMs. A dedicated
//! CQ-polling thread per link decodes frames out of the ring (with peercm-cm-proto's bounded
//! [`peercm_cm_proto::frame::FrameDecoder`]) and hands them to a [`LinkSink`]. The crate only
//! uses the safe verbs traits of `peercm-verbs-shim`, so the same code runs on libibverbs
//! (rdma_rxe, hardware) and on the simulated fabric.
//!
//! # Use
//!
//! 1. [`PreparedLink::new`] creates the resources and returns this side's
//!    [`LocalEndpoint`]; the manager sends it over the authenticated bootstrap session.
//!    [`PreparedLink::new_in`] does the same in a protection domain shared by every link of
//!    the device, so regions registered once in it are reachable through all of them.
//! 2. [`PreparedLink::connect`] takes the partner's endpoint and a sink and returns a running
//!    [`RdmaLink`].
//! 3. [`RdmaLink::send`] queues frames without blocking; the sink gets `frame`, `written`
//!    and, once, `closed`. [`RdmaLink::send_with_write`] queues a frame preceded by a
//!    one-sided RDMA WRITE into the partner's memory ([`one_sided`]).
//! 4. [`RdmaLink::fail`] / [`RdmaLink::close`] / drop close it; [`RdmaLink::fence`]
//!    deregisters the ring so a zombie partner's writes fail on its side;
//!    [`RdmaLink::closer`] closes it from another thread.
//!
//! # Wire rules
//!
//! - The ring layout and wrap rule: [`ring`].
//! - Immediates, credit and the data window (half the smaller receive depth, the other half
//!   reserved for credit messages): [`credit`].
//! - Liveness probes are zero-length RDMA WRITEs without immediate (they consume nothing at the
//!   partner): [`RdmaLinkConfig::probe_interval_ms`].
//! - One-sided writes: an RDMA WRITE without immediate into a region the partner registered
//!   (its address and rkey learnt by the manager), immediately followed on the same queue pair
//!   by an ordinary frame, the marker. It consumes nothing of the partner's ring, receives or
//!   credit; RC ordering places the data before the marker is delivered: [`one_sided`]. The
//!   data goes out of a write-staging region of its own ([`staging`]).
//!
//! # Modules
//!
//! - [`config`] -- [`RdmaLinkConfig`] and its bounds.
//! - [`endpoint`] -- [`LocalEndpoint`] and the checks on the partner's.
//! - [`ring`], [`credit`], [`staging`] -- the pure ring, credit and write-staging arithmetic.
//! - [`one_sided`] -- [`OneSided`] and [`RdmaLink::send_with_write`].
//! - [`error`] -- [`RdmaLinkError`], [`EndpointError`], [`SendError`], [`LinkCloseReason`].
//! - [`sink`] -- [`LinkSink`].
//! - [`stats`] -- [`LinkStats`].
//! - `prepare`, `link`, `worker` -- resources and connect, the handle, the thread.

pub mod config;
pub mod credit;
pub mod endpoint;
pub mod error;
mod link;
pub mod one_sided;
mod prepare;
pub mod ring;
pub mod sink;
pub mod staging;
pub mod stats;
mod worker;
mod wrid;

pub use config::{RdmaLinkConfig, MAX_BUSY_POLL_US, MAX_CREDIT_IDLE_US};
pub use endpoint::LocalEndpoint;
pub use error::{EndpointError, LinkCloseReason, RdmaLinkError, RequestKind, SendError};
pub use link::{LinkCloser, RdmaLink};
pub use one_sided::OneSided;
/// The local-model mark a frame carries through [`RdmaLink::send`] back to
/// [`LinkSink::written`] (the session's own type).
pub use peercm_cm_proto::session::LocalDone;
pub use prepare::PreparedLink;
pub use sink::LinkSink;
pub use stats::LinkStats;

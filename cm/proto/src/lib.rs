//! The peercm protocol core: everything about talking to a partner node that does not touch a
//! socket, a verbs device, a thread or the clock.
//!
//! In the spirit of `quinn-proto`, every state machine here is driven from outside:
//! `handle_*` methods feed it input (frames, link events, timer expiry, client commands) with the
//! current time passed in as `now`, and `poll_*` methods drain its output (frames to transmit,
//! events for clients, the next deadline). The tokio runtime in `peercm-cm-manager` and the
//! transports (`peercm-fallback-tcp`, `peercm-cm-rdma-link`) sit on top.
//!
//! Modules:
//! - [`ids`]: typed identities (clients, the partner's clients, interconnects, links).
//! - [`frame`]: the fixed frame header, its encoder and its bounded, panic-free decoder.
//! - [`frame_reader`]: the established link's reader, which skips an oversize frame instead
//!   of ending the stream.
//! - [`control`]: payloads of control messages (handshake, ACK/NACK, CLIENT-UP, FLOW, ...).
//! - [`auth`]: HMAC-SHA256 challenge-response over the shared cluster secret.
//! - [`secret`]: the cluster secret's strength estimate (length and estimated bits).
//! - [`handshake`]: the bootstrap handshake, one struct per expected message.
//! - [`link_queue`]: a link's two-lane outgoing queue (control frames overtake bulk data).
//! - [`stream`]: per-client send and receive streams (sequencing, replay, dedup, reordering).
//! - [`placement`]: the IO-free bandwidth placement policy (which client on which interconnect).
//! - [`port`]: the client port state machine (IDLE ... CONNECTED <-> STOPPED, DESTROYED).
//! - [`region`]: client memory regions: the region exchange, WRITE frames, the region tables
//!   and the typed refusals of one-sided writes.
//! - [`session`]: one partner session multiplexing all clients over all links.
//! - `testkit` (cargo feature `testkit`, test code only): the arbitrary-frame generator shared
//!   by the property tests and the fuzz targets.

pub mod auth;
pub mod control;
pub mod frame;
pub mod frame_reader;
pub mod handshake;
pub mod ids;
pub mod link_queue;
pub mod placement;
pub mod port;
pub mod region;
pub mod secret;
pub mod session;
pub mod stream;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use frame::{Frame, FrameError, Header, MsgType, PROTOCOL_VERSION};

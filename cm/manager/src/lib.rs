//! peercm's connection manager: the per-node runtime that owns every channel to the partner and
//! the API clients use.
//!
//! The protocol decisions (sequencing, replay, ports, session reset) are made by the IO-free
//! `peercm_cm_proto::session::Session`; this crate runs it on tokio: one manager task per node
//! feeds it link input, client commands and timer expiry, and carries out what it asks for
//! (frames onto links, events to clients, links to close). Transports produce links: TCP
//! connections (`peercm-fallback-tcp`) and RDMA queue pairs (`peercm-cm-rdma-link`), and the IO-free
//! placement policy (`peercm_cm_proto::placement`) decides which interconnect each client uses.
//!
//! - [`config`]: the node's TOML configuration and its validation.
//! - [`node`]: [`Node`], the handle an application (or the CLI) holds.
//! - [`client`]: [`ClientHandle`], one registered client.
//! - [`manager`]: the manager task: session, placement, links, rails.
//! - `links`: the manager's handle on a TCP or RDMA link.
//! - [`rails`]: RDMA rails (HCA ports), their setup over the bootstrap session, device events.
//! - [`regions`]: client regions (mapped files; their registration and invalidation).
//! - [`status`]: what `peercm status` reports.
//! - [`timeline`]: the node's notable events, typed.
//! - [`error`]: the error type, [`CmError`].
//!
//! The cargo feature `fault-injection` (tests and lane runners only) adds `Node::kill_link` and
//! `Node::freeze`; the product builds without it.

pub mod client;
pub mod config;
mod consumed;
pub mod error;
mod links;
pub mod manager;
pub mod node;
pub mod rails;
pub mod regions;
pub mod status;
pub mod timeline;

pub use client::ClientHandle;
pub use config::NodeConfig;
pub use error::CmError;
pub use node::Node;
pub use peercm_cm_proto::auth::ClusterSecret;
pub use peercm_cm_proto::control::{NackReason, MAX_CLIENTS_PER_NODE};
pub use peercm_cm_proto::port::PortState;
pub use peercm_cm_proto::secret::GENERATED_SECRET_BYTES;
pub use peercm_cm_proto::session::{
    ClientEvent, ClientSpec, DownReason, InterconnectId, LatencyClass, LinkId, SendOptions,
    SessionError, SessionState,
};
pub use peercm_cm_proto::stream::SendModel;
pub use rails::VerbsSource;
pub use status::NodeStatus;

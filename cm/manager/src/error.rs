//! Errors of the connection manager, each saying what to do about it.

use peercm_cm_proto::session::SessionError;
use thiserror::Error;

/// A manager operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CmError {
    /// The session refused the command (unknown client, not connected, bad name, ...).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A client region could not be opened, found or read (its file, its size, the node's
    /// `[regions]` settings).
    #[error(transparent)]
    Region(#[from] crate::regions::RegionError),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The secret is missing or unusable.
    #[error("cluster secret: {0}")]
    Secret(String),
    /// A socket could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error (part of the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// Only the dialing node (the one with `[peer]`) switches partners; this one listens.
    #[error("only the dialing node (with [peer]) switches partners")]
    NotDialer,
    /// A partner switch was asked for, but no backup partner is configured.
    #[error("no backup partner configured ([peer] backups)")]
    NoBackupPartner,
    /// This handle's client was closed (its last `close` destroyed the port); register the
    /// name again for a new handle.
    #[error("this client handle was closed")]
    ClientClosed,
    /// A client asked for a queue pair of its own beyond `[verbs] max_client_qps`.
    #[error(
        "no queue pair of its own for client {client:?}: this node holds the most it may          ({max}, [verbs] max_client_qps); release one first"
    )]
    QueuePairLimit {
        /// The client.
        client: String,
        /// The node's limit.
        max: usize,
    },
    /// The node has been shut down.
    #[error("the node has stopped")]
    Stopped,
}

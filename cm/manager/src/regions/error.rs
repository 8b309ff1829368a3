//! [`RegionError`]: why a region cannot be opened, written or read. Each names the region (or
//! the file) and the rule, so a refusal can be passed to the client as it is.

use std::path::PathBuf;
use thiserror::Error;

/// A region operation was refused or failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RegionError {
    /// The node has no `[regions] dir`.
    #[error("this node has no regions configured ([regions] dir)")]
    NotConfigured,
    /// The name is not a valid region name.
    #[error("bad region name {name:?}: {reason}")]
    BadName {
        /// The name given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// A region of no bytes.
    #[error("region {name:?} must hold at least one byte")]
    Empty {
        /// The region.
        name: String,
    },
    /// The region would take the node beyond `[regions] max_bytes`.
    #[error(
        "region {name:?} of {asked} bytes refused: {in_use} of the node's {max} bytes \
         ([regions] max_bytes) are in use"
    )]
    TooLarge {
        /// The region.
        name: String,
        /// Its size.
        asked: u64,
        /// Bytes the node's open regions hold already.
        in_use: u64,
        /// The node's limit.
        max: u64,
    },
    /// A region may only grow: the size asked for is not above its current size.
    #[error("region {name:?} holds {len} bytes: it can only grow, not to {asked}")]
    NotLarger {
        /// The region.
        name: String,
        /// Its current size.
        len: u64,
        /// The size asked for.
        asked: u64,
    },
    /// A region of that name is open already on this node.
    #[error("region {name:?} is open already")]
    AlreadyOpen {
        /// The region.
        name: String,
    },
    /// No open region of that name.
    #[error("no open region named {name:?}")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// The region's file exists with another size.
    #[error("{} holds {found} bytes, not the {expected} asked for", path.display())]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Its size on disk.
        found: u64,
        /// The size asked for.
        expected: u64,
    },
    /// Another process has the region's file mapped (it holds the file's lock).
    #[error("{} is in use by another process", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// A copy outside the region.
    #[error("range {offset}+{len} is outside region {name:?} of {size} bytes")]
    OutOfBounds {
        /// The region.
        name: String,
        /// Where the copy starts.
        offset: u64,
        /// Its length.
        len: u64,
        /// The region's size.
        size: u64,
    },
    /// Registering the region on a device failed.
    #[error("registering region {name:?} on {device}: {source}")]
    Register {
        /// The region.
        name: String,
        /// The device.
        device: String,
        /// The verbs error.
        #[source]
        source: peercm_verbs_shim::VerbsError,
    },
    /// An IO operation on the region's file or directory failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

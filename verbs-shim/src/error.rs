//! Errors of the verbs layer: typed, with the failing call and the reason.

use crate::types::{QpState, VerbsUnavailable};
use thiserror::Error;

/// A verbs operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VerbsError {
    /// Verbs cannot be used on this host.
    #[error(transparent)]
    Unavailable(#[from] VerbsUnavailable),
    /// No device of that name.
    #[error("no RDMA device named {0:?}")]
    NoSuchDevice(String),
    /// The QP state table forbids this transition.
    #[error("invalid QP state transition {from:?} -> {to:?}")]
    InvalidTransition {
        /// Current state.
        from: QpState,
        /// Requested state.
        to: QpState,
    },
    /// A request was posted to a QP in a state that does not accept it.
    #[error("cannot post {what} to a QP in state {state:?}")]
    WrongState {
        /// "send" or "recv".
        what: &'static str,
        /// The QP's state.
        state: QpState,
    },
    /// An argument is out of range (offset beyond a region, bad MTU, full queue, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The send or receive queue is full.
    #[error("{0} queue is full")]
    QueueFull(&'static str),
    /// A verbs call failed with an errno.
    #[error("{call} failed: {source_text} (errno {errno})")]
    Os {
        /// The call.
        call: &'static str,
        /// errno.
        errno: i32,
        /// strerror.
        source_text: String,
    },
}

impl VerbsError {
    /// Builds an [`VerbsError::Os`] from the current errno.
    pub fn last_os(call: &'static str) -> Self {
        let e = std::io::Error::last_os_error();
        VerbsError::Os {
            call,
            errno: e.raw_os_error().unwrap_or(0),
            source_text: e.to_string(),
        }
    }

    /// Builds an [`VerbsError::Os`] from a returned errno value.
    pub fn from_errno(call: &'static str, errno: i32) -> Self {
        VerbsError::Os {
            call,
            errno,
            source_text: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }
}

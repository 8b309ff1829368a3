//! The client port state machine \[CDP\].
//!
//! ```text
//! source side:  IDLE -> REGISTERED -> INITIALIZED -> CONNECTING -> CONNECTED <-> STOPPED
//! target side:          REGISTERED / INITIALIZED --(partner's namesake up)--> CONNECTED-TO <-> STOPPED
//! any state --destroy--> DESTROYED
//! ```
//!
//! `connect` is use-counted: every call bumps the count, a controlled close drops it and only the
//! last one destroys the port; an immediate close destroys it at once.

use serde::Serialize;
use thiserror::Error;

/// Where a client port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING-KEBAB-CASE")]
pub enum PortState {
    /// Nothing yet.
    Idle,
    /// Name taken.
    Registered,
    /// Resources allocated; announced to the partner.
    Initialized,
    /// `connect` called; waiting for the partner's namesake.
    Connecting,
    /// Source side: connected, traffic flows.
    Connected,
    /// Target side: the partner connected to us; traffic flows.
    ConnectedTo,
    /// The path to the partner is down; sends fail fast.
    Stopped,
    /// Closed for good.
    Destroyed,
}

impl PortState {
    /// Whether traffic may flow.
    pub fn is_up(self) -> bool {
        matches!(self, PortState::Connected | PortState::ConnectedTo)
    }
}

impl std::fmt::Display for PortState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            PortState::Idle => "IDLE",
            PortState::Registered => "REGISTERED",
            PortState::Initialized => "INITIALIZED",
            PortState::Connecting => "CONNECTING",
            PortState::Connected => "CONNECTED",
            PortState::ConnectedTo => "CONNECTED-TO",
            PortState::Stopped => "STOPPED",
            PortState::Destroyed => "DESTROYED",
        };
        f.write_str(s)
    }
}

/// An input to the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortInput {
    /// Take the name.
    Register,
    /// Allocate resources.
    Initialize,
    /// Local `connect` (use-counted).
    Connect,
    /// The session is up and the partner's namesake is reachable.
    PathUp,
    /// The path to the partner's namesake was lost.
    PathDown,
    /// Controlled close (use-counted).
    Close,
    /// Immediate close.
    CloseImmediate,
}

/// The input is not allowed in the current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("client port in state {state} cannot take {input:?}")]
pub struct InvalidTransition {
    /// Current state.
    pub state: PortState,
    /// Refused input.
    pub input: PortInput,
}

/// A client port.
#[derive(Debug, Clone)]
pub struct Port {
    state: PortState,
    use_count: u32,
    connected_locally: bool,
}

impl Default for Port {
    fn default() -> Self {
        Port {
            state: PortState::Idle,
            use_count: 0,
            connected_locally: false,
        }
    }
}

impl Port {
    /// Current state.
    pub fn state(&self) -> PortState {
        self.state
    }

    /// Outstanding `connect` calls.
    pub fn use_count(&self) -> u32 {
        self.use_count
    }

    /// Applies an input, returning the new state.
    pub fn apply(&mut self, input: PortInput) -> Result<PortState, InvalidTransition> {
        use PortInput as I;
        use PortState as S;
        let bad = InvalidTransition {
            state: self.state,
            input,
        };
        let next = match (self.state, input) {
            (S::Destroyed, _) => return Err(bad),
            (_, I::CloseImmediate) => S::Destroyed,
            (S::Idle, I::Register) => S::Registered,
            (S::Idle, _) => return Err(bad),
            (S::Registered, I::Initialize) => S::Initialized,
            (_, I::Register | I::Initialize) => return Err(bad),
            (s, I::Connect) => {
                self.use_count += 1;
                self.connected_locally = true;
                match s {
                    S::Registered | S::Initialized => S::Connecting,
                    S::ConnectedTo => S::Connected,
                    other => other,
                }
            }
            (S::Registered | S::Initialized, I::PathUp) => S::ConnectedTo,
            (S::Connecting, I::PathUp) => S::Connected,
            (S::Stopped, I::PathUp) => {
                if self.connected_locally {
                    S::Connected
                } else {
                    S::ConnectedTo
                }
            }
            (s @ (S::Connected | S::ConnectedTo), I::PathUp) => s,
            (S::Connected | S::ConnectedTo, I::PathDown) => S::Stopped,
            (s, I::PathDown) => s,
            (_, I::Close) => {
                self.use_count = self.use_count.saturating_sub(1);
                if self.use_count == 0 {
                    S::Destroyed
                } else {
                    self.state
                }
            }
        };
        self.state = next;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PortInput as I;
    use PortState as S;

    fn port_at_initialized() -> Port {
        let mut p = Port::default();
        p.apply(I::Register).unwrap();
        p.apply(I::Initialize).unwrap();
        p
    }

    #[test]
    fn source_side_path() {
        let mut p = port_at_initialized();
        assert_eq!(p.apply(I::Connect), Ok(S::Connecting));
        assert_eq!(p.apply(I::PathUp), Ok(S::Connected));
        assert_eq!(p.apply(I::PathDown), Ok(S::Stopped));
        assert_eq!(p.apply(I::PathUp), Ok(S::Connected));
    }

    #[test]
    fn target_side_path() {
        let mut p = port_at_initialized();
        assert_eq!(p.apply(I::PathUp), Ok(S::ConnectedTo));
        assert_eq!(p.apply(I::PathDown), Ok(S::Stopped));
        assert_eq!(p.apply(I::PathUp), Ok(S::ConnectedTo));
        assert_eq!(p.apply(I::Connect), Ok(S::Connected));
    }

    #[test]
    fn use_counted_close_and_immediate_close() {
        let mut p = port_at_initialized();
        p.apply(I::Connect).unwrap();
        p.apply(I::Connect).unwrap();
        assert_eq!(p.use_count(), 2);
        assert_eq!(p.apply(I::Close), Ok(S::Connecting));
        assert_eq!(p.apply(I::Close), Ok(S::Destroyed));
        assert!(p.apply(I::Connect).is_err());

        let mut q = port_at_initialized();
        q.apply(I::Connect).unwrap();
        q.apply(I::Connect).unwrap();
        assert_eq!(q.apply(I::CloseImmediate), Ok(S::Destroyed));
    }

    #[test]
    fn invalid_transitions_refused() {
        let mut p = Port::default();
        assert!(p.apply(I::Connect).is_err());
        let mut q = port_at_initialized();
        assert!(q.apply(I::Register).is_err());
    }
}

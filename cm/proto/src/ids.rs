//! Typed identities: [`ClientId`], [`PeerClientId`], [`InterconnectId`], [`LinkId`] and
//! [`RegionId`].
//!
//! Each is a plain number in a newtype, so that one kind of id cannot be passed where another
//! is expected (`Session::place(client, interconnect)` with the arguments swapped does not
//! compile). They are `Copy` and ordered like the number, print as the bare number (`Display`
//! and `Debug` alike, so log lines, status timelines and `{:?}` of events read as they did
//! with plain integers), and serialize as the bare number (`#[serde(transparent)]`), so status
//! output and anything serialized is the same as with the plain integer. Conversions are
//! explicit: `new` wraps a number, `get` unwraps it.
//!
//! On the wire ids stay plain integers ([`crate::frame`], [`crate::control`]); the session and
//! the runtime convert at that boundary. A frame header's client field names the destination
//! client in the receiver's numbering: a frame we send carries a [`PeerClientId`], one we
//! receive a [`ClientId`]. The CLIENT-UP, CLIENT-DOWN and NACK payloads name a client in the
//! sender's numbering: we send our [`ClientId`] and receive a [`PeerClientId`]. TRANSPORT
//! messages carry rail numbers, the [`InterconnectId`] of the rail on both nodes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Declares one id newtype over `$int` with `new`, `get`, and `Display` and `Debug` of the
/// bare number.
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident($int:ty)) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name($int);

        impl $name {
            /// Wraps a number.
            pub const fn new(n: $int) -> Self {
                $name(n)
            }

            /// The number.
            pub const fn get(self) -> $int {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

id_type! {
    /// Local identity of a registered client, assigned by this node's session (1, 2, ...).
    /// Frames the partner sends for the client carry it.
    ClientId(u32)
}

id_type! {
    /// The partner's identity of a client: the id the partner announced for its namesake (in
    /// CLIENT-UP), which frames we send to that client carry. The partner numbers its clients
    /// independently of us, so this is never a [`ClientId`].
    PeerClientId(u32)
}

id_type! {
    /// Which interconnect to the partner a link belongs to, numbered by the runtime:
    /// [`InterconnectId::TCP`] (0) for every TCP connection, `k` (1, 2, ...) for RDMA rail `k`.
    InterconnectId(u32)
}

id_type! {
    /// Runtime-assigned identity of one link (one TCP connection or one RDMA queue pair).
    LinkId(u64)
}

id_type! {
    /// One memory region of a client, numbered by the node that holds it, per client (a
    /// region is named on the wire by its client's id and this id).
    RegionId(u32)
}

impl InterconnectId {
    /// The interconnect of TCP links.
    pub const TCP: InterconnectId = InterconnectId(0);

    /// Whether this is the TCP interconnect.
    pub const fn is_tcp(self) -> bool {
        self.0 == 0
    }

    /// RDMA rail `k` (1-based; `rail(0)` is [`InterconnectId::TCP`]).
    pub const fn rail(k: u32) -> Self {
        InterconnectId(k)
    }

    /// The 0-based position of an RDMA rail (rail `k` is at `k - 1`); `None` for TCP.
    pub fn rail_index(self) -> Option<usize> {
        self.0.checked_sub(1).map(|i| i as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_the_bare_number() {
        assert_eq!(ClientId::new(7).to_string(), "7");
        assert_eq!(PeerClientId::new(8).to_string(), "8");
        assert_eq!(InterconnectId::new(2).to_string(), "2");
        assert_eq!(LinkId::new(u64::MAX).to_string(), u64::MAX.to_string());
        assert_eq!(RegionId::new(4).to_string(), "4");
        assert_eq!(
            format!("{:>3}", ClientId::new(5)),
            "  5",
            "format flags pass through"
        );
        // Debug too: `{:?}` of events and lists reads as it did with plain integers.
        assert_eq!(format!("{:?}", Some(InterconnectId::new(1))), "Some(1)");
        assert_eq!(
            format!("{:?}", vec![ClientId::new(1), ClientId::new(2)]),
            "[1, 2]"
        );
    }

    #[test]
    fn ids_serialize_as_the_bare_number() {
        assert_eq!(serde_json::to_string(&ClientId::new(3)).unwrap(), "3");
        assert_eq!(serde_json::to_string(&InterconnectId::TCP).unwrap(), "0");
        assert_eq!(
            serde_json::to_string(&Some(InterconnectId::new(2))).unwrap(),
            "2"
        );
        assert_eq!(serde_json::to_string(&LinkId::new(9)).unwrap(), "9");
        let back: InterconnectId = serde_json::from_str("4").unwrap();
        assert_eq!(back, InterconnectId::new(4));
        // postcard: the same bytes as the plain integer.
        assert_eq!(
            postcard::to_stdvec(&PeerClientId::new(300)).unwrap(),
            postcard::to_stdvec(&300u32).unwrap()
        );
    }

    #[test]
    fn interconnect_helpers() {
        assert!(InterconnectId::TCP.is_tcp());
        assert_eq!(InterconnectId::TCP, InterconnectId::new(0));
        assert!(!InterconnectId::rail(1).is_tcp());
        assert_eq!(InterconnectId::rail(1).rail_index(), Some(0));
        assert_eq!(InterconnectId::rail(3).rail_index(), Some(2));
        assert_eq!(InterconnectId::TCP.rail_index(), None);
        assert!(InterconnectId::TCP < InterconnectId::rail(1));
    }
}

//! Payloads of control messages and their encoding.
//!
//! Handshake payloads are serde structs encoded with `postcard` (compact, well kept, and its
//! decoder never allocates more than the input can describe). The hot-path payloads (ACK return
//! code, NACK reason, FLOW credit) are a few fixed bytes, described in docs/protocol.md.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use thiserror::Error;

/// Longest client or node name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Most clients one node may have registered at once (and announce to its partner): enforced
/// at `register`, by config validation and on receipt of the partner's announcements.
pub const MAX_CLIENTS_PER_NODE: usize = 16_384;
/// Upper bound on a handshake payload.
pub const MAX_HANDSHAKE_PAYLOAD_BYTES: usize = 64 * 1024;

/// A control payload could not be decoded or is out of bounds. The peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Not a valid encoding of the expected payload.
    #[error("malformed {what} payload: {detail}")]
    Malformed {
        /// Which payload.
        what: &'static str,
        /// Decoder detail.
        detail: String,
    },
    /// A field is out of its bounds.
    #[error("{what} out of bounds: {detail}")]
    OutOfBounds {
        /// Which field.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Encodes a serde payload.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // postcard only fails for types serde cannot describe (none of ours) or a full buffer
    // (to_stdvec grows); fall back to empty rather than panic.
    Bytes::from(postcard::to_stdvec(value).unwrap_or_default())
}

/// Decodes a serde payload, refusing trailing bytes and oversized input.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, ControlError> {
    if bytes.len() > MAX_HANDSHAKE_PAYLOAD_BYTES {
        return Err(ControlError::OutOfBounds {
            what,
            detail: format!("{} bytes > {MAX_HANDSHAKE_PAYLOAD_BYTES}", bytes.len()),
        });
    }
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| ControlError::Malformed {
        what,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(ControlError::Malformed {
            what,
            detail: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(value)
}

/// Checks a client or node name: 1..=64 bytes of `[A-Za-z0-9_.-]`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), ControlError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ControlError::OutOfBounds {
            what,
            detail: format!("{name:?} must be 1..={MAX_NAME_BYTES} characters of [A-Za-z0-9_.-]"),
        })
    }
}

/// A transport a node can offer its partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransportCap {
    /// Plain TCP (always offered).
    Tcp,
    /// An RDMA port (filled in by the verbs backend).
    Verbs {
        /// Device name, e.g. `rxe0`.
        device: String,
        /// Port number.
        port: u8,
        /// The GID used to reach it.
        gid: [u8; 16],
        /// Capacity in Mb/s.
        capacity_mbits_per_s: u32,
    },
}

/// Transport setup between the two managers, carried in TRANSPORT frames over the bootstrap
/// session. The dialer offers one RDMA rail at a time; the acceptor answers with its own
/// endpoint or a refusal. `endpoint` is the transport's own serialized endpoint description
/// (for RDMA: QP number, PSN, GID, MTU and the receive ring's address, rkey and size); this
/// crate carries it unread and the runtime decodes it with its own bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransportMsg {
    /// Dialer -> acceptor: set up rail `rail` with this endpoint.
    Offer {
        /// Rail number (1-based; see docs/architecture.md for how rails are paired).
        rail: u32,
        /// Distinguishes retries, so a late answer to an abandoned offer is ignored.
        attempt: u64,
        /// The offering side's endpoint.
        endpoint: Vec<u8>,
    },
    /// Acceptor -> dialer: the rail is connected on this side; here is its endpoint.
    Accept {
        /// Rail number.
        rail: u32,
        /// The offer's attempt.
        attempt: u64,
        /// The accepting side's endpoint.
        endpoint: Vec<u8>,
    },
    /// Acceptor -> dialer: this rail cannot be set up now.
    Refuse {
        /// Rail number.
        rail: u32,
        /// The offer's attempt.
        attempt: u64,
        /// Why, for the dialer's log and status.
        reason: String,
    },
    /// Either side -> the other: set up a queue pair of its own for client `client` on rail
    /// `rail` (a client asked for one \[CCM\]), with this endpoint. Answered by `Accept` or
    /// `Refuse` with the same rail and attempt, like `Offer`; attempts are unique per node, so
    /// an answer names one offer of either kind. Both sides reserve the link for their client
    /// of that name.
    ClientOffer {
        /// Rail number.
        rail: u32,
        /// Distinguishes retries, as for `Offer`.
        attempt: u64,
        /// The client's name (the same on both nodes; the name rules of CLIENT-UP).
        client: String,
        /// The offering side's endpoint.
        endpoint: Vec<u8>,
    },
}

/// A client as announced to the partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAnnounce {
    /// The client's name (shared with its namesake on the partner).
    pub name: String,
    /// The id the announcing node uses for it; frames for it carry this id.
    pub id: u32,
    /// How many messages beyond the last consumed one the partner may send it.
    pub recv_window: u32,
    /// Whether the announcing client has called `connect` (source side) or only registered.
    pub connecting: bool,
}

/// A client was closed (CLIENT-DOWN). The id names the incarnation, so a late copy of an older
/// announcement can never be mistaken for the current one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientGone {
    /// The client's name.
    pub name: String,
    /// The id of the incarnation that was closed.
    pub id: u32,
}

/// Who a node is, exchanged during the handshake. Its size does not grow with the number of
/// clients: those are announced after the handshake, one bounded CLIENT-UP frame each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's configured id.
    pub node_id: String,
    /// Random per-process identity: a change means the partner restarted.
    pub instance: u64,
    /// Transports offered.
    pub capabilities: Vec<TransportCap>,
    /// The largest message payload this node accepts (its `max_payload_bytes`): the partner
    /// refuses a larger send at once, and a larger DATA frame that still arrives is refused for
    /// that message alone (NACK reason [`NackReason::TooLarge`]).
    pub max_payload_bytes: u32,
}

impl NodeInfo {
    /// Validates bounds on a peer-supplied node description.
    pub fn validate(&self) -> Result<(), ControlError> {
        validate_name("node id", &self.node_id)?;
        if self.max_payload_bytes == 0 {
            return Err(ControlError::OutOfBounds {
                what: "max_payload_bytes",
                detail: "0: a node accepts at least one byte".into(),
            });
        }
        Ok(())
    }
}

/// Handshake 1, dialer -> acceptor. Carries nothing a listener could use to make this node
/// prove anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The cluster the dialer believes it belongs to.
    pub cluster_id: String,
}

/// Handshake 2, acceptor -> dialer: only a fresh nonce (the acceptor proves nothing yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Acceptor nonce.
    pub nonce: [u8; 32],
}

/// Handshake 3, dialer -> acceptor: the dialer proves first, over both nonces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// Dialer nonce.
    pub nonce: [u8; 32],
    /// HMAC proving the dialer holds the cluster secret.
    pub proof: [u8; 32],
}

/// Handshake 4, acceptor -> dialer, only after the dialer's proof checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// HMAC proving the acceptor holds the cluster secret (its own role label).
    pub proof: [u8; 32],
    /// The acceptor's description.
    pub node: NodeInfo,
}

/// Handshake 5, dialer -> acceptor, once the acceptor's proof checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identify {
    /// The dialer's description.
    pub node: NodeInfo,
}

/// Why a handshake was refused (sent only for reasons the peer may learn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    /// Protocol versions differ; carries the refusing node's version.
    Version {
        /// The refusing node's protocol version.
        ours: u8,
    },
}

/// Why a message was negatively acknowledged. Encoded as one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum NackReason {
    /// Every path to the partner was lost before the message was acknowledged; it may or may
    /// not have been delivered.
    ConnectionLost = 1,
    /// The destination client does not exist on the partner.
    UnknownClient = 2,
    /// The local client was closed before the message was acknowledged.
    Closed = 3,
    /// The partner restarted (a new instance answered); the message was not delivered to it.
    PeerRestarted = 4,
    /// No acknowledgement within the send's acknowledgement timeout (the client's default or
    /// the send's own). The message may still reach the partner client; its late completion
    /// is dropped and counted. Raised locally (code 5 is reserved on the wire for it).
    Timeout = 5,
    /// The message is larger than the receiving node's `max_payload_bytes`: the partner
    /// refused it (the link and every other message are unaffected). Not delivered.
    TooLarge = 6,
    /// A one-sided write reached past the end of the partner's region; nothing was written.
    OutOfBounds = 7,
    /// A one-sided write named a region the partner does not hold; nothing was written.
    UnknownRegion = 8,
    /// A one-sided write named a region the partner has released; nothing was written.
    RegionReleased = 9,
    /// A one-sided write was fenced: it was meant for a partner the session has switched away
    /// from, so it was not re-issued to the new one (whose region is another memory). Raised
    /// locally.
    Fenced = 10,
}

impl NackReason {
    /// Parses the reason byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => NackReason::ConnectionLost,
            2 => NackReason::UnknownClient,
            3 => NackReason::Closed,
            4 => NackReason::PeerRestarted,
            5 => NackReason::Timeout,
            6 => NackReason::TooLarge,
            7 => NackReason::OutOfBounds,
            8 => NackReason::UnknownRegion,
            9 => NackReason::RegionReleased,
            10 => NackReason::Fenced,
            _ => return None,
        })
    }
}

/// Encodes a sync ACK's return code (4 bytes, big-endian, signed).
pub fn encode_code(code: i32) -> Bytes {
    Bytes::copy_from_slice(&code.to_be_bytes())
}

/// Decodes a sync ACK's return code.
pub fn decode_code(bytes: &[u8]) -> Result<i32, ControlError> {
    let arr: [u8; 4] = bytes.try_into().map_err(|_| ControlError::Malformed {
        what: "ACK return code",
        detail: format!("{} bytes, expected 4", bytes.len()),
    })?;
    Ok(i32::from_be_bytes(arr))
}

/// Encodes a NACK payload: the reason byte and the destination client id the NACKed frame
/// carried (so the partner can find the sender even when the id was unknown here).
pub fn encode_nack(reason: NackReason, dest_client: u32) -> Bytes {
    let mut b = Vec::with_capacity(5);
    b.push(reason as u8);
    b.extend_from_slice(&dest_client.to_be_bytes());
    Bytes::from(b)
}

/// Decodes a NACK payload.
pub fn decode_nack(bytes: &[u8]) -> Result<(NackReason, u32), ControlError> {
    if bytes.len() != 5 {
        return Err(ControlError::Malformed {
            what: "NACK",
            detail: format!("{} bytes, expected 5", bytes.len()),
        });
    }
    let reason = NackReason::from_u8(bytes[0]).ok_or(ControlError::Malformed {
        what: "NACK",
        detail: format!("unknown reason {}", bytes[0]),
    })?;
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((reason, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_trailing_bytes_rejected() {
        let h = Hello {
            cluster_id: "c1".into(),
        };
        let bytes = encode(&h);
        assert_eq!(decode::<Hello>("HELLO", &bytes).unwrap(), h);
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            decode::<Hello>("HELLO", &longer),
            Err(ControlError::Malformed { .. })
        ));
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("client", "mirror-0.a_b").is_ok());
        assert!(validate_name("client", "").is_err());
        assert!(validate_name("client", "has space").is_err());
        assert!(validate_name("client", &"x".repeat(65)).is_err());
    }

    #[test]
    fn nack_and_code_round_trip() {
        assert_eq!(decode_code(&encode_code(-5)).unwrap(), -5);
        assert!(decode_code(&[1, 2]).is_err());
        assert_eq!(
            decode_nack(&encode_nack(NackReason::UnknownClient, 9)).unwrap(),
            (NackReason::UnknownClient, 9)
        );
        assert!(decode_nack(&[99, 0, 0, 0, 0]).is_err());
    }
}

//! The bootstrap handshake, one struct per expected message (in the manner of rustls).
//!
//! ```text
//! dialer                                   acceptor
//!   HELLO {cluster id, nonce_d}   ------->   version checked by the frame decoder;
//!                                            wrong cluster -> close, logged, nothing said
//!          <-------  CHALLENGE {nonce_a, proof_a}
//!   proof_a checked (acceptor holds secret)
//!   AUTH {proof_d, dialer NodeInfo} ------->  proof_d checked; wrong -> close, logged
//!          <-------  WELCOME {acceptor NodeInfo}
//! ```
//!
//! A node only reveals its identity, capabilities and clients after the other side has proven it
//! holds the cluster secret. A version mismatch is the one refusal that is answered
//! ([`MsgType::Refuse`]), so an operator on either side reads both versions.
//!
//! Nonces come in from the caller; nothing here touches a socket, the clock or an RNG.

use crate::auth::{self, ClusterSecret, Role};
use crate::control::{self, Auth, Challenge, ControlError, Hello, NodeInfo, RefuseReason, Welcome};
use crate::frame::{Frame, MsgType, PROTOCOL_VERSION};
use thiserror::Error;

/// Who this node is and how it authenticates.
#[derive(Debug, Clone)]
pub struct HandshakeConfig {
    /// Cluster both nodes must agree on.
    pub cluster_id: String,
    /// Shared secret.
    pub secret: ClusterSecret,
    /// This node's description.
    pub node: NodeInfo,
}

/// Why a handshake failed. The variant says who is to blame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol v{peer}, this node speaks v{ours}: upgrade one side")]
    PeerIncompatible {
        /// The peer's version.
        peer: u8,
        /// Ours.
        ours: u8,
    },
    /// The peer belongs to another cluster.
    #[error(
        "peer belongs to cluster {peer:?}, this node to {ours:?}: check cluster_id on both nodes"
    )]
    WrongCluster {
        /// What the peer claimed.
        peer: String,
        /// Ours.
        ours: String,
    },
    /// The peer's proof does not match our secret.
    #[error("peer failed authentication: its proof does not match this node's cluster secret")]
    AuthFailed,
    /// The peer sent a message that does not belong at this point.
    #[error("unexpected {got:?} during handshake, expected {expected:?}")]
    UnexpectedMessage {
        /// What we waited for.
        expected: MsgType,
        /// What came.
        got: MsgType,
    },
    /// A payload could not be decoded or is out of bounds.
    #[error("malformed handshake message: {0}")]
    Malformed(ControlError),
    /// The peer is this very node (same node id and instance).
    #[error("connected to itself (node {0}): check the peer address")]
    SelfConnection(String),
}

impl From<ControlError> for HandshakeError {
    fn from(e: ControlError) -> Self {
        HandshakeError::Malformed(e)
    }
}

fn expect(frame: &Frame, expected: MsgType) -> Result<(), HandshakeError> {
    if frame.header.msg_type == MsgType::Refuse {
        if let Ok(RefuseReason::Version { ours }) = control::decode("REFUSE", &frame.payload) {
            return Err(HandshakeError::PeerIncompatible {
                peer: ours,
                ours: PROTOCOL_VERSION,
            });
        }
    }
    if frame.header.msg_type != expected {
        return Err(HandshakeError::UnexpectedMessage {
            expected,
            got: frame.header.msg_type,
        });
    }
    Ok(())
}

/// The frame an acceptor sends (in its own version) before closing on a version mismatch.
pub fn refuse_version() -> Frame {
    Frame::control(
        MsgType::Refuse,
        control::encode(&RefuseReason::Version {
            ours: PROTOCOL_VERSION,
        }),
    )
}

/// Dialer, before anything was sent.
#[derive(Debug)]
pub struct DialerStart {
    config: HandshakeConfig,
    nonce: [u8; 32],
}

/// Dialer, HELLO sent, waiting for CHALLENGE.
#[derive(Debug)]
pub struct DialerExpectChallenge {
    config: HandshakeConfig,
    nonce: [u8; 32],
}

/// Dialer, AUTH sent, waiting for WELCOME.
#[derive(Debug)]
pub struct DialerExpectWelcome {
    config: HandshakeConfig,
}

impl DialerStart {
    /// A dialer with the given nonce (fresh randomness from the caller).
    pub fn new(config: HandshakeConfig, nonce: [u8; 32]) -> Self {
        DialerStart { config, nonce }
    }

    /// Produces HELLO.
    pub fn start(self) -> (DialerExpectChallenge, Frame) {
        let hello = Hello {
            cluster_id: self.config.cluster_id.clone(),
            nonce: self.nonce,
        };
        let frame = Frame::control(MsgType::Hello, control::encode(&hello));
        (
            DialerExpectChallenge {
                config: self.config,
                nonce: self.nonce,
            },
            frame,
        )
    }
}

impl DialerExpectChallenge {
    /// Checks the acceptor's proof and produces AUTH.
    pub fn handle(self, frame: &Frame) -> Result<(DialerExpectWelcome, Frame), HandshakeError> {
        expect(frame, MsgType::Challenge)?;
        let ch: Challenge = control::decode("CHALLENGE", &frame.payload)?;
        let c = &self.config;
        if !auth::verify(
            &c.secret,
            Role::Acceptor,
            &c.cluster_id,
            &self.nonce,
            &ch.nonce,
            &ch.proof,
        ) {
            return Err(HandshakeError::AuthFailed);
        }
        let proof = auth::proof(
            &c.secret,
            Role::Dialer,
            &c.cluster_id,
            &self.nonce,
            &ch.nonce,
        );
        let auth = Auth {
            proof,
            node: c.node.clone(),
        };
        let frame = Frame::control(MsgType::Auth, control::encode(&auth));
        Ok((
            DialerExpectWelcome {
                config: self.config,
            },
            frame,
        ))
    }
}

impl DialerExpectWelcome {
    /// Reads the acceptor's description; the handshake is complete.
    pub fn handle(self, frame: &Frame) -> Result<NodeInfo, HandshakeError> {
        expect(frame, MsgType::Welcome)?;
        let w: Welcome = control::decode("WELCOME", &frame.payload)?;
        w.node.validate()?;
        check_not_self(&self.config.node, &w.node)?;
        Ok(w.node)
    }
}

/// Acceptor, waiting for HELLO.
#[derive(Debug)]
pub struct AcceptorStart {
    config: HandshakeConfig,
    nonce: [u8; 32],
}

/// Acceptor, CHALLENGE sent, waiting for AUTH.
#[derive(Debug)]
pub struct AcceptorExpectAuth {
    config: HandshakeConfig,
    nonce: [u8; 32],
    dialer_nonce: [u8; 32],
}

impl AcceptorStart {
    /// An acceptor with the given nonce.
    pub fn new(config: HandshakeConfig, nonce: [u8; 32]) -> Self {
        AcceptorStart { config, nonce }
    }

    /// Checks HELLO (cluster) and produces CHALLENGE.
    pub fn handle(self, frame: &Frame) -> Result<(AcceptorExpectAuth, Frame), HandshakeError> {
        expect(frame, MsgType::Hello)?;
        let hello: Hello = control::decode("HELLO", &frame.payload)?;
        if hello.cluster_id != self.config.cluster_id {
            return Err(HandshakeError::WrongCluster {
                peer: hello.cluster_id,
                ours: self.config.cluster_id.clone(),
            });
        }
        let c = &self.config;
        let proof = auth::proof(
            &c.secret,
            Role::Acceptor,
            &c.cluster_id,
            &hello.nonce,
            &self.nonce,
        );
        let frame = Frame::control(
            MsgType::Challenge,
            control::encode(&Challenge {
                nonce: self.nonce,
                proof,
            }),
        );
        Ok((
            AcceptorExpectAuth {
                config: self.config,
                nonce: self.nonce,
                dialer_nonce: hello.nonce,
            },
            frame,
        ))
    }
}

impl AcceptorExpectAuth {
    /// Checks the dialer's proof; returns its description and the WELCOME to send.
    pub fn handle(self, frame: &Frame) -> Result<(NodeInfo, Frame), HandshakeError> {
        expect(frame, MsgType::Auth)?;
        let a: Auth = control::decode("AUTH", &frame.payload)?;
        let c = &self.config;
        if !auth::verify(
            &c.secret,
            Role::Dialer,
            &c.cluster_id,
            &self.dialer_nonce,
            &self.nonce,
            &a.proof,
        ) {
            return Err(HandshakeError::AuthFailed);
        }
        a.node.validate()?;
        check_not_self(&c.node, &a.node)?;
        let frame = Frame::control(
            MsgType::Welcome,
            control::encode(&Welcome {
                node: c.node.clone(),
            }),
        );
        Ok((a.node, frame))
    }
}

fn check_not_self(ours: &NodeInfo, theirs: &NodeInfo) -> Result<(), HandshakeError> {
    if ours.instance == theirs.instance && ours.node_id == theirs.node_id {
        return Err(HandshakeError::SelfConnection(ours.node_id.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::TransportCap;

    fn cfg(node: &str, cluster: &str, secret: &str) -> HandshakeConfig {
        HandshakeConfig {
            cluster_id: cluster.into(),
            secret: ClusterSecret::new(secret.as_bytes()).unwrap(),
            node: NodeInfo {
                node_id: node.into(),
                instance: node.len() as u64,
                capabilities: vec![TransportCap::Tcp],
                clients: vec![],
            },
        }
    }

    fn run(d: HandshakeConfig, a: HandshakeConfig) -> Result<(NodeInfo, NodeInfo), HandshakeError> {
        let (d1, hello) = DialerStart::new(d, [1; 32]).start();
        let (a1, challenge) = AcceptorStart::new(a, [2; 32]).handle(&hello)?;
        let (d2, auth) = d1.handle(&challenge)?;
        let (dialer_info, welcome) = a1.handle(&auth)?;
        let acceptor_info = d2.handle(&welcome)?;
        Ok((dialer_info, acceptor_info))
    }

    const S: &str = "a-long-enough-secret";

    #[test]
    fn completes_with_same_secret() {
        let (d, a) = run(cfg("a", "c", S), cfg("bb", "c", S)).unwrap();
        assert_eq!(d.node_id, "a");
        assert_eq!(a.node_id, "bb");
    }

    #[test]
    fn wrong_secret_fails_on_both_sides() {
        // The dialer detects the impostor acceptor before revealing anything.
        let (d1, hello) = DialerStart::new(cfg("a", "c", S), [1; 32]).start();
        let (_, ch) = AcceptorStart::new(cfg("b", "c", "another-secret-value"), [2; 32])
            .handle(&hello)
            .unwrap();
        assert_eq!(d1.handle(&ch).unwrap_err(), HandshakeError::AuthFailed);
        // The acceptor detects an impostor dialer: forge an AUTH with a wrong proof.
        let (_, hello) = DialerStart::new(cfg("a", "c", S), [1; 32]).start();
        let (a1, _) = AcceptorStart::new(cfg("b", "c", S), [2; 32])
            .handle(&hello)
            .unwrap();
        let forged = Frame::control(
            MsgType::Auth,
            control::encode(&Auth {
                proof: [0; 32],
                node: cfg("a", "c", S).node,
            }),
        );
        assert_eq!(a1.handle(&forged).unwrap_err(), HandshakeError::AuthFailed);
    }

    #[test]
    fn wrong_cluster_refused_by_acceptor() {
        let err = run(cfg("a", "c1", S), cfg("b", "c2", S)).unwrap_err();
        assert!(matches!(err, HandshakeError::WrongCluster { .. }), "{err}");
    }

    #[test]
    fn out_of_order_message_refused() {
        let (_, hello) = DialerStart::new(cfg("a", "c", S), [1; 32]).start();
        let (a1, _) = AcceptorStart::new(cfg("b", "c", S), [2; 32])
            .handle(&hello)
            .unwrap();
        let err = a1.handle(&hello).unwrap_err();
        assert_eq!(
            err,
            HandshakeError::UnexpectedMessage {
                expected: MsgType::Auth,
                got: MsgType::Hello
            }
        );
    }

    #[test]
    fn version_refusal_names_both_versions() {
        let (d1, _) = DialerStart::new(cfg("a", "c", S), [1; 32]).start();
        let mut refuse = refuse_version();
        refuse.payload = control::encode(&RefuseReason::Version { ours: 7 });
        let err = d1.handle(&refuse).unwrap_err();
        assert_eq!(err, HandshakeError::PeerIncompatible { peer: 7, ours: 1 });
        assert!(err.to_string().contains("v7") && err.to_string().contains("v1"));
    }

    #[test]
    fn self_connection_detected() {
        let err = run(cfg("a", "c", S), cfg("a", "c", S)).unwrap_err();
        assert!(matches!(err, HandshakeError::SelfConnection(_)));
    }
}

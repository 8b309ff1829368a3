//! The bootstrap handshake (protocol v2), one struct per expected message (in the manner of
//! rustls).
//!
//! ```text
//! dialer                                   acceptor
//!   HELLO {cluster id}            ------->   version checked by the frame decoder;
//!                                            cluster compared, result kept for later
//!          <-------  CHALLENGE {nonce_a}     (sent whatever the cluster id was)
//!   AUTH {nonce_d, proof_d}       ------->   cluster and proof_d checked; either wrong ->
//!                                            close, logged, nothing said
//!          <-------  WELCOME {proof_a, acceptor NodeInfo}
//!   proof_a checked
//!   IDENTIFY {dialer NodeInfo}    ------->
//! ```
//!
//! The dialer proves first, over both nonces: the acceptor never emits an HMAC to a peer that
//! has not proven it holds the secret, so knowing the cluster id buys an attacker nothing to
//! guess the secret offline with. A wrong cluster id and a wrong secret end the same way (close
//! after AUTH); only the local log says which. A version mismatch is the one refusal that is
//! answered ([`MsgType::Refuse`]), so an operator on either side reads both versions.
//!
//! Nonces come in from the caller; nothing here touches a socket, the clock or an RNG.

use crate::auth::{self, ClusterSecret, Role};
use crate::control::{
    self, Auth, Challenge, ControlError, Hello, Identify, NodeInfo, RefuseReason, Welcome,
};
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
    nonce: [u8; 32],
    acceptor_nonce: [u8; 32],
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
    /// Reads the acceptor's nonce and produces AUTH (the dialer's proof over both nonces).
    pub fn handle(self, frame: &Frame) -> Result<(DialerExpectWelcome, Frame), HandshakeError> {
        expect(frame, MsgType::Challenge)?;
        let ch: Challenge = control::decode("CHALLENGE", &frame.payload)?;
        let c = &self.config;
        let proof = auth::proof(
            &c.secret,
            Role::Dialer,
            &c.cluster_id,
            &self.nonce,
            &ch.nonce,
        );
        let auth = Auth {
            nonce: self.nonce,
            proof,
        };
        let frame = Frame::control(MsgType::Auth, control::encode(&auth));
        Ok((
            DialerExpectWelcome {
                config: self.config,
                nonce: self.nonce,
                acceptor_nonce: ch.nonce,
            },
            frame,
        ))
    }
}

impl DialerExpectWelcome {
    /// Checks the acceptor's proof, reads its description and produces IDENTIFY; the handshake
    /// is complete on this side.
    pub fn handle(self, frame: &Frame) -> Result<(NodeInfo, Frame), HandshakeError> {
        expect(frame, MsgType::Welcome)?;
        let w: Welcome = control::decode("WELCOME", &frame.payload)?;
        let c = &self.config;
        if !auth::verify(
            &c.secret,
            Role::Acceptor,
            &c.cluster_id,
            &self.nonce,
            &self.acceptor_nonce,
            &w.proof,
        ) {
            return Err(HandshakeError::AuthFailed);
        }
        w.node.validate()?;
        check_not_self(&c.node, &w.node)?;
        let frame = Frame::control(
            MsgType::Identify,
            control::encode(&Identify {
                node: c.node.clone(),
            }),
        );
        Ok((w.node, frame))
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
    /// The cluster the dialer claimed, when it is not ours (refused only after AUTH, so a wrong
    /// cluster looks exactly like a wrong secret from the outside).
    wrong_cluster: Option<String>,
}

/// Acceptor, WELCOME sent, waiting for IDENTIFY.
#[derive(Debug)]
pub struct AcceptorExpectIdentify {
    config: HandshakeConfig,
}

impl AcceptorStart {
    /// An acceptor with the given nonce.
    pub fn new(config: HandshakeConfig, nonce: [u8; 32]) -> Self {
        AcceptorStart { config, nonce }
    }

    /// Reads HELLO and produces CHALLENGE, whatever cluster the dialer claimed.
    pub fn handle(self, frame: &Frame) -> Result<(AcceptorExpectAuth, Frame), HandshakeError> {
        expect(frame, MsgType::Hello)?;
        let hello: Hello = control::decode("HELLO", &frame.payload)?;
        let wrong_cluster =
            (hello.cluster_id != self.config.cluster_id).then_some(hello.cluster_id);
        let frame = Frame::control(
            MsgType::Challenge,
            control::encode(&Challenge { nonce: self.nonce }),
        );
        Ok((
            AcceptorExpectAuth {
                config: self.config,
                nonce: self.nonce,
                wrong_cluster,
            },
            frame,
        ))
    }
}

impl AcceptorExpectAuth {
    /// Checks the dialer's cluster and proof; returns the WELCOME to send (the acceptor's proof
    /// and description).
    pub fn handle(self, frame: &Frame) -> Result<(AcceptorExpectIdentify, Frame), HandshakeError> {
        expect(frame, MsgType::Auth)?;
        let a: Auth = control::decode("AUTH", &frame.payload)?;
        let c = &self.config;
        // The proof is checked whatever the cluster verdict, so both refusals cost the same.
        let proof_ok = auth::verify(
            &c.secret,
            Role::Dialer,
            &c.cluster_id,
            &a.nonce,
            &self.nonce,
            &a.proof,
        );
        if let Some(peer) = self.wrong_cluster {
            return Err(HandshakeError::WrongCluster {
                peer,
                ours: c.cluster_id.clone(),
            });
        }
        if !proof_ok {
            return Err(HandshakeError::AuthFailed);
        }
        let proof = auth::proof(
            &c.secret,
            Role::Acceptor,
            &c.cluster_id,
            &a.nonce,
            &self.nonce,
        );
        let frame = Frame::control(
            MsgType::Welcome,
            control::encode(&Welcome {
                proof,
                node: c.node.clone(),
            }),
        );
        Ok((
            AcceptorExpectIdentify {
                config: self.config,
            },
            frame,
        ))
    }
}

impl AcceptorExpectIdentify {
    /// Reads the dialer's description; the handshake is complete.
    pub fn handle(self, frame: &Frame) -> Result<NodeInfo, HandshakeError> {
        expect(frame, MsgType::Identify)?;
        let i: Identify = control::decode("IDENTIFY", &frame.payload)?;
        i.node.validate()?;
        check_not_self(&self.config.node, &i.node)?;
        Ok(i.node)
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
    use crate::auth::{S1 as S, S2};
    use crate::control::TransportCap;

    fn cfg(node: &str, cluster: &str, secret: &str) -> HandshakeConfig {
        HandshakeConfig {
            cluster_id: cluster.into(),
            secret: ClusterSecret::new(secret.as_bytes()).unwrap(),
            node: NodeInfo {
                node_id: node.into(),
                instance: node.len() as u64,
                capabilities: vec![TransportCap::Tcp],
                max_payload_bytes: 1 << 20,
            },
        }
    }

    fn run(d: HandshakeConfig, a: HandshakeConfig) -> Result<(NodeInfo, NodeInfo), HandshakeError> {
        let (d1, hello) = DialerStart::new(d, [1; 32]).start();
        let (a1, challenge) = AcceptorStart::new(a, [2; 32]).handle(&hello)?;
        let (d2, auth) = d1.handle(&challenge)?;
        let (a2, welcome) = a1.handle(&auth)?;
        let (acceptor_info, identify) = d2.handle(&welcome)?;
        let dialer_info = a2.handle(&identify)?;
        Ok((dialer_info, acceptor_info))
    }

    /// What an attacker who knows only the cluster id gets back from an acceptor: the frames it
    /// sent in answer to a HELLO and an AUTH with a guessed proof, and the acceptor's verdict.
    fn probe(cluster: &str, acceptor_secret: &str) -> (Vec<Frame>, HandshakeError) {
        let (_, hello) = DialerStart::new(cfg("a", cluster, S2), [1; 32]).start();
        let (a1, challenge) = AcceptorStart::new(cfg("b", "c", acceptor_secret), [2; 32])
            .handle(&hello)
            .unwrap();
        let forged = Frame::control(
            MsgType::Auth,
            control::encode(&Auth {
                nonce: [9; 32],
                proof: [0; 32],
            }),
        );
        (vec![challenge], a1.handle(&forged).unwrap_err())
    }

    #[test]
    fn completes_with_same_secret() {
        let (d, a) = run(cfg("a", "c", S), cfg("bb", "c", S)).unwrap();
        assert_eq!(d.node_id, "a");
        assert_eq!(a.node_id, "bb");
    }

    #[test]
    fn dialer_proves_first_and_acceptor_emits_no_hmac_to_an_impostor() {
        let (sent, err) = probe("c", S);
        assert_eq!(err, HandshakeError::AuthFailed);
        // Only the CHALLENGE went out, and it is nothing but a nonce (32 bytes, no proof).
        assert_eq!(sent.len(), 1);
        let ch: Challenge = control::decode("CHALLENGE", &sent[0].payload).unwrap();
        assert_eq!(sent[0].payload.len(), ch.nonce.len());
    }

    #[test]
    fn wrong_cluster_and_wrong_secret_look_the_same_from_outside() {
        let (by_cluster, e1) = probe("another-cluster", S);
        let (by_secret, e2) = probe("c", S);
        // Same frames on the wire (same type, same length) up to the same point, then a close.
        let shape = |fs: &[Frame]| {
            fs.iter()
                .map(|f| (f.header.msg_type, f.payload.len()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&by_cluster), shape(&by_secret));
        // The local verdicts say precisely why.
        assert!(matches!(e1, HandshakeError::WrongCluster { .. }), "{e1}");
        assert_eq!(e2, HandshakeError::AuthFailed);
    }

    #[test]
    fn wrong_secret_fails_on_both_sides() {
        // The acceptor refuses a dialer with another secret...
        let err = run(cfg("a", "c", S), cfg("b", "c", S2)).unwrap_err();
        assert_eq!(err, HandshakeError::AuthFailed);
        // ...and a dialer refuses an acceptor whose WELCOME proof is forged.
        let (d1, hello) = DialerStart::new(cfg("a", "c", S), [1; 32]).start();
        let (a1, ch) = AcceptorStart::new(cfg("b", "c", S), [2; 32])
            .handle(&hello)
            .unwrap();
        let (d2, auth) = d1.handle(&ch).unwrap();
        a1.handle(&auth).unwrap();
        let forged = Frame::control(
            MsgType::Welcome,
            control::encode(&Welcome {
                proof: [0; 32],
                node: cfg("b", "c", S).node,
            }),
        );
        assert_eq!(d2.handle(&forged).unwrap_err(), HandshakeError::AuthFailed);
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
        assert_eq!(err, HandshakeError::PeerIncompatible { peer: 7, ours: 2 });
        assert!(err.to_string().contains("v7") && err.to_string().contains("v2"));
    }

    #[test]
    fn self_connection_detected() {
        let err = run(cfg("a", "c", S), cfg("a", "c", S)).unwrap_err();
        assert!(matches!(err, HandshakeError::SelfConnection(_)));
    }
}

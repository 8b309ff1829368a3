//! The bootstrap handshake over a TCP socket: drives the IO-free state structs of
//! `peercm_cm_proto::handshake` with a deadline, and turns every failure into a
//! [`HandshakeFailure`] that says what went wrong and whose fault it is.
//!
//! Until the peer has authenticated, frames are capped at 64 KiB (refused from the header, and
//! no buffer is sized from a length claim); the session's `max_payload_bytes` applies after.

use crate::codec::{CodecError, FrameCodec};
use futures::{SinkExt, StreamExt};
use peercm_cm_proto::control::NodeInfo;
use peercm_cm_proto::frame::FrameError;
use peercm_cm_proto::handshake::{
    self, AcceptorStart, DialerStart, HandshakeConfig, HandshakeError,
};
use peercm_cm_proto::Frame;
use rand::RngCore;
use std::time::Duration;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// Settings of a handshake on a socket.
#[derive(Debug, Clone)]
pub struct TcpHandshakeConfig {
    /// Identity and secret.
    pub handshake: HandshakeConfig,
    /// Largest frame payload accepted once the handshake is done (during it, 64 KiB).
    pub max_payload_bytes: u32,
    /// The whole handshake must finish within this.
    pub timeout: Duration,
}

/// A handshake did not complete.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The protocol said no (version, cluster, authentication, malformed message).
    #[error(transparent)]
    Protocol(#[from] HandshakeError),
    /// The bytes were not frames (or of another protocol version).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The socket failed.
    #[error("socket error during handshake: {0}")]
    Io(std::io::Error),
    /// The peer closed the connection mid-handshake (it may have refused us).
    #[error(
        "peer closed the connection during the handshake (wrong secret or cluster on one side?)"
    )]
    Closed,
    /// The peer took too long.
    #[error("handshake did not complete within {0:?}")]
    Timeout(Duration),
}

impl From<CodecError> for HandshakeFailure {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Frame(FrameError::UnsupportedVersion { peer, ours }) => {
                HandshakeFailure::Protocol(HandshakeError::PeerIncompatible { peer, ours })
            }
            CodecError::Frame(f) => HandshakeFailure::Frame(f),
            CodecError::Io(io) => HandshakeFailure::Io(io),
            CodecError::Truncated { .. } => HandshakeFailure::Closed,
        }
    }
}

impl From<std::io::Error> for HandshakeFailure {
    fn from(e: std::io::Error) -> Self {
        HandshakeFailure::Io(e)
    }
}

/// An authenticated, framed connection.
pub type FramedLink = Framed<TcpStream, FrameCodec>;

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

async fn next(framed: &mut FramedLink) -> Result<Frame, HandshakeFailure> {
    match framed.next().await {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => Err(e.into()),
        None => Err(HandshakeFailure::Closed),
    }
}

/// Runs the dialer side on a connected socket.
pub async fn dial(
    stream: TcpStream,
    cfg: &TcpHandshakeConfig,
) -> Result<(FramedLink, NodeInfo), HandshakeFailure> {
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::handshake());
    let run = async {
        let (state, hello) = DialerStart::new(cfg.handshake.clone(), nonce()).start();
        framed.send(hello).await?;
        let challenge = next(&mut framed).await?;
        let (state, auth) = state.handle(&challenge)?;
        framed.send(auth).await?;
        let welcome = next(&mut framed).await?;
        let (peer, identify) = state.handle(&welcome)?;
        framed.send(identify).await?;
        Ok::<_, HandshakeFailure>(peer)
    };
    let peer = tokio::time::timeout(cfg.timeout, run)
        .await
        .map_err(|_| HandshakeFailure::Timeout(cfg.timeout))??;
    // Authenticated: the session's limit from now on. The bytes already read stay buffered.
    *framed.codec_mut() = FrameCodec::new(cfg.max_payload_bytes);
    Ok((framed, peer))
}

/// Runs the acceptor side on an accepted socket. On a version mismatch the peer is told our
/// version; on any other failure the connection is closed without a word (an unauthenticated
/// peer learns nothing, and a wrong cluster id is refused at the same point as a wrong secret:
/// after AUTH).
pub async fn accept(
    stream: TcpStream,
    cfg: &TcpHandshakeConfig,
) -> Result<(FramedLink, NodeInfo), HandshakeFailure> {
    let _ = stream.set_nodelay(true);
    let mut framed = Framed::new(stream, FrameCodec::handshake());
    let run = async {
        let hello = match next(&mut framed).await {
            Err(HandshakeFailure::Protocol(HandshakeError::PeerIncompatible { peer, ours })) => {
                let _ = framed.send(handshake::refuse_version()).await;
                return Err(HandshakeError::PeerIncompatible { peer, ours }.into());
            }
            other => other?,
        };
        let (state, challenge) =
            AcceptorStart::new(cfg.handshake.clone(), nonce()).handle(&hello)?;
        framed.send(challenge).await?;
        let auth = next(&mut framed).await?;
        let (state, welcome) = state.handle(&auth)?;
        framed.send(welcome).await?;
        let identify = next(&mut framed).await?;
        let peer = state.handle(&identify)?;
        Ok::<_, HandshakeFailure>(peer)
    };
    let peer = tokio::time::timeout(cfg.timeout, run)
        .await
        .map_err(|_| HandshakeFailure::Timeout(cfg.timeout))??;
    // Authenticated: the session's limit from now on. The bytes already read stay buffered.
    *framed.codec_mut() = FrameCodec::new(cfg.max_payload_bytes);
    Ok((framed, peer))
}

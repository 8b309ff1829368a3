//! peercm's TCP transport: authenticated, framed TCP links to the partner.
//!
//! This crate owns sockets and nothing else: it dials and accepts TCP connections, runs the
//! IO-free bootstrap handshake from `peercm-cm-proto` over them, and turns each authenticated
//! connection into a *link*: a reader task that forwards decoded frames and a writer task that
//! batches frames onto the socket and reports what it wrote. Which frame goes on which link, and
//! what a lost link means, is decided by the session state machine in the manager.
//!
//! - [`codec`]: tokio-util `Decoder`/`Encoder` over the bounded proto frame decoder.
//! - [`handshake`]: the dialer and acceptor sides of the handshake on a socket, with a deadline.
//! - [`link`]: the reader and writer tasks of one established link.

pub mod codec;
pub mod handshake;
pub mod link;

pub use codec::{FrameCodec, LinkCodec};
pub use handshake::{accept, dial, HandshakeFailure, TcpHandshakeConfig};
pub use link::{spawn_link, LinkHandle, TcpLinkClosed, TcpLinkSink};

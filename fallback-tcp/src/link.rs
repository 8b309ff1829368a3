//! One established TCP link: a reader task forwarding decoded frames to the link's
//! [`TcpLinkSink`] (the manager) and a writer task batching frames onto the socket, control frames
//! (HEARTBEAT, ACK, NACK, FLOW) ahead of queued bulk ones
//! ([`peercm_cm_proto::link_queue`]), so a heartbeat never waits behind megabytes of DATA. Either task
//! ending closes the link; the sink hears exactly one [`TcpLinkSink::closed`] per link, with a
//! typed [`TcpLinkClosed`] reason.

use crate::codec::{CodecError, FrameCodec, LinkCodec};
use crate::handshake::FramedLink;
use futures::{SinkExt, StreamExt};
use peercm_cm_proto::frame::{FrameError, Header};
use peercm_cm_proto::frame_reader::Decoded;
use peercm_cm_proto::link_queue::{Lane, LinkQueue};
use peercm_cm_proto::session::{LinkId, LocalDone};
use peercm_cm_proto::Frame;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Most frames a writer puts on the socket before one flush.
const WRITE_BATCH_MAX: usize = 256;
/// A batch stops growing once it holds this many encoded bytes: a control frame queued while
/// a batch is written waits for at most this much bulk data (plus one frame) to go first.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// Why a TCP link closed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TcpLinkClosed {
    /// The partner closed the connection.
    #[error("closed by peer")]
    PeerClosed,
    /// The partner sent bytes that are not a valid frame; the link is no longer trusted.
    #[error("invalid frame: {0}")]
    InvalidFrame(FrameError),
    /// The partner closed the connection after sending part of a frame.
    #[error("peer closed the connection in the middle of a frame ({have} of {need} bytes)")]
    MidFrame {
        /// Bytes of the unfinished frame received.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// Reading from the socket failed.
    #[error("read error: {0}")]
    Read(std::io::Error),
    /// Writing to the socket failed.
    #[error("write error: {0}")]
    Write(CodecError),
    /// The [`LinkHandle`] was dropped: nobody sends on this link any more.
    #[error("writer dropped")]
    HandleDropped,
}

/// The consumer of one TCP link's events (the manager). The link's reader and writer tasks
/// each hold a clone and await its futures, so a slow consumer pushes back on the socket.
/// [`TcpLinkSink::closed`] is called exactly once, last.
pub trait TcpLinkSink: Clone + Send + Sync + 'static {
    /// A frame arrived. Resolves to false if the consumer is gone (the link then stops).
    fn frame(&self, frame: Frame) -> impl Future<Output = bool> + Send;
    /// A frame above `max_payload_bytes` arrived and was skipped (never buffered); here is its
    /// header, for the session to refuse that one message. Resolves to false if the consumer
    /// is gone.
    fn oversize(&self, header: Header) -> impl Future<Output = bool> + Send;
    /// The writer put frames totalling `bytes` encoded bytes on the socket; `local_done` are
    /// the local-model marks queued with them, in order. Resolves to false if the consumer
    /// is gone.
    fn written(&self, bytes: u64, local_done: Vec<LocalDone>) -> impl Future<Output = bool> + Send;
    /// The link is gone; nothing follows.
    fn closed(&self, reason: TcpLinkClosed) -> impl Future<Output = ()> + Send;
}

/// A frame queued for the writer.
#[derive(Debug)]
struct Outgoing {
    frame: Frame,
    local_done: Option<LocalDone>,
}

/// The manager's handle on a link.
#[derive(Debug)]
pub struct LinkHandle {
    /// Link id.
    pub id: LinkId,
    /// Remote address, for status output.
    pub remote: String,
    tx: mpsc::UnboundedSender<Outgoing>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl LinkHandle {
    /// Queues a frame, with the local-model send it completes once written; false if the
    /// writer is gone (the sink's `closed` is on its way).
    pub fn send(&self, frame: Frame, local_done: Option<LocalDone>) -> bool {
        self.tx.send(Outgoing { frame, local_done }).is_ok()
    }

    /// Tears the link down at once (both tasks aborted, socket dropped).
    pub fn abort(&self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Starts the reader and writer of an authenticated connection.
pub fn spawn_link<S: TcpLinkSink>(framed: FramedLink, id: LinkId, sink: S) -> LinkHandle {
    let remote = framed
        .get_ref()
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let parts = framed.into_parts();
    let (read_half, write_half) = parts.io.into_split();
    // Authenticated: from here an oversize frame is skipped and refused alone (the handshake
    // codec refused it outright).
    let link_codec = LinkCodec::new(parts.codec.max_payload_bytes());
    let mut reader = tokio_util::codec::FramedRead::new(read_half, link_codec);
    reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
    let mut writer = tokio_util::codec::FramedWrite::new(write_half, FrameCodec::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let closed_once = Arc::new(AtomicBool::new(false));

    let span = tracing::info_span!("link", id = id.get(), remote = %remote);
    let to_m = sink.clone();
    let once = closed_once.clone();
    let reader_task = tokio::spawn(
        async move {
            let reason = loop {
                match reader.next().await {
                    Some(Ok(Decoded::Frame(frame))) => {
                        if !to_m.frame(frame).await {
                            return;
                        }
                    }
                    Some(Ok(Decoded::Oversize(header))) => {
                        if !to_m.oversize(header).await {
                            return;
                        }
                    }
                    Some(Err(CodecError::Frame(e))) => {
                        tracing::warn!(error = %e, "closing link: peer sent an invalid frame");
                        break TcpLinkClosed::InvalidFrame(e);
                    }
                    Some(Err(CodecError::Io(e))) => break TcpLinkClosed::Read(e),
                    Some(Err(CodecError::Truncated { have, need })) => {
                        break TcpLinkClosed::MidFrame { have, need }
                    }
                    None => break TcpLinkClosed::PeerClosed,
                }
            };
            if !once.swap(true, Ordering::SeqCst) {
                to_m.closed(reason).await;
            }
        }
        .instrument(span.clone()),
    );
    let to_m = sink;
    let once = closed_once;
    let writer_task = tokio::spawn(
        async move {
            let mut queue = LinkQueue::new();
            let queue_up = |queue: &mut LinkQueue<Outgoing>, o: Outgoing| {
                queue.push(Lane::of(o.frame.header.msg_type), o);
            };
            let reason = loop {
                if queue.is_empty() {
                    let Some(first) = rx.recv().await else {
                        break TcpLinkClosed::HandleDropped;
                    };
                    queue_up(&mut queue, first);
                }
                // Everything queued so far competes for the next batch, control frames first.
                while let Ok(o) = rx.try_recv() {
                    queue_up(&mut queue, o);
                }
                let mut bytes = 0u64;
                let mut frames = 0usize;
                let mut local_done = Vec::new();
                let mut failed = None;
                while frames < WRITE_BATCH_MAX && bytes < WRITE_BATCH_BYTES as u64 {
                    let Some((_, o)) = queue.pop() else {
                        break;
                    };
                    frames += 1;
                    bytes += o.frame.encoded_len() as u64;
                    local_done.extend(o.local_done);
                    if let Err(e) = writer.feed(o.frame).await {
                        failed = Some(e);
                        break;
                    }
                }
                if failed.is_none() {
                    if let Err(e) = writer.flush().await {
                        failed = Some(e);
                    }
                }
                if let Some(e) = failed {
                    break TcpLinkClosed::Write(e);
                }
                if !to_m.written(bytes, local_done).await {
                    return;
                }
            };
            if !once.swap(true, Ordering::SeqCst) {
                to_m.closed(reason).await;
            }
        }
        .instrument(span),
    );
    LinkHandle {
        id,
        remote,
        tx,
        reader: reader_task,
        writer: writer_task,
    }
}

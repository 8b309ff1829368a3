//! One established TCP link: a reader task forwarding decoded frames to the manager and a writer
//! task batching frames onto the socket. Either task ending closes the link; the manager hears
//! exactly one [`LinkInput::Closed`] per link.

use crate::codec::{CodecError, FrameCodec};
use crate::handshake::FramedLink;
use futures::{SinkExt, StreamExt};
use peercm_cm_proto::session::{LinkId, LocalDone};
use peercm_cm_proto::Frame;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// Most frames a writer puts on the socket before one flush.
const WRITE_BATCH_MAX: usize = 256;

/// What a link tells the manager.
#[derive(Debug)]
pub enum LinkInput {
    /// A frame arrived.
    Frame {
        /// The link.
        link: LinkId,
        /// The frame.
        frame: Frame,
    },
    /// The writer put `bytes` on the socket; `local_done` are local-model sends it carried.
    Written {
        /// The link.
        link: LinkId,
        /// Bytes written.
        bytes: u64,
        /// Local-model sends now transmitted.
        local_done: Vec<LocalDone>,
    },
    /// The link is gone.
    Closed {
        /// The link.
        link: LinkId,
        /// Why, for the log.
        reason: String,
    },
}

/// A frame for the writer.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame.
    pub frame: Frame,
    /// Report this local-model send once written.
    pub local_done: Option<LocalDone>,
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
    /// Queues a frame; false if the writer is gone (the Closed input is on its way).
    pub fn send(&self, out: Outgoing) -> bool {
        self.tx.send(out).is_ok()
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
pub fn spawn_link(
    framed: FramedLink,
    id: LinkId,
    to_manager: mpsc::Sender<LinkInput>,
) -> LinkHandle {
    let remote = framed
        .get_ref()
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let parts = framed.into_parts();
    let (read_half, write_half) = parts.io.into_split();
    let mut reader = tokio_util::codec::FramedRead::new(read_half, parts.codec);
    reader.read_buffer_mut().extend_from_slice(&parts.read_buf);
    let mut writer = tokio_util::codec::FramedWrite::new(write_half, FrameCodec::default());
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let closed_once = Arc::new(AtomicBool::new(false));

    let span = tracing::info_span!("link", id = id.get(), remote = %remote);
    let to_m = to_manager.clone();
    let once = closed_once.clone();
    let reader_task = tokio::spawn(
        async move {
            let reason = loop {
                match reader.next().await {
                    Some(Ok(frame)) => {
                        if to_m
                            .send(LinkInput::Frame { link: id, frame })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some(Err(CodecError::Frame(e))) => {
                        tracing::warn!(error = %e, "closing link: peer sent an invalid frame");
                        break format!("invalid frame: {e}");
                    }
                    Some(Err(CodecError::Io(e))) => break format!("read error: {e}"),
                    None => break "closed by peer".to_string(),
                }
            };
            if !once.swap(true, Ordering::SeqCst) {
                let _ = to_m.send(LinkInput::Closed { link: id, reason }).await;
            }
        }
        .instrument(span.clone()),
    );
    let to_m = to_manager;
    let once = closed_once;
    let writer_task = tokio::spawn(
        async move {
            let mut batch = Vec::with_capacity(WRITE_BATCH_MAX);
            let reason = loop {
                let Some(first) = rx.recv().await else {
                    break "writer dropped".to_string();
                };
                batch.push(first);
                while batch.len() < WRITE_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(o) => batch.push(o),
                        Err(_) => break,
                    }
                }
                let mut bytes = 0u64;
                let mut local_done = Vec::new();
                let mut failed = None;
                for o in batch.drain(..) {
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
                    break format!("write error: {e}");
                }
                if to_m
                    .send(LinkInput::Written {
                        link: id,
                        bytes,
                        local_done,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            };
            if !once.swap(true, Ordering::SeqCst) {
                let _ = to_m.send(LinkInput::Closed { link: id, reason }).await;
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

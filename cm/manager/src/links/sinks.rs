//! The manager's implementations of the transports' sink traits: [`TcpSink`] for a TCP link's
//! reader and writer tasks (async, awaiting room on the manager's bounded channel) and
//! [`RdmaSink`] for an RDMA link's CQ-polling thread (blocking on the same channel). Both turn
//! what the link reports into [`LinkInput`], so slow processing pushes back on every transport.

use super::input::{LinkInput, LinkLoss};
use peercm_cm_proto::session::{LinkId, LocalDone};
use peercm_cm_proto::{Frame, Header};
use peercm_cm_rdma_link::{LinkCloseReason, LinkSink};
use peercm_fallback_tcp::{TcpLinkClosed, TcpLinkSink};
use tokio::sync::mpsc;

/// A TCP link's way into the manager task.
#[derive(Debug, Clone)]
pub(crate) struct TcpSink {
    /// The link.
    pub link: LinkId,
    /// The manager's link-input channel.
    pub tx: mpsc::Sender<LinkInput>,
    /// Fault injection (`Node::stall`): hold each frame read until then.
    #[cfg(feature = "fault-injection")]
    pub held: tokio::sync::watch::Receiver<Option<std::time::Instant>>,
}

impl TcpLinkSink for TcpSink {
    async fn frame(&self, frame: Frame) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            let held = *self.held.borrow();
            if let Some(until) = held.filter(|u| *u > std::time::Instant::now()) {
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
            }
        }
        let input = LinkInput::Frame {
            link: self.link,
            frame,
        };
        self.tx.send(input).await.is_ok()
    }

    async fn oversize(&self, header: Header) -> bool {
        let input = LinkInput::Oversize {
            link: self.link,
            header,
        };
        self.tx.send(input).await.is_ok()
    }

    async fn written(&self, bytes: u64, local_done: Vec<LocalDone>) -> bool {
        let input = LinkInput::Written {
            link: self.link,
            bytes,
            local_done,
        };
        self.tx.send(input).await.is_ok()
    }

    async fn closed(&self, reason: TcpLinkClosed) {
        let input = LinkInput::Closed {
            link: self.link,
            reason: LinkLoss::Tcp(reason),
        };
        let _ = self.tx.send(input).await;
    }
}

/// An RDMA link's way into the manager task. Called on the link's own thread, so it may block
/// on the manager's bounded channel (back-pressure).
pub(crate) struct RdmaSink {
    /// The link.
    pub link: LinkId,
    /// The manager's link-input channel.
    pub tx: mpsc::Sender<LinkInput>,
}

impl LinkSink for RdmaSink {
    fn frame(&mut self, frame: Frame) -> bool {
        self.tx
            .blocking_send(LinkInput::Frame {
                link: self.link,
                frame,
            })
            .is_ok()
    }

    fn oversize(&mut self, header: Header) -> bool {
        self.tx
            .blocking_send(LinkInput::Oversize {
                link: self.link,
                header,
            })
            .is_ok()
    }

    fn written(&mut self, bytes: u64, local_done: Vec<LocalDone>) {
        let _ = self.tx.blocking_send(LinkInput::Written {
            link: self.link,
            bytes,
            local_done,
        });
    }

    fn closed(&mut self, reason: LinkCloseReason) {
        let _ = self.tx.blocking_send(LinkInput::Closed {
            link: self.link,
            reason: LinkLoss::Rdma(reason),
        });
    }
}

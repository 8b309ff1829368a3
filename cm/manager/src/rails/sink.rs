//! [`ManagerSink`]: how an RDMA link's thread hands frames, completions and its close to the
//! manager task, as the same link input a TCP link produces.

use peercm_cm_proto::session::{LinkId, LocalDone};
use peercm_cm_rdma_link::{LinkCloseReason, LinkSink};
use peercm_fallback_tcp::LinkInput;
use tokio::sync::mpsc;

/// Hands an RDMA link's frames, completions and close to the manager task. Called on the
/// link's own thread, so it may block on the manager's bounded channel (back-pressure).
pub(crate) struct ManagerSink {
    pub link: LinkId,
    pub tx: mpsc::Sender<LinkInput>,
}

impl LinkSink for ManagerSink {
    fn frame(&mut self, frame: peercm_cm_proto::Frame) -> bool {
        self.tx
            .blocking_send(LinkInput::Frame {
                link: self.link,
                frame,
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
            reason: reason.to_string(),
        });
    }
}

//! The link's CQ-polling thread: waits on the completion channel (bounded, so it notices a
//! close request; after a stretch of busy polling while few requests are in flight, when
//! configured), reposts receives as soon as it sees them consumed, decodes frames out of the
//! ring, applies returned credit (posting frames that waited for it), returns credit in
//! batches (and less than a batch once it has been owed a while), and reports everything to
//! the sink -- never holding a lock while calling it. Any error completion, protocol violation
//! or close request ends the loop: the queue pair goes to ERR, the sink hears `closed` once,
//! then the ring is deregistered (which may block in the kernel; the sink has heard already).

use crate::credit::{CreditOwed, Imm};
use crate::error::{LinkCloseReason, RequestKind};
use crate::link::{Core, Shared};
use crate::ring::RecvRing;
use crate::sink::LinkSink;
use crate::stats::bump;
use crate::wrid;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::Sender;
use peercm_cm_proto::frame::{FrameDecoder, HEADER_LEN};
use peercm_cm_proto::frame_reader::{Decoded, FrameReader};
use peercm_verbs_shim::{
    CompletionQueue, MemoryRegion, RecvWr, Sge, WcOpcode, WcStatus, WorkCompletion,
};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most completions taken per wait.
const POLL_BATCH: usize = 64;

/// Busy polling spins only while at most this many send-queue entries are in flight.
const BUSY_POLL_MAX_IN_FLIGHT: u32 = 4;

/// Bytes of the scratch buffer every receive names (WRITE_WITH_IMM puts nothing there).
pub(crate) const SCRATCH_BYTES: u32 = 16;

/// Everything the thread owns.
pub(crate) struct Worker {
    pub sh: Arc<Shared>,
    pub cq: Arc<dyn CompletionQueue>,
    pub scratch: Arc<dyn MemoryRegion>,
    pub sink: Box<dyn LinkSink>,
    pub rx: RecvRing,
    pub owed: CreditOwed,
    pub decoder: FrameDecoder,
    pub wait: Duration,
    pub probe: Option<Duration>,
    /// How long to busy-poll while the link is busy before blocking (`None`: never).
    pub busy_poll: Option<Duration>,
    /// How long credit smaller than a batch may stay owed.
    pub credit_idle: Duration,
    /// Since when credit has been owed (`None`: none is).
    pub owed_since: Option<Instant>,
    /// When the last completion was handled (the link is busy for `busy_poll` after it).
    pub last_completion: Instant,
    /// A credit was due but the send queue was full: wait for a send completion.
    pub credit_deferred: bool,
    /// Dropped when the thread ends, which wakes [`crate::RdmaLink::wait_closed`].
    pub _done: Sender<()>,
    pub span: tracing::Span,
}

/// If the thread unwinds (a panicking sink), the link still stops: sends are refused and the
/// queue pair goes to ERR so the partner notices.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .request_close(LinkCloseReason::Other("the link thread panicked".into()));
        }
    }
}

fn protocol(what: impl Into<String>) -> LinkCloseReason {
    LinkCloseReason::Protocol(what.into())
}

impl Worker {
    /// The thread's body.
    pub(crate) fn run(mut self) {
        let span = self.span.clone();
        let _entered = span.enter();
        let _guard = PanicGuard(self.sh.clone());
        tracing::debug!("link thread started");
        let reason = self.serve();
        self.shutdown(reason);
    }

    fn serve(&mut self) -> LinkCloseReason {
        loop {
            if let Some(reason) = self.sh.requested() {
                return reason;
            }
            // Credit smaller than a batch goes back once it has been owed `credit_idle`.
            let now = Instant::now();
            let credit_at = if self.owed.any() && !self.credit_deferred {
                Some(*self.owed_since.get_or_insert(now) + self.credit_idle)
            } else {
                None
            };
            let base = self.probe.map_or(self.wait, |p| p.min(self.wait));
            let timeout = credit_at.map_or(base, |at| at.saturating_duration_since(now).min(base));
            let wcs = match self.busy_poll_then_wait(timeout) {
                Ok(wcs) => wcs,
                Err(e) => return LinkCloseReason::Verbs(format!("waiting on the CQ: {e}")),
            };
            let step = if wcs.is_empty() {
                self.idle(credit_at.is_some_and(|at| Instant::now() >= at))
            } else {
                self.handle(&wcs)
            };
            if let Err(reason) = step {
                return reason;
            }
        }
    }

    /// Completions: polled while the link is busy (see [`crate::RdmaLinkConfig::busy_poll_us`]),
    /// else waited for on the completion channel up to `timeout`.
    fn busy_poll_then_wait(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<WorkCompletion>, peercm_verbs_shim::VerbsError> {
        if let Some(budget) = self.busy_poll.filter(|_| !timeout.is_zero()) {
            let start = Instant::now();
            loop {
                let wcs = self.cq.poll(POLL_BATCH)?;
                if !wcs.is_empty() {
                    self.last_completion = Instant::now();
                    bump(&self.sh.stats.busy_poll_hits, 1);
                    return Ok(wcs);
                }
                let now = Instant::now();
                // Spin for a latency-bound exchange only: a few requests of its own in flight
                // (a write and its marker, a frame), or none but traffic within the budget
                // (the next request is probably coming). With more in flight, completions
                // come in batches and blocking costs little; spinning would take the CPU from
                // the producer and, on rdma_rxe, from the kernel doing the work.
                let busy = {
                    let core = self.sh.lock_core();
                    let in_flight = core.sq_used();
                    in_flight <= BUSY_POLL_MAX_IN_FLIGHT
                        && (in_flight > 0
                            || now.saturating_duration_since(
                                core.last_post.max(self.last_completion),
                            ) < budget)
                };
                if !busy
                    || now.saturating_duration_since(start) >= budget
                    || self.sh.closing.load(Ordering::SeqCst)
                {
                    break;
                }
                std::thread::yield_now();
            }
        }
        let wcs = self.cq.wait(POLL_BATCH, timeout)?;
        if !wcs.is_empty() {
            self.last_completion = Instant::now();
        }
        Ok(wcs)
    }

    /// Nothing completed: return owed credit, or probe a link that has been quiet too long.
    fn idle(&mut self, idle_credit: bool) -> Result<(), LinkCloseReason> {
        let sh = self.sh.clone();
        let mut core = sh.lock_core();
        if idle_credit {
            return self.return_credit(&mut core);
        }
        if let Some(p) = self.probe {
            if core.sq_used() == 0 && core.last_post.elapsed() >= p {
                sh.post_probe(&mut core)?;
            }
        }
        Ok(())
    }

    fn return_credit(&mut self, core: &mut Core) -> Result<(), LinkCloseReason> {
        if !self.owed.any() {
            return Ok(());
        }
        if self.sh.post_credit(core, self.owed.msgs())? {
            self.owed.reset();
            self.owed_since = None;
            self.credit_deferred = false;
        } else {
            self.credit_deferred = true;
        }
        Ok(())
    }

    /// One batch of completions, in order.
    fn handle(&mut self, wcs: &[WorkCompletion]) -> Result<(), LinkCloseReason> {
        let mut frames: Vec<Decoded> = Vec::new();
        let mut data_done: Vec<u64> = Vec::new();
        let mut writes_done: Vec<u64> = Vec::new();
        let mut other_done = 0u32;
        let mut credits = 0u64;
        let mut failure: Option<LinkCloseReason> = None;
        for (i, wc) in wcs.iter().enumerate() {
            if wc.status != WcStatus::Success {
                failure = Some(self.failure_reason(&wcs[i..]));
                break;
            }
            let (kind, n) = wrid::decode(wc.wr_id);
            match kind {
                RequestKind::Receive => match self.on_receive(wc, &mut credits) {
                    Ok(Some(frame)) => frames.push(frame),
                    Ok(None) => {}
                    Err(reason) => {
                        failure = Some(reason);
                        break;
                    }
                },
                RequestKind::Data => data_done.push(n),
                RequestKind::OneSidedWrite => writes_done.push(n),
                RequestKind::Credit | RequestKind::Probe => other_done += 1,
                RequestKind::Unknown => {
                    failure = Some(protocol(format!(
                        "completion for a work request this link never posted ({:#x})",
                        wc.wr_id
                    )));
                    break;
                }
            }
        }

        // The send side's books, under the send lock (briefly: no sink calls in here).
        let mut written_bytes = 0u64;
        let mut written_frames = 0u64;
        let mut local_done = Vec::new();
        let (mut writes, mut write_bytes) = (0u64, 0u64);
        {
            let sh = self.sh.clone();
            let mut core = sh.lock_core();
            core.other_outstanding = core.other_outstanding.saturating_sub(other_done);
            if other_done > 0 || !data_done.is_empty() || !writes_done.is_empty() {
                self.credit_deferred = false;
            }
            for seq in writes_done {
                match core.write_completed(seq) {
                    Ok(len) => {
                        writes += 1;
                        write_bytes += len;
                    }
                    Err(reason) => {
                        failure.get_or_insert(reason);
                        break;
                    }
                }
            }
            for seq in data_done {
                match core.window.complete(seq) {
                    Ok(c) => {
                        written_bytes += c.len;
                        written_frames += 1;
                        local_done.extend(c.tag);
                    }
                    Err(e) => {
                        failure.get_or_insert_with(|| protocol(e.to_string()));
                        break;
                    }
                }
            }
            if credits > 0 {
                if let Err(e) = core.window.credit(credits) {
                    failure.get_or_insert_with(|| protocol(e.to_string()));
                }
            }
            if failure.is_none() {
                if let Err(reason) = sh.pump(&mut core) {
                    failure = Some(reason);
                } else if self.owed.due() {
                    if let Err(reason) = self.return_credit(&mut core) {
                        failure = Some(reason);
                    }
                }
            }
        }
        bump(&self.sh.stats.frames_sent, written_frames);
        bump(&self.sh.stats.bytes_sent, written_bytes);
        bump(&self.sh.stats.writes_sent, writes);
        bump(&self.sh.stats.write_bytes_sent, write_bytes);

        // Deliver, lock-free, unless a close was requested meanwhile.
        for decoded in frames {
            if self.sh.closing.load(Ordering::SeqCst) {
                break;
            }
            let (len, taken) = match decoded {
                Decoded::Frame(frame) => (frame.encoded_len() as u64, self.sink.frame(frame)),
                Decoded::Oversize(header) => (
                    HEADER_LEN as u64 + u64::from(header.len),
                    self.sink.oversize(header),
                ),
            };
            if !taken {
                return Err(LinkCloseReason::SinkGone);
            }
            bump(&self.sh.stats.frames_received, 1);
            bump(&self.sh.stats.bytes_received, len);
        }
        if written_bytes > 0 && !self.sh.closing.load(Ordering::SeqCst) {
            self.sink.written(written_bytes, local_done);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Why the link fails, given the completions from the first error on: a recorded close
    /// request or fence first, else the first error that is not a flush (the cause), else the
    /// first flush.
    fn failure_reason(&self, rest: &[WorkCompletion]) -> LinkCloseReason {
        if let Some(reason) = self.sh.requested() {
            return reason;
        }
        if self.sh.fenced.load(Ordering::SeqCst) {
            return LinkCloseReason::Fenced;
        }
        let errors = || rest.iter().filter(|wc| wc.status != WcStatus::Success);
        match errors()
            .find(|wc| wc.status != WcStatus::WrFlushErr)
            .or_else(|| errors().next())
        {
            Some(wc) => LinkCloseReason::Completion {
                status: wc.status,
                wr_id: wc.wr_id,
                request: wrid::decode(wc.wr_id).0,
            },
            None => protocol("failure without an error completion"),
        }
    }

    /// A receive completed: repost it, then act on the immediate.
    fn on_receive(
        &mut self,
        wc: &WorkCompletion,
        credits: &mut u64,
    ) -> Result<Option<Decoded>, LinkCloseReason> {
        self.sh
            .qp()
            .post_recv(RecvWr {
                wr_id: wc.wr_id,
                local: Sge {
                    mr: self.scratch.clone(),
                    offset: 0,
                    len: SCRATCH_BYTES,
                },
            })
            .map_err(|e| LinkCloseReason::Verbs(format!("reposting a receive: {e}")))?;
        if wc.opcode != WcOpcode::RecvRdmaWithImm {
            return Err(protocol(format!(
                "expected a WRITE_WITH_IMM, the partner sent {:?} ({} bytes)",
                wc.opcode, wc.byte_len
            )));
        }
        let Some(imm) = wc.imm else {
            return Err(protocol("a WRITE_WITH_IMM without an immediate"));
        };
        match Imm::decode(imm).map_err(|e| protocol(e.to_string()))? {
            Imm::Credit { msgs } => {
                if wc.byte_len != 0 {
                    return Err(protocol(format!(
                        "a credit message carried {} bytes",
                        wc.byte_len
                    )));
                }
                *credits += u64::from(msgs);
                bump(&self.sh.stats.credit_msgs_received, 1);
                Ok(None)
            }
            Imm::Data { len } => self.read_frame(len, wc.byte_len).map(Some),
        }
    }

    /// Copies the frame the immediate announced out of the ring and decodes it.
    fn read_frame(&mut self, len: u32, byte_len: u32) -> Result<Decoded, LinkCloseReason> {
        if byte_len != len {
            return Err(protocol(format!(
                "the immediate announces {len} bytes, the WRITE carried {byte_len}"
            )));
        }
        let at = self
            .rx
            .accept(u64::from(len))
            .map_err(|e| protocol(format!("data message: {e}")))?;
        let offset = usize::try_from(at.offset).unwrap_or(usize::MAX);
        let bytes = self
            .sh
            .ring
            .read(offset, len as usize)
            .map_err(|e| LinkCloseReason::Verbs(format!("reading the receive ring: {e}")))?;
        // Copied out: the partner may reuse the space once credit goes back.
        self.owed.consumed(at.footprint);
        if at.wrapped {
            bump(&self.sh.stats.ring_wraps_received, 1);
        }
        let mut buf = BytesMut::from(Bytes::from(bytes));
        // A frame above our limit that the partner wrote anyway (it is whole in the ring) is
        // skipped like on TCP: refused alone, the link stays.
        match FrameReader::new(self.decoder.max_payload_bytes()).decode(&mut buf) {
            Ok(Some(decoded)) if buf.is_empty() => Ok(decoded),
            Ok(Some(_)) => Err(protocol(format!(
                "a {len}-byte data message holds a shorter frame ({} bytes left over)",
                buf.len()
            ))),
            Ok(None) => Err(protocol(format!(
                "a {len}-byte data message holds an incomplete frame"
            ))),
            Err(e) => Err(LinkCloseReason::Decode(e)),
        }
    }

    /// Closes: refuse sends, drop queued frames, QP to ERR, deregister the ring, tell the sink.
    fn shutdown(mut self, reason: LinkCloseReason) {
        let reason = self.sh.settle(reason);
        self.sh.closing.store(true, Ordering::SeqCst);
        let dropped = {
            let mut core = self.sh.lock_core();
            core.closed = true;
            core.pending.clear()
        };
        {
            let mut qp = self.sh.qp.write().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = qp.to_error() {
                tracing::debug!(error = %e, "moving the QP to ERR");
            }
        }
        *self
            .sh
            .final_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        tracing::info!(%reason, queued_frames_dropped = dropped, "RDMA link closed");
        self.sink.closed(reason);
        // After telling the sink: deregistering can block in the kernel (rdma_rxe waits for
        // packets still held up), and the link's owner must hear of the loss regardless.
        if let Err(e) = self.sh.ring.deregister() {
            tracing::warn!(error = %e, "deregistering the receive ring");
        }
    }
}

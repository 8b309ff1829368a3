//! [`RdmaLink`], the manager's handle on a connected link, and the state it shares with the
//! link's CQ-polling thread ([`crate::worker`]).
//!
//! Sending never blocks: [`RdmaLink::send`] encodes the frame, then, under the short send
//! lock, queues it behind any frames already waiting (control frames -- HEARTBEAT, ACK, NACK,
//! FLOW -- ahead of bulk ones: [`peercm_cm_proto::link_queue`]) and posts as many queued frames
//! as the credit window, the partner's ring and the send queue allow. Each one is copied into the
//! staging region at the offset it will have in the partner's ring and written from there
//! with one WRITE_WITH_IMM, in order. Frames that must wait are posted by the link thread as
//! credit comes back. All posting of data happens under that one lock, so the ring layout and
//! the queue pair's order are the same. A frame carrying a one-sided write
//! ([`crate::one_sided`]) is posted as two requests, the RDMA WRITE of its data (copied into the
//! write-staging region) and then the frame, once the window, the ring, the write-staging
//! region and the send queue all have room for them.

use crate::credit::{Imm, SendWindow};
use crate::endpoint::LocalEndpoint;
use crate::error::{LinkCloseReason, RdmaLinkError, RequestKind, SendError};
use crate::one_sided::OneSided;
use crate::staging::StagingAlloc;
use crate::stats::{bump, Counters, LinkStats};
use crate::wrid;
use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use peercm_cm_proto::link_queue::{Lane, LinkQueue};
use peercm_cm_proto::session::{LinkId, LocalDone};
use peercm_cm_proto::Frame;
use peercm_verbs_shim::{MemoryRegion, QueuePair, RemoteMr, SendWr, Sge};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// An encoded frame waiting for credit, with the one-sided write that goes before it.
pub(crate) struct Pending {
    bytes: Bytes,
    local_done: Option<LocalDone>,
    write: Option<OneSided>,
}

/// A one-sided RDMA WRITE posted and not completed yet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriteInflight {
    seq: u64,
    len: u64,
    footprint: u64,
}

/// A one-sided write's completion that does not match the oldest one posted (the queue pair
/// completes in order, so this is a bug or a confused HCA).
pub(crate) fn write_out_of_order(got: u64, expected: Option<u64>) -> LinkCloseReason {
    LinkCloseReason::Protocol(format!(
        "one-sided write completion {got}, expected {expected:?}"
    ))
}

/// The send side's books, under the send lock.
pub(crate) struct Core {
    /// Data messages in flight and the partner's ring.
    pub window: SendWindow<Option<LocalDone>>,
    /// Frames waiting for credit: control frames first, each lane in order.
    pub pending: LinkQueue<Pending>,
    /// Credit and probe WRITEs not completed yet.
    pub other_outstanding: u32,
    /// Counter for credit and probe request ids.
    pub next_other: u64,
    /// The write-staging region's books.
    pub staging: StagingAlloc,
    /// One-sided WRITEs posted and not completed, oldest first.
    pub writes: VecDeque<WriteInflight>,
    /// Counter for one-sided write request ids.
    pub next_write: u64,
    /// Whether the head of `pending` is waiting for write-staging space (for counting stalls).
    pub write_stalled: bool,
    /// Whether the head of `pending` is waiting for credit (for counting stalls).
    pub stalled: bool,
    /// When anything was last posted (for probes).
    pub last_post: Instant,
    /// No more posting.
    pub closed: bool,
}

impl Core {
    pub(crate) fn new(window: SendWindow<Option<LocalDone>>, write_staging_bytes: u64) -> Self {
        Core {
            window,
            pending: LinkQueue::new(),
            other_outstanding: 0,
            next_other: 0,
            staging: StagingAlloc::new(write_staging_bytes),
            writes: VecDeque::new(),
            next_write: 0,
            write_stalled: false,
            stalled: false,
            last_post: Instant::now(),
            closed: false,
        }
    }

    /// Send-queue entries in use: data frames, one-sided writes, credit and probes not
    /// completed yet.
    pub(crate) fn sq_used(&self) -> u32 {
        u32::try_from(self.window.uncompleted())
            .unwrap_or(u32::MAX)
            .saturating_add(u32::try_from(self.writes.len()).unwrap_or(u32::MAX))
            .saturating_add(self.other_outstanding)
    }

    /// The one-sided WRITE `seq` completed: frees its staging space; returns its data length.
    pub(crate) fn write_completed(&mut self, seq: u64) -> Result<u64, LinkCloseReason> {
        let expected = self.writes.front().map(|w| w.seq);
        if expected != Some(seq) {
            return Err(write_out_of_order(seq, expected));
        }
        let Some(w) = self.writes.pop_front() else {
            return Err(write_out_of_order(seq, None));
        };
        self.staging
            .release(w.footprint)
            .map_err(|e| LinkCloseReason::Protocol(format!("write staging: {e}")))?;
        Ok(w.len)
    }
}

/// What the handle and the link thread share.
pub(crate) struct Shared {
    pub id: LinkId,
    pub device: String,
    pub core: Mutex<Core>,
    pub qp: RwLock<Box<dyn QueuePair>>,
    /// Our receive ring (the partner writes into it).
    pub ring: Arc<dyn MemoryRegion>,
    /// Our staging copy of the partner's ring.
    pub staging: Arc<dyn MemoryRegion>,
    /// Where one-sided writes' data is copied before it is written (none when they are off).
    pub write_staging: Option<Arc<dyn MemoryRegion>>,
    pub remote: LocalEndpoint,
    pub max_frame_bytes: usize,
    pub max_send_wr: u32,
    /// Set once a close is requested or under way: sends are refused.
    pub closing: AtomicBool,
    /// Set once the receive ring has been fenced.
    pub fenced: AtomicBool,
    requested: Mutex<Option<LinkCloseReason>>,
    /// The reason reported to the sink, once it has been.
    pub final_reason: Mutex<Option<LinkCloseReason>>,
    pub stats: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the books consistent before it can panic (panics are
    // bugs anyway); keep going rather than poison the whole link.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn verbs_reason(what: &str, e: impl std::fmt::Display) -> LinkCloseReason {
    LinkCloseReason::Verbs(format!("{what}: {e}"))
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: LinkId,
        device: String,
        core: Core,
        qp: Box<dyn QueuePair>,
        ring: Arc<dyn MemoryRegion>,
        staging: Arc<dyn MemoryRegion>,
        write_staging: Option<Arc<dyn MemoryRegion>>,
        remote: LocalEndpoint,
        max_frame_bytes: usize,
        max_send_wr: u32,
    ) -> Self {
        Shared {
            id,
            device,
            core: Mutex::new(core),
            qp: RwLock::new(qp),
            ring,
            staging,
            write_staging,
            remote,
            max_frame_bytes,
            max_send_wr,
            closing: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
            requested: Mutex::new(None),
            final_reason: Mutex::new(None),
            stats: Counters::default(),
        }
    }

    pub(crate) fn lock_core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    pub(crate) fn qp(&self) -> RwLockReadGuard<'_, Box<dyn QueuePair>> {
        self.qp.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn remote_ring(&self) -> RemoteMr {
        self.remote.ring
    }

    /// The close reason requested so far, if any.
    pub(crate) fn requested(&self) -> Option<LinkCloseReason> {
        lock(&self.requested).clone()
    }

    /// Records `reason` unless a reason is already recorded; returns the one that stands
    /// (the first cause wins).
    pub(crate) fn settle(&self, reason: LinkCloseReason) -> LinkCloseReason {
        lock(&self.requested).get_or_insert(reason).clone()
    }

    /// Stops sending and moves the queue pair to the error state: everything posted flushes,
    /// which wakes the link thread at once; it then closes with the first recorded reason.
    pub(crate) fn request_close(&self, reason: LinkCloseReason) {
        let reason = self.settle(reason);
        if self.closing.swap(true, Ordering::SeqCst) {
            return;
        }
        tracing::debug!(link = self.id.get(), %reason, "close requested");
        lock(&self.core).closed = true;
        let mut qp = self.qp.write().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = qp.to_error() {
            tracing::debug!(link = self.id.get(), error = %e, "moving the QP to ERR");
        }
    }

    fn post(&self, wr: SendWr) -> Result<(), LinkCloseReason> {
        self.qp()
            .post_send(wr)
            .map_err(|e| verbs_reason("posting a send", e))
    }

    /// Posts queued frames while the window, the ring, the write-staging region and the send
    /// queue allow.
    pub(crate) fn pump(&self, core: &mut Core) -> Result<(), LinkCloseReason> {
        // Everything this call posts goes in one list: one doorbell (a write's RDMA WRITE and
        // its frame, a burst of frames).
        let mut wrs = Vec::new();
        let res = self.pump_into(core, &mut wrs);
        if !wrs.is_empty() {
            self.qp()
                .post_send_list(wrs)
                .map_err(|e| verbs_reason("posting a send", e))?;
            core.last_post = Instant::now();
        }
        res
    }

    fn pump_into(&self, core: &mut Core, wrs: &mut Vec<SendWr>) -> Result<(), LinkCloseReason> {
        while !core.closed && core.sq_used() < self.max_send_wr {
            let Some((lane, p)) = core.pending.pop() else {
                core.stalled = false;
                core.write_stalled = false;
                break;
            };
            let Pending {
                bytes,
                local_done,
                write,
            } = p;
            // A write takes two send-queue entries: its RDMA WRITE and the frame.
            let need = if write.is_some() { 2 } else { 1 };
            let sq_full = core.sq_used().saturating_add(need) > self.max_send_wr;
            let staged = match &write {
                Some(w) => core
                    .staging
                    .peek(w.data.len() as u64)
                    .map_err(|e| LinkCloseReason::Protocol(format!("write staging: {e}")))?
                    .is_some(),
                None => true,
            };
            if sq_full || !staged {
                if !staged && !core.write_stalled {
                    core.write_stalled = true;
                    bump(&self.stats.write_stalls, 1);
                }
                core.pending.push_front(
                    lane,
                    Pending {
                        bytes,
                        local_done,
                        write,
                    },
                );
                break;
            }
            core.write_stalled = false;
            let len = bytes.len() as u64;
            let (seq, at) = match core.window.try_push(len, local_done) {
                Ok(placed) => placed,
                Err((_, local_done)) => {
                    core.pending.push_front(
                        lane,
                        Pending {
                            bytes,
                            local_done,
                            write,
                        },
                    );
                    if !core.stalled {
                        core.stalled = true;
                        bump(&self.stats.credit_stalls, 1);
                    }
                    break;
                }
            };
            core.stalled = false;
            if let Some(w) = write {
                wrs.push(self.stage_one_sided(core, w)?);
            }
            let len32 = u32::try_from(len).unwrap_or(u32::MAX);
            let imm = Imm::Data { len: len32 }
                .encode()
                .map_err(|e| LinkCloseReason::Protocol(format!("data immediate: {e}")))?;
            let offset = usize::try_from(at.offset).unwrap_or(usize::MAX);
            self.staging
                .write(offset, &bytes)
                .map_err(|e| verbs_reason("copying a frame into the staging region", e))?;
            wrs.push(SendWr::Write {
                wr_id: wrid::encode(RequestKind::Data, seq),
                local: Sge {
                    mr: self.staging.clone(),
                    offset: at.offset,
                    len: len32,
                },
                remote: self.remote_ring(),
                remote_offset: at.offset,
                imm: Some(imm),
            });
            if at.wrapped {
                bump(&self.stats.ring_wraps_sent, 1);
            }
        }
        Ok(())
    }

    /// Copies a one-sided write's data into the write-staging region and books it; its RDMA
    /// WRITE, for the caller to post (it checked that the space and a send-queue entry are
    /// free).
    fn stage_one_sided(&self, core: &mut Core, w: OneSided) -> Result<SendWr, LinkCloseReason> {
        let len = w.data.len() as u64;
        let staging_err =
            |what: String| LinkCloseReason::Protocol(format!("write staging: {what}"));
        let Some(mr) = self.write_staging.clone() else {
            return Err(staging_err("no write-staging region".into()));
        };
        let Some(slot) = core
            .staging
            .reserve(len)
            .map_err(|e| staging_err(e.to_string()))?
        else {
            return Err(staging_err(format!("no room for {len} bytes after all")));
        };
        let offset = usize::try_from(slot.offset).unwrap_or(usize::MAX);
        mr.write(offset, &w.data)
            .map_err(|e| verbs_reason("copying a write into the write-staging region", e))?;
        let seq = core.next_write;
        core.next_write += 1;
        core.writes.push_back(WriteInflight {
            seq,
            len,
            footprint: slot.footprint,
        });
        Ok(SendWr::Write {
            wr_id: wrid::encode(RequestKind::OneSidedWrite, seq),
            local: Sge {
                mr,
                offset: slot.offset,
                len: u32::try_from(len).unwrap_or(u32::MAX),
            },
            remote: w.remote,
            remote_offset: w.remote_offset,
            imm: None,
        })
    }

    /// Posts a zero-length WRITE_WITH_IMM returning credit for `msgs` data messages; false if
    /// the send queue is full (try again after a send completion).
    pub(crate) fn post_credit(&self, core: &mut Core, msgs: u32) -> Result<bool, LinkCloseReason> {
        if core.closed || core.sq_used() >= self.max_send_wr {
            return Ok(false);
        }
        let imm = Imm::Credit { msgs }
            .encode()
            .map_err(|e| LinkCloseReason::Protocol(format!("credit immediate: {e}")))?;
        self.post_empty_write(core, RequestKind::Credit, Some(imm))?;
        bump(&self.stats.credit_msgs_sent, 1);
        Ok(true)
    }

    /// Posts a zero-length RDMA WRITE (with `imm`, a WRITE_WITH_IMM) at the ring's offset 0.
    fn post_empty_write(
        &self,
        core: &mut Core,
        kind: RequestKind,
        imm: Option<u32>,
    ) -> Result<(), LinkCloseReason> {
        let n = core.next_other;
        core.next_other += 1;
        self.post(SendWr::Write {
            wr_id: wrid::encode(kind, n),
            local: Sge {
                mr: self.staging.clone(),
                offset: 0,
                len: 0,
            },
            remote: self.remote_ring(),
            remote_offset: 0,
            imm,
        })?;
        core.other_outstanding += 1;
        core.last_post = Instant::now();
        Ok(())
    }

    /// Posts a zero-length RDMA WRITE (no immediate, consumes nothing at the partner) so a
    /// silent partner surfaces as a completion error.
    pub(crate) fn post_probe(&self, core: &mut Core) -> Result<(), LinkCloseReason> {
        if core.closed || core.sq_used() >= self.max_send_wr {
            return Ok(());
        }
        self.post_empty_write(core, RequestKind::Probe, None)?;
        bump(&self.stats.probes_sent, 1);
        Ok(())
    }
}

/// A connected RDMA link: one RC queue pair carrying frames both ways, served by its own
/// CQ-polling thread that reports to the [`crate::LinkSink`] given to
/// [`crate::PreparedLink::connect`].
///
/// Dropping the handle closes the link (like [`RdmaLink::close`]) without waiting for the
/// thread.
pub struct RdmaLink {
    pub(crate) shared: Arc<Shared>,
    pub(crate) done: Receiver<()>,
}

impl std::fmt::Debug for RdmaLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaLink")
            .field("id", &self.shared.id)
            .field("device", &self.shared.device)
            .field("closing", &self.is_closed())
            .finish()
    }
}

impl RdmaLink {
    /// The link id (from the config).
    pub fn id(&self) -> LinkId {
        self.shared.id
    }

    /// The local device's name.
    pub fn device(&self) -> &str {
        &self.shared.device
    }

    /// The partner's endpoint this link is connected to.
    pub fn remote(&self) -> &LocalEndpoint {
        &self.shared.remote
    }

    /// The largest encoded frame this link sends: the header plus the smaller of both sides'
    /// `max_payload_bytes`.
    pub fn max_frame_bytes(&self) -> usize {
        self.shared.max_frame_bytes
    }

    /// Queues `frame` for sending, never blocking. `local_done` is reported through
    /// [`crate::LinkSink::written`] once the frame's WRITE has completed.
    ///
    /// Returns false if the link is closed (the sink's `closed` is on its way) -- or if the
    /// frame is larger than [`Self::max_frame_bytes`], which is refused and logged; use
    /// [`Self::try_send`] to tell the two apart.
    pub fn send(&self, frame: Frame, local_done: Option<LocalDone>) -> bool {
        match self.try_send(frame, local_done) {
            Ok(()) => true,
            Err(SendError::Closed) => false,
            Err(e) => {
                tracing::warn!(link = self.shared.id.get(), error = %e, "frame refused");
                false
            }
        }
    }

    /// [`Self::send`] with the reason for a refusal: [`SendError::TooLarge`] for a frame above
    /// [`Self::max_frame_bytes`] (checked before anything is posted; frames are never split),
    /// [`SendError::Closed`] once the link is closing.
    pub fn try_send(&self, frame: Frame, local_done: Option<LocalDone>) -> Result<(), SendError> {
        self.enqueue(frame, None, local_done)
    }

    /// Checks and queues a frame (with the one-sided write that goes before it), then posts
    /// what may go now.
    pub(crate) fn enqueue(
        &self,
        frame: Frame,
        write: Option<OneSided>,
        local_done: Option<LocalDone>,
    ) -> Result<(), SendError> {
        let sh = &self.shared;
        if sh.closing.load(Ordering::SeqCst) {
            return Err(SendError::Closed);
        }
        let frame_bytes = frame.encoded_len();
        let lane = Lane::of(frame.header.msg_type);
        if frame_bytes > sh.max_frame_bytes {
            return Err(SendError::TooLarge {
                frame_bytes: frame_bytes as u64,
                max_frame_bytes: sh.max_frame_bytes as u64,
            });
        }
        if let Some(w) = &write {
            w.check(self.write_staging_bytes() as u64)?;
        }
        let mut buf = BytesMut::with_capacity(frame_bytes);
        frame.encode(&mut buf);
        let failed = {
            let mut core = sh.lock_core();
            if core.closed || sh.closing.load(Ordering::SeqCst) {
                return Err(SendError::Closed);
            }
            core.pending.push(
                lane,
                Pending {
                    bytes: buf.freeze(),
                    local_done,
                    write,
                },
            );
            sh.pump(&mut core).err()
        };
        if let Some(reason) = failed {
            // The frame was accepted; the link is failing and `closed` will say why.
            sh.request_close(reason);
        }
        Ok(())
    }

    /// Closes the link for `reason` (e.g. [`LinkCloseReason::PortDown`] when the manager sees
    /// PORT_ERR, [`LinkCloseReason::DeviceFatal`]): the queue pair goes to ERR, the thread
    /// reports `closed` once (with the first reason recorded, if the link was already failing)
    /// and exits. Does not wait.
    pub fn fail(&self, reason: LinkCloseReason) {
        self.shared.request_close(reason);
    }

    /// Closes the link ([`LinkCloseReason::Closed`]); see [`Self::fail`].
    pub fn close(&self) {
        self.fail(LinkCloseReason::Closed);
    }

    /// Fences the receive ring: deregisters it at once, so any later RDMA WRITE into it by the
    /// partner -- a zombie still using this link -- fails with a remote access error on the
    /// partner's side. The link is not closed by this call; it can still send, and it closes
    /// with [`LinkCloseReason::Fenced`] when the queue pair fails (a WRITE into the fenced ring
    /// moves both queue pairs to the error state) or when closed. Closing deregisters the
    /// ring too. Idempotent.
    pub fn fence(&self) -> Result<(), RdmaLinkError> {
        self.shared.fenced.store(true, Ordering::SeqCst);
        self.shared
            .ring
            .deregister()
            .map_err(|e| RdmaLinkError::verbs("deregistering the receive ring (fence)", e))?;
        tracing::info!(link = self.shared.id.get(), "receive ring fenced");
        Ok(())
    }

    /// A handle that can close this link from another thread (see [`LinkCloser`]).
    pub fn closer(&self) -> LinkCloser {
        LinkCloser(self.shared.clone())
    }

    /// Whether the link is closed or closing (sends are refused).
    pub fn is_closed(&self) -> bool {
        self.shared.closing.load(Ordering::SeqCst)
    }

    /// The reason given to the sink, once `closed` has been called.
    pub fn close_reason(&self) -> Option<LinkCloseReason> {
        lock(&self.shared.final_reason).clone()
    }

    /// Waits up to `timeout` for the link thread to finish (after `closed` was called);
    /// returns the close reason, or `None` on timeout.
    pub fn wait_closed(&self, timeout: Duration) -> Option<LinkCloseReason> {
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => self.close_reason(),
            Err(RecvTimeoutError::Timeout) => None,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> LinkStats {
        let queued = self.shared.lock_core().pending.len() as u64;
        self.shared.stats.snapshot(queued)
    }
}

/// Closes an [`RdmaLink`] from elsewhere: [`LinkCloser::fail`] is [`RdmaLink::fail`]. Moving
/// the queue pair to the error state is a verbs call, so an owner that must never block (the
/// manager task) hands a closer to a thread that may. The closer keeps the link's resources
/// alive while it exists.
#[derive(Clone)]
pub struct LinkCloser(Arc<Shared>);

impl std::fmt::Debug for LinkCloser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LinkCloser").field(&self.0.id).finish()
    }
}

impl LinkCloser {
    /// See [`RdmaLink::fail`].
    pub fn fail(&self, reason: LinkCloseReason) {
        self.0.request_close(reason);
    }

    /// The link's id.
    pub fn id(&self) -> LinkId {
        self.0.id
    }
}

impl Drop for RdmaLink {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RdmaLink>();
        send_sync::<Shared>();
        fn send<T: Send>() {}
        send::<crate::PreparedLink>();
    }
}

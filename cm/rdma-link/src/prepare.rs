//! [`PreparedLink`]: the verbs resources of a link before the partner is known (PD, CQ, RC
//! queue pair in INIT, receive ring, staging regions), and `connect`, which validates the
//! partner's endpoint, posts receives, moves the queue pair INIT -> RTR -> RTS ("slam
//! connect") and starts the link thread.

use crate::config::RdmaLinkConfig;
use crate::credit::{data_window, CreditOwed, SendWindow};
use crate::endpoint::LocalEndpoint;
use crate::error::{RdmaLinkError, RequestKind};
use crate::link::{Core, RdmaLink, Shared};
use crate::ring::RecvRing;
use crate::sink::LinkSink;
use crate::worker::{Worker, SCRATCH_BYTES};
use crate::wrid;
use peercm_cm_proto::frame::{FrameDecoder, HEADER_LEN};
use peercm_verbs_shim::{
    Access, CompletionQueue, Device, MemoryRegion, ProtectionDomain, QpCaps, QpParams, QueuePair,
    RecvWr, Sge,
};
use std::sync::Arc;

/// Send-queue entries beyond the receive depth (credit messages and a probe).
///
/// The send queue holds `recv_depth + SEND_SLACK` requests. Data frames are bounded by the
/// window `W <= recv_depth / 2` (un-credited), so a full window of one-sided writes (two
/// requests each: the RDMA WRITE and its frame) takes at most `recv_depth`, and the slack is
/// left for credit messages and the probe. The bound is not relied on for safety: every post
/// first checks that the requests it needs fit ([`crate::link`]), and waits otherwise.
pub(crate) const SEND_SLACK: u32 = 8;
/// Completion-queue entries beyond the send and receive queues.
const CQ_SLACK: u32 = 32;

/// A link whose resources exist and whose endpoint can be sent to the partner; it becomes an
/// [`RdmaLink`] with [`PreparedLink::connect`]. Dropping it frees everything.
pub struct PreparedLink {
    cfg: RdmaLinkConfig,
    device: String,
    pd: Arc<dyn ProtectionDomain>,
    cq: Arc<dyn CompletionQueue>,
    qp: Box<dyn QueuePair>,
    ring: Arc<dyn MemoryRegion>,
    staging: Arc<dyn MemoryRegion>,
    write_staging: Option<Arc<dyn MemoryRegion>>,
    scratch: Arc<dyn MemoryRegion>,
    params: QpParams,
    psn: u32,
    local: LocalEndpoint,
    max_send_wr: u32,
}

impl std::fmt::Debug for PreparedLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedLink")
            .field("id", &self.cfg.link_id)
            .field("device", &self.device)
            .field("local", &self.local)
            .finish()
    }
}

/// A fresh initial packet sequence number: 24 random bits from the thread's cryptographically
/// seeded RNG. It must not be predictable from anything the partner (or a stale queue pair of
/// an earlier process) could repeat: QP numbers are reused by the kernel and link ids restart
/// at 1 in every process, so a PSN derived from them would recur across restarts.
fn initial_psn() -> u32 {
    rand::random::<u32>() & 0x00FF_FFFF
}

impl PreparedLink {
    /// Creates the link's resources on `device`: a protection domain of its own, then as
    /// [`Self::new_in`].
    pub fn new(
        device: Arc<dyn Device>,
        cfg: RdmaLinkConfig,
    ) -> Result<(PreparedLink, LocalEndpoint), RdmaLinkError> {
        cfg.validate()?;
        let name = device.info().name;
        let pd = device.clone().alloc_pd().map_err(|e| {
            RdmaLinkError::verbs(format!("allocating a protection domain on {name}"), e)
        })?;
        Self::new_in(pd, device, cfg)
    }

    /// Creates the link's resources on `device`, in the protection domain `pd` (which must
    /// belong to `device`): one completion queue (send and receive) with its channel, an RC
    /// queue pair moved to INIT, the receive ring (`cfg.ring_bytes`, `LOCAL_WRITE |
    /// REMOTE_WRITE`), a send-staging region of the same size, the write-staging region
    /// (`cfg.write_staging_bytes`, `LOCAL_WRITE`; none when 0) and a tiny scratch region the
    /// receives name. Returns the endpoint to send to the partner.
    ///
    /// A protection domain shared by every link of one device lets the manager register
    /// client regions once: the partner's RDMA WRITEs through any of these links (and through
    /// links created later in the same domain) reach them with the same rkey. The link never
    /// deregisters anything it did not register.
    pub fn new_in(
        pd: Arc<dyn ProtectionDomain>,
        device: Arc<dyn Device>,
        cfg: RdmaLinkConfig,
    ) -> Result<(PreparedLink, LocalEndpoint), RdmaLinkError> {
        cfg.validate()?;
        let name = device.info().name;
        let on = |what: &str| format!("{what} on {name}");
        let params = cfg.qp_params();
        let max_send_wr = cfg.recv_depth + SEND_SLACK;
        let cq = device
            .clone()
            .create_cq(max_send_wr + cfg.recv_depth + CQ_SLACK)
            .map_err(|e| RdmaLinkError::verbs(on("creating a completion queue"), e))?;
        let caps = QpCaps {
            max_send_wr,
            max_recv_wr: cfg.recv_depth,
            max_sge: 1,
        };
        let mut qp = pd
            .clone()
            .create_qp(cq.clone(), cq.clone(), caps)
            .map_err(|e| RdmaLinkError::verbs(on("creating an RC queue pair"), e))?;
        let qpn = qp.qpn();
        qp.to_init(&params)
            .map_err(|e| RdmaLinkError::verbs(on(&format!("moving QP {qpn:#x} to INIT")), e))?;
        let reg = |len: usize, access: Access, what: &str| {
            pd.clone()
                .reg_mr(len, access)
                .map_err(|e| RdmaLinkError::verbs(on(&format!("registering the {what}")), e))
        };
        let ring = reg(
            cfg.ring_bytes,
            Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            "receive ring",
        )?;
        let staging = reg(cfg.ring_bytes, Access::LOCAL_WRITE, "send-staging region")?;
        let write_staging = match cfg.write_staging_bytes {
            0 => None,
            len => Some(reg(len, Access::LOCAL_WRITE, "write-staging region")?),
        };
        let scratch = reg(
            SCRATCH_BYTES as usize,
            Access::LOCAL_WRITE,
            "receive scratch",
        )?;
        let psn = initial_psn();
        let qp_ep = qp
            .endpoint(&params, psn)
            .map_err(|e| RdmaLinkError::verbs(on(&format!("the endpoint of QP {qpn:#x}")), e))?;
        let local = LocalEndpoint {
            qp: qp_ep,
            ring: ring.remote(),
            ring_bytes: cfg.ring_bytes as u64,
            recv_depth: cfg.recv_depth,
            max_payload_bytes: cfg.max_payload_bytes,
        };
        tracing::debug!(link = cfg.link_id.get(), device = %name, qpn, "RDMA link prepared");
        Ok((
            PreparedLink {
                cfg,
                device: name,
                pd,
                cq,
                qp,
                ring,
                staging,
                write_staging,
                scratch,
                params,
                psn,
                local,
                max_send_wr,
            },
            local,
        ))
    }

    /// This side's endpoint (as returned by [`Self::new_in`]).
    pub fn endpoint(&self) -> &LocalEndpoint {
        &self.local
    }

    /// The local device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The configuration.
    pub fn config(&self) -> &RdmaLinkConfig {
        &self.cfg
    }

    /// Connects to the partner's endpoint: checks it ([`LocalEndpoint::check_remote`]; frames
    /// sent are then limited to the smaller of both sides' `max_payload_bytes`), posts
    /// `recv_depth` receives, moves the queue pair INIT -> RTR -> RTS and starts the link
    /// thread (`peercm-rdma-<link id>`), which reports to `sink`.
    ///
    /// Both sides must be connected before either sends: a WRITE reaching a queue pair that
    /// is not yet ready to receive is retransmitted, and fails after
    /// `(retry_count + 1) * ack_timeout`.
    pub fn connect(
        self,
        remote: &LocalEndpoint,
        sink: Box<dyn LinkSink>,
    ) -> Result<RdmaLink, RdmaLinkError> {
        remote.check_remote(&self.cfg)?;
        let PreparedLink {
            cfg,
            device,
            pd,
            cq,
            mut qp,
            ring,
            staging,
            write_staging,
            scratch,
            params,
            psn,
            local: _,
            max_send_wr,
        } = self;
        let on = |what: &str| format!("{what} on {device}");
        // Staging mirrors the partner's ring, so it takes the partner's size.
        let staging = if remote.ring_bytes == staging.len() as u64 {
            staging
        } else {
            let len = usize::try_from(remote.ring_bytes).unwrap_or(usize::MAX);
            pd.clone()
                .reg_mr(len, Access::LOCAL_WRITE)
                .map_err(|e| RdmaLinkError::verbs(on("registering the send-staging region"), e))?
        };
        for i in 0..cfg.recv_depth {
            qp.post_recv(RecvWr {
                wr_id: wrid::encode(RequestKind::Receive, u64::from(i)),
                local: Sge {
                    mr: scratch.clone(),
                    offset: 0,
                    len: SCRATCH_BYTES,
                },
            })
            .map_err(|e| RdmaLinkError::verbs(on("posting receives"), e))?;
        }
        let qpn = qp.qpn();
        qp.to_rtr(&params, &remote.qp).map_err(|e| {
            RdmaLinkError::verbs(
                on(&format!(
                    "moving QP {qpn:#x} to RTR (remote QP {:#x})",
                    remote.qp.qpn
                )),
                e,
            )
        })?;
        qp.to_rts(&params, psn)
            .map_err(|e| RdmaLinkError::verbs(on(&format!("moving QP {qpn:#x} to RTS")), e))?;

        let window = data_window(cfg.recv_depth, remote.recv_depth);
        let divisor = cfg.credit_batch_divisor.max(1);
        let shared = Arc::new(Shared::new(
            cfg.link_id,
            device.clone(),
            Core::new(
                SendWindow::new(remote.ring_bytes, window),
                cfg.write_staging_bytes as u64,
            ),
            qp,
            ring,
            staging,
            write_staging,
            *remote,
            HEADER_LEN + remote.send_max_payload_bytes(&cfg) as usize,
            max_send_wr,
        ));
        let span = tracing::info_span!("rdma_link", id = cfg.link_id.get(), device = %device);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let worker = Worker {
            sh: shared.clone(),
            cq,
            scratch,
            sink,
            rx: RecvRing::new(cfg.ring_bytes as u64),
            owed: CreditOwed::new(
                (window / divisor).max(1),
                (cfg.ring_bytes as u64 / u64::from(divisor)).max(1),
            ),
            decoder: FrameDecoder::new(cfg.max_payload_bytes),
            wait: cfg.cq_wait_timeout(),
            probe: cfg.probe_interval(),
            busy_poll: cfg.busy_poll(),
            credit_idle: cfg.credit_idle(),
            owed_since: None,
            last_completion: std::time::Instant::now(),
            credit_deferred: false,
            _done: done_tx,
            span: span.clone(),
        };
        std::thread::Builder::new()
            .name(format!("peercm-rdma-{}", cfg.link_id))
            .spawn(move || worker.run())
            .map_err(|e| RdmaLinkError::Thread(e.to_string()))?;
        span.in_scope(|| {
            tracing::info!(
                qpn,
                remote_qpn = remote.qp.qpn,
                window,
                remote_ring_bytes = remote.ring_bytes,
                "RDMA link connected"
            );
        });
        Ok(RdmaLink {
            shared,
            done: done_rx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::initial_psn;

    /// Every PSN fits in 24 bits and the whole range is used (all 10,000 draws below 2^23
    /// would happen with probability 2^-10000).
    #[test]
    fn initial_psns_are_24_bits_and_use_them_all() {
        let draws: Vec<u32> = (0..10_000).map(|_| initial_psn()).collect();
        assert!(draws.iter().all(|p| *p < 1 << 24));
        assert!(draws.iter().any(|p| *p >= 1 << 23));
    }
}

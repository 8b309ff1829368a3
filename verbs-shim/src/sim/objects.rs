//! The [`crate::api`] objects of the simulated backend: thin handles onto the fabric's world.
//! Dropping a handle destroys its object, as the matching `ibv_destroy_*` / `ibv_dereg_mr`. A
//! region whose deregistration fails (injected with `SimFabric::fail_deregistrations`) is
//! leaked as the real backend leaks it (`crate::teardown`): still registered, bytes kept. A
//! region registered over a caller's mapping keeps the mapping in its world record, so its
//! bytes (and the partner's writes) are the mapped file's.

use super::world::SendKind;
use super::Inner;
use crate::api::{CompletionQueue, Device, MemoryRegion, ProtectionDomain, Provider, QueuePair};
use crate::error::VerbsError;
use crate::mapped::MappedFile;
use crate::teardown::{dispose, Disposal};
use crate::types::{
    Access, AsyncEvent, DeviceInfo, PortInfo, QpCaps, QpEndpoint, QpParams, QpState, RecvWr,
    SendWr, VerbsUnavailable, WorkCompletion,
};
use std::sync::Arc;
use std::time::Duration;

pub(crate) struct SimProvider {
    inner: Arc<Inner>,
    node: Option<usize>,
    name: String,
}

impl SimProvider {
    pub(crate) fn new(inner: Arc<Inner>, node: Option<usize>, name: &str) -> Self {
        SimProvider {
            inner,
            node,
            name: name.to_string(),
        }
    }
}

impl Provider for SimProvider {
    fn devices(&self) -> Result<Vec<DeviceInfo>, VerbsUnavailable> {
        let Some(node) = self.node else {
            return Err(VerbsUnavailable::NoDevice);
        };
        self.inner.with(|w, _| {
            let infos: Vec<DeviceInfo> = w
                .node_devices(node)
                .into_iter()
                .map(|d| w.device_info(d))
                .collect();
            // As libibverbs: every device is listed whatever its ports' states.
            if infos.is_empty() {
                Err(VerbsUnavailable::NoDevice)
            } else {
                Ok(infos)
            }
        })
    }

    fn open(&self, name: &str) -> Result<Arc<dyn Device>, VerbsError> {
        let node = self
            .node
            .ok_or_else(|| VerbsError::NoSuchDevice(format!("{}/{name}", self.name)))?;
        let (dev, ctx) = self.inner.with(|w, _| {
            let dev = w
                .node_devices(node)
                .into_iter()
                .find(|d| w.devs[*d].name == name)
                .ok_or_else(|| VerbsError::NoSuchDevice(name.to_string()))?;
            Ok::<_, VerbsError>((dev, w.open_ctx(dev)))
        })?;
        Ok(Arc::new(SimDevice {
            inner: self.inner.clone(),
            dev,
            ctx,
        }))
    }
}

/// An opened device (one `ibv_context`, with its own async event queue).
pub(crate) struct SimDevice {
    inner: Arc<Inner>,
    dev: usize,
    ctx: u64,
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let ctx = self.ctx;
        self.inner.with(|w, _| w.close_ctx(ctx));
    }
}

impl Device for SimDevice {
    fn info(&self) -> DeviceInfo {
        self.inner.with(|w, _| w.device_info(self.dev))
    }

    fn query_port(&self, port: u8) -> Result<PortInfo, VerbsError> {
        self.inner.with(|w, _| w.query_port(self.dev, port))
    }

    fn gid(&self, port: u8, index: u8) -> Result<[u8; 16], VerbsError> {
        self.inner.with(|w, _| w.gid(self.dev, port, index))
    }

    fn alloc_pd(self: Arc<Self>) -> Result<Arc<dyn ProtectionDomain>, VerbsError> {
        let id = self.inner.with(|w, _| w.alloc_pd(self.dev, self.ctx));
        Ok(Arc::new(SimPd {
            inner: self.inner.clone(),
            id,
            _device: self,
        }))
    }

    fn create_cq(self: Arc<Self>, depth: u32) -> Result<Arc<dyn CompletionQueue>, VerbsError> {
        let id = self
            .inner
            .with(|w, _| w.create_cq(self.dev, self.ctx, depth))?;
        let cq = Arc::new(SimCq {
            inner: self.inner.clone(),
            id,
            _device: self,
        });
        let addr = Arc::as_ptr(&cq) as usize;
        cq.inner.with(|w, _| w.register_cq_addr(addr, id));
        Ok(cq)
    }

    fn next_async_event(&self, timeout: Duration) -> Result<Option<AsyncEvent>, VerbsError> {
        let ctx = self.ctx;
        Ok(self.inner.wait_for(timeout, |w| w.next_event(ctx)))
    }
}

pub(crate) struct SimPd {
    inner: Arc<Inner>,
    id: u64,
    _device: Arc<SimDevice>,
}

impl Drop for SimPd {
    fn drop(&mut self) {
        let id = self.id;
        self.inner.with(|w, _| w.free_pd(id));
    }
}

impl ProtectionDomain for SimPd {
    fn reg_mr(
        self: Arc<Self>,
        len: usize,
        access: Access,
    ) -> Result<Arc<dyn MemoryRegion>, VerbsError> {
        let (id, key, addr) = self.inner.with(|w, _| w.reg_mr(self.id, len, access))?;
        Ok(Arc::new(SimMr {
            inner: self.inner.clone(),
            id,
            key,
            addr,
            len,
            _pd: self,
        }))
    }

    fn reg_mapped(
        self: Arc<Self>,
        mem: Arc<MappedFile>,
        access: Access,
    ) -> Result<Arc<dyn MemoryRegion>, VerbsError> {
        let len = mem.len();
        let (id, key, addr) = self.inner.with(|w, _| w.reg_mapped(self.id, mem, access))?;
        Ok(Arc::new(SimMr {
            inner: self.inner.clone(),
            id,
            key,
            addr,
            len,
            _pd: self,
        }))
    }

    fn create_qp(
        self: Arc<Self>,
        send_cq: Arc<dyn CompletionQueue>,
        recv_cq: Arc<dyn CompletionQueue>,
        caps: QpCaps,
    ) -> Result<Box<dyn QueuePair>, VerbsError> {
        // A simulated CQ is recognised by its address (the trait has no downcast); CQs of
        // another backend or fabric are not found and rejected.
        let s = Arc::as_ptr(&send_cq).cast::<()>() as usize;
        let r = Arc::as_ptr(&recv_cq).cast::<()>() as usize;
        let qpn = self.inner.with(|w, _| w.create_qp(self.id, s, r, caps))?;
        Ok(Box::new(SimQp {
            inner: self.inner.clone(),
            qpn,
            _pd: self,
            _send_cq: send_cq,
            _recv_cq: recv_cq,
        }))
    }
}

pub(crate) struct SimMr {
    inner: Arc<Inner>,
    id: u64,
    key: u32,
    addr: u64,
    len: usize,
    _pd: Arc<SimPd>,
}

impl Drop for SimMr {
    fn drop(&mut self) {
        let (id, len) = (self.id, self.len);
        self.inner.teardown_gate(|w| w.mr_node(id));
        let disposal = self.inner.with(|w, _| {
            let res = w.deregister(id);
            let d = dispose("memory region", &w.mr_device(id), Some(len), res);
            if d == Disposal::Release {
                w.drop_mr(id);
            }
            d
        });
        if disposal == Disposal::Leak {
            // As the real backend: the region is still registered, so its bytes stay (the
            // partner can still reach them through the rkey) and its PD stays allocated.
            std::mem::forget(Arc::clone(&self._pd));
        }
    }
}

impl MemoryRegion for SimMr {
    fn lkey(&self) -> u32 {
        self.key
    }

    fn rkey(&self) -> u32 {
        self.key
    }

    fn addr(&self) -> u64 {
        self.addr
    }

    fn len(&self) -> usize {
        self.len
    }

    fn write(&self, offset: usize, data: &[u8]) -> Result<(), VerbsError> {
        self.inner.with(|w, _| w.mr_write(self.id, offset, data))
    }

    fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, VerbsError> {
        self.inner.with(|w, _| w.mr_read(self.id, offset, len))
    }

    fn deregister(&self) -> Result<(), VerbsError> {
        let id = self.id;
        self.inner.teardown_gate(|w| w.mr_node(id));
        self.inner.with(|w, _| w.deregister(self.id))
    }
}

pub(crate) struct SimCq {
    inner: Arc<Inner>,
    id: u64,
    _device: Arc<SimDevice>,
}

impl Drop for SimCq {
    fn drop(&mut self) {
        let (id, addr) = (self.id, std::ptr::from_ref(self) as usize);
        self.inner.teardown_gate(|w| w.cq_node(id));
        self.inner.with(|w, _| w.destroy_cq(id, addr));
    }
}

impl CompletionQueue for SimCq {
    fn poll(&self, max: usize) -> Result<Vec<WorkCompletion>, VerbsError> {
        Ok(self.inner.with(|w, _| w.cq_take(self.id, max)))
    }

    fn wait(&self, max: usize, timeout: Duration) -> Result<Vec<WorkCompletion>, VerbsError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let id = self.id;
        Ok(self
            .inner
            .wait_for(timeout, |w| {
                w.cq_has_entries(id).then(|| w.cq_take(id, max))
            })
            .unwrap_or_default())
    }

    fn completion_fd(&self) -> Option<std::os::fd::RawFd> {
        self.inner.with(|w, _| w.cq_fd(self.id))
    }
}

pub(crate) struct SimQp {
    inner: Arc<Inner>,
    qpn: u32,
    _pd: Arc<SimPd>,
    _send_cq: Arc<dyn CompletionQueue>,
    _recv_cq: Arc<dyn CompletionQueue>,
}

impl Drop for SimQp {
    fn drop(&mut self) {
        let qpn = self.qpn;
        self.inner.teardown_gate(|w| w.qp_node(qpn));
        self.inner.with(|w, _| w.destroy_qp(qpn));
    }
}

impl QueuePair for SimQp {
    fn qpn(&self) -> u32 {
        self.qpn
    }

    fn state(&self) -> QpState {
        // A QP only disappears from the world when this handle drops.
        self.inner
            .with(|w, _| w.qp(self.qpn).map_or(QpState::Err, |q| q.state))
    }

    fn endpoint(&self, params: &QpParams, psn: u32) -> Result<QpEndpoint, VerbsError> {
        let gid = self.inner.with(|w, _| {
            let dev = w.qp_dev(self.qpn).ok_or_else(|| {
                VerbsError::InvalidArgument(format!("QP {:#x} was destroyed", self.qpn))
            })?;
            w.gid(dev, params.port, params.gid_index)
        })?;
        Ok(QpEndpoint {
            qpn: self.qpn,
            psn: psn & 0x00ff_ffff,
            gid,
            mtu_bytes: params.mtu_bytes,
            lid: 0,
        })
    }

    fn to_init(&mut self, params: &QpParams) -> Result<(), VerbsError> {
        self.inner
            .with(|w, _| w.modify_init(self.qpn, params.port, params.access))
    }

    fn to_rtr(&mut self, params: &QpParams, remote: &QpEndpoint) -> Result<(), VerbsError> {
        self.inner.with(|w, _| {
            w.modify_rtr(
                self.qpn,
                params.port,
                params.gid_index,
                params.mtu_bytes,
                params.min_rnr_timer_code,
                remote.gid,
                remote.qpn,
                remote.psn,
            )
        })
    }

    fn to_rts(&mut self, params: &QpParams, psn: u32) -> Result<(), VerbsError> {
        self.inner.with(|w, now| {
            w.modify_rts(
                self.qpn,
                params.ack_timeout_exponent(),
                params.retry_count,
                params.rnr_retry_count,
                psn,
                now,
            )
        })
    }

    fn to_error(&mut self) -> Result<(), VerbsError> {
        self.inner.with(|w, _| w.modify_err(self.qpn))
    }

    fn post_send(&self, wr: SendWr) -> Result<(), VerbsError> {
        // Read the user's objects before taking the fabric lock (an MR handle locks it too).
        let (wr_id, local, kind) = match wr {
            SendWr::Send { wr_id, local, imm } => (wr_id, local, SendKind::Send { imm }),
            SendWr::Write {
                wr_id,
                local,
                remote,
                remote_offset,
                imm,
            } => (
                wr_id,
                local,
                SendKind::Write {
                    addr: remote.addr.checked_add(remote_offset),
                    rkey: remote.rkey,
                    imm,
                },
            ),
            SendWr::Read {
                wr_id,
                local,
                remote,
                remote_offset,
            } => (
                wr_id,
                local,
                SendKind::Read {
                    addr: remote.addr.checked_add(remote_offset),
                    rkey: remote.rkey,
                },
            ),
        };
        let lkey = local.mr.lkey();
        let (offset, len) = (local.offset, local.len);
        drop(local);
        self.inner
            .with(|w, now| w.post_send(self.qpn, wr_id, kind, lkey, offset, len, now))
    }

    fn post_recv(&self, wr: RecvWr) -> Result<(), VerbsError> {
        let lkey = wr.local.mr.lkey();
        let (wr_id, offset, len) = (wr.wr_id, wr.local.offset, wr.local.len);
        drop(wr);
        self.inner
            .with(|w, _| w.post_recv(self.qpn, wr_id, lkey, offset, len))
    }
}

//! The verbs API both backends implement. Object-safe traits, so the manager and the scenario
//! suite hold `Arc<dyn Device>` and never know which backend is underneath.
//!
//! Ownership follows the hardware's rules by construction: a [`ProtectionDomain`] keeps its
//! [`Device`] alive, a [`MemoryRegion`] and a [`QueuePair`] keep their PD alive, and a QP keeps
//! its CQs alive, so nothing is destroyed while something still depends on it.

use crate::error::VerbsError;
use crate::mapped::MappedFile;
use crate::types::{
    Access, AsyncEvent, DeviceInfo, PortInfo, QpCaps, QpEndpoint, QpParams, QpState, RecvWr,
    RemoteMr, SendWr, VerbsUnavailable, WorkCompletion,
};
use std::sync::Arc;
use std::time::Duration;

/// A source of RDMA devices (libibverbs, or one node of a simulated fabric).
pub trait Provider: Send + Sync {
    /// Devices with their ports, or why there are none to use.
    fn devices(&self) -> Result<Vec<DeviceInfo>, VerbsUnavailable>;
    /// Opens a device by name.
    fn open(&self, name: &str) -> Result<Arc<dyn Device>, VerbsError>;
}

/// An opened device (`ibv_context`).
pub trait Device: Send + Sync {
    /// Its description (ports as of the last query).
    fn info(&self) -> DeviceInfo;
    /// Current state of one port.
    fn query_port(&self, port: u8) -> Result<PortInfo, VerbsError>;
    /// The GID at `index` of `port`.
    fn gid(&self, port: u8, index: u8) -> Result<[u8; 16], VerbsError>;
    /// Allocates a protection domain.
    fn alloc_pd(self: Arc<Self>) -> Result<Arc<dyn ProtectionDomain>, VerbsError>;
    /// Creates a completion queue with a completion channel.
    fn create_cq(self: Arc<Self>, depth: u32) -> Result<Arc<dyn CompletionQueue>, VerbsError>;
    /// The next asynchronous event, waiting at most `timeout` (`None` if none came).
    fn next_async_event(&self, timeout: Duration) -> Result<Option<AsyncEvent>, VerbsError>;
}

/// A protection domain.
pub trait ProtectionDomain: Send + Sync {
    /// Allocates and registers a zeroed region of `len` bytes with the given rights.
    fn reg_mr(
        self: Arc<Self>,
        len: usize,
        access: Access,
    ) -> Result<Arc<dyn MemoryRegion>, VerbsError>;
    /// Registers caller-provided memory, the whole of a mapped file, with the given rights
    /// (a client region: `LOCAL_WRITE | REMOTE_WRITE`). The region holds `mem`, so the mapping
    /// lives at least as long as the registration; its [`MemoryRegion::write`] and
    /// [`MemoryRegion::read`] copy into and out of the mapping, and the partner's RDMA WRITEs
    /// land there. Deregistering (or dropping) it invalidates its rkey and leaves the mapping
    /// and its bytes to the other holders of `mem`.
    fn reg_mapped(
        self: Arc<Self>,
        mem: Arc<MappedFile>,
        access: Access,
    ) -> Result<Arc<dyn MemoryRegion>, VerbsError>;
    /// Creates an RC queue pair in state RESET.
    fn create_qp(
        self: Arc<Self>,
        send_cq: Arc<dyn CompletionQueue>,
        recv_cq: Arc<dyn CompletionQueue>,
        caps: QpCaps,
    ) -> Result<Box<dyn QueuePair>, VerbsError>;
}

/// A registered memory region that owns its buffer (or, registered with
/// [`ProtectionDomain::reg_mapped`], holds the mapping it covers). The HCA (or the partner, through RDMA)
/// may change the bytes at any time, so they are only reachable by copy.
pub trait MemoryRegion: Send + Sync {
    /// Local key.
    fn lkey(&self) -> u32;
    /// Remote key.
    fn rkey(&self) -> u32;
    /// Address of the first byte (as the partner must name it).
    fn addr(&self) -> u64;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// What the partner needs to RDMA into it.
    fn remote(&self) -> RemoteMr {
        RemoteMr {
            addr: self.addr(),
            rkey: self.rkey(),
            len: self.len() as u64,
        }
    }
    /// Copies `data` into the region at `offset`.
    fn write(&self, offset: usize, data: &[u8]) -> Result<(), VerbsError>;
    /// Copies `len` bytes out of the region at `offset`.
    fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, VerbsError>;
    /// Deregisters the region now (fencing): afterwards every RDMA access with its rkey fails
    /// with a remote access error. Dropping the last reference does the same.
    fn deregister(&self) -> Result<(), VerbsError>;
}

/// A completion queue with its completion channel.
pub trait CompletionQueue: Send + Sync {
    /// Polls up to `max` completions without waiting.
    fn poll(&self, max: usize) -> Result<Vec<WorkCompletion>, VerbsError>;
    /// Waits up to `timeout` for at least one completion (through the completion channel, so
    /// no CPU is burnt), then polls up to `max`.
    fn wait(&self, max: usize, timeout: Duration) -> Result<Vec<WorkCompletion>, VerbsError>;
    /// A file descriptor that becomes readable when a completion may be ready (the completion
    /// channel's fd), for an async runtime to wait on; after it fires, call [`Self::poll`].
    /// `None` if the backend has no such fd.
    fn completion_fd(&self) -> Option<std::os::fd::RawFd>;
}

/// A reliable-connected queue pair.
pub trait QueuePair: Send + Sync {
    /// QP number.
    fn qpn(&self) -> u32;
    /// Current state.
    fn state(&self) -> QpState;
    /// This side's endpoint for the partner ("slam connect": exchanged over the bootstrap
    /// session). `psn` is chosen by the caller.
    fn endpoint(&self, params: &QpParams, psn: u32) -> Result<QpEndpoint, VerbsError>;
    /// RESET -> INIT.
    fn to_init(&mut self, params: &QpParams) -> Result<(), VerbsError>;
    /// INIT -> RTR, aimed at the partner's endpoint.
    fn to_rtr(&mut self, params: &QpParams, remote: &QpEndpoint) -> Result<(), VerbsError>;
    /// RTR -> RTS with our `psn`.
    fn to_rts(&mut self, params: &QpParams, psn: u32) -> Result<(), VerbsError>;
    /// Any state -> ERR (outstanding requests flush).
    fn to_error(&mut self) -> Result<(), VerbsError>;
    /// Posts a send-queue request.
    fn post_send(&self, wr: SendWr) -> Result<(), VerbsError>;
    /// Posts several send-queue requests, in order, with one doorbell where the provider
    /// supports lists (on rdma_rxe each `ibv_post_send` is a system call and a run of the
    /// kernel's requester). On an error the requests before the failing one may have been
    /// posted. The default posts them one by one.
    fn post_send_list(&self, wrs: Vec<SendWr>) -> Result<(), VerbsError> {
        for wr in wrs {
            self.post_send(wr)?;
        }
        Ok(())
    }
    /// Posts a receive.
    fn post_recv(&self, wr: RecvWr) -> Result<(), VerbsError>;
}

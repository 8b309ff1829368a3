//! The fabric's whole state and its RC engine. Everything here runs under one mutex (held by
//! [`super::Inner`]), so every transfer, fault and completion happens atomically and in one
//! global order.
//!
//! The engine is IO-free in the quinn-proto sense: every entry point takes `now`, timers are
//! "kick this QP at time t" entries in a heap, and a spurious kick is a harmless no-op. Whoever
//! holds the lock drives it: API calls (post, poll, wait) and the fabric's engine thread.

use super::eventfd::EventFd;
use super::rng::Rng;
use crate::error::VerbsError;
use crate::types::{
    Access, AsyncEvent, DeviceInfo, LinkLayer, PortInfo, PortState, QpCaps, QpState, WcOpcode,
    WcStatus, WorkCompletion,
};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Most trace entries kept (older ones are counted, not kept).
pub(crate) const TRACE_MAX: usize = 100_000;
/// Most unread async events kept per opened device (the oldest are dropped beyond this).
const EVENTS_MAX: usize = 1024;
/// Most steps one QP takes in one engine pass before yielding (a limit on everything).
const STEPS_MAX: u32 = 100_000;
/// Largest queue a QP may ask for (like a device's `max_qp_wr`).
pub(crate) const MAX_QP_WR: u32 = 16_384;
/// Largest completion queue (like `max_cqe`).
pub(crate) const MAX_CQE: u32 = 65_536;

/// One observable thing that happened on the fabric, in global order. Two runs with the same
/// seed and the same sequence of calls produce the same trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// A work completion was queued on a CQ of `device` on `node`.
    Completion {
        /// Node name.
        node: String,
        /// Device name.
        device: String,
        /// The completion.
        wc: WorkCompletion,
    },
    /// An async event was raised on `device` of `node`.
    Async {
        /// Node name.
        node: String,
        /// Device name.
        device: String,
        /// The event.
        event: AsyncEvent,
    },
    /// A fault was injected or healed (human-readable).
    Fault(String),
}

pub(crate) struct NodeRec {
    pub name: String,
    /// Requests to this node's QPs go unanswered (a frozen responder).
    pub stalled: bool,
}

pub(crate) struct PortRec {
    pub num: u8,
    pub capacity_gbps: u32,
    /// Administratively up (`ip link set ... up`).
    pub admin_up: bool,
    pub cable: Option<usize>,
    /// GID table: index 0 link-local, index 1 IPv4-mapped (once cabled).
    pub gids: Vec<[u8; 16]>,
    /// Effective state last reported (ACTIVE or DOWN).
    pub active: bool,
}

pub(crate) struct DevRec {
    pub node: usize,
    pub name: String,
    pub guid: u64,
    pub ports: Vec<PortRec>,
    next_addr: u64,
}

pub(crate) struct CableRec {
    pub ends: [(usize, u8); 2],
    pub cut: bool,
    pub latency: Duration,
    pub jitter: Duration,
    pub loss: f64,
}

struct CtxRec {
    dev: usize,
    events: VecDeque<AsyncEvent>,
}

struct PdRec {
    dev: usize,
    ctx: u64,
}

struct MrRec {
    dev: usize,
    pd: u64,
    addr: u64,
    data: Vec<u8>,
    access: Access,
    key: u32,
    registered: bool,
}

struct CqRec {
    dev: usize,
    ctx: u64,
    depth: usize,
    entries: VecDeque<WorkCompletion>,
    efd: Option<EventFd>,
    efd_tried: bool,
    overflowed: bool,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Send {
        imm: Option<u32>,
    },
    Write {
        addr: Option<u64>,
        rkey: u32,
        imm: Option<u32>,
    },
    Read {
        addr: Option<u64>,
        rkey: u32,
    },
}

impl Op {
    fn opcode(self) -> WcOpcode {
        match self {
            Op::Send { .. } => WcOpcode::Send,
            Op::Write { .. } => WcOpcode::RdmaWrite,
            Op::Read { .. } => WcOpcode::RdmaRead,
        }
    }
}

/// A posted send-queue request, as the engine sees it (no references to user objects: the
/// local buffer is named by lkey, as the hardware does).
struct SendEntry {
    wr_id: u64,
    op: Op,
    lkey: u32,
    offset: u64,
    len: u32,
    psn: u32,
    latency: Duration,
    /// Earliest time of the next attempt (latency, RNR timer, ACK timeout).
    not_before: Instant,
    /// Attempts since the responder last answered.
    attempts: u32,
    rnr_naks: u32,
    /// The last attempt went unanswered; `not_before` is its ACK timeout.
    awaiting_timeout: bool,
    /// Lost with an infinite ACK timeout: never retransmitted.
    stuck: bool,
    /// Delivered; the requester completion is due at this time.
    ack_at: Option<Instant>,
    read_data: Option<Vec<u8>>,
}

struct RecvEntry {
    wr_id: u64,
    lkey: u32,
    offset: u64,
    len: u32,
}

pub(crate) struct QpRec {
    dev: usize,
    ctx: u64,
    pd: u64,
    send_cq: u64,
    recv_cq: u64,
    caps: QpCaps,
    pub state: QpState,
    port: u8,
    gid_index: u8,
    access: Access,
    remote: Option<([u8; 16], u32)>,
    rq_psn: u32,
    sq_psn: u32,
    min_rnr_timer: Duration,
    ack_timeout: Option<Duration>,
    retry_count: u8,
    rnr_retry: u8,
    sq: VecDeque<SendEntry>,
    rq: VecDeque<RecvEntry>,
    rng: Rng,
    kick_at: Option<Instant>,
}

/// How a QP enters the error state.
#[derive(Debug, Clone, Copy)]
enum FailMode {
    /// `to_error()` by the user: everything flushes.
    Flush,
    /// Its port went down: the oldest outstanding request completes LOC_QP_OP_ERR, the rest
    /// flush (rdma_rxe on `ip link set down`).
    Port,
    /// Injected fatal error: QP_FATAL event, everything flushes.
    Fatal,
    /// Request `i` failed with this status: earlier (delivered) requests complete successfully,
    /// later ones flush.
    At(usize, WcStatus),
}

enum Attempt {
    /// Delivered at the responder; look at the next request.
    Delivered,
    /// Not now (RNR timer or ACK timeout pending).
    Wait,
    /// The request failed with this status; the QP goes to the error state.
    Fatal(WcStatus),
}

enum Resp {
    Done(Option<Vec<u8>>),
    Rnr(Duration),
    Nak(WcStatus),
}

/// The fabric.
pub(crate) struct World {
    pub seed: u64,
    rng: Rng,
    pub nodes: Vec<NodeRec>,
    pub devs: Vec<DevRec>,
    pub cables: Vec<CableRec>,
    ctxs: BTreeMap<u64, CtxRec>,
    pds: BTreeMap<u64, PdRec>,
    mrs: BTreeMap<u64, MrRec>,
    keys: HashMap<(usize, u32), u64>,
    cqs: BTreeMap<u64, CqRec>,
    cq_addr: HashMap<usize, u64>,
    qps: BTreeMap<u32, QpRec>,
    timers: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    seq: u64,
    next_id: u64,
    next_qpn: u32,
    next_key_index: u32,
    trace: Vec<TraceEvent>,
    trace_dropped: u64,
    /// Something waiters care about changed (CQE or event queued).
    pub progress_dirty: bool,
    /// A timer earlier than the engine thread's wake-up was added.
    pub engine_kick: bool,
    /// When the engine thread plans to wake next.
    pub engine_sleep_until: Option<Instant>,
    pub shutdown: bool,
}

fn invalid(msg: impl Into<String>) -> VerbsError {
    VerbsError::InvalidArgument(msg.into())
}

/// Whether a GID is IPv4-mapped (`::ffff:a.b.c.d`).
fn is_v4_mapped(g: &[u8; 16]) -> bool {
    g[..10].iter().all(|b| *b == 0) && g[10] == 0xff && g[11] == 0xff
}

/// The IB RNR NAK timer table (code -> microseconds).
pub(crate) fn rnr_timer(code: u8) -> Duration {
    const US: [u64; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560,
        3_840, 5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880,
        163_840, 245_760, 327_680, 491_520,
    ];
    Duration::from_micros(US[usize::from(code.min(31))])
}

/// The local ACK timeout for an IB timeout exponent (0 = infinite).
pub(crate) fn ack_timeout(exponent: u8) -> Option<Duration> {
    if exponent == 0 {
        None
    } else {
        Some(Duration::from_nanos(4096u64 << exponent.min(31)))
    }
}

impl World {
    pub(crate) fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        // rdma_rxe numbers QPs from 17; start somewhere seeded above that.
        let next_qpn = 17 + (rng.next_u64() % 4096) as u32;
        let next_key_index = 1 + (rng.next_u64() % 1024) as u32;
        World {
            seed,
            rng,
            nodes: Vec::new(),
            devs: Vec::new(),
            cables: Vec::new(),
            ctxs: BTreeMap::new(),
            pds: BTreeMap::new(),
            mrs: BTreeMap::new(),
            keys: HashMap::new(),
            cqs: BTreeMap::new(),
            cq_addr: HashMap::new(),
            qps: BTreeMap::new(),
            timers: BinaryHeap::new(),
            seq: 0,
            next_id: 1,
            next_qpn,
            next_key_index,
            trace: Vec::new(),
            trace_dropped: 0,
            progress_dirty: false,
            engine_kick: false,
            engine_sleep_until: None,
            shutdown: false,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn record(&mut self, ev: TraceEvent) {
        if self.trace.len() < TRACE_MAX {
            self.trace.push(ev);
        } else {
            self.trace_dropped += 1;
        }
    }

    pub(crate) fn trace(&self) -> (Vec<TraceEvent>, u64) {
        (self.trace.clone(), self.trace_dropped)
    }

    pub(crate) fn note_fault(&mut self, what: String) {
        tracing::debug!(target: "peercm_verbs_shim::sim", "{what}");
        self.record(TraceEvent::Fault(what));
    }

    // ---------------------------------------------------------------- topology

    pub(crate) fn node_index(&self, name: &str) -> Result<usize, VerbsError> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| invalid(format!("no simulated node named {name:?}")))
    }

    pub(crate) fn dev_index(&self, node: &str, dev: &str) -> Result<usize, VerbsError> {
        let n = self.node_index(node)?;
        self.devs
            .iter()
            .position(|d| d.node == n && d.name == dev)
            .ok_or_else(|| VerbsError::NoSuchDevice(format!("{node}/{dev}")))
    }

    pub(crate) fn port_ref(
        &self,
        node: &str,
        dev: &str,
        port: u8,
    ) -> Result<(usize, u8), VerbsError> {
        let d = self.dev_index(node, dev)?;
        if port == 0 || usize::from(port) > self.devs[d].ports.len() {
            return Err(invalid(format!("{node}/{dev} has no port {port}")));
        }
        Ok((d, port))
    }

    fn port(&self, dev: usize, port: u8) -> Option<&PortRec> {
        self.devs
            .get(dev)?
            .ports
            .get(usize::from(port).checked_sub(1)?)
    }

    fn port_mut(&mut self, dev: usize, port: u8) -> Option<&mut PortRec> {
        self.devs
            .get_mut(dev)?
            .ports
            .get_mut(usize::from(port).checked_sub(1)?)
    }

    pub(crate) fn add_node(&mut self, name: &str) -> Result<(), VerbsError> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(invalid(format!("node {name:?} already exists")));
        }
        if self.nodes.len() >= 254 {
            return Err(invalid("at most 254 simulated nodes"));
        }
        self.nodes.push(NodeRec {
            name: name.to_string(),
            stalled: false,
        });
        Ok(())
    }

    pub(crate) fn add_device(
        &mut self,
        node: &str,
        name: &str,
        capacities_gbps: &[u32],
    ) -> Result<(), VerbsError> {
        let n = self.node_index(node)?;
        if self.devs.iter().any(|d| d.node == n && d.name == name) {
            return Err(invalid(format!("device {node}/{name} already exists")));
        }
        if capacities_gbps.is_empty() || capacities_gbps.len() > 8 {
            return Err(invalid(format!(
                "device {node}/{name}: 1 to 8 ports, not {}",
                capacities_gbps.len()
            )));
        }
        let index = self.devs.len() as u64;
        // Locally administered, unique by device index, seeded low bits.
        let guid =
            0x0200_5e00_0000_0000 | ((index & 0xffff) << 24) | (self.rng.next_u64() & 0xff_ffff);
        let ports = capacities_gbps
            .iter()
            .enumerate()
            .map(|(i, &cap)| {
                let num = i as u8 + 1;
                let mut ll = [0u8; 16];
                ll[0] = 0xfe;
                ll[1] = 0x80;
                ll[8..].copy_from_slice(&(guid ^ u64::from(num)).to_be_bytes());
                PortRec {
                    num,
                    capacity_gbps: cap,
                    admin_up: true,
                    cable: None,
                    gids: vec![ll],
                    active: false,
                }
            })
            .collect();
        self.devs.push(DevRec {
            node: n,
            name: name.to_string(),
            guid,
            ports,
            next_addr: 0x7f00_0000_0000 | (index << 32),
        });
        Ok(())
    }

    pub(crate) fn cable(&mut self, a: (usize, u8), b: (usize, u8)) -> Result<(), VerbsError> {
        let name = |w: &World, (d, p): (usize, u8)| {
            format!("{}/{}:{p}", w.nodes[w.devs[d].node].name, w.devs[d].name)
        };
        for end in [a, b] {
            if self.port(end.0, end.1).and_then(|p| p.cable).is_some() {
                return Err(invalid(format!(
                    "port {} already has a cable",
                    name(self, end)
                )));
            }
        }
        let (na, nb) = (self.devs[a.0].node, self.devs[b.0].node);
        if na == nb {
            // As on rdma_rxe: two HCAs in one host cannot reach each other.
            return Err(invalid(format!(
                "cable {} <-> {}: both ends on one node (devices in one host cannot talk to each other)",
                name(self, a),
                name(self, b)
            )));
        }
        let c = self.cables.len();
        if c >= 255 {
            return Err(invalid("at most 255 simulated cables"));
        }
        self.cables.push(CableRec {
            ends: [a, b],
            cut: false,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
        });
        for ((d, p), n) in [(a, na), (b, nb)] {
            let mut v4 = [0u8; 16];
            v4[10] = 0xff;
            v4[11] = 0xff;
            v4[12..].copy_from_slice(&[10, 77, c as u8 + 1, n as u8 + 1]);
            if let Some(port) = self.port_mut(d, p) {
                port.cable = Some(c);
                port.gids.truncate(1);
                port.gids.push(v4);
            }
        }
        self.refresh_ports();
        Ok(())
    }

    pub(crate) fn cable_of(&self, end: (usize, u8)) -> Result<usize, VerbsError> {
        self.port(end.0, end.1)
            .and_then(|p| p.cable)
            .ok_or_else(|| invalid("that port has no cable"))
    }

    pub(crate) fn port_state(&self, dev: usize, port: u8) -> PortState {
        match self.port(dev, port) {
            Some(p) if p.active => PortState::Active,
            _ => PortState::Down,
        }
    }

    fn port_is_active(&self, dev: usize, port: u8) -> bool {
        self.port(dev, port).is_some_and(|p| p.active)
    }

    /// Recomputes every port's effective state from admin state and cables, raising port
    /// events and failing the QPs of ports that went down.
    pub(crate) fn refresh_ports(&mut self) {
        for d in 0..self.devs.len() {
            for pi in 0..self.devs[d].ports.len() {
                let p = &self.devs[d].ports[pi];
                let active = p.admin_up && p.cable.is_some_and(|c| !self.cables[c].cut);
                if active == p.active {
                    continue;
                }
                let num = p.num;
                self.devs[d].ports[pi].active = active;
                if active {
                    self.push_dev_event(d, AsyncEvent::PortActive { port: num });
                } else {
                    self.push_dev_event(d, AsyncEvent::PortError { port: num });
                    let victims: Vec<u32> = self
                        .qps
                        .iter()
                        .filter(|(_, q)| {
                            q.dev == d
                                && q.port == num
                                && matches!(
                                    q.state,
                                    QpState::Rtr | QpState::Rts | QpState::Sqd | QpState::Sqe
                                )
                        })
                        .map(|(n, _)| *n)
                        .collect();
                    for qpn in victims {
                        self.fail(qpn, FailMode::Port);
                    }
                }
            }
        }
    }

    pub(crate) fn device_info(&self, dev: usize) -> DeviceInfo {
        let d = &self.devs[dev];
        DeviceInfo {
            name: d.name.clone(),
            guid: d.guid,
            ports: d.ports.iter().map(|p| self.port_info(p)).collect(),
        }
    }

    fn port_info(&self, p: &PortRec) -> PortInfo {
        PortInfo {
            port: p.num,
            state: if p.active {
                PortState::Active
            } else {
                PortState::Down
            },
            link_layer: LinkLayer::Ethernet,
            capacity_mbps: p.capacity_gbps.saturating_mul(1000),
            gids: p.gids.clone(),
        }
    }

    pub(crate) fn query_port(&self, dev: usize, port: u8) -> Result<PortInfo, VerbsError> {
        self.port(dev, port)
            .map(|p| self.port_info(p))
            .ok_or_else(|| invalid(format!("device {} has no port {port}", self.devs[dev].name)))
    }

    pub(crate) fn gid(&self, dev: usize, port: u8, index: u8) -> Result<[u8; 16], VerbsError> {
        let p = self
            .port(dev, port)
            .ok_or_else(|| invalid(format!("device {} has no port {port}", self.devs[dev].name)))?;
        p.gids.get(usize::from(index)).copied().ok_or_else(|| {
            invalid(format!(
                "GID index {index} of {}:{port} is not populated ({} entries)",
                self.devs[dev].name,
                p.gids.len()
            ))
        })
    }

    pub(crate) fn node_devices(&self, node: usize) -> Vec<usize> {
        (0..self.devs.len())
            .filter(|d| self.devs[*d].node == node)
            .collect()
    }

    // ---------------------------------------------------------------- objects

    pub(crate) fn open_ctx(&mut self, dev: usize) -> u64 {
        let id = self.id();
        self.ctxs.insert(
            id,
            CtxRec {
                dev,
                events: VecDeque::new(),
            },
        );
        id
    }

    pub(crate) fn close_ctx(&mut self, ctx: u64) {
        self.ctxs.remove(&ctx);
    }

    pub(crate) fn alloc_pd(&mut self, dev: usize, ctx: u64) -> u64 {
        let id = self.id();
        self.pds.insert(id, PdRec { dev, ctx });
        id
    }

    pub(crate) fn free_pd(&mut self, pd: u64) {
        self.pds.remove(&pd);
    }

    /// Registers a zeroed region; returns (id, key, addr).
    pub(crate) fn reg_mr(
        &mut self,
        pd: u64,
        len: usize,
        access: Access,
    ) -> Result<(u64, u32, u64), VerbsError> {
        let dev = self
            .pds
            .get(&pd)
            .ok_or_else(|| invalid("protection domain was freed"))?
            .dev;
        if access.intersects(Access::REMOTE_WRITE) && !access.contains(Access::LOCAL_WRITE) {
            // ibv_reg_mr: remote write requires local write (EINVAL).
            return Err(invalid(
                "REMOTE_WRITE access requires LOCAL_WRITE (as ibv_reg_mr)",
            ));
        }
        if len > (1 << 30) {
            return Err(invalid(format!(
                "simulated regions are limited to 1 GiB, not {len} bytes"
            )));
        }
        let key = loop {
            let index = self.next_key_index & 0x00ff_ffff;
            self.next_key_index = self.next_key_index.wrapping_add(1).max(1);
            let k = (index << 8) | (self.rng.next_u64() & 0xff) as u32;
            if !self.keys.contains_key(&(dev, k)) {
                break k;
            }
        };
        let addr = self.devs[dev].next_addr;
        let span = (len as u64).div_ceil(4096) * 4096 + 4096;
        self.devs[dev].next_addr = addr.wrapping_add(span);
        let id = self.id();
        self.mrs.insert(
            id,
            MrRec {
                dev,
                pd,
                addr,
                data: vec![0; len],
                access,
                key,
                registered: true,
            },
        );
        self.keys.insert((dev, key), id);
        Ok((id, key, addr))
    }

    pub(crate) fn mr_write(
        &mut self,
        mr: u64,
        offset: usize,
        data: &[u8],
    ) -> Result<(), VerbsError> {
        let m = self
            .mrs
            .get_mut(&mr)
            .ok_or_else(|| invalid("memory region is gone"))?;
        let end = offset
            .checked_add(data.len())
            .filter(|e| *e <= m.data.len())
            .ok_or_else(|| {
                invalid(format!(
                    "write of {} bytes at {offset} beyond a {}-byte region",
                    data.len(),
                    m.data.len()
                ))
            })?;
        m.data[offset..end].copy_from_slice(data);
        Ok(())
    }

    pub(crate) fn mr_read(
        &self,
        mr: u64,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u8>, VerbsError> {
        let m = self
            .mrs
            .get(&mr)
            .ok_or_else(|| invalid("memory region is gone"))?;
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= m.data.len())
            .ok_or_else(|| {
                invalid(format!(
                    "read of {len} bytes at {offset} beyond a {}-byte region",
                    m.data.len()
                ))
            })?;
        Ok(m.data[offset..end].to_vec())
    }

    /// Invalidates the region's keys; its bytes stay readable locally.
    pub(crate) fn deregister(&mut self, mr: u64) {
        if let Some(m) = self.mrs.get_mut(&mr) {
            if m.registered {
                m.registered = false;
                let k = (m.dev, m.key);
                self.keys.remove(&k);
            }
        }
    }

    pub(crate) fn drop_mr(&mut self, mr: u64) {
        self.deregister(mr);
        self.mrs.remove(&mr);
    }

    pub(crate) fn create_cq(
        &mut self,
        dev: usize,
        ctx: u64,
        depth: u32,
    ) -> Result<u64, VerbsError> {
        if depth == 0 || depth > MAX_CQE {
            return Err(invalid(format!("CQ depth {depth} outside 1..={MAX_CQE}")));
        }
        let id = self.id();
        self.cqs.insert(
            id,
            CqRec {
                dev,
                ctx,
                depth: depth as usize,
                entries: VecDeque::new(),
                efd: None,
                efd_tried: false,
                overflowed: false,
            },
        );
        Ok(id)
    }

    pub(crate) fn register_cq_addr(&mut self, addr: usize, cq: u64) {
        self.cq_addr.insert(addr, cq);
    }

    pub(crate) fn destroy_cq(&mut self, cq: u64, addr: usize) {
        self.cqs.remove(&cq);
        if self.cq_addr.get(&addr) == Some(&cq) {
            self.cq_addr.remove(&addr);
        }
    }

    pub(crate) fn cq_take(&mut self, cq: u64, max: usize) -> Vec<WorkCompletion> {
        let Some(c) = self.cqs.get_mut(&cq) else {
            return Vec::new();
        };
        let n = max.min(c.entries.len());
        let out: Vec<WorkCompletion> = c.entries.drain(..n).collect();
        if let Some(e) = &c.efd {
            e.drain();
            if !c.entries.is_empty() {
                e.signal();
            }
        }
        if c.entries.len() < c.depth {
            c.overflowed = false;
        }
        out
    }

    pub(crate) fn cq_has_entries(&self, cq: u64) -> bool {
        self.cqs.get(&cq).is_some_and(|c| !c.entries.is_empty())
    }

    pub(crate) fn cq_fd(&mut self, cq: u64) -> Option<std::os::fd::RawFd> {
        let c = self.cqs.get_mut(&cq)?;
        if !c.efd_tried {
            c.efd_tried = true;
            c.efd = EventFd::new();
            if let Some(e) = &c.efd {
                if !c.entries.is_empty() {
                    e.signal();
                }
            }
        }
        c.efd.as_ref().map(EventFd::raw)
    }

    pub(crate) fn next_event(&mut self, ctx: u64) -> Option<AsyncEvent> {
        self.ctxs.get_mut(&ctx)?.events.pop_front()
    }

    pub(crate) fn create_qp(
        &mut self,
        pd: u64,
        send_cq_addr: usize,
        recv_cq_addr: usize,
        caps: QpCaps,
    ) -> Result<u32, VerbsError> {
        let p = self
            .pds
            .get(&pd)
            .ok_or_else(|| invalid("protection domain was freed"))?;
        let (dev, ctx) = (p.dev, p.ctx);
        let lookup = |addr: usize, which: &str| -> Result<u64, VerbsError> {
            let id = *self.cq_addr.get(&addr).ok_or_else(|| {
                invalid(format!(
                    "{which} CQ does not belong to this simulated fabric"
                ))
            })?;
            match self.cqs.get(&id) {
                Some(c) if c.dev == dev => Ok(id),
                _ => Err(invalid(format!("{which} CQ belongs to another device"))),
            }
        };
        let send_cq = lookup(send_cq_addr, "send")?;
        let recv_cq = lookup(recv_cq_addr, "receive")?;
        if caps.max_send_wr == 0 || caps.max_send_wr > MAX_QP_WR || caps.max_recv_wr > MAX_QP_WR {
            return Err(invalid(format!(
                "QP caps: max_send_wr {} / max_recv_wr {} outside 1..={MAX_QP_WR}",
                caps.max_send_wr, caps.max_recv_wr
            )));
        }
        if caps.max_sge > 32 {
            return Err(invalid(format!("QP caps: max_sge {} > 32", caps.max_sge)));
        }
        let qpn = self.next_qpn;
        self.next_qpn += 1;
        if self.next_qpn >= 1 << 24 {
            self.next_qpn = 17;
        }
        let rng = Rng::derive(self.seed, u64::from(qpn));
        self.qps.insert(
            qpn,
            QpRec {
                dev,
                ctx,
                pd,
                send_cq,
                recv_cq,
                caps,
                state: QpState::Reset,
                port: 1,
                gid_index: 0,
                access: Access::empty(),
                remote: None,
                rq_psn: 0,
                sq_psn: 0,
                min_rnr_timer: rnr_timer(12),
                ack_timeout: ack_timeout(14),
                retry_count: 7,
                rnr_retry: 7,
                sq: VecDeque::new(),
                rq: VecDeque::new(),
                rng,
                kick_at: None,
            },
        );
        Ok(qpn)
    }

    pub(crate) fn destroy_qp(&mut self, qpn: u32) {
        // As ibv_destroy_qp: outstanding requests vanish without completions.
        self.qps.remove(&qpn);
    }

    pub(crate) fn qp(&self, qpn: u32) -> Result<&QpRec, VerbsError> {
        self.qps
            .get(&qpn)
            .ok_or_else(|| invalid(format!("QP {qpn:#x} was destroyed")))
    }

    fn qp_mut(&mut self, qpn: u32) -> Result<&mut QpRec, VerbsError> {
        self.qps
            .get_mut(&qpn)
            .ok_or_else(|| invalid(format!("QP {qpn:#x} was destroyed")))
    }

    pub(crate) fn qp_dev(&self, qpn: u32) -> Option<usize> {
        self.qps.get(&qpn).map(|q| q.dev)
    }

    pub(crate) fn modify_init(
        &mut self,
        qpn: u32,
        port: u8,
        access: Access,
    ) -> Result<(), VerbsError> {
        let dev = self.qp(qpn)?.dev;
        crate::qp_state::check(self.qp(qpn)?.state, QpState::Init)?;
        self.port(dev, port)
            .ok_or_else(|| invalid(format!("device {} has no port {port}", self.devs[dev].name)))?;
        let q = self.qp_mut(qpn)?;
        q.port = port;
        q.access = access;
        q.state = QpState::Init;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn modify_rtr(
        &mut self,
        qpn: u32,
        port: u8,
        gid_index: u8,
        mtu_bytes: u32,
        min_rnr_timer_code: u8,
        remote_gid: [u8; 16],
        remote_qpn: u32,
        remote_psn: u32,
    ) -> Result<(), VerbsError> {
        let dev = self.qp(qpn)?.dev;
        crate::qp_state::check(self.qp(qpn)?.state, QpState::Rtr)?;
        if !matches!(mtu_bytes, 256 | 512 | 1024 | 2048 | 4096) {
            return Err(invalid(format!(
                "path MTU {mtu_bytes} is not one of 256, 512, 1024, 2048, 4096"
            )));
        }
        if min_rnr_timer_code > 31 {
            return Err(invalid(format!(
                "min RNR timer code {min_rnr_timer_code} > 31"
            )));
        }
        if remote_qpn >= 1 << 24 {
            return Err(invalid(format!(
                "remote QPN {remote_qpn:#x} does not fit 24 bits"
            )));
        }
        // The source GID index must be populated (EINVAL from ibv_modify_qp otherwise); the
        // destination is not checked, as on hardware: an unreachable one shows up as retries.
        self.gid(dev, port, gid_index)?;
        let q = self.qp_mut(qpn)?;
        q.port = port;
        q.gid_index = gid_index;
        q.min_rnr_timer = rnr_timer(min_rnr_timer_code);
        q.remote = Some((remote_gid, remote_qpn));
        q.rq_psn = remote_psn & 0x00ff_ffff;
        q.state = QpState::Rtr;
        Ok(())
    }

    pub(crate) fn modify_rts(
        &mut self,
        qpn: u32,
        timeout_exponent: u8,
        retry_count: u8,
        rnr_retry: u8,
        psn: u32,
        now: Instant,
    ) -> Result<(), VerbsError> {
        let from = self.qp(qpn)?.state;
        crate::qp_state::check(from, QpState::Rts)?;
        if retry_count > 7 || rnr_retry > 7 {
            return Err(invalid(format!(
                "retry_count {retry_count} / rnr_retry {rnr_retry} outside 0..=7"
            )));
        }
        let q = self.qp_mut(qpn)?;
        q.ack_timeout = ack_timeout(timeout_exponent);
        q.retry_count = retry_count;
        q.rnr_retry = rnr_retry;
        if from == QpState::Rtr {
            q.sq_psn = psn & 0x00ff_ffff;
        }
        q.state = QpState::Rts;
        self.run_qp(qpn, now);
        Ok(())
    }

    pub(crate) fn modify_err(&mut self, qpn: u32) -> Result<(), VerbsError> {
        crate::qp_state::check(self.qp(qpn)?.state, QpState::Err)?;
        self.fail(qpn, FailMode::Flush);
        Ok(())
    }

    /// Injected fatal QP error: QP_FATAL event, QP to ERR, everything flushes.
    pub(crate) fn fail_qp_fatal(&mut self, qpn: u32) {
        self.fail(qpn, FailMode::Fatal);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn post_send(
        &mut self,
        qpn: u32,
        wr_id: u64,
        kind: SendKind,
        lkey: u32,
        offset: u64,
        len: u32,
        now: Instant,
    ) -> Result<(), VerbsError> {
        let q = self.qp(qpn)?;
        if !crate::qp_state::accepts_send(q.state) {
            return Err(VerbsError::WrongState {
                what: "send",
                state: q.state,
            });
        }
        let op = match kind {
            SendKind::Send { imm } => Op::Send { imm },
            SendKind::Write { addr, rkey, imm } => Op::Write { addr, rkey, imm },
            SendKind::Read { addr, rkey } => Op::Read { addr, rkey },
        };
        if q.state == QpState::Err {
            // As on hardware: a request posted to an errored QP completes at once, flushed.
            let (cq, qpn) = (q.send_cq, qpn);
            self.push_cqe(
                cq,
                WorkCompletion {
                    wr_id,
                    status: WcStatus::WrFlushErr,
                    opcode: op.opcode(),
                    byte_len: 0,
                    imm: None,
                    qpn,
                },
            );
            return Ok(());
        }
        if q.sq.len() >= q.caps.max_send_wr as usize {
            return Err(VerbsError::QueueFull("send"));
        }
        let (dev, port) = (q.dev, q.port);
        let (latency, jitter) = self
            .port(dev, port)
            .and_then(|p| p.cable)
            .map(|c| (self.cables[c].latency, self.cables[c].jitter))
            .unwrap_or_default();
        let q = self.qp_mut(qpn)?;
        let latency = if jitter.is_zero() {
            latency
        } else {
            let extra = q
                .rng
                .below_incl(u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX));
            latency + Duration::from_nanos(extra)
        };
        let psn = q.sq_psn;
        q.sq_psn = (q.sq_psn + 1) & 0x00ff_ffff;
        q.sq.push_back(SendEntry {
            wr_id,
            op,
            lkey,
            offset,
            len,
            psn,
            latency,
            not_before: now + latency,
            attempts: 0,
            rnr_naks: 0,
            awaiting_timeout: false,
            stuck: false,
            ack_at: None,
            read_data: None,
        });
        self.run_qp(qpn, now);
        Ok(())
    }

    pub(crate) fn post_recv(
        &mut self,
        qpn: u32,
        wr_id: u64,
        lkey: u32,
        offset: u64,
        len: u32,
    ) -> Result<(), VerbsError> {
        let q = self.qp(qpn)?;
        if !crate::qp_state::accepts_recv(q.state) {
            return Err(VerbsError::WrongState {
                what: "recv",
                state: q.state,
            });
        }
        if q.state == QpState::Err {
            let cq = q.recv_cq;
            self.push_cqe(
                cq,
                WorkCompletion {
                    wr_id,
                    status: WcStatus::WrFlushErr,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qpn,
                },
            );
            return Ok(());
        }
        if q.rq.len() >= q.caps.max_recv_wr as usize {
            return Err(VerbsError::QueueFull("recv"));
        }
        self.qp_mut(qpn)?.rq.push_back(RecvEntry {
            wr_id,
            lkey,
            offset,
            len,
        });
        Ok(())
    }

    // ---------------------------------------------------------------- events and completions

    fn push_cqe(&mut self, cq: u64, wc: WorkCompletion) {
        let Some(c) = self.cqs.get_mut(&cq) else {
            return;
        };
        let mut overflow_ctx = None;
        if c.entries.len() >= c.depth && !c.overflowed {
            // Hardware would drop the entry and fail the CQ; the simulator keeps the entry and
            // raises CQ_ERR once, so a test sees the overrun without losing data.
            c.overflowed = true;
            overflow_ctx = Some(c.ctx);
        }
        c.entries.push_back(wc);
        if let Some(e) = &c.efd {
            e.signal();
        }
        let dev = c.dev;
        self.progress_dirty = true;
        let (node, device) = self.names(dev);
        self.record(TraceEvent::Completion { node, device, wc });
        if let Some(ctx) = overflow_ctx {
            self.push_ctx_event(ctx, AsyncEvent::CqError);
        }
    }

    fn names(&self, dev: usize) -> (String, String) {
        let d = &self.devs[dev];
        (self.nodes[d.node].name.clone(), d.name.clone())
    }

    fn push_dev_event(&mut self, dev: usize, event: AsyncEvent) {
        for c in self.ctxs.values_mut().filter(|c| c.dev == dev) {
            if c.events.len() >= EVENTS_MAX {
                c.events.pop_front();
            }
            c.events.push_back(event);
        }
        self.progress_dirty = true;
        let (node, device) = self.names(dev);
        self.record(TraceEvent::Async {
            node,
            device,
            event,
        });
    }

    fn push_ctx_event(&mut self, ctx: u64, event: AsyncEvent) {
        let Some(c) = self.ctxs.get_mut(&ctx) else {
            return;
        };
        if c.events.len() >= EVENTS_MAX {
            c.events.pop_front();
        }
        c.events.push_back(event);
        let dev = c.dev;
        self.progress_dirty = true;
        let (node, device) = self.names(dev);
        self.record(TraceEvent::Async {
            node,
            device,
            event,
        });
    }

    // ---------------------------------------------------------------- the engine

    /// The earliest pending timer.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Runs every timer due at `now`.
    pub(crate) fn advance(&mut self, now: Instant) {
        while let Some(&Reverse((t, _, qpn))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(q) = self.qps.get_mut(&qpn) {
                if q.kick_at == Some(t) {
                    q.kick_at = None;
                }
            }
            self.run_qp(qpn, now);
        }
    }

    fn schedule(&mut self, qpn: u32, at: Instant) {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return;
        };
        if q.kick_at.is_some_and(|k| k <= at) {
            return; // an earlier kick will look again
        }
        q.kick_at = Some(at);
        self.seq += 1;
        self.timers.push(Reverse((at, self.seq, qpn)));
        if !matches!(self.engine_sleep_until, Some(s) if s <= at) {
            self.engine_kick = true;
        }
    }

    /// Moves one QP's send queue forward as far as `now` allows.
    fn run_qp(&mut self, qpn: u32, now: Instant) {
        for _ in 0..STEPS_MAX {
            let Some(q) = self.qps.get(&qpn) else {
                return;
            };
            if q.state != QpState::Rts {
                return; // SQD holds the queue; RTR/INIT/RESET have none; ERR flushed it
            }
            let front_ack = q.sq.front().and_then(|e| e.ack_at);
            if front_ack.is_some_and(|a| a <= now) {
                if !self.retire_front(qpn) {
                    return;
                }
                continue;
            }
            let Some(i) = q.sq.iter().position(|e| e.ack_at.is_none()) else {
                if let Some(a) = front_ack {
                    self.schedule(qpn, a);
                }
                return;
            };
            let e = &q.sq[i];
            if e.stuck || e.not_before > now {
                let next = if e.stuck { None } else { Some(e.not_before) };
                if let Some(w) = [next, front_ack].into_iter().flatten().min() {
                    self.schedule(qpn, w);
                }
                return;
            }
            if e.awaiting_timeout && q.retry_count != 7 && e.attempts > u32::from(q.retry_count) {
                // The first transmission and `retry_count` retransmissions all went unanswered.
                self.fail(qpn, FailMode::At(i, WcStatus::RetryExcErr));
                return;
            }
            match self.attempt(qpn, i, now) {
                Attempt::Delivered | Attempt::Wait => continue,
                Attempt::Fatal(status) => {
                    self.fail(qpn, FailMode::At(i, status));
                    return;
                }
            }
        }
        // Step limit: yield and come back at once.
        self.schedule(qpn, now);
    }

    /// Completes the (acknowledged) front request. `false` if the QP failed instead.
    fn retire_front(&mut self, qpn: u32) -> bool {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return false;
        };
        let Some(e) = q.sq.pop_front() else {
            return false;
        };
        let (dev, pd, cq) = (q.dev, q.pd, q.send_cq);
        let mut wc = WorkCompletion {
            wr_id: e.wr_id,
            status: WcStatus::Success,
            opcode: e.op.opcode(),
            byte_len: 0,
            imm: None,
            qpn,
        };
        if let (Op::Read { .. }, Some(data)) = (e.op, &e.read_data) {
            wc.byte_len = e.len;
            match self.local_mr(dev, pd, e.lkey, e.offset, e.len, true) {
                Some(mr) => self.scatter(mr, e.offset, data),
                None => {
                    // The target region went away between the read and its response.
                    if let Some(q) = self.qps.get_mut(&qpn) {
                        q.sq.push_front(e);
                    }
                    self.fail(qpn, FailMode::At(0, WcStatus::LocProtErr));
                    return false;
                }
            }
        }
        self.push_cqe(cq, wc);
        true
    }

    fn scatter(&mut self, mr: u64, offset: u64, data: &[u8]) {
        if let Some(m) = self.mrs.get_mut(&mr) {
            let o = offset as usize;
            if let Some(dst) = m.data.get_mut(o..o + data.len()) {
                dst.copy_from_slice(data);
            }
        }
    }

    /// The region an lkey names for a local access, if valid.
    fn local_mr(
        &self,
        dev: usize,
        pd: u64,
        lkey: u32,
        offset: u64,
        len: u32,
        write: bool,
    ) -> Option<u64> {
        let id = *self.keys.get(&(dev, lkey))?;
        let m = self.mrs.get(&id)?;
        let end = offset.checked_add(u64::from(len))?;
        (m.registered
            && m.pd == pd
            && end <= m.data.len() as u64
            && (!write || m.access.contains(Access::LOCAL_WRITE)))
        .then_some(id)
    }

    /// The region an rkey names for a remote access of `need`, if the QP and the region allow it.
    #[allow(clippy::too_many_arguments)]
    fn remote_mr(
        &self,
        dev: usize,
        pd: u64,
        qp_access: Access,
        rkey: u32,
        addr: Option<u64>,
        len: u32,
        need: Access,
    ) -> Option<(u64, usize)> {
        if !qp_access.contains(need) {
            return None;
        }
        let id = *self.keys.get(&(dev, rkey))?;
        let m = self.mrs.get(&id)?;
        let addr = addr?;
        let end = addr.checked_add(u64::from(len))?;
        let mr_end = m.addr + m.data.len() as u64;
        (m.registered && m.pd == pd && m.access.contains(need) && addr >= m.addr && end <= mr_end)
            .then(|| (id, (addr - m.addr) as usize))
    }

    /// Where a packet from (dev, port) addressed to `remote_gid` lands, if anywhere.
    fn route(
        &self,
        dev: usize,
        port: u8,
        gid_index: u8,
        remote_gid: &[u8; 16],
    ) -> Option<(usize, u8)> {
        let p = self.port(dev, port)?;
        let c = &self.cables[p.cable?];
        if c.cut {
            return None;
        }
        let peer = if c.ends[0] == (dev, port) {
            c.ends[1]
        } else {
            c.ends[0]
        };
        let pp = self.port(peer.0, peer.1)?;
        let local_gid = p.gids.get(usize::from(gid_index))?;
        // RoCEv2: an IPv4-mapped source reaches IPv4-mapped destinations, IPv6 reaches IPv6.
        (pp.active
            && is_v4_mapped(local_gid) == is_v4_mapped(remote_gid)
            && pp.gids.contains(remote_gid))
        .then_some(peer)
    }

    fn lost(&mut self, qpn: u32, i: usize, now: Instant) -> Attempt {
        if let Some(q) = self.qps.get_mut(&qpn) {
            let timeout = q.ack_timeout;
            if let Some(e) = q.sq.get_mut(i) {
                e.awaiting_timeout = true;
                match timeout {
                    Some(t) => e.not_before = now + t,
                    None => e.stuck = true, // infinite timeout: never retransmitted
                }
            }
        }
        Attempt::Wait
    }

    /// One transmission of request `i` (the first undelivered one).
    fn attempt(&mut self, qpn: u32, i: usize, now: Instant) -> Attempt {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return Attempt::Wait;
        };
        let Some(e) = q.sq.get_mut(i) else {
            return Attempt::Wait;
        };
        e.attempts += 1;
        e.awaiting_timeout = false;
        let (op, lkey, offset, len, psn, latency) =
            (e.op, e.lkey, e.offset, e.len, e.psn, e.latency);
        let (dev, port, pd, gid_index, remote) = (q.dev, q.port, q.pd, q.gid_index, q.remote);

        // 1. The local port must be up (rdma_rxe: the transmit fails, LOC_QP_OP_ERR).
        if !self.port_is_active(dev, port) {
            return Attempt::Fatal(WcStatus::LocQpOpErr);
        }
        // 2. The local buffer must be a valid registered range (checked at execution, as the
        //    hardware does; the post itself succeeded).
        let need_write = matches!(op, Op::Read { .. });
        let Some(local) = self.local_mr(dev, pd, lkey, offset, len, need_write) else {
            return Attempt::Fatal(WcStatus::LocProtErr);
        };
        let Some((remote_gid, remote_qpn)) = remote else {
            return self.lost(qpn, i, now);
        };
        // 3. The packet must reach the partner's port.
        let Some((pdev, _pport)) = self.route(dev, port, gid_index, &remote_gid) else {
            return self.lost(qpn, i, now);
        };
        if let Some(c) = self.port(dev, port).and_then(|p| p.cable) {
            let loss = self.cables[c].loss;
            if loss > 0.0 {
                let draw = self.qps.get_mut(&qpn).map_or(1.0, |q| q.rng.next_f64());
                if draw < loss {
                    return self.lost(qpn, i, now);
                }
            }
        }
        if self.nodes[self.devs[pdev].node].stalled {
            return self.lost(qpn, i, now);
        }
        // 4. A responder QP must accept it: right device, receiving state, connected back to
        //    us, expecting this PSN. Anything else is silently dropped, as rxe does.
        let Some(our_gid) = self
            .port(dev, port)
            .and_then(|p| p.gids.get(usize::from(gid_index)).copied())
        else {
            return self.lost(qpn, i, now);
        };
        let accepted = self.qps.get(&remote_qpn).is_some_and(|r| {
            r.dev == pdev
                && matches!(
                    r.state,
                    QpState::Rtr | QpState::Rts | QpState::Sqd | QpState::Sqe
                )
                && r.remote == Some((our_gid, qpn))
                && r.rq_psn == psn
        });
        if !accepted {
            return self.lost(qpn, i, now);
        }
        let payload = match op {
            Op::Send { .. } | Op::Write { .. } => self.mrs.get(&local).map(|m| {
                let o = offset as usize;
                m.data[o..o + len as usize].to_vec()
            }),
            Op::Read { .. } => None,
        };
        match self.respond(remote_qpn, op, payload.as_deref().unwrap_or(&[]), len) {
            Resp::Done(read_data) => {
                if let Some(r) = self.qps.get_mut(&remote_qpn) {
                    r.rq_psn = (r.rq_psn + 1) & 0x00ff_ffff;
                }
                if let Some(e) = self.qps.get_mut(&qpn).and_then(|q| q.sq.get_mut(i)) {
                    e.ack_at = Some(now + latency);
                    e.read_data = read_data;
                }
                Attempt::Delivered
            }
            Resp::Rnr(timer) => {
                let Some(q) = self.qps.get_mut(&qpn) else {
                    return Attempt::Wait;
                };
                let rnr_retry = q.rnr_retry;
                let Some(e) = q.sq.get_mut(i) else {
                    return Attempt::Wait;
                };
                if rnr_retry != 7 && e.rnr_naks >= u32::from(rnr_retry) {
                    return Attempt::Fatal(WcStatus::RnrRetryExcErr);
                }
                e.rnr_naks += 1;
                e.attempts = 0; // the responder answered
                e.not_before = now + timer + latency * 2;
                Attempt::Wait
            }
            Resp::Nak(status) => Attempt::Fatal(status),
        }
    }

    /// The responder's side of one request. Class C errors (bad rkey, bad length) move the
    /// responder QP to ERR too, as rdma_rxe does (`do_class_ac_error`).
    fn respond(&mut self, rqpn: u32, op: Op, payload: &[u8], len: u32) -> Resp {
        let Some(r) = self.qps.get(&rqpn) else {
            return Resp::Nak(WcStatus::RemOpErr);
        };
        let (rdev, rpd, raccess, rcq, timer) = (r.dev, r.pd, r.access, r.recv_cq, r.min_rnr_timer);
        let has_recv = !r.rq.is_empty();
        match op {
            Op::Send { imm } => {
                if !has_recv {
                    return Resp::Rnr(timer);
                }
                let Some(recv) = self.qps.get_mut(&rqpn).and_then(|r| r.rq.pop_front()) else {
                    return Resp::Rnr(timer);
                };
                let mut wc = WorkCompletion {
                    wr_id: recv.wr_id,
                    status: WcStatus::Success,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qpn: rqpn,
                };
                match self.local_mr(rdev, rpd, recv.lkey, recv.offset, recv.len, true) {
                    None => {
                        wc.status = WcStatus::LocProtErr;
                        self.push_cqe(rcq, wc);
                        self.fail(rqpn, FailMode::Flush);
                        Resp::Nak(WcStatus::RemOpErr)
                    }
                    Some(_) if len > recv.len => {
                        wc.status = WcStatus::LocLenErr;
                        self.push_cqe(rcq, wc);
                        self.fail(rqpn, FailMode::Flush);
                        Resp::Nak(WcStatus::RemInvReqErr)
                    }
                    Some(mr) => {
                        self.scatter(mr, recv.offset, payload);
                        wc.byte_len = len;
                        wc.imm = imm;
                        self.push_cqe(rcq, wc);
                        Resp::Done(None)
                    }
                }
            }
            Op::Write { addr, rkey, imm } => {
                if imm.is_some() && !has_recv {
                    return Resp::Rnr(timer); // rxe checks resources before the rkey
                }
                // A zero-length RDMA WRITE touches no memory, so (per the IB spec) its rkey is
                // not checked: it proves nothing about a fence.
                if len > 0 {
                    let Some((mr, off)) =
                        self.remote_mr(rdev, rpd, raccess, rkey, addr, len, Access::REMOTE_WRITE)
                    else {
                        self.fail(rqpn, FailMode::Flush);
                        return Resp::Nak(WcStatus::RemAccessErr);
                    };
                    self.scatter(mr, off as u64, payload);
                }
                if let Some(imm) = imm {
                    if let Some(recv) = self.qps.get_mut(&rqpn).and_then(|r| r.rq.pop_front()) {
                        self.push_cqe(
                            rcq,
                            WorkCompletion {
                                wr_id: recv.wr_id,
                                status: WcStatus::Success,
                                opcode: WcOpcode::RecvRdmaWithImm,
                                byte_len: len,
                                imm: Some(imm),
                                qpn: rqpn,
                            },
                        );
                    }
                }
                Resp::Done(None)
            }
            Op::Read { addr, rkey } => {
                if len == 0 {
                    return Resp::Done(Some(Vec::new()));
                }
                let Some((mr, off)) =
                    self.remote_mr(rdev, rpd, raccess, rkey, addr, len, Access::REMOTE_READ)
                else {
                    self.fail(rqpn, FailMode::Flush);
                    return Resp::Nak(WcStatus::RemAccessErr);
                };
                let data = self
                    .mrs
                    .get(&mr)
                    .map(|m| m.data[off..off + len as usize].to_vec());
                Resp::Done(data)
            }
        }
    }

    /// Moves a QP to ERR and completes everything outstanding.
    fn fail(&mut self, qpn: u32, mode: FailMode) {
        let Some(q) = self.qps.get_mut(&qpn) else {
            return;
        };
        q.state = QpState::Err;
        q.kick_at = None;
        let sq = std::mem::take(&mut q.sq);
        let rq = std::mem::take(&mut q.rq);
        let (dev, pd, scq, rcq, ctx) = (q.dev, q.pd, q.send_cq, q.recv_cq, q.ctx);
        for (k, e) in sq.into_iter().enumerate() {
            let status = match mode {
                FailMode::At(i, st) if k == i => st,
                FailMode::At(i, _) if k < i => WcStatus::Success,
                FailMode::Port if k == 0 => WcStatus::LocQpOpErr,
                _ => WcStatus::WrFlushErr,
            };
            let mut byte_len = 0;
            if status == WcStatus::Success {
                if let (Op::Read { .. }, Some(data)) = (e.op, &e.read_data) {
                    byte_len = e.len;
                    if let Some(mr) = self.local_mr(dev, pd, e.lkey, e.offset, e.len, true) {
                        self.scatter(mr, e.offset, data);
                    }
                }
            }
            self.push_cqe(
                scq,
                WorkCompletion {
                    wr_id: e.wr_id,
                    status,
                    opcode: e.op.opcode(),
                    byte_len,
                    imm: None,
                    qpn,
                },
            );
        }
        for r in rq {
            self.push_cqe(
                rcq,
                WorkCompletion {
                    wr_id: r.wr_id,
                    status: WcStatus::WrFlushErr,
                    opcode: WcOpcode::Recv,
                    byte_len: 0,
                    imm: None,
                    qpn,
                },
            );
        }
        if matches!(mode, FailMode::Fatal) {
            self.push_ctx_event(ctx, AsyncEvent::QpFatal { qpn });
        }
    }

    /// The QP numbered `qpn` on `node`, if any.
    pub(crate) fn find_qp(&self, node: usize, qpn: u32) -> Option<u32> {
        self.qps
            .get(&qpn)
            .filter(|q| self.devs.get(q.dev).is_some_and(|d| d.node == node))
            .map(|_| qpn)
    }
}

/// A send request with its remote half resolved.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SendKind {
    Send {
        imm: Option<u32>,
    },
    Write {
        addr: Option<u64>,
        rkey: u32,
        imm: Option<u32>,
    },
    Read {
        addr: Option<u64>,
        rkey: u32,
    },
}

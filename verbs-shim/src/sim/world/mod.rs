//! The fabric's whole state, [`World`]. Everything here runs under one mutex (held by
//! [`super::Inner`]), so every transfer, fault and completion happens atomically and in one
//! global order.
//!
//! The engine is IO-free in the quinn-proto sense: every entry point takes `now`, timers are
//! "kick this QP at time t" entries in a heap, and a spurious kick is a harmless no-op. Whoever
//! holds the lock drives it: API calls (post, poll, wait) and the fabric's engine thread.
//!
//! The world's methods are spread over its child modules, one job each:
//!
//! - [`topology`]: nodes, HCAs, ports, cables, GID tables, port state and routing.
//! - [`tables`]: the verbs objects' bookkeeping (contexts, PDs, MRs, CQs, QPs).
//! - [`qp`]: the QP verbs (state changes, posting) and the work-queue entries.
//! - [`engine`]: timers, moving a send queue forward, retiring requests, failing a QP.
//! - [`delivery`]: one transmission of a request and the responder's side (RC semantics).
//! - [`events`]: what waiters see: completions on CQs (with their eventfd) and async events.
//! - [`trace`]: the global record of everything observable.

mod delivery;
mod engine;
mod events;
mod qp;
mod tables;
mod topology;
mod trace;

pub(crate) use qp::SendKind;
pub use trace::TraceEvent;

use crate::error::VerbsError;
use crate::sim::rng::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::Instant;
use tables::{CqRec, CtxRec, MrRec, PdRec, QpRec};
use topology::{CableRec, DevRec, NodeRec};

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
}

//! The simulated backend: in-process HCAs with RC semantics, per-port capacity and seeded fault
//! injection, implementing the same [`crate::api`] traits as the real backend.
//!
//! # Building a fabric
//!
//! ```
//! use peercm_verbs_shim::sim::SimFabric;
//! let fabric = SimFabric::new(42);
//! fabric.add_node("n1").unwrap();
//! fabric.add_node("n2").unwrap();
//! fabric.add_device("n1", "rxe0", 25).unwrap();
//! fabric.add_device("n2", "rxe0", 25).unwrap();
//! fabric.cable(("n1", "rxe0", 1), ("n2", "rxe0", 1)).unwrap();
//! let provider = fabric.provider("n1"); // an Arc<dyn Provider> for node n1
//! assert_eq!(provider.devices().unwrap()[0].ports[0].capacity_mbits_per_s, 25_000);
//! ```
//!
//! `harness` (test code behind the `scenarios` feature) has the rest of what a test needs: an
//! in-memory `scenarios::Exchange`, a `scenarios::FaultInjector` backed by the fabric, a
//! standard two-node dual-rail fabric and a runner for both halves of a scenario.
//!
//! # What the simulator does, and how it mirrors rdma_rxe
//!
//! - **Ports and GIDs.** Every port has `capacity_gbps` (fixed at creation), link layer
//!   Ethernet, and a GID table like rxe's: index 0 is a link-local `fe80::` GID derived from the
//!   device GUID, index 1 (present once the port is cabled) the RoCEv2 IPv4-mapped
//!   `::ffff:10.77.<cable>.<node>`. A port is ACTIVE when it is cabled, the cable is intact and
//!   the port is administratively up; otherwise DOWN. Two devices of one node cannot be cabled
//!   together (as rxe devices in one host cannot reach each other).
//! - **Addressing.** RTR accepts any destination (as hardware does; only the *source* GID index
//!   must be populated). A request reaches the partner only through the local port's cable, to
//!   a GID of the far port, from a source GID of the same family (IPv4-mapped to IPv4-mapped,
//!   link-local to link-local) -- so `QpParams::gid_index` matters. The responder QP must be in
//!   RTR/RTS/SQD/SQE, connected back to (our GID, our QPN), and expect the request's PSN (PSNs
//!   advance by one per message). Anything else is dropped silently and the requester
//!   retransmits: after the first transmission and `retry_count` retries (each one ACK timeout,
//!   `4.096 us * 2^exponent` from [`crate::types::QpParams::ack_timeout_exponent`]) the request
//!   completes `RetryExcErr`. `retry_count = 7` retries forever, as on rxe; an ACK timeout of 0
//!   never retransmits (the request hangs, as on hardware).
//! - **RC semantics.** In-order delivery per QP. SEND consumes the responder's oldest posted
//!   receive; with none posted the requester gets RNR NAKs and retries after the responder's
//!   `min_rnr_timer` (IB table), `rnr_retry_count` times (7 = forever), then `RnrRetryExcErr`.
//!   RDMA WRITE / WRITE_WITH_IMM / READ need a registered rkey of the responder's PD, an
//!   in-bounds range, the right to it on both the MR and the responder QP (`REMOTE_WRITE` /
//!   `REMOTE_READ`); otherwise the requester gets `RemAccessErr`, the responder's memory is
//!   untouched, and -- as in rdma_rxe's class C handling -- *both* QPs go to ERR. A zero-length
//!   WRITE or READ checks no rkey (IB spec), so it proves nothing about a fence. WRITE_WITH_IMM
//!   also consumes a receive and completes it as `RecvRdmaWithImm` with the immediate and
//!   `byte_len`. A SEND larger than the receive buffer: `LocLenErr` at the responder,
//!   `RemInvReqErr` at the requester, both QPs to ERR.
//! - **Errors and flushing.** When a request fails, earlier (already delivered) requests
//!   complete successfully, the failed one carries the status, every later request and every
//!   posted receive completes `WrFlushErr`, and the QP is in ERR. Posting to a QP in ERR is
//!   accepted and completes `WrFlushErr` at once. Errored QPs stay errored: ERR -> INIT/RTR/RTS
//!   is rejected by [`crate::qp_state`], so a new QP is needed.
//! - **Local protection.** Local buffers are named by lkey and checked when the request
//!   *executes*, as hardware does: a bad lkey, a range beyond the MR, a PD mismatch or (for
//!   receives and READ targets) a region without `LOCAL_WRITE` completes `LocProtErr` and fails
//!   the QP. `post_send` / `post_recv` themselves only check the QP state (`WrongState`, exactly
//!   [`crate::qp_state::accepts_send`] / [`crate::qp_state::accepts_recv`]) and queue depth
//!   (`QueueFull`).
//! - **Memory regions.** `reg_mr` rejects `REMOTE_WRITE` without `LOCAL_WRITE`, as
//!   `ibv_reg_mr` does. `deregister()` (or dropping the last reference) removes the keys at
//!   once, so later remote accesses fail `RemAccessErr`; the bytes stay readable and writable
//!   locally through the object (it owns its buffer) until it is dropped. If the
//!   deregistration fails (injected), dropping leaks the region, as the real backend does.
//! - **Listing.** A provider lists every device of its node whatever its ports' states, as
//!   libibverbs does; a device with every port DOWN can be opened and watched, and hears
//!   `PortActive` when a port comes up.
//! - **Completion queues.** `poll`, `wait` (condition variable, no spinning) and
//!   `completion_fd`: a non-blocking eventfd (created on first call) that is readable while
//!   completions are queued; `poll` drains it and re-arms it if entries remain. Overrunning a
//!   CQ's depth raises `CqError` once; unlike hardware the entries are kept.
//! - **Async events** are per opened device (per `ibv_context`): port events go to every
//!   context of the device, `QpFatal` to the context that owns the QP.
//!
//! # Faults
//!
//! - [`SimFabric::cut_cable`] / [`SimFabric::restore_cable`]: both ends' ports go DOWN with a
//!   `PortError` event. Every QP on those ports in RTR/RTS/SQD/SQE goes to ERR at once: its
//!   oldest outstanding request completes `LocQpOpErr`, the rest `WrFlushErr` (rdma_rxe on
//!   `ip link set ... down`, as measured for docs/softroce-lane.md). A QP created or connected on a DOWN
//!   port fails its first request with `LocQpOpErr`. On restore: `PortActive`; errored QPs
//!   stay errored.
//! - [`SimFabric::set_port_down`] / [`SimFabric::set_port_up`]: one side only (`ip link set
//!   down` in one VM). The local side behaves as above; the partner's port stays ACTIVE and its
//!   QPs see nothing until they send, which then times out `RetryExcErr` after
//!   `(retry_count + 1) * ack timeout` of **real** time.
//! - [`SimFabric::fail_qp`]: QP to ERR, `QpFatal` event, everything flushes.
//! - [`SimFabric::fail_deregistrations`]: deregistering a region on a node fails; a region
//!   dropped meanwhile is leaked, still registered and reachable, as the real backend leaks it.
//! - [`SimFabric::hang_teardowns`]: destroying a QP or CQ and deregistering a region on a node
//!   block until released, as `rxe_destroy_qp` blocks while packets of the QP are held up
//!   ([`SimFabric::hung_teardowns`] counts the blocked calls).
//! - [`SimFabric::stall_responder`] / [`SimFabric::release_responder`]: a frozen node. Requests
//!   to it go unanswered (retransmitted; `RetryExcErr` if `retry_count < 7`); after release the
//!   next retransmission gets through.
//! - [`SimFabric::set_latency`] (one-way, plus seeded uniform jitter) and
//!   [`SimFabric::set_loss`] (seeded per-transmission loss, recovered by retransmission;
//!   [`SimFabric::set_loss_from`] for one direction only) per
//!   cable.
//!
//! # Time and determinism
//!
//! Time is **real** (`Instant`), not virtual: the API's blocking calls take real timeouts and
//! the scenario suite runs unchanged on rdma_rxe, so the simulator keeps the same clock. Tests
//! stay fast by choosing small ACK timeouts and RNR timers (e.g. exponent 8 = 1 ms). Timers are
//! kept in a heap and run, in due order, by whichever thread next touches the fabric or by a
//! per-fabric engine thread (so `completion_fd` works without anyone calling in); with zero
//! latency a request completes inside `post_send`.
//!
//! Randomness comes only from the seed: device GUIDs, memory keys, the first QPN, and per-QP
//! streams (derived from seed and QPN) for jitter and loss, so one QP's draws do not depend on
//! how other QPs interleave. The same seed and the same sequence of calls give the same
//! [`SimFabric::trace`] (see the determinism test in `tests/sim_semantics/determinism.rs`);
//! test helpers print the seed, and `PEERCM_SIM_SEED` overrides it
//! (`harness::seed_from_env`).

mod eventfd;
#[cfg(feature = "scenarios")]
pub mod harness;
mod objects;
mod rng;
mod world;

pub use world::TraceEvent;

use crate::api::Provider;
use crate::error::VerbsError;
use crate::types::PortState;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};
use world::World;

/// One port of the fabric: (node, device, port number from 1).
pub type PortAddr<'a> = (&'a str, &'a str, u8);

/// Longest the engine thread sleeps before checking whether the fabric is still in use.
const ENGINE_IDLE: Duration = Duration::from_millis(20);

pub(crate) struct Inner {
    world: Mutex<World>,
    /// Signalled when a completion or async event is queued.
    progress: Condvar,
    /// Signalled when a timer earlier than the engine's wake-up is added.
    engine: Condvar,
    /// Signalled when hung teardowns are released ([`SimFabric::hang_teardowns`]).
    teardown_gate: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, World> {
        // A panic while holding the lock cannot leave the world half-updated in a way that
        // matters more than losing the whole simulation, so keep going.
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes waiters and the engine if the last operation asked for it.
    fn finish(&self, w: &mut World) {
        if std::mem::take(&mut w.progress_dirty) {
            self.progress.notify_all();
        }
        if std::mem::take(&mut w.engine_kick) {
            self.engine.notify_all();
        }
    }

    /// Runs `f` on the world at the current time, with due timers run first.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut World, Instant) -> R) -> R {
        let mut w = self.lock();
        let now = Instant::now();
        w.advance(now);
        let r = f(&mut w, now);
        self.finish(&mut w);
        r
    }

    /// Blocks while teardowns on the object's node are made to hang
    /// ([`SimFabric::hang_teardowns`]); `node` finds the object's node. The world stays
    /// usable meanwhile (the wait releases its lock).
    pub(crate) fn teardown_gate(&self, node: impl FnOnce(&World) -> Option<usize>) {
        let mut w = self.lock();
        let Some(n) = node(&w) else {
            return;
        };
        if !w.nodes[n].hang_teardowns {
            return;
        }
        w.nodes[n].teardowns_hung += 1;
        while w.nodes[n].hang_teardowns {
            w = self
                .teardown_gate
                .wait(w)
                .unwrap_or_else(PoisonError::into_inner);
        }
        w.nodes[n].teardowns_hung -= 1;
    }

    /// Waits up to `timeout` until `ready` yields something, driving timers meanwhile.
    pub(crate) fn wait_for<R>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&mut World) -> Option<R>,
    ) -> Option<R> {
        let start = Instant::now();
        let deadline = start
            .checked_add(timeout)
            .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365));
        let mut w = self.lock();
        loop {
            let now = Instant::now();
            w.advance(now);
            self.finish(&mut w);
            if let Some(r) = ready(&mut w) {
                return Some(r);
            }
            if now >= deadline {
                return None;
            }
            let until = match w.next_due() {
                Some(t) if t < deadline => t,
                _ => deadline,
            };
            let pause = until
                .saturating_duration_since(now)
                .max(Duration::from_micros(1));
            w = match self.progress.wait_timeout(w, pause) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

fn engine_loop(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let mut w = inner.lock();
        if w.shutdown {
            return;
        }
        let now = Instant::now();
        w.advance(now);
        inner.finish(&mut w);
        let sleep = match w.next_due() {
            Some(t) => t.saturating_duration_since(now).min(ENGINE_IDLE),
            None => ENGINE_IDLE,
        };
        w.engine_sleep_until = Some(now + sleep);
        let mut w = match inner.engine.wait_timeout(w, sleep) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
        w.engine_sleep_until = None;
        drop(w);
        drop(inner); // so the fabric can go away while we are not looking
    }
}

/// A simulated RDMA fabric: nodes, devices with ports, cables, and the QPs, MRs and CQs
/// created through its providers. Cloning gives another handle to the same fabric.
#[derive(Clone)]
pub struct SimFabric {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SimFabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = self.inner.lock();
        f.debug_struct("SimFabric")
            .field("seed", &w.seed)
            .field("nodes", &w.nodes.len())
            .field("devices", &w.devs.len())
            .field("cables", &w.cables.len())
            .finish()
    }
}

impl SimFabric {
    /// An empty fabric whose random choices all derive from `seed`.
    pub fn new(seed: u64) -> Self {
        let inner = Arc::new(Inner {
            world: Mutex::new(World::new(seed)),
            progress: Condvar::new(),
            engine: Condvar::new(),
            teardown_gate: Condvar::new(),
        });
        let weak = Arc::downgrade(&inner);
        // Without the engine thread timers still run whenever anyone calls into the fabric;
        // only an idle completion fd would miss them.
        if let Err(e) = std::thread::Builder::new()
            .name("peercm-sim-engine".into())
            .spawn(move || engine_loop(weak))
        {
            tracing::warn!("simulated fabric without engine thread: {e}");
        }
        SimFabric { inner }
    }

    /// The seed this fabric was created with (print it when a test fails).
    pub fn seed(&self) -> u64 {
        self.inner.lock().seed
    }

    /// Adds a node (a host).
    pub fn add_node(&self, name: &str) -> Result<(), VerbsError> {
        self.inner.with(|w, _| w.add_node(name))
    }

    /// Adds a one-port device to `node`, its port of `capacity_gbps`.
    pub fn add_device(&self, node: &str, name: &str, capacity_gbps: u32) -> Result<(), VerbsError> {
        self.add_device_ports(node, name, &[capacity_gbps])
    }

    /// Adds a device with one port per entry of `capacities_gbps` (ports numbered from 1).
    pub fn add_device_ports(
        &self,
        node: &str,
        name: &str,
        capacities_gbps: &[u32],
    ) -> Result<(), VerbsError> {
        self.inner
            .with(|w, _| w.add_device(node, name, capacities_gbps))
    }

    /// Joins two ports with a cable: both get their IPv4-mapped GID and become ACTIVE (with a
    /// `PortActive` event for devices already open).
    pub fn cable(&self, a: PortAddr<'_>, b: PortAddr<'_>) -> Result<(), VerbsError> {
        self.inner.with(|w, _| {
            let a = w.port_ref(a.0, a.1, a.2)?;
            let b = w.port_ref(b.0, b.1, b.2)?;
            w.cable(a, b)
        })
    }

    /// The verbs provider of `node`. An unknown node has no devices (like a host without RDMA).
    pub fn provider(&self, node: &str) -> Arc<dyn Provider> {
        let index = self.inner.lock().node_index(node).ok();
        Arc::new(objects::SimProvider::new(self.inner.clone(), index, node))
    }

    /// The current state of one port.
    pub fn port_state(&self, port: PortAddr<'_>) -> Result<PortState, VerbsError> {
        self.inner.with(|w, _| {
            let (d, p) = w.port_ref(port.0, port.1, port.2)?;
            Ok(w.port_state(d, p))
        })
    }

    fn fault(
        &self,
        f: impl FnOnce(&mut World) -> Result<String, VerbsError>,
    ) -> Result<(), VerbsError> {
        self.inner.with(|w, _| {
            let what = f(w)?;
            w.note_fault(what);
            w.refresh_ports();
            Ok(())
        })
    }

    /// Cuts the cable at `end`: both ends' ports go DOWN (`PortError`), their QPs fail.
    pub fn cut_cable(&self, end: PortAddr<'_>) -> Result<(), VerbsError> {
        self.fault(|w| {
            let c = w.cable_of(w.port_ref(end.0, end.1, end.2)?)?;
            w.cables[c].cut = true;
            Ok(format!("cut cable {c} at {}/{}:{}", end.0, end.1, end.2))
        })
    }

    /// Repairs the cable at `end`: ports that are administratively up become ACTIVE again.
    pub fn restore_cable(&self, end: PortAddr<'_>) -> Result<(), VerbsError> {
        self.fault(|w| {
            let c = w.cable_of(w.port_ref(end.0, end.1, end.2)?)?;
            w.cables[c].cut = false;
            Ok(format!(
                "restore cable {c} at {}/{}:{}",
                end.0, end.1, end.2
            ))
        })
    }

    fn set_admin(&self, node: &str, dev: &str, port: u8, up: bool) -> Result<(), VerbsError> {
        self.fault(|w| {
            let (d, p) = w.port_ref(node, dev, port)?;
            w.devs[d].ports[usize::from(p) - 1].admin_up = up;
            Ok(format!(
                "port {node}/{dev}:{port} admin {}",
                if up { "up" } else { "down" }
            ))
        })
    }

    /// Takes one port administratively down (one side only; the partner's port stays ACTIVE).
    pub fn set_port_down(&self, node: &str, dev: &str, port: u8) -> Result<(), VerbsError> {
        self.set_admin(node, dev, port, false)
    }

    /// Brings a port administratively up again.
    pub fn set_port_up(&self, node: &str, dev: &str, port: u8) -> Result<(), VerbsError> {
        self.set_admin(node, dev, port, true)
    }

    /// Makes every deregistration of a region on `node` fail (`ibv_dereg_mr`, EBUSY) while
    /// `fail` is set, as a broken driver might: `deregister()` returns the error and changes
    /// nothing, and dropping the region leaks it (still registered, its bytes kept, its PD kept
    /// allocated), exactly as the real backend does (`crate::teardown`). A leaked region stays
    /// leaked when the failure is cleared.
    pub fn fail_deregistrations(&self, node: &str, fail: bool) -> Result<(), VerbsError> {
        self.inner.with(|w, _| {
            let n = w.node_index(node)?;
            w.nodes[n].fail_dereg = fail;
            w.note_fault(format!(
                "deregistrations on {node} {}",
                if fail { "fail" } else { "work again" }
            ));
            Ok(())
        })
    }

    /// Makes every teardown on `node` -- destroying a queue pair or a completion queue,
    /// deregistering a region (explicitly or by dropping it) -- block while `hang` is set, as
    /// `rxe_destroy_qp` blocks in the kernel for as long as packets of the QP are held up.
    /// Clearing it lets the blocked calls finish. See [`SimFabric::hung_teardowns`].
    pub fn hang_teardowns(&self, node: &str, hang: bool) -> Result<(), VerbsError> {
        self.inner.with(|w, _| {
            let n = w.node_index(node)?;
            w.nodes[n].hang_teardowns = hang;
            w.note_fault(format!(
                "teardowns on {node} {}",
                if hang { "hang" } else { "released" }
            ));
            Ok::<(), VerbsError>(())
        })?;
        if !hang {
            self.inner.teardown_gate.notify_all();
        }
        Ok(())
    }

    /// How many teardown calls on `node` are blocked by [`SimFabric::hang_teardowns`] now.
    pub fn hung_teardowns(&self, node: &str) -> Result<usize, VerbsError> {
        self.inner.with(|w, _| {
            let n = w.node_index(node)?;
            Ok(w.nodes[n].teardowns_hung)
        })
    }

    /// Injects a fatal error into QP `qpn` of `node`: ERR, `QpFatal` event, all flushed.
    pub fn fail_qp(&self, node: &str, qpn: u32) -> Result<(), VerbsError> {
        self.inner.with(|w, _| {
            let n = w.node_index(node)?;
            let q = w.find_qp(n, qpn).ok_or_else(|| {
                VerbsError::InvalidArgument(format!("node {node} has no QP {qpn:#x}"))
            })?;
            w.note_fault(format!("fail QP {qpn:#x} on {node}"));
            w.fail_qp_fatal(q);
            Ok(())
        })
    }

    fn set_stall(&self, node: &str, stalled: bool) -> Result<(), VerbsError> {
        self.inner.with(|w, _| {
            let n = w.node_index(node)?;
            w.nodes[n].stalled = stalled;
            w.note_fault(format!(
                "{} responder {node}",
                if stalled { "stall" } else { "release" }
            ));
            Ok(())
        })
    }

    /// Freezes `node` as a responder: requests to its QPs go unanswered until released.
    pub fn stall_responder(&self, node: &str) -> Result<(), VerbsError> {
        self.set_stall(node, true)
    }

    /// Lets `node` answer again; pending requests get through at their next retransmission.
    pub fn release_responder(&self, node: &str) -> Result<(), VerbsError> {
        self.set_stall(node, false)
    }

    /// Sets the one-way latency of the cable at `end` to `base` plus a seeded uniform jitter
    /// in `[0, jitter]`, drawn per request (order within a QP is kept).
    pub fn set_latency(
        &self,
        end: PortAddr<'_>,
        base: Duration,
        jitter: Duration,
    ) -> Result<(), VerbsError> {
        self.inner.with(|w, _| {
            let c = w.cable_of(w.port_ref(end.0, end.1, end.2)?)?;
            w.cables[c].latency = base;
            w.cables[c].jitter = jitter;
            w.note_fault(format!("cable {c} latency {base:?} + jitter {jitter:?}"));
            Ok(())
        })
    }

    /// Makes each transmission on the cable at `end` get lost with `probability` (seeded);
    /// lost requests are retransmitted after the ACK timeout.
    pub fn set_loss(&self, end: PortAddr<'_>, probability: f64) -> Result<(), VerbsError> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(VerbsError::InvalidArgument(format!(
                "loss probability {probability} outside 0..=1"
            )));
        }
        self.inner.with(|w, _| {
            let c = w.cable_of(w.port_ref(end.0, end.1, end.2)?)?;
            w.cables[c].loss = probability;
            w.note_fault(format!("cable {c} loss {probability}"));
            Ok(())
        })
    }

    /// Makes each transmission **leaving** `end` on its cable get lost with `probability`
    /// (seeded), on top of [`SimFabric::set_loss`]: one-directional loss. Requests that end's
    /// queue pairs send are lost (retransmitted after the ACK timeout, `RetryExcErr` in the
    /// end); the other end's requests still arrive and complete (the simulator does not model
    /// acknowledgements as packets of their own).
    pub fn set_loss_from(&self, end: PortAddr<'_>, probability: f64) -> Result<(), VerbsError> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(VerbsError::InvalidArgument(format!(
                "loss probability {probability} outside 0..=1"
            )));
        }
        self.inner.with(|w, _| {
            let at = w.port_ref(end.0, end.1, end.2)?;
            let c = w.cable_of(at)?;
            let from = usize::from(w.cables[c].ends[1] == at);
            w.cables[c].loss_from[from] = probability;
            w.note_fault(format!(
                "cable {c} loss {probability} from {}/{} port {}",
                end.0, end.1, end.2
            ));
            Ok(())
        })
    }

    /// Everything observable so far, in order (completions, async events, faults).
    pub fn trace(&self) -> Vec<TraceEvent> {
        self.inner.lock().trace().0
    }

    /// How many trace entries were dropped beyond the limit.
    pub fn trace_dropped(&self) -> u64 {
        self.inner.lock().trace().1
    }
}

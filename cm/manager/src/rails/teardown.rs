//! The reaper: every verbs call that can block -- destroying a queue pair, a completion queue
//! or a protection domain, deregistering a region (a link's, or a client region's on
//! invalidation), fencing a receive ring, moving a queue pair
//! to the error state -- runs here, on plain threads off the tokio runtime, never on the
//! manager task or on anything its heartbeats depend on.
//!
//! Why: on rdma_rxe, `ibv_destroy_qp` can block in the kernel (`rxe_destroy_qp` ->
//! `__rxe_cleanup`) for as long as packets of that queue pair are held up -- seconds after a
//! cable pull, for as long as a frozen partner stays frozen. A manager that waited for it sent
//! no heartbeat meanwhile, and its partner declared every link dead.
//!
//! How: the manager never owns a bare [`RdmaLink`] or [`PreparedLink`]; it holds them in
//! [`ReapedLink`] / [`ReapedPrepared`] guards whose `Drop` hands the object to the [`Reaper`]
//! instead of destroying it in place. Fencing is a [`Teardown::Fence`] request, answered with
//! [`RailDone::Fenced`]; the fenced link is then parked on the reaper's thread until it closes
//! or `[verbs] fence_park_ms` passes, and dropped there. The manager never waits on the reaper.
//!
//! A teardown that does not finish costs a thread and the object's memory, never liveness. It
//! is reported as stuck in the status once it has been busy for [`STUCK_AFTER`]. At most
//! [`MAX_BUSY_PER_DEVICE`] teardowns run at once per device: beyond that, further teardowns for
//! that device wait in a backlog (no more threads are spawned) and the device's rails are not
//! set up again until the count drops (`Rails::setup_job` refuses with
//! `RailSetupError::TeardownsStuck`).

use super::RailDone;
use peercm_cm_proto::session::LinkId;
use peercm_cm_rdma_link::{LinkCloseReason, LinkCloser, PreparedLink, RdmaLink};
use peercm_verbs_shim::MemoryRegion;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most teardowns running at once on one device; beyond that they wait in a backlog and the
/// device's rails stay down.
pub(crate) const MAX_BUSY_PER_DEVICE: usize = 8;

/// A teardown busy for this long is reported as stuck.
pub(crate) const STUCK_AFTER: Duration = Duration::from_secs(2);

/// One piece of work for the reaper.
pub(crate) enum Teardown {
    /// Close a link and free its resources.
    Link(RdmaLink),
    /// Free a link that was prepared but never connected.
    Prepared(Box<PreparedLink>),
    /// Move a link's queue pair to ERR; whoever owns the link frees it later.
    Fail(LinkCloser, LinkCloseReason),
    /// Deregister a client region's memory region (invalidation: the partner's writes with its
    /// rkey fail from then on), then drop it (`crate::regions::registration`, not wired into
    /// the manager yet).
    #[cfg_attr(not(test), allow(dead_code))]
    Region(Arc<dyn MemoryRegion>),
    /// Fence a link's receive ring, answer [`RailDone::Fenced`], keep the link until it closes
    /// or `park` passes, then free it.
    Fence {
        /// The link.
        link: RdmaLink,
        /// How long it stays parked at most.
        park: Duration,
    },
}

impl Teardown {
    fn what(&self) -> &'static str {
        match self {
            Teardown::Link(_) => "closing a link",
            Teardown::Prepared(_) => "freeing a prepared link",
            Teardown::Fail(..) => "moving a queue pair to ERR",
            Teardown::Fence { .. } => "fencing a link",
            Teardown::Region(_) => "invalidating a region",
        }
    }
}

/// A teardown running now.
struct Busy {
    device: String,
    what: &'static str,
    since: Instant,
}

#[derive(Default)]
struct State {
    busy: HashMap<u64, Busy>,
    backlog: VecDeque<(String, Teardown)>,
    next_id: u64,
}

impl State {
    fn busy_on(&self, device: &str) -> usize {
        self.busy.values().filter(|b| b.device == device).count()
    }

    fn start(&mut self, device: &str, what: &'static str) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.busy.insert(
            id,
            Busy {
                device: device.to_string(),
                what,
                since: Instant::now(),
            },
        );
        id
    }

    /// The first waiting teardown whose device has room, marked busy.
    fn next_ready(&mut self) -> Option<(u64, Teardown)> {
        let i = self
            .backlog
            .iter()
            .position(|(d, _)| self.busy_on(d) < MAX_BUSY_PER_DEVICE)?;
        let (device, job) = self.backlog.remove(i)?;
        let id = self.start(&device, job.what());
        Some((id, job))
    }
}

struct Inner {
    done: mpsc::UnboundedSender<RailDone>,
    state: Mutex<State>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stuck teardowns on one device, for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StuckTeardowns {
    /// The device.
    pub device: String,
    /// How many of its teardowns have been busy for at least [`STUCK_AFTER`].
    pub count: u32,
    /// What the oldest one is doing.
    pub oldest: &'static str,
    /// For how long, in milliseconds.
    pub oldest_ms: u64,
}

/// The teardown service. Cloning gives another handle to the same one. See the module docs.
#[derive(Clone)]
pub(crate) struct Reaper {
    inner: Arc<Inner>,
}

impl Reaper {
    /// A reaper that answers fences on `done`.
    pub fn new(done: mpsc::UnboundedSender<RailDone>) -> Self {
        Reaper {
            inner: Arc::new(Inner {
                done,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Hands `job` for `device` over; never blocks. It runs on a thread of its own unless
    /// [`MAX_BUSY_PER_DEVICE`] teardowns of that device are running, then it waits for one
    /// of them to finish.
    pub fn submit(&self, device: &str, job: Teardown) {
        let id = {
            let mut st = self.inner.state();
            if st.busy_on(device) >= MAX_BUSY_PER_DEVICE {
                tracing::warn!(
                    device,
                    busy = MAX_BUSY_PER_DEVICE,
                    "RDMA teardowns are stuck on this device: queued behind them"
                );
                st.backlog.push_back((device.to_string(), job));
                return;
            }
            st.start(device, job.what())
        };
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("peercm-reaper".into())
            .spawn(move || run(&inner, id, job));
        if let Err(e) = spawned {
            // The job (and the object in it) was dropped by the failed spawn, here.
            tracing::error!(device, error = %e, "cannot start a teardown thread");
            self.inner.state().busy.remove(&id);
        }
    }

    /// Teardowns running now on `device` (stuck or not).
    pub fn busy_on(&self, device: &str) -> usize {
        self.inner.state().busy_on(device)
    }

    /// Devices with teardowns busy for at least [`STUCK_AFTER`], by device name.
    pub fn stuck(&self, now: Instant) -> Vec<StuckTeardowns> {
        let st = self.inner.state();
        let mut by_device: BTreeMap<&str, StuckTeardowns> = BTreeMap::new();
        for b in st.busy.values() {
            let age = now.saturating_duration_since(b.since);
            if age < STUCK_AFTER {
                continue;
            }
            let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            let e = by_device
                .entry(b.device.as_str())
                .or_insert_with(|| StuckTeardowns {
                    device: b.device.clone(),
                    count: 0,
                    oldest: b.what,
                    oldest_ms: age_ms,
                });
            e.count += 1;
            if age_ms > e.oldest_ms {
                e.oldest = b.what;
                e.oldest_ms = age_ms;
            }
        }
        by_device.into_values().collect()
    }
}

/// A teardown thread: runs its job, then whatever waits in the backlog and has room.
fn run(inner: &Arc<Inner>, id: u64, job: Teardown) {
    let (mut id, mut job) = (id, job);
    loop {
        execute(inner, id, job);
        match inner.state().next_ready() {
            Some((next_id, next)) => (id, job) = (next_id, next),
            None => return,
        }
    }
}

/// Runs one job; `id` is its busy entry, removed when it is done.
fn execute(inner: &Arc<Inner>, id: u64, job: Teardown) {
    match job {
        Teardown::Link(link) => {
            link.close();
            drop(link);
        }
        Teardown::Prepared(p) => drop(p),
        Teardown::Region(mr) => {
            // A failed deregistration is logged (and the region leaked) by the MR's drop.
            if let Err(error) = mr.deregister() {
                tracing::error!(%error, "invalidating a region failed");
            }
            drop(mr);
        }
        Teardown::Fail(closer, reason) => {
            closer.fail(reason);
            drop(closer);
        }
        Teardown::Fence { link, park } => {
            let link_id = link.id();
            let res = link.fence().map_err(|e| e.to_string());
            let fenced = res.is_ok();
            let _ = inner.done.send(RailDone::Fenced { link: link_id, res });
            if fenced {
                // Parked: not busy while it waits for the zombie's next WRITE (or the park).
                let device = {
                    let mut st = inner.state();
                    st.busy.remove(&id).map(|b| b.device)
                };
                let _ = link.wait_closed(park);
                let id = inner
                    .state()
                    .start(device.as_deref().unwrap_or("?"), "freeing a fenced link");
                drop(link);
                inner.state().busy.remove(&id);
                return;
            }
            drop(link);
        }
    }
    inner.state().busy.remove(&id);
}

/// An [`RdmaLink`] the manager holds: dropping the guard hands the link to the [`Reaper`].
pub(crate) struct ReapedLink {
    link: Option<RdmaLink>,
    id: LinkId,
    device: String,
    reaper: Reaper,
}

impl ReapedLink {
    /// Guards `link`.
    pub fn new(link: RdmaLink, reaper: Reaper) -> Self {
        ReapedLink {
            id: link.id(),
            device: link.device().to_string(),
            link: Some(link),
            reaper,
        }
    }

    /// The link, unless it was handed to the reaper already (never, while the guard lives).
    pub fn get(&self) -> Option<&RdmaLink> {
        self.link.as_ref()
    }

    /// The link id.
    pub fn id(&self) -> LinkId {
        self.id
    }

    /// The local device.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Closes the link for `reason` on the reaper (moving the queue pair to ERR is a verbs
    /// call); the guard keeps the link until it is dropped.
    pub fn fail(&self, reason: LinkCloseReason) {
        if let Some(l) = &self.link {
            self.reaper
                .submit(&self.device, Teardown::Fail(l.closer(), reason));
        }
    }

    /// Hands the link to the reaper to be fenced and parked for `park`
    /// ([`Teardown::Fence`]); the answer comes back as [`RailDone::Fenced`].
    pub fn fence(mut self, park: Duration) {
        if let Some(link) = self.link.take() {
            self.reaper
                .submit(&self.device, Teardown::Fence { link, park });
        }
    }
}

impl Drop for ReapedLink {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            self.reaper.submit(&self.device, Teardown::Link(link));
        }
    }
}

/// A [`PreparedLink`] the manager holds: dropping the guard hands it to the [`Reaper`].
pub(crate) struct ReapedPrepared {
    prepared: Option<Box<PreparedLink>>,
    device: String,
    reaper: Reaper,
}

impl ReapedPrepared {
    /// Guards `prepared`, which lives on `device`.
    pub fn new(prepared: Box<PreparedLink>, device: String, reaper: Reaper) -> Self {
        ReapedPrepared {
            prepared: Some(prepared),
            device,
            reaper,
        }
    }

    /// Takes the prepared link out (to connect it): the guard no longer reaps it.
    pub fn take(mut self) -> Option<Box<PreparedLink>> {
        self.prepared.take()
    }
}

impl Drop for ReapedPrepared {
    fn drop(&mut self) {
        if let Some(p) = self.prepared.take() {
            self.reaper.submit(&self.device, Teardown::Prepared(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_only_releases_jobs_whose_device_has_room() {
        let mut st = State::default();
        for _ in 0..MAX_BUSY_PER_DEVICE {
            st.start("rxe0", "closing a link");
        }
        assert_eq!(st.busy_on("rxe0"), MAX_BUSY_PER_DEVICE);
        assert_eq!(st.busy_on("rxe1"), 0);
        let (tx, _rx) = mpsc::unbounded_channel();
        let reaper = Reaper::new(tx);
        let mut guard = reaper.inner.state();
        guard.busy = std::mem::take(&mut st.busy);
        guard.next_id = st.next_id;
        drop(guard);
        assert!(reaper.inner.state().next_ready().is_none());
        assert_eq!(reaper.busy_on("rxe0"), MAX_BUSY_PER_DEVICE);
        assert!(reaper.stuck(Instant::now()).is_empty());
        let later = Instant::now() + STUCK_AFTER;
        let stuck = reaper.stuck(later);
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].device, "rxe0");
        assert_eq!(stuck[0].count as usize, MAX_BUSY_PER_DEVICE);
    }
}

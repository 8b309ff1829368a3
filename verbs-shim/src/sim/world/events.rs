//! What waiters see: work completions queued on CQs (each CQ's eventfd readable while entries
//! wait) and async events queued on opened device contexts, both recorded in the trace.

use super::trace::TraceEvent;
use super::World;
use crate::sim::eventfd::EventFd;
use crate::types::{AsyncEvent, WorkCompletion};

/// Most unread async events kept per opened device (the oldest are dropped beyond this).
const EVENTS_MAX: usize = 1024;

impl World {
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

    pub(super) fn push_cqe(&mut self, cq: u64, wc: WorkCompletion) {
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

    pub(super) fn push_dev_event(&mut self, dev: usize, event: AsyncEvent) {
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

    pub(super) fn push_ctx_event(&mut self, ctx: u64, event: AsyncEvent) {
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
}

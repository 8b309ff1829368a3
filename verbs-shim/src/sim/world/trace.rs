//! The fabric's trace: every observable thing (completions, async events, faults) in global
//! order, so two runs with the same seed and the same calls can be compared.

use super::World;
use crate::types::{AsyncEvent, WorkCompletion};

/// Most trace entries kept (older ones are counted, not kept).
pub(crate) const TRACE_MAX: usize = 100_000;

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

impl World {
    pub(super) fn record(&mut self, ev: TraceEvent) {
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

    pub(super) fn names(&self, dev: usize) -> (String, String) {
        let d = &self.devs[dev];
        (self.nodes[d.node].name.clone(), d.name.clone())
    }
}

//! The simulator's own semantics: the kernel's QP state table, posting rules, RC delivery and
//! its failure modes (RNR, retries, access errors), faults, completion fds, and determinism.
//! Each test prints its seed (override with PEERCM_SIM_SEED).
//!
//! One module per area, all sharing the fixture in `common.rs` (a connected QP pair on the
//! standard fabric, and completion / event helpers). Timing goals (how fast something happens
//! in real time) are not asserted here; they are measured by `benches/sim_timing.rs`.

#![allow(clippy::unwrap_used)]

mod addressing;
mod common;
mod completion_fd;
mod determinism;
mod mapped;
mod ports_and_faults;
mod rc_delivery;
mod state_machine;
mod teardown;

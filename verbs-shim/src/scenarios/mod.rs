//! The scenario suite shared by both backends: each scenario is written once against the
//! [`crate::api`] traits and run by two sides (client and server), each on its own node.
//!
//! - In `cargo test` both sides run in one process on the simulated fabric, joined by an
//!   in-memory [`Exchange`], with faults injected through the simulator.
//! - In the soft-RoCE lane each side runs in its own VM on rdma_rxe, joined by a TCP
//!   [`Exchange`] over the emulated fabric, with faults injected by taking a NIC down.
//!
//! The [`Exchange`] is the bootstrap channel of the real system: the sides swap QP endpoints
//! and memory-region keys over it ("slam connect"), then talk only through verbs.
//!
//! A scenario returns an [`Outcome`] with measured details (counts, statuses, timings) or a
//! [`ScenarioError`] saying exactly which expectation failed.
//!
//! # The suite ([`all`])
//!
//! | name | what it checks |
//! |---|---|
//! | `ping_pong` | SENDs both ways with receives pre-posted, contents and immediates checked; round trips per second |
//! | `rdma_write` | the client writes a pattern into the server's MR; the server verifies it after "done" |
//! | `write_with_imm` | the server gets `RecvRdmaWithImm` with the right immediate and length, data in its MR |
//! | `rdma_read` | the client reads a pattern out of the server's MR |
//! | `bad_rkey` | a WRITE with a wrong rkey completes `RemAccessErr`, the next one flushes, the server's MR is untouched |
//! | `deregistered_mr` | after the server deregisters its MR a WRITE completes `RemAccessErr` (the fencing primitive) |
//! | `cable_cut` | two HCAs: cutting HCA0 raises `PortError`, fails QP0's requests, QP1 keeps working, restore raises `PortActive` and a fresh QP on HCA0 works |
//!
//! # Rules every scenario follows
//!
//! - Only the client injects faults, and the server's assertions hold whether the fault took
//!   both ends down (simulated cable cut) or only the client's port (rdma_rxe admin-down).
//! - Receives are posted before the QP is connected, and the sides meet at a `READY` message
//!   before the first SEND, so no scenario depends on RNR retries or on the partner's timing.
//! - Every wait is bounded ([`STEP_TIMEOUT`] and friends); every failure names what was
//!   expected and what happened. A side that fails tells its partner (an `ABORT` message), so
//!   the partner fails at once instead of timing out.
//! - Messages on the [`Exchange`] are `[kind: u8][payload]`; endpoints and memory keys use the
//!   fixed little-endian layouts of [`encode_endpoint`] and [`encode_remote_mr`].
//!
//! # Layout
//!
//! - `harness.rs`: what a scenario runs with and returns ([`Env`], [`Side`], [`Outcome`],
//!   [`ScenarioError`]), the [`Exchange`] and [`FaultInjector`] traits, and the runner that
//!   wraps each side (timing, details, telling the partner on failure).
//! - `hca.rs`: opening an HCA, creating and connecting QPs, reading CQs.
//! - `wire.rs`: the message kinds and the endpoint / memory-key layouts on the [`Exchange`].
//! - One file per scenario, named after it.

mod bad_rkey;
mod cable_cut;
mod deregistered_mr;
mod harness;
mod hca;
mod ping_pong;
mod rdma_read;
mod rdma_write;
mod wire;
mod write_with_imm;

pub use bad_rkey::bad_rkey;
pub use cable_cut::cable_cut;
pub use deregistered_mr::deregistered_mr;
pub use harness::{
    Env, Exchange, FaultInjector, HcaSel, Outcome, Scenario, ScenarioError, Side, EVENT_TIMEOUT,
    STEP_TIMEOUT,
};
pub use ping_pong::ping_pong;
pub use rdma_read::rdma_read;
pub use rdma_write::rdma_write;
pub use wire::{
    decode_endpoint, decode_remote_mr, encode_endpoint, encode_remote_mr, ENDPOINT_WIRE_LEN,
    REMOTE_MR_WIRE_LEN,
};
pub use write_with_imm::write_with_imm;

/// Every scenario, in the order the lanes run them.
pub fn all() -> Vec<(&'static str, Scenario)> {
    vec![
        ("ping_pong", ping_pong as Scenario),
        ("rdma_write", rdma_write),
        ("write_with_imm", write_with_imm),
        ("rdma_read", rdma_read),
        ("bad_rkey", bad_rkey),
        ("deregistered_mr", deregistered_mr),
        ("cable_cut", cable_cut),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suite_has_unique_names() {
        let names: Vec<&str> = all().iter().map(|(n, _)| *n).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert!(names.contains(&"cable_cut"));
    }
}

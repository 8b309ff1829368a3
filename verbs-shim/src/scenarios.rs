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

use crate::api::Provider;
use crate::types::QpParams;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The bootstrap side channel between the two sides of a scenario.
pub trait Exchange: Send {
    /// Sends one message.
    fn send(&mut self, msg: &[u8]) -> std::io::Result<()>;
    /// Receives one message, waiting at most `timeout`.
    fn recv(&mut self, timeout: Duration) -> std::io::Result<Vec<u8>>;
}

/// Cuts and restores the cable of one HCA (by index into [`Env::hcas`]) on this side.
pub trait FaultInjector: Send {
    /// Takes the HCA's link down.
    fn cut(&mut self, hca: usize) -> Result<(), String>;
    /// Brings it back.
    fn restore(&mut self, hca: usize) -> Result<(), String>;
}

/// Which half of a scenario this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Initiates the traffic and owns the fault injection.
    Client,
    /// Answers.
    Server,
}

/// One HCA (device + port + GID index) to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcaSel {
    /// Device name.
    pub device: String,
    /// Port.
    pub port: u8,
    /// GID index addressing the partner.
    pub gid_index: u8,
}

/// What a scenario runs with.
pub struct Env {
    /// Where devices come from.
    pub provider: Arc<dyn Provider>,
    /// The HCAs to use, in cable order (two for the cable-cut scenario).
    pub hcas: Vec<HcaSel>,
    /// This side.
    pub side: Side,
    /// Fault injection for this side.
    pub faults: Box<dyn FaultInjector>,
    /// QP parameters (ports and GID indexes are overridden per HCA).
    pub params: QpParams,
}

/// What a scenario measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Scenario name.
    pub name: &'static str,
    /// Measured details, as name/value pairs for the log.
    pub details: Vec<(String, String)>,
    /// Wall time of this side.
    pub elapsed: Duration,
}

/// A scenario expectation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("scenario {scenario} ({side:?}): {what}")]
pub struct ScenarioError {
    /// Scenario name.
    pub scenario: &'static str,
    /// Side.
    pub side: Side,
    /// What failed.
    pub what: String,
}

/// A scenario: run by both sides with the same name.
pub type Scenario = fn(&mut Env, &mut dyn Exchange) -> Result<Outcome, ScenarioError>;

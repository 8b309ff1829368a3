//! What the link-level verbs scenarios (`one_sided`, `rekey`) share: running the server or the
//! client side as one scenario outcome, the link configuration for the first HCA, and the
//! out-of-band exchange steps with a deadline each.

use peercm_cm_rdma_link::RdmaLinkConfig;
use peercm_verbs_shim::scenarios::{Env, Exchange, Outcome, ScenarioError, Side};
use std::time::{Duration, Instant};

/// How long one exchange step may take.
pub const STEP: Duration = Duration::from_secs(60);

/// One side of a scenario: its details, or what went wrong.
pub type SidePart = fn(&mut Env, &mut dyn Exchange) -> Result<Vec<(String, String)>, String>;

/// The side's part of scenario `name`, as an outcome (its details) or the error naming it.
pub fn run_side(
    name: &'static str,
    env: &mut Env,
    ex: &mut dyn Exchange,
    server: SidePart,
    client: SidePart,
) -> Result<Outcome, ScenarioError> {
    let t0 = Instant::now();
    let side = env.side;
    let details = match side {
        Side::Server => server(env, ex),
        Side::Client => client(env, ex),
    }
    .map_err(|what| ScenarioError {
        scenario: name,
        side,
        what,
    })?;
    Ok(Outcome {
        name,
        details,
        elapsed: t0.elapsed(),
    })
}

/// A link configuration on the first HCA's port and GID.
pub fn cfg(env: &Env) -> Result<RdmaLinkConfig, String> {
    let h = env.hcas.first().ok_or("no HCA")?;
    Ok(RdmaLinkConfig {
        port: h.port,
        gid_index: h.gid_index,
        ..RdmaLinkConfig::default()
    })
}

/// The partner's next exchange message.
pub fn recv(ex: &mut dyn Exchange, what: &str) -> Result<Vec<u8>, String> {
    ex.recv(STEP)
        .map_err(|e| format!("waiting for {what}: {e}"))
}

/// Sends an exchange message.
pub fn send(ex: &mut dyn Exchange, msg: &[u8]) -> Result<(), String> {
    ex.send(msg).map_err(|e| format!("exchange: {e}"))
}

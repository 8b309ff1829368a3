//! What a test needs to run the scenario suite (or anything else two-sided) on the simulator:
//! an in-memory [`Exchange`], a [`FaultInjector`] backed by the fabric, the standard two-node
//! dual-rail fabric, and a runner that plays both halves of a scenario on two threads.

use super::SimFabric;
use crate::error::VerbsError;
use crate::scenarios::{
    Env, Exchange, FaultInjector, HcaSel, Outcome, Scenario, ScenarioError, Side,
};
use crate::types::QpParams;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

/// The environment variable that overrides test seeds (decimal or `0x` hex).
pub const SEED_VAR: &str = "PEERCM_SIM_SEED";

/// The seed to use: `PEERCM_SIM_SEED` if set and valid, else `default`. Printed to stderr so a
/// failing test's output always names the seed to rerun with.
pub fn seed_from_env(default: u64) -> u64 {
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|s| {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        })
        .unwrap_or(default);
    eprintln!("simulated fabric seed = {seed:#x} (rerun with {SEED_VAR}={seed:#x})");
    seed
}

/// One end of an in-memory bootstrap channel.
#[derive(Debug)]
pub struct MemExchange {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
}

impl MemExchange {
    /// Two connected ends.
    pub fn pair() -> (MemExchange, MemExchange) {
        let (atx, brx) = channel();
        let (btx, arx) = channel();
        (
            MemExchange { tx: atx, rx: arx },
            MemExchange { tx: btx, rx: brx },
        )
    }
}

impl Exchange for MemExchange {
    fn send(&mut self, msg: &[u8]) -> std::io::Result<()> {
        self.tx.send(msg.to_vec()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the partner's end is gone")
        })
    }

    fn recv(&mut self, timeout: Duration) -> std::io::Result<Vec<u8>> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no message within {timeout:?}"),
            ),
            RecvTimeoutError::Disconnected => std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the partner's end is gone",
            ),
        })
    }
}

/// How [`SimFaults`] takes an HCA's link down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// Only this side's port goes down (`ip link set eth0 down` in one VM, as the soft-RoCE
    /// lane does): the partner's port stays ACTIVE.
    PortDown,
    /// The cable is cut: both ends go down.
    CutCable,
}

/// A [`FaultInjector`] for one node, acting on the fabric.
#[derive(Debug, Clone)]
pub struct SimFaults {
    fabric: SimFabric,
    node: String,
    hcas: Vec<HcaSel>,
    mode: FaultMode,
}

impl SimFaults {
    /// Faults on `node`'s `hcas` (indexes as in [`Env::hcas`]).
    pub fn new(fabric: &SimFabric, node: &str, hcas: &[HcaSel], mode: FaultMode) -> Self {
        SimFaults {
            fabric: fabric.clone(),
            node: node.to_string(),
            hcas: hcas.to_vec(),
            mode,
        }
    }

    fn act(&mut self, hca: usize, down: bool) -> Result<(), String> {
        let h = self
            .hcas
            .get(hca)
            .ok_or_else(|| format!("no HCA {hca}: this side has {}", self.hcas.len()))?;
        let end = (self.node.as_str(), h.device.as_str(), h.port);
        let r = match (self.mode, down) {
            (FaultMode::PortDown, true) => self.fabric.set_port_down(end.0, end.1, end.2),
            (FaultMode::PortDown, false) => self.fabric.set_port_up(end.0, end.1, end.2),
            (FaultMode::CutCable, true) => self.fabric.cut_cable(end),
            (FaultMode::CutCable, false) => self.fabric.restore_cable(end),
        };
        r.map_err(|e| format!("{:?} on {}/{}:{}: {e}", self.mode, end.0, end.1, end.2))
    }
}

impl FaultInjector for SimFaults {
    fn cut(&mut self, hca: usize) -> Result<(), String> {
        self.act(hca, true)
    }

    fn restore(&mut self, hca: usize) -> Result<(), String> {
        self.act(hca, false)
    }
}

/// Capacities of the standard fabric's devices: rxe0 and rxe1 on every node.
pub const STANDARD_CAPACITY_GBPS: [u32; 2] = [25, 100];

/// The standard test fabric: nodes `n1` and `n2`, devices `rxe0` (25 Gb/s) and `rxe1`
/// (100 Gb/s) on each, one cable per device pair (`n1/rxe0:1 <-> n2/rxe0:1`, same for rxe1).
pub fn standard_fabric(seed: u64) -> Result<SimFabric, VerbsError> {
    let f = SimFabric::new(seed);
    for n in ["n1", "n2"] {
        f.add_node(n)?;
        f.add_device(n, "rxe0", STANDARD_CAPACITY_GBPS[0])?;
        f.add_device(n, "rxe1", STANDARD_CAPACITY_GBPS[1])?;
    }
    f.cable(("n1", "rxe0", 1), ("n2", "rxe0", 1))?;
    f.cable(("n1", "rxe1", 1), ("n2", "rxe1", 1))?;
    Ok(f)
}

/// The standard fabric's HCAs, in cable order, addressed through the RoCEv2 IPv4 GID (index 1).
pub fn standard_hcas() -> Vec<HcaSel> {
    ["rxe0", "rxe1"]
        .into_iter()
        .map(|d| HcaSel {
            device: d.to_string(),
            port: 1,
            gid_index: 1,
        })
        .collect()
}

/// QP parameters that keep simulated failures fast: 1 ms ACK timeout (exponent 8), 3 retries,
/// RNR retries forever with a 0.01 ms RNR timer.
pub fn fast_params() -> QpParams {
    QpParams {
        ack_timeout_us: 1_000,
        retry_count: 3,
        rnr_retry_count: 7,
        min_rnr_timer_code: 1,
        ..QpParams::default()
    }
}

/// The results of both halves of one scenario run.
#[derive(Debug)]
pub struct PairResult {
    /// The client's half.
    pub client: Result<Outcome, ScenarioError>,
    /// The server's half.
    pub server: Result<Outcome, ScenarioError>,
}

/// Runs both halves of `scenario` on the fabric, the client on `client_node` (with faults of
/// `mode`), the server on `server_node`, each on its own thread, joined by a [`MemExchange`].
/// A half that panics is reported as a [`ScenarioError`].
pub fn run_pair(
    fabric: &SimFabric,
    nodes: (&str, &str),
    hcas: &[HcaSel],
    params: QpParams,
    mode: FaultMode,
    name: &'static str,
    scenario: Scenario,
) -> PairResult {
    let (mut cx, mut sx) = MemExchange::pair();
    let make_env = |node: &str, side: Side| Env {
        provider: fabric.provider(node),
        hcas: hcas.to_vec(),
        side,
        faults: Box::new(SimFaults::new(fabric, node, hcas, mode)),
        params,
    };
    let mut cenv = make_env(nodes.0, Side::Client);
    let mut senv = make_env(nodes.1, Side::Server);
    let joined = |side: Side, r: std::thread::Result<Result<Outcome, ScenarioError>>| {
        r.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(ScenarioError {
                scenario: name,
                side,
                what: format!("panicked: {what}"),
            })
        })
    };
    std::thread::scope(|s| {
        let server = s.spawn(move || scenario(&mut senv, &mut sx));
        let client = s.spawn(move || scenario(&mut cenv, &mut cx));
        let client = joined(Side::Client, client.join());
        let server = joined(Side::Server, server.join());
        PairResult { client, server }
    })
}

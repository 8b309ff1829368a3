//! What a scenario runs with and returns, and the runner around each side: the [`Exchange`]
//! and [`FaultInjector`] traits, [`Env`], [`Side`], [`Outcome`], [`ScenarioError`], the
//! per-side context ([`Ctx`]: messages to the partner, measured details) and the helpers that
//! check and report (byte patterns, formatting of figures).

use super::wire::{kind_name, K_ABORT, K_READY};
use crate::api::Provider;
use crate::types::QpParams;
use std::sync::Arc;
use std::time::{Duration, Instant};
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

/// Longest wait for one exchange message or one completion.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for an async event (rdma_rxe raises port events within ~50 ms).
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who is failing, for error messages.
#[derive(Clone, Copy)]
pub(super) struct At {
    scenario: &'static str,
    side: Side,
}

impl At {
    pub(super) fn err(self, what: impl Into<String>) -> ScenarioError {
        ScenarioError {
            scenario: self.scenario,
            side: self.side,
            what: what.into(),
        }
    }
}

pub(super) trait OrFail<T> {
    fn or_fail(self, at: At, what: &str) -> Result<T, ScenarioError>;
}

impl<T, E: std::fmt::Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, at: At, what: &str) -> Result<T, ScenarioError> {
        self.map_err(|e| at.err(format!("{what}: {e}")))
    }
}

pub(super) struct Ctx<'a> {
    pub(super) at: At,
    ex: &'a mut dyn Exchange,
    details: Vec<(String, String)>,
    partner_failed: bool,
}

impl Ctx<'_> {
    pub(super) fn detail(&mut self, name: &str, value: impl std::fmt::Display) {
        self.details.push((name.to_string(), value.to_string()));
    }

    pub(super) fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), ScenarioError> {
        let mut m = Vec::with_capacity(payload.len() + 1);
        m.push(kind);
        m.extend_from_slice(payload);
        match self.ex.send(&m) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The partner may have hung up because it failed: say why if it told us.
                if let Ok(m) = self.ex.recv(Duration::ZERO) {
                    if let Some((&K_ABORT, why)) = m.split_first() {
                        self.partner_failed = true;
                        return Err(self.at.err(format!(
                            "the partner failed before this side could send {}: {}",
                            kind_name(kind),
                            String::from_utf8_lossy(why)
                        )));
                    }
                }
                Err(self
                    .at
                    .err(format!("sending {} to the partner: {e}", kind_name(kind))))
            }
        }
    }

    /// Receives the next message, which must be of `kind`.
    pub(super) fn recv(&mut self, kind: u8, what: &str) -> Result<Vec<u8>, ScenarioError> {
        let at = self.at;
        let m = self.ex.recv(STEP_TIMEOUT).or_fail(
            at,
            &format!("waiting for {} ({what}) from the partner", kind_name(kind)),
        )?;
        match m.split_first() {
            Some((&K_ABORT, why)) => {
                self.partner_failed = true;
                Err(at.err(format!(
                    "the partner failed while this side waited for {} ({what}): {}",
                    kind_name(kind),
                    String::from_utf8_lossy(why)
                )))
            }
            Some((&k, payload)) if k == kind => Ok(payload.to_vec()),
            Some((&k, _)) => Err(at.err(format!(
                "expected {} ({what}) from the partner, got {}",
                kind_name(kind),
                kind_name(k)
            ))),
            None => Err(at.err(format!(
                "expected {} ({what}), got an empty message",
                kind_name(kind)
            ))),
        }
    }

    /// Both sides say `label` and expect the other to have said the same.
    pub(super) fn sync(&mut self, label: &str) -> Result<(), ScenarioError> {
        self.send(K_READY, label.as_bytes())?;
        let got = self.recv(K_READY, label)?;
        if got != label.as_bytes() {
            return Err(self.at.err(format!(
                "out of step: this side is at {label:?}, the partner at {:?}",
                String::from_utf8_lossy(&got)
            )));
        }
        Ok(())
    }

    pub(super) fn send_u64s(&mut self, kind: u8, values: &[u64]) -> Result<(), ScenarioError> {
        let b: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.send(kind, &b)
    }

    pub(super) fn recv_u64s(
        &mut self,
        kind: u8,
        what: &str,
        n: usize,
    ) -> Result<Vec<u64>, ScenarioError> {
        let b = self.recv(kind, what)?;
        if b.len() != n * 8 {
            return Err(self.at.err(format!(
                "{what}: expected {n} numbers ({} bytes), got {} bytes",
                n * 8,
                b.len()
            )));
        }
        Ok(b.chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                u64::from_le_bytes(a)
            })
            .collect())
    }
}

/// Runs one side's body with the plumbing: timing, details, and telling the partner on failure.
pub(super) fn run(
    scenario: &'static str,
    env: &mut Env,
    ex: &mut dyn Exchange,
    body: impl FnOnce(&mut Ctx<'_>, &mut Env) -> Result<(), ScenarioError>,
) -> Result<Outcome, ScenarioError> {
    let started = Instant::now();
    let mut ctx = Ctx {
        at: At {
            scenario,
            side: env.side,
        },
        ex,
        details: Vec::new(),
        partner_failed: false,
    };
    match body(&mut ctx, env) {
        Ok(()) => Ok(Outcome {
            name: scenario,
            details: ctx.details,
            elapsed: started.elapsed(),
        }),
        Err(e) => {
            if !ctx.partner_failed {
                let mut m = vec![K_ABORT];
                m.extend_from_slice(e.what.as_bytes());
                // Best effort: the partner may be gone already.
                let _ = ctx.ex.send(&m);
            }
            Err(e)
        }
    }
}

/// Deterministic bytes for `tag` (xorshift), so both sides can compute what to expect.
pub(super) fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Checks `got == want`, naming the first differing offset.
pub(super) fn same_bytes(at: At, what: &str, got: &[u8], want: &[u8]) -> Result<(), ScenarioError> {
    if got.len() != want.len() {
        return Err(at.err(format!(
            "{what}: expected {} bytes, got {}",
            want.len(),
            got.len()
        )));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => Err(at.err(format!(
            "{what}: bytes differ from offset {i} (expected {:#04x}, got {:#04x})",
            want[i], got[i]
        ))),
    }
}

pub(super) fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

pub(super) fn per_s(count: usize, d: Duration) -> String {
    format!("{:.0}", count as f64 / d.as_secs_f64().max(1e-9))
}

pub(super) fn mb_per_s(bytes: usize, d: Duration) -> String {
    format!("{:.1}", bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9))
}

//! The run: every scenario in order, each in its own thread (a hang is reported, a panic fails
//! only that scenario), in lockstep with the peer (`begin` / `end`), with the links healed and
//! checked between scenarios; then the totals and the JSON report.

use super::args::{side_name, Args};
use super::conn::Conn;
use super::exchange::ScenarioExchange;
use super::faults::{heal_links, LinkFaults};
use super::hca::Hca;
use super::results::{Report, ScenarioResult};
use super::setup::{Ready, Suite};
use super::stamp;
use crate::cli::{EXIT_FAILED, EXIT_NOT_RUN, EXIT_PASSED};
use crate::report::{one_line, totals_line};
use peercm_verbs_shim::scenarios::{Env, Scenario};
use peercm_verbs_shim::types::QpParams;
use std::collections::BTreeSet;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// One side's run: its settings and what it found so far.
pub struct Run {
    pub args: Args,
    pub t0: Instant,
    pub results: Vec<ScenarioResult>,
    pub hcas: Vec<Hca>,
    pub error: Option<String>,
}

type Ran = (ScenarioExchange, Result<Vec<(String, String)>, String>);

/// Runs one scenario in its own thread so a hang can be reported; gives the exchange back.
fn run_scenario(
    f: Scenario,
    mut env: Env,
    mut ex: ScenarioExchange,
    timeout: Duration,
) -> Result<Ran, String> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("scenario".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut env, &mut ex)));
            let r = match r {
                Ok(Ok(outcome)) => Ok(outcome.details),
                Ok(Err(e)) => Err(one_line(&e.what)),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    Err(format!("panicked: {}", one_line(&msg)))
                }
            };
            drop(env);
            let _ = tx.send((ex, r));
        })
        .map_err(|e| format!("cannot start the scenario thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok((ex, r)) => {
            let _ = spawned.join();
            Ok((ex, r))
        }
        Err(_) => Err(format!(
            "did not finish within {} s (--scenario-timeout)",
            timeout.as_secs()
        )),
    }
}

impl Run {
    pub fn new(args: Args, t0: Instant) -> Run {
        Run {
            args,
            t0,
            results: Vec::new(),
            hcas: Vec::new(),
            error: None,
        }
    }

    /// Prints the totals, writes the JSON report; returns the exit status.
    pub fn finish(&self, code_if_failed: u8) -> u8 {
        let side = self.args.side;
        let passed = self.results.iter().filter(|r| r.pass).count();
        let failed = self.results.len() - passed;
        if let Some(e) = &self.error {
            println!("verbs-lane {}: ERROR {e}", side_name(side));
        }
        let who = format!("verbs-lane {}", side_name(side));
        println!("{}", totals_line(&who, passed, failed));
        if let Some(p) = &self.args.json {
            let report = Report {
                side,
                hcas: &self.hcas,
                error: self.error.as_deref(),
                results: &self.results,
                wall: self.t0.elapsed(),
            };
            if let Err(e) = report.write(p) {
                eprintln!("verbs-lane: cannot write {}: {e}", p.display());
                return EXIT_NOT_RUN;
            }
        }
        if failed > 0 || self.results.is_empty() || self.error.is_some() {
            code_if_failed
        } else {
            EXIT_PASSED
        }
    }

    /// Marks every scenario from `from` on as failed with `why`, printing each line.
    pub fn fail_rest(&mut self, suite: &Suite, from: usize, why: &str) {
        for (name, _) in suite.iter().skip(from) {
            let r = ScenarioResult::fail(name, format!("not run: {why}"));
            println!("{}", r.line(self.args.side));
            self.results.push(r);
        }
    }

    /// Runs the suite with the peer; returns the exit status.
    pub fn run_suite(mut self, suite: &Suite, ready: Ready) -> u8 {
        let Ready {
            mut conn,
            provider,
            hcas,
        } = ready;
        let (t0, side) = (self.t0, self.args.side);
        self.hcas = hcas.clone();
        let hcas = Arc::new(hcas);
        let heal = LinkFaults {
            hcas: hcas.clone(),
            down: Arc::new(Mutex::new(BTreeSet::new())),
            log: Arc::new(Mutex::new(Vec::new())),
            t0,
        };
        let step_timeout = self.args.scenario_timeout + Duration::from_secs(30);

        let mut i = 0usize;
        while i < suite.len() {
            let (name, f) = suite[i];
            let idx = i as u32;
            // Every port ACTIVE with its GID before each scenario.
            let pre_notes = match heal_links(&heal) {
                Ok(n) => n,
                Err(e) => {
                    let why = format!("links not usable before the scenario: {e}");
                    self.fail_rest(suite, i, &why);
                    break;
                }
            };
            let begin = format!("begin {idx} {name}");
            if let Err(e) = conn
                .send_ctl(&begin)
                .and_then(|()| conn.wait_ctl(&begin, step_timeout))
            {
                let why = format!("the peer did not begin {name}: {e}");
                self.fail_rest(suite, i, &why);
                break;
            }
            eprintln!("[verbs-lane {}] begin {name}", stamp(t0));
            let params = QpParams {
                port: hcas[0].sel.port,
                gid_index: hcas[0].sel.gid_index,
                ..QpParams::default()
            };
            let env = Env {
                provider: provider.clone(),
                hcas: hcas.iter().map(|h| h.sel.clone()).collect(),
                side,
                faults: Box::new(heal.share()),
                params,
            };
            let ex = ScenarioExchange {
                conn,
                index: idx,
                peer_end: None,
            };
            let started = Instant::now();
            let (ex, outcome) = match run_scenario(f, env, ex, self.args.scenario_timeout) {
                Ok(v) => v,
                Err(why) => {
                    // The scenario thread is stuck holding the exchange: report, undo cuts, quit.
                    let mut r = ScenarioResult::fail(name, why);
                    r.ms = started.elapsed().as_millis();
                    println!("{}", r.line(side));
                    self.results.push(r);
                    if let Err(e) = heal_links(&heal) {
                        eprintln!("verbs-lane: could not restore the links: {e}");
                    }
                    self.fail_rest(suite, i + 1, &format!("scenario {name} did not finish"));
                    std::process::exit(i32::from(self.finish(EXIT_FAILED)));
                }
            };
            let ms = started.elapsed().as_millis();
            conn = ex.conn;
            let mut notes = pre_notes;
            match heal_links(&heal) {
                Ok(n) => notes.extend(n),
                Err(e) => notes.push(format!("links not restored: {e}")),
            }
            let mut r = match outcome {
                Ok(details) => {
                    let text = details
                        .iter()
                        .map(|(k, v)| format!("{k}={}", one_line(v)))
                        .collect::<Vec<_>>()
                        .join(" ");
                    ScenarioResult {
                        name: name.to_string(),
                        pass: true,
                        text,
                        details,
                        ms,
                        peer: None,
                        notes,
                    }
                }
                Err(what) => ScenarioResult {
                    name: name.to_string(),
                    pass: false,
                    text: what,
                    details: Vec::new(),
                    ms,
                    peer: None,
                    notes,
                },
            };
            let lost = exchange_verdicts(&mut conn, idx, name, &mut r, step_timeout);
            eprintln!("[verbs-lane {}] end {name}", stamp(t0));
            println!("{}", r.line(side));
            self.results.push(r);
            i += 1;
            if let Some(e) = lost {
                self.fail_rest(suite, i, &format!("lost the peer: {e}"));
                break;
            }
        }
        let _ = conn.send_ctl("bye");
        let code = self.finish(EXIT_FAILED);
        drop(provider);
        code
    }
}

/// `end <i> <name> <verdict>` both ways: records the peer's verdict in `r`; gives the error if
/// the peer is lost.
fn exchange_verdicts(
    conn: &mut Conn,
    idx: u32,
    name: &str,
    r: &mut ScenarioResult,
    timeout: Duration,
) -> Option<String> {
    let verdict = if r.pass {
        "PASS".to_string()
    } else {
        format!("FAIL {}", one_line(&r.text))
    };
    let end_prefix = format!("end {idx} ");
    let peer_end = conn
        .send_ctl(&format!("end {idx} {name} {verdict}"))
        .and_then(|()| conn.wait_ctl(&end_prefix, timeout));
    match peer_end {
        Ok(m) => {
            let v = m.splitn(4, ' ').nth(3).unwrap_or("?").to_string();
            r.peer = Some(v);
            None
        }
        Err(e) => {
            r.peer = Some(format!("unknown ({e})"));
            Some(e.to_string())
        }
    }
}

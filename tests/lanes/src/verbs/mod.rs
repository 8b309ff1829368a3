//! `verbs-lane`: runs the shared verbs scenario suite (`peercm_verbs_shim::scenarios::all`,
//! then the lane's own `link_one_sided`: one-sided writes over an RDMA link, `one_sided`, and
//! `link_region_rekey`: a region's old rkey fenced by a re-registration, `rekey`) on
//! real RDMA devices (rdma_rxe in the soft-RoCE lane, see docs/softroce-lane.md) as ONE side of
//! each scenario. The other side is a second `verbs-lane` process, normally in another VM:
//!
//! ```text
//! verbs-lane --side server --listen 10.77.99.2:18600 --hca rxe0:1:1 --hca rxe1:1:1
//! verbs-lane --side client --peer   10.77.99.2:18600 --hca rxe0:1:1 --hca rxe1:1:1
//! ```
//!
//! - The exchange (`conn`, `exchange`) is one TCP connection carrying length-prefixed
//!   frames. Control frames keep both sides in lockstep (`hello`, then `begin <i> <name>` /
//!   `end <i> <name> <verdict>` around every scenario); data frames carry the scenario's own
//!   messages, tagged with the scenario index so a frame left over from a failed scenario can
//!   never reach the next one. When one side finishes a scenario (pass or fail) while the other
//!   still waits for a message, the waiting side's `recv` fails at once instead of timing out.
//! - The fault injector (`faults`) takes the HCA's netdev administratively down/up (what
//!   `ip link set` does, through `/sys/class/net/<netdev>/flags` so no process start blurs the
//!   timings), which raises PORT_ERR and fails the HCA's QPs at once. Between scenarios every
//!   link a scenario left down is brought back and every port must be ACTIVE again with its GID
//!   in place.
//! - Devices come from `RealProvider::load` (libibverbs, `hca`). No device, a missing `--hca`
//!   device or a port that is not ACTIVE fails every scenario: the lane never passes vacuously.
//!
//! Output (`results`): one line per scenario,
//! `scenario <name> <side>: PASS|FAIL <details> (<ms> ms)`, then
//! `verbs-lane <side>: N passed, M failed`; with `--json FILE` also a JSON report.
//! Exit status: 0 all passed, 1 a scenario failed, 2 nothing could run (no device, no peer,
//! mismatched suites), 64 usage error.

mod args;
mod conn;
mod exchange;
mod faults;
mod hca;
mod link_steps;
mod one_sided;
mod rekey;
mod results;
mod run;
mod setup;

use crate::cli::{self, EXIT_NOT_RUN};
use args::Cli;
use peercm_verbs_shim::scenarios;
use run::Run;
use std::process::ExitCode;
use std::time::Instant;

/// Seconds since this process started, for log lines.
pub fn stamp(t0: Instant) -> String {
    format!("{:.3}s", t0.elapsed().as_secs_f64())
}

/// The `verbs-lane` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cli.list {
        for (name, _) in scenarios::all()
            .into_iter()
            .chain(one_sided::scenarios())
            .chain(rekey::scenarios())
        {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let args = match cli.check() {
        Ok(a) => a,
        Err(e) => return cli::usage_error(&e),
    };
    let mut run = Run::new(args, Instant::now());
    let suite = match setup::select(&run.args.only) {
        Ok(s) => s,
        Err(e) => {
            run.error = Some(e);
            return ExitCode::from(run.finish(EXIT_NOT_RUN));
        }
    };
    // Local readiness first; even when it fails, connect and tell the peer so both fail fast.
    let Some(ready) = setup::start(&mut run, &suite) else {
        return ExitCode::from(run.finish(EXIT_NOT_RUN));
    };
    ExitCode::from(run.run_suite(&suite, ready))
}

//! The leader's run: the scenarios to run (`--only`), the setup, then every scenario in order
//! under `--scenario-timeout` (a timed-out scenario leaves the clients in an unknown state, so
//! the rest are reported as not run), then the cleanup (HCA0 up, the roles told to exit, node
//! a's timeline in the log) and the report.

use super::super::args::{Args, Hca};
use super::super::scenarios::{self, SCENARIOS};
use super::super::sync::{Rpc, SyncDir};
use super::super::watch::StallProbe;
use super::report::{finish, Outcome};
use super::{Figures, Leader};
use crate::cli::{self, EXIT_USAGE};
use crate::report::verdict;
use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub async fn run_leader(args: Args, sync: SyncDir, hcas: Vec<Hca>) -> ExitCode {
    let t0 = Instant::now();
    let scenarios = match cli::select(SCENARIOS, &cli::names(&args.only)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("manager-lane: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let json_path = args.json.clone();
    let mut leader = Leader {
        t0,
        rpc: Rpc::new(sync),
        hcas,
        node: None,
        probe: StallProbe::default(),
        handles: HashMap::new(),
        sent: HashMap::new(),
        rail_down: false,
        host_undo: Vec::new(),
        partner_crashed: false,
        keep_sending: false,
        ready: Vec::new(),
        watch: None,
        args,
    };
    let setup = leader.setup(&scenarios).await;

    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut broken: Option<String> = setup.err().map(|e| format!("not run: {e}"));
    for name in &scenarios {
        let started = Instant::now();
        let mut figures = Figures::new();
        let res = if let Some(why) = &broken {
            Err(why.clone())
        } else {
            leader.log(format!("begin {name}"));
            let scenario_timeout = Duration::from_secs(scenarios::budget(
                name,
                leader.args.scenario_timeout,
                leader.args.region_timeout,
            ));
            let fut = scenarios::run(&mut leader, name, &mut figures);
            match tokio::time::timeout(scenario_timeout, fut).await {
                Ok(r) => r,
                Err(_) => {
                    broken = Some(format!(
                        "not run: {name} timed out and left the clients in an unknown state"
                    ));
                    Err(format!("timed out after {} s", scenario_timeout.as_secs()))
                }
            }
        };
        if leader.node.is_some() {
            fig!(figures, "node-a_manager_max_stall", leader.probe.take());
        }
        let o = Outcome::new(name, res, started.elapsed(), figures);
        o.print();
        leader.log(format!("end {name}: {}", verdict(o.pass)));
        outcomes.push(o);
    }
    // Leave the HCA as found.
    leader.leave_links_as_found();
    leader.undo_host_faults().await;
    leader.release_roles().await;
    if let Some(node) = leader.node.take() {
        if let Ok(s) = node.status().await {
            leader.log(format!("final status: {}", super::super::node::brief(&s)));
            for t in &s.timeline {
                leader.log(format!("  timeline +{} ms: {}", t.at_ms, t.what));
            }
        }
    }
    finish(&outcomes, broken.is_some(), json_path.as_deref())
}

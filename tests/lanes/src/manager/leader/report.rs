//! The leader's results: one line per scenario with its figures indented below
//! (`scenario <name>: PASS|FAIL <details> (<ms> ms)`, which manager-lane.sh counts), the
//! closing `manager-lane: N passed, M failed`, the `--json` report and the exit status.

use super::Figures;
use crate::cli::{EXIT_FAILED, EXIT_NOT_RUN};
use crate::report::{totals_line, verdict, write_json};
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub name: String,
    pub pass: bool,
    pub details: String,
    pub ms: u128,
    pub figures: Figures,
}

impl Outcome {
    pub fn new(name: &str, res: Result<String, String>, took: Duration, figures: Figures) -> Self {
        let (pass, details) = match res {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        Outcome {
            name: name.to_string(),
            pass,
            details,
            ms: took.as_millis(),
            figures,
        }
    }

    /// The scenario's line and its figures, on stdout.
    pub fn print(&self) {
        println!(
            "scenario {}: {} {} ({} ms)",
            self.name,
            verdict(self.pass),
            self.details,
            self.ms
        );
        for (k, v) in &self.figures {
            println!("  {k} = {v}");
        }
    }
}

/// Prints the totals, writes the JSON report; the exit status: 2 if nothing could run (the
/// setup failed), 1 if a scenario failed.
pub fn finish(outcomes: &[Outcome], broken: bool, json_path: Option<&Path>) -> ExitCode {
    let passed = outcomes.iter().filter(|o| o.pass).count();
    let failed = outcomes.len() - passed;
    println!("{}", totals_line("manager-lane", passed, failed));
    if let Some(p) = json_path {
        let v = json!({ "scenarios": outcomes, "passed": passed, "failed": failed });
        if let Err(e) = write_json(p, &v) {
            eprintln!("manager-lane: writing {}: {e}", p.display());
        }
    }
    if passed == 0
        && failed > 0
        && broken
        && outcomes.iter().all(|o| o.details.starts_with("not run"))
    {
        ExitCode::from(EXIT_NOT_RUN)
    } else if failed > 0 || outcomes.is_empty() {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

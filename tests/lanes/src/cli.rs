//! Command-line conventions both runners share: clap parsing with the lanes' exit codes, and
//! value parsers.

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status: every scenario passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit status: some scenario failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: nothing could run (no RDMA device, no peer, a role missing).
pub const EXIT_NOT_RUN: u8 = 2;
/// Exit status: usage error.
pub const EXIT_USAGE: u8 = 64;

/// Parses the command line; on `--help` prints it and gives `Err(0)`, on a usage error prints
/// the error and gives `Err(64)`.
pub fn parse<T: Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| usage_error(&e))
}

/// Prints a clap error (or help) and gives the exit status for it.
pub fn usage_error(e: &clap::Error) -> ExitCode {
    let _ = e.print();
    if e.use_stderr() {
        ExitCode::from(EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

/// A positive, finite number of seconds (fractions allowed).
pub fn positive_secs(v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
        _ => Err("expected a positive number of seconds".into()),
    }
}

/// `--only` values: comma-separated lists, repeatable; empty names are dropped.
pub fn names(values: &[String]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The scenarios to run: all of `suite` without `only`, else those named, in suite order.
pub fn select(suite: &[&'static str], only: &[String]) -> Result<Vec<&'static str>, String> {
    for n in only {
        if !suite.contains(&n.as_str()) {
            return Err(format!(
                "--only {n}: no such scenario (have: {})",
                suite.join(", ")
            ));
        }
    }
    Ok(suite
        .iter()
        .copied()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_keeps_suite_order_and_refuses_unknown_names() {
        let suite = ["a", "b", "c"];
        let only = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(select(&suite, &[]).unwrap(), suite);
        assert_eq!(select(&suite, &only(&["c", "a", "c"])).unwrap(), ["a", "c"]);
        assert!(select(&suite, &only(&["d"])).is_err());
        assert_eq!(names(&only(&["a,,b", "c"])), ["a", "b", "c"]);
    }
}

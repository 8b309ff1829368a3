//! `bench-lane`: peercm's one-sided writes measured in the soft-RoCE lane, one process per VM,
//! for scripts/softroce/bench-lane.sh, which runs perftest (`ib_write_bw`, `ib_write_lat`) and
//! iperf3 in the same VM boot, interleaved, and computes the ratios (docs/benchmarks.md,
//! "One-sided writes (issue 9)"). A benchmark, not a test: it prints figures and never judges
//! them.
//!
//! ```text
//! n2: bench-lane --role receiver --transport rdma --hca rxe0 --listen 10.77.0.2:7810 --stop-file F
//! n1: bench-lane --role sender   --transport rdma --hca rxe0 --peer 10.77.0.2:7810 --json OUT
//! ```
//!
//! - The **receiver** (`receiver`) is node b: one client holding one region (a mapped file in a
//!   guest tmpfs), nothing else; it reports what its session placed and whether every write
//!   came one-sided (none copied from a frame).
//! - The **sender** (`sender`) is node a: the same client dialing b; it measures 64 KiB write
//!   throughput with a pipeline window and 64 B write completion latency one at a time.
//! - With `--transport rdma --hca DEV` each node sees only that device (`node`): the pair has
//!   exactly one rail, on the cable being measured. With `--transport tcp` verbs are off.
//!   `--transport raw-link` (`rawlink`) runs the same writes on a bare RDMA link without any
//!   peercm node, to tell rxe's cost from the manager's.
//!
//! - `--role summary` (`summary`, `parse`, `table`) runs on the host after the lane: it reads
//!   the saved outputs of perftest, iperf3 and both peercm sides and prints every figure, the
//!   ratios (median over the rounds and range) and the final table.
//!
//! Output: one `bench <label> <figure> <value>` line per figure on stdout, the whole as JSON
//! with `--json`. Exit status: 0 figures taken, 1 the run failed, 64 usage error.

mod args;
mod node;
mod parse;
mod rawlink;
mod receiver;
mod sender;
mod stats;
mod summary;
mod table;

use crate::cli::{self, EXIT_FAILED, EXIT_USAGE};
use args::{Args, Role, Transport};
use std::process::ExitCode;
use std::time::Duration;

/// The `bench-lane` binary.
pub fn main() -> ExitCode {
    let args = match cli::parse::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    if let Err(e) = args.check() {
        eprintln!("bench-lane: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    if args.role == Role::Summary {
        return run_summary(&args);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if args.transport == Transport::RawLink {
        let res = match args.role {
            Role::Sender => rawlink::sender(&args),
            _ => rawlink::receiver(&args),
        };
        return finish(&args, res);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-lane: tokio runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    // The role runs as a task on the runtime's worker, beside the node's own tasks, not on
    // the `block_on` thread: a client and its manager on one thread hand each other work
    // without waking a second thread per call and per event (on a one-vCPU guest each wake-up
    // is a context switch on the latency path).
    let role_args = args.clone();
    let res = rt.block_on(async move {
        let task = tokio::spawn(async move {
            match role_args.role {
                Role::Sender => sender::run(&role_args).await,
                Role::Receiver => receiver::run(&role_args).await,
                Role::Summary => Err("the summary runs without a node".into()),
            }
        });
        task.await
            .unwrap_or_else(|e| Err(format!("the bench task failed: {e}")))
    });
    // Node tasks and RDMA link threads may still be winding down: do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(500));
    finish(&args, res)
}

/// Prints the figures (and writes the JSON) of a run, or its failure.
fn finish(args: &Args, res: Result<serde_json::Value, String>) -> ExitCode {
    match res {
        Ok(v) => {
            print_lines(&args.label, "", &v);
            if let Some(p) = &args.json {
                if let Err(e) = crate::report::write_json(p, &v) {
                    eprintln!("bench-lane: writing {}: {e}", p.display());
                    return ExitCode::from(EXIT_FAILED);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-lane {:?} {}: FAILED: {e}", args.role, args.label);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// One `bench <label> <key.path> <value>` line per scalar of `v`.
fn print_lines(label: &str, prefix: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                print_lines(label, &key, x);
            }
        }
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => println!("bench {label} {prefix} {f:.1}"),
            _ => println!("bench {label} {prefix} {n}"),
        },
        other => println!("bench {label} {prefix} {other}"),
    }
}

/// `--role summary`: the figures, ratios and table from the raw outputs of one run.
fn run_summary(args: &Args) -> ExitCode {
    let Some(dir) = &args.results else {
        return ExitCode::from(EXIT_USAGE);
    };
    let s = match summary::summarize(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bench-lane summary: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let (text, md) = table::render(&s);
    print!("{text}");
    let mut ok = true;
    if let Some(p) = &args.json {
        ok &= crate::report::write_json(p, &s)
            .map_err(|e| eprintln!("bench-lane: {}: {e}", p.display()))
            .is_ok();
    }
    if let Some(p) = &args.markdown {
        ok &= std::fs::write(p, md)
            .map_err(|e| eprintln!("bench-lane: {}: {e}", p.display()))
            .is_ok();
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

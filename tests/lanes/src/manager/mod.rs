//! `manager-lane`: the connection manager's scenarios on real RDMA devices (rdma_rxe in the
//! soft-RoCE lane, see docs/softroce-lane.md). The real-rxe counterparts of
//! `tests/integration/tests/interconnects_sim.rs`: every node is a `peercm_cm_manager::Node` started with
//! `VerbsSource::Real`, so rails are discovered by rdma-core and every RDMA link is a real RC
//! queue pair on an rxe HCA.
//!
//! One process per VM, each with a role:
//!
//! ```text
//! n1: manager-lane --role leader  --peer 10.77.99.2:7700 --no-rdma-peer 10.77.98.3:7704
//!                                 --hca rxe0:eth0 --hca rxe1:eth1 --sync $LANE/sync
//! n2: manager-lane --role partner --listen 10.77.99.2:7700 --hca rxe0:eth0 --hca rxe1:eth1 ...
//! n3: manager-lane --role backup  --listen 10.77.98.3:7704 ...   (a VM without rxe)
//! ```
//!
//! - The **leader** (node a, the dialer; `leader`) drives every scenario (`scenarios`, one
//!   file each) and is the only judge: it sends the records (`stream`), injects the faults (its
//!   HCA0 netdev administratively down/up through `/sys/class/net/<netdev>/flags`, which raises
//!   PORT_ERR / PORT_ACTIVE on rxe), watches its node's status (`node`, `watch`), and asks the
//!   other roles for their receive statistics.
//! - The **partner** (node b, the acceptor) and the **backup** (n3) only receive (`receiver`):
//!   every record (`record`) is checked (magic, CRC32C over the record, content regenerated
//!   from its index, index in order) and a sync record is answered with a return code derived
//!   from its checksum, or a negative code naming what was wrong, so every ack the leader gets
//!   proves that the partner got exactly that record, in order.
//! - Control between the roles is not peercm (that is what is under test): small files in the
//!   lane's shared sync dir (`--sync`, `sync`), written then renamed. The leader sends numbered
//!   requests (`mlane.req.<role>.<n>`: `report`, `crash-at <index>`, `exit`) and waits for the
//!   answers (`mlane.resp.<role>.<n>`); roles announce themselves with `mlane.ready.<role>`.
//! - Devices (`devices`): the leader and the partner load libibverbs and require every `--hca`
//!   device with an ACTIVE port, and their node must discover a rail on each. Otherwise every
//!   scenario FAILs ("not run"): the lane never passes without rxe.
//!
//! Output (leader): `scenario <name>: PASS|FAIL <details> (<ms> ms)` per scenario, then
//! `manager-lane: N passed, M failed`; `--json FILE` writes the same with every figure.
//! Exit status: 0 all passed, 1 a scenario failed, 2 nothing could run, 64 usage error.

/// Records a figure of the scenario being run: `fig!(figures, key, value)`.
macro_rules! fig {
    ($f:expr, $k:expr, $v:expr) => {
        $f.insert($k.to_string(), serde_json::json!($v))
    };
}

mod args;
mod clients;
mod devices;
mod leader;
mod node;
mod receiver;
mod record;
mod region;
mod scenarios;
mod stream;
mod sync;
mod watch;
mod writer;

use crate::abort::AbortFile;
use crate::cli::{self, EXIT_NOT_RUN, EXIT_USAGE};
use args::{Args, Role};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use sync::SyncDir;

/// Locks a mutex, poisoned or not (a panicked holder leaves counters that are still useful).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Seconds since `t0`, for log lines.
fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

/// A duration in ms, rounded to 0.1 ms (figures).
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// Ms from `from` to `t` (0 if `t` is earlier).
fn since(t: Instant, from: Instant) -> f64 {
    ms(t.saturating_duration_since(from))
}

/// The `manager-lane` binary.
pub fn main() -> ExitCode {
    let args = match cli::parse::<Args>() {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.list {
        for s in scenarios::SCENARIOS {
            println!("{s}");
        }
        return ExitCode::SUCCESS;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let (role, dir) = match args.check() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("manager-lane: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    node::LINK_TIMEOUT_MS.store(args.link_timeout_ms, Ordering::Relaxed);
    let sync = SyncDir {
        dir,
        abort: AbortFile(args.abort_file.clone()),
        stop: args.leader_done_file.clone(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("manager-lane: tokio runtime: {e}");
            return ExitCode::from(EXIT_NOT_RUN);
        }
    };
    let code = rt.block_on(async move {
        let hcas = args.hcas.clone();
        match role {
            Role::Leader => leader::run_leader(args, sync, hcas).await,
            Role::Partner | Role::Backup => receiver::run_receiver(role, &args, sync, hcas).await,
        }
    });
    // Node tasks and RDMA link threads may still be winding down: do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(500));
    code
}

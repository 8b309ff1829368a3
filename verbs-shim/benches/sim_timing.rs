//! Real-time figures of the simulator, measured and printed, never asserted: the project keeps
//! timing goals out of pass/fail tests, so the upper bounds the simulator's semantics tests
//! (`tests/sim_semantics/`) used to assert are reported here instead. Run with
//! `cargo bench -p peercm-verbs-shim --bench sim_timing`.
//!
//! - `cable_cut_to_failure`: from `cut_cable` until both in-flight requests (on a cable with
//!   2 ms one-way latency) have been polled as failed. Goal: under 2 ms -- they fail inside the
//!   cut, not after the latency or an ACK timeout. The functional half stays in
//!   `cable_cut_downs_both_ends_and_restore_brings_them_back`
//!   (`tests/sim_semantics/ports_and_faults.rs`).
//! - `stalled_responder_give_up`: from posting to a stalled responder until `RetryExcErr`,
//!   with 3 retries of a ~1 ms ACK timeout: at least `(3 + 1) x ACK timeout` by design (that
//!   floor is still asserted by `a_stalled_responder_gives_retry_exceeded`). Goal: under 1 s.

use peercm_verbs_shim::api::{CompletionQueue, Device, MemoryRegion, QueuePair};
use peercm_verbs_shim::sim::harness::{fast_params, standard_fabric};
use peercm_verbs_shim::sim::SimFabric;
use peercm_verbs_shim::types::{
    Access, QpCaps, QpParams, RecvWr, SendWr, Sge, WcStatus, WorkCompletion,
};
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn Error>>;

/// One end of a QP pair with its CQs and a region.
struct End {
    _dev: Arc<dyn Device>,
    scq: Arc<dyn CompletionQueue>,
    rcq: Arc<dyn CompletionQueue>,
    qp: Box<dyn QueuePair>,
    mr: Arc<dyn MemoryRegion>,
}

impl End {
    fn on(f: &SimFabric, node: &str) -> Res<End> {
        let dev = f.provider(node).open("rxe0")?;
        let pd = dev.clone().alloc_pd()?;
        let scq = dev.clone().create_cq(64)?;
        let rcq = dev.clone().create_cq(64)?;
        let qp = pd
            .clone()
            .create_qp(scq.clone(), rcq.clone(), QpCaps::default())?;
        let mr = pd.reg_mr(4096, Access::all())?;
        Ok(End {
            _dev: dev,
            scq,
            rcq,
            qp,
            mr,
        })
    }

    fn sge(&self) -> Sge {
        Sge {
            mr: self.mr.clone(),
            offset: 0,
            len: 8,
        }
    }

    fn send(&self, wr_id: u64) -> Res<()> {
        let wr = SendWr::Send {
            wr_id,
            local: self.sge(),
            imm: None,
        };
        Ok(self.qp.post_send(wr)?)
    }

    fn recv(&self, wr_id: u64) -> Res<()> {
        let wr = RecvWr {
            wr_id,
            local: self.sge(),
        };
        Ok(self.qp.post_recv(wr)?)
    }
}

/// A connected pair n1/rxe0 <-> n2/rxe0 over the IPv4-mapped GID with fast timers.
fn pair(f: &SimFabric) -> Res<(End, End)> {
    let params = QpParams {
        gid_index: 1,
        ..fast_params()
    };
    let (mut a, mut b) = (End::on(f, "n1")?, End::on(f, "n2")?);
    a.qp.to_init(&params)?;
    b.qp.to_init(&params)?;
    let (ea, eb) = (a.qp.endpoint(&params, 100)?, b.qp.endpoint(&params, 200)?);
    a.qp.to_rtr(&params, &eb)?;
    b.qp.to_rtr(&params, &ea)?;
    a.qp.to_rts(&params, 100)?;
    b.qp.to_rts(&params, 200)?;
    Ok((a, b))
}

/// Polls `cq` until `n` completions arrived (or 2 s passed).
fn take(cq: &Arc<dyn CompletionQueue>, n: usize) -> Res<Vec<WorkCompletion>> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("expected {n} completions, got {got:?}").into());
        }
        got.extend(cq.wait(n - got.len(), left)?);
    }
    Ok(got)
}

fn cable_cut_to_failure(seed: u64) -> Res<Duration> {
    let f = standard_fabric(seed)?;
    f.set_latency(("n1", "rxe0", 1), Duration::from_millis(2), Duration::ZERO)?;
    let (a, b) = pair(&f)?;
    b.recv(1)?;
    a.send(1)?;
    a.send(2)?;
    let t = Instant::now();
    f.cut_cable(("n2", "rxe0", 1))?;
    let wcs = take(&a.scq, 2)?;
    let took = t.elapsed();
    let statuses: Vec<WcStatus> = wcs.iter().map(|wc| wc.status).collect();
    if statuses != [WcStatus::LocQpOpErr, WcStatus::WrFlushErr] {
        return Err(format!("unexpected completions after the cut: {wcs:?}").into());
    }
    take(&b.rcq, 1)?;
    Ok(took)
}

fn stalled_responder_give_up(seed: u64) -> Res<Duration> {
    let f = standard_fabric(seed)?;
    let (a, b) = pair(&f)?;
    b.recv(1)?;
    f.stall_responder("n2")?;
    let t = Instant::now();
    a.send(1)?;
    let wcs = take(&a.scq, 1)?;
    let took = t.elapsed();
    if wcs[0].status != WcStatus::RetryExcErr {
        return Err(format!("expected RetryExcErr, got {wcs:?}").into());
    }
    Ok(took)
}

/// Runs `case` `runs` times and prints min / median / p99 / max next to the goal.
fn report(name: &str, runs: u64, goal: Duration, case: fn(u64) -> Res<Duration>) -> Res<()> {
    let mut v = (0..runs)
        .map(|i| case(0x5EED_0000 + i))
        .collect::<Res<Vec<Duration>>>()?;
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let max = at(1.0);
    println!(
        "{name:<28} runs {runs:>4}  min {:>10.3?}  median {:>10.3?}  p99 {:>10.3?}  max {:>10.3?}  goal < {goal:?}: {}",
        at(0.0),
        at(0.5),
        at(0.99),
        max,
        if max < goal { "met" } else { "MISSED" }
    );
    Ok(())
}

fn main() -> Res<()> {
    // `cargo bench` passes `--bench` (and any filter); the figures are cheap, so run them all.
    report(
        "cable_cut_to_failure",
        200,
        Duration::from_millis(2),
        cable_cut_to_failure,
    )?;
    report(
        "stalled_responder_give_up",
        50,
        Duration::from_secs(1),
        stalled_responder_give_up,
    )?;
    Ok(())
}

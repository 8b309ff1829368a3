//! Seeded randomized safety-then-liveness test of a session over several interconnects, driven
//! by the placement policy, with adapter failures and partner crashes (autoswitch).
//!
//! Every seed builds a dialer `a` (autoswitch hold of 5 s) and a partner `b` joined by TCP links
//! (interconnect 0) and 2 or 3 RDMA rails (interconnects 1..=3, one or two links each; two rails
//! may share an HCA). A [`Placement`] runs on `a`: it learns which interconnects are usable from
//! the links `a` has, is fed the bytes each client sent (scaled per seed so measured rates matter
//! on some seeds), has its timer called on virtual time, and every move it makes is applied with
//! `a.place(..)`. 2 or 3 clients are registered on both sides with different send models and
//! declared bandwidths (one may be Critical); on one seed in three they consume late. Then a
//! random program of 400 steps runs, its mix depending on the seed:
//! - sends and bursts on random clients in both directions (mostly the client's own model),
//!   answers to synchronous messages in any order, late consumption;
//! - random delivery order across links (FIFO within a link), sometimes a slow link whose frames
//!   wait while the others overtake them, sometimes everything delivered;
//! - pauses (virtual time: heartbeats flow, silent links time out) and long pauses (every link
//!   times out at once, and the hold may expire);
//! - port flaps (every link of one rail killed at once) and rails coming back with new links,
//!   QP errors (one RDMA link killed), TCP links dropped and added, and links failing on one end
//!   first (the other end keeps sending into them until its link timeout);
//! - partner crashes: every link closes at once, or TCP closes and the RDMA links only go silent
//!   (`a` keeps them until they time out, and frames the old process sent still arrive); behind
//!   stands a fresh process of the same node (`restart_b`: a hold ends with NACKs and a reset,
//!   or, over silent links, the new instance makes `a` drop the old session with NACKs) or of a
//!   backup node (`replace_b_with`, dialed once `a` has no link left: the switch resends every
//!   unacknowledged message there), unless the hold expires first.
//!
//! Every payload names its sender (side, partner incarnation for b), client and message number.
//! Checked after every step (the failure names the seed and the step, and how to rerun it):
//! - per partner incarnation, no receiver delivers a message twice, and each receiver's
//!   deliveries of a client are strictly increasing in message number; a gap only ever covers
//!   messages NACKed before the later one was sent;
//! - a message of `a` is only delivered by the partner incarnation it is destined for: the one
//!   `a` was in session with when it was sent, or the backup of a switch for every message
//!   unacknowledged when the switch began (so the backup gets only what the old partner never
//!   acknowledged, in order, each once);
//! - every acknowledged message (`Acked`, or a local send completed silently by a cumulative
//!   ack) was delivered exactly once by the incarnation that acknowledged it;
//! - every send completes at most once (`Acked`, `Nacked`, `Transmitted` for local sends), the
//!   sends the test counts as outstanding are exactly the session's unacknowledged ones, and `a`
//!   NACKs (and goes Down) only when its hold ends with the same partner returning
//!   (`ConnectionLost`) or expiring (`ConnectionLost`), or when it learns the partner restarted
//!   (`PeerRestarted`); b's NACKs are `ConnectionLost`;
//! - `PeerSwitched` only after a switch, once per client, naming the new partner, with a rising
//!   epoch;
//! - `Migrated` only for moves the placement policy made, with their from/to; the session's
//!   placement always equals the policy's assignment, and a placed client's DATA queued in the
//!   step went on its interconnect whenever that has a link.
//!
//! Then the liveness phase heals everything (the partner back, TCP and every rail with a link),
//! drives to quiescence on bounded virtual time answering and consuming everything, and checks:
//! both sessions up, every client port up (CONNECTED on `a`, CONNECTED or CONNECTED-TO on `b`),
//! nothing unacknowledged, every message completed (one not NACKed was delivered exactly once by
//! its incarnation), every client placed on an RDMA rail, and a final round trip on every client
//! in both directions.
//!
//! Two bugs this test found are pinned by the regression tests at the end (an acceptor that
//! lost the session alone now asks the dialer to reset; return codes are re-sent on link loss).
//!
//! Environment: `PEERCM_IC_CHAOS_SEEDS` (number of seeds, default 300),
//! `PEERCM_IC_CHAOS_FIRST_SEED` (default 1), `PEERCM_IC_CHAOS_TRACE=1` (print every action,
//! frame and event: for one seed), `PEERCM_IC_CHAOS_KEEP_GOING=1` (run all seeds and list every
//! failure). The summary line goes to stderr uncaptured, so the
//! test log shows how many seeds ran.
//!
//! Layout: `model` holds the bookkeeping of every message (who sent it, where it went, how it
//! completed); `chaos` the test world ([`Chaos`]) and its setup; `world` links, partner crashes
//! and returns, virtual time and the placement policy; `invariants` the checks of every event;
//! `actions` the client actions and the random program; `liveness` healing and the final
//! checks; `regressions` the deterministic tests of the bugs this test found.

#[path = "../common/mod.rs"]
mod common;

mod actions;
mod chaos;
mod invariants;
mod liveness;
mod model;
mod regressions;
mod world;

use chaos::Chaos;
use model::*;

use bytes::Bytes;
use common::*;
use peercm_cm_proto::control::NackReason;
use peercm_cm_proto::placement::{InterconnectInfo, InterconnectKind, Placement, PlacementConfig};
use peercm_cm_proto::port::PortState;
use peercm_cm_proto::session::{
    ClientEvent, ClientId, ClientSpec, DownReason, InterconnectId, LatencyClass, LinkId,
    SessionConfig, SessionState,
};
use peercm_cm_proto::stream::SendModel;
use peercm_cm_proto::MsgType;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

const STEPS: usize = 400;
const HOLD: Duration = Duration::from_secs(5);
const MODELS: [SendModel; 3] = [SendModel::Sync, SendModel::Async, SendModel::Local];
const PARTNER_NODES: [&str; 3] = ["b", "c", "d"];
const MAX_TCP_LINKS: usize = 2;
const MAX_RAIL_LINKS: usize = 2;
/// Virtual time the liveness phase may take.
const HEAL_BUDGET: Duration = Duration::from_secs(30);
/// Receiver key of messages from b (there is one `a`).
const AT_A: u32 = 0;

fn run_seed(seed: u64, step: &Cell<usize>) -> Totals {
    step.set(0);
    let mut ch = Chaos::new(seed, step);
    ch.link_up(InterconnectId::TCP);
    for r in ch.rail_ids() {
        for _ in 0..ch.p.rng.below(MAX_RAIL_LINKS as u64 + 1) {
            ch.link_up(r);
        }
    }
    ch.end_step();
    for _ in 0..STEPS {
        ch.step();
    }
    ch.heal();
    ch.check_final();
    let mut t = ch.totals;
    t.seeds = 1;
    t.steps = STEPS as u64;
    t.messages = ch.streams.values().map(|s| s.msgs.len() as u64).sum();
    t
}

#[test]
fn interconnect_chaos_placement_failover_and_partner_switch() {
    let seeds: u64 = std::env::var("PEERCM_IC_CHAOS_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let first: u64 = std::env::var("PEERCM_IC_CHAOS_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let keep_going = std::env::var_os("PEERCM_IC_CHAOS_KEEP_GOING").is_some();
    let started = Instant::now();
    let mut total = Totals::default();
    let mut failures = Vec::new();
    for seed in first..first + seeds {
        let step = Cell::new(0);
        match catch_unwind(AssertUnwindSafe(|| run_seed(seed, &step))) {
            Ok(t) => {
                total.seeds += t.seeds;
                total.steps += t.steps;
                total.migrations += t.migrations;
                total.switches += t.switches;
                total.moves += t.moves;
                total.crashes += t.crashes;
                total.same_returns += t.same_returns;
                total.restarts_seen += t.restarts_seen;
                total.expiries += t.expiries;
                total.messages += t.messages;
                total.nacked += t.nacked;
                total.up_steps += t.up_steps;
                total.refused += t.refused;
            }
            Err(e) => {
                let text = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let line = format!(
                    "interconnect chaos: seed {seed} failed at step {} (rerun with \
                     PEERCM_IC_CHAOS_FIRST_SEED={seed} PEERCM_IC_CHAOS_SEEDS=1, add \
                     PEERCM_IC_CHAOS_TRACE=1 for a trace): {text}",
                    step.get()
                );
                if !keep_going {
                    panic!("{line}");
                }
                failures.push(line);
            }
        }
    }
    for f in &failures {
        println!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed",
        failures.len()
    );
    // Straight to stderr (not captured by the test harness), so the test log shows it.
    let _ = writeln!(
        std::io::stderr(),
        "interconnect chaos: {} seeds, {} steps, {} migrations, {} switches\n\
         interconnect chaos: seeds {first}..={}, {} policy moves, {} partner crashes, {} \
         same-partner returns while holding, {} restarts seen over silent links, {} hold \
         expiries, {} messages ({} NACKed, {} sends \
         refused), a up in {} steps, {:?}",
        total.seeds,
        total.steps,
        total.migrations,
        total.switches,
        first + seeds - 1,
        total.moves,
        total.crashes,
        total.same_returns,
        total.restarts_seen,
        total.expiries,
        total.messages,
        total.nacked,
        total.refused,
        total.up_steps,
        started.elapsed()
    );
}

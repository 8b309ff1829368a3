//! The manager lane's scenarios, in the order they run, one file each. Every scenario is a
//! method of the leader that records its figures and returns a one-line summary (PASS) or
//! what went wrong (FAIL).

mod black_holed_rail_backs_off;
mod cable_cut_hca0_under_stream;
mod host_cable_pull_under_stream;
mod no_rdma_node_uses_tcp;
mod partner_crash_switches_to_backup;
mod partner_freeze_keeps_backup;
mod ports_down_at_start;
mod rails_up_and_placement;
mod region_writes_under_host_cable_pull;
mod restore_hca0;
mod zombie_region_writes_fenced;

use super::leader::{Figures, Leader};

/// The scenarios, in the order they run.
pub const SCENARIOS: &[&str] = &[
    "rails_up_and_placement",
    "cable_cut_hca0_under_stream",
    "restore_hca0",
    "host_cable_pull_under_stream",
    "black_holed_rail_backs_off",
    "no_rdma_node_uses_tcp",
    "ports_down_at_start",
    "region_writes_under_host_cable_pull",
    // Node a is restarted afterwards (as after the freeze), with node b as its partner again.
    "zombie_region_writes_fenced",
    // Node a is restarted afterwards, with node b as its partner again.
    "partner_freeze_keeps_backup",
    // Last: the partner is dead afterwards.
    "partner_crash_switches_to_backup",
];

/// Whether any of `selected` switches node a to its backup (node a then starts with the
/// backup and autoswitch).
pub fn switches(selected: &[&str]) -> bool {
    selected.iter().any(|s| {
        matches!(
            *s,
            "zombie_region_writes_fenced"
                | "partner_freeze_keeps_backup"
                | "partner_crash_switches_to_backup"
        )
    })
}

/// How long the scenario `name` may take: `--region-timeout` for the region writes (the issue's
/// 100,000 writes take minutes under TCG), `--scenario-timeout` for the others.
pub fn budget(name: &str, scenario_timeout: u64, region_timeout: u64) -> u64 {
    if name == "region_writes_under_host_cable_pull" {
        region_timeout.max(scenario_timeout)
    } else {
        scenario_timeout
    }
}

/// Runs the scenario `name`.
pub async fn run(leader: &mut Leader, name: &str, f: &mut Figures) -> Result<String, String> {
    match name {
        "rails_up_and_placement" => leader.rails_up_and_placement(f).await,
        "cable_cut_hca0_under_stream" => leader.cable_cut_hca0_under_stream(f).await,
        "restore_hca0" => leader.restore_hca0(f).await,
        "host_cable_pull_under_stream" => leader.host_cable_pull_under_stream(f).await,
        "black_holed_rail_backs_off" => leader.black_holed_rail_backs_off(f).await,
        "no_rdma_node_uses_tcp" => leader.no_rdma_node_uses_tcp(f).await,
        "ports_down_at_start" => leader.ports_down_at_start(f).await,
        "region_writes_under_host_cable_pull" => {
            leader.region_writes_under_host_cable_pull(f).await
        }
        "zombie_region_writes_fenced" => leader.zombie_region_writes_fenced(f).await,
        "partner_freeze_keeps_backup" => leader.partner_freeze_keeps_backup(f).await,
        "partner_crash_switches_to_backup" => leader.partner_crash_switches_to_backup(f).await,
        other => Err(format!("no such scenario {other}")),
    }
}

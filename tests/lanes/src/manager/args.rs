//! `manager-lane`'s command line (clap): the roles and the options
//! scripts/softroce/manager-lane.sh passes, and the checks clap cannot express.

use super::record;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The part one process plays; one per VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Node a on n1: dials the partner, drives and judges every scenario.
    Leader,
    /// Node b on n2: the acceptor with the same two HCAs.
    Partner,
    /// n3: a node without RDMA (the no-RDMA acceptor, and the backup partner).
    Backup,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Partner => "partner",
            Role::Backup => "backup",
        }
    }
}

/// The connection manager's scenarios on real RDMA devices (the soft-RoCE manager lane).
#[derive(Debug, Parser)]
#[command(
    name = "manager-lane",
    after_help = "Exit status: 0 every scenario passed, 1 some \
    failed, 2 none could run (no RDMA device, a role missing), 64 usage error."
)]
pub struct Args {
    /// Which part this process plays.
    #[arg(long, value_enum)]
    pub role: Option<Role>,
    /// The lane's shared sync directory (control files between the roles).
    #[arg(long)]
    pub sync: Option<PathBuf>,
    /// Give up as soon as this file exists (another node failed).
    #[arg(long)]
    pub abort_file: Option<PathBuf>,
    /// Receivers: stop once this file exists (the leader's script ended).
    #[arg(long)]
    pub leader_done_file: Option<PathBuf>,
    /// An HCA, as DEVICE:NETDEV, repeated in cable order (HCA0 first).
    #[arg(long = "hca", value_name = "DEVICE:NETDEV", value_parser = parse_hca)]
    pub hcas: Vec<Hca>,
    /// Leader: the partner node b (IP:PORT).
    #[arg(long)]
    pub peer: Option<SocketAddr>,
    /// Leader: the node without RDMA for no_rdma_node_uses_tcp (IP:PORT).
    #[arg(long)]
    pub no_rdma_peer: Option<SocketAddr>,
    /// Leader: the backup partner for partner_crash_switches_to_backup (IP:PORT).
    #[arg(long)]
    pub backup: Option<SocketAddr>,
    /// Partner/backup: where to accept (IP:PORT); the backup's first is the no-RDMA node.
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// Run only these scenarios (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Also write the results as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Mirror records per stream.
    #[arg(long, default_value_t = 2000)]
    pub records: u64,
    /// Bytes per record (payload, at least 24).
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records a sync sender keeps unacknowledged.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Seconds one scenario may take.
    #[arg(long, default_value_t = 120)]
    pub scenario_timeout: u64,
    /// Seconds to wait for the other roles to start.
    #[arg(long, default_value_t = 120)]
    pub connect_timeout: u64,
    /// The nodes' session link timeout (ms); heartbeats stay at 100 ms.
    #[arg(long, default_value_t = 1500)]
    pub link_timeout_ms: u64,
    /// Where the nodes keep their region files (`[regions] dir`, one directory per node);
    /// without it the region scenarios fail.
    #[arg(long)]
    pub region_dir: Option<PathBuf>,
    /// One-sided writes in region_writes_under_host_cable_pull (issue 9's 100,000: 65 s on a
    /// quiet host, 170 s on a loaded one, see docs/softroce-lane.md).
    #[arg(long, default_value_t = 100_000)]
    pub region_writes: u64,
    /// Seconds region_writes_under_host_cable_pull may take (instead of --scenario-timeout).
    #[arg(long, default_value_t = 300)]
    pub region_timeout: u64,
    /// Print the scenario names and exit.
    #[arg(long)]
    pub list: bool,
}

/// One HCA: the RDMA device and the netdev under it (the one a cable cut takes down).
#[derive(Debug, Clone)]
pub struct Hca {
    pub device: String,
    pub netdev: String,
}

fn parse_hca(s: &str) -> Result<Hca, String> {
    match s.split_once(':') {
        Some((d, n)) if !d.is_empty() && !n.is_empty() => Ok(Hca {
            device: d.to_string(),
            netdev: n.to_string(),
        }),
        _ => Err("expected DEVICE:NETDEV (e.g. rxe0:eth0)".into()),
    }
}

impl Args {
    /// The checks clap cannot express; the message is the usage error.
    pub fn check(&self) -> Result<(Role, PathBuf), String> {
        let (Some(role), Some(dir)) = (self.role, self.sync.clone()) else {
            return Err("--role and --sync are required (see --help)".into());
        };
        if self.link_timeout_ms < 200 {
            return Err("--link-timeout-ms must be at least 200 (heartbeats every 100 ms)".into());
        }
        if self.record_bytes < record::OVERHEAD + 3 || self.window == 0 || self.records < 3 {
            return Err(format!(
                "--record-bytes must be at least {}, --window and --records (>= 3) positive",
                record::OVERHEAD + 3
            ));
        }
        Ok((role, dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("manager-lane").chain(argv.iter().copied()))
    }

    #[test]
    fn the_lane_scripts_command_lines_parse() {
        let common = [
            "--sync",
            "/l/sync",
            "--abort-file",
            "/l/sync/abort",
            "--scenario-timeout",
            "90",
            "--connect-timeout",
            "120",
            "--records",
            "2000",
            "--link-timeout-ms",
            "1500",
        ];
        let mut leader = common.to_vec();
        leader.extend([
            "--hca",
            "rxe0:eth0",
            "--hca",
            "rxe1:eth1",
            "--role",
            "leader",
            "--peer",
            "10.77.99.2:7700",
            "--no-rdma-peer",
            "10.77.98.3:7704",
            "--backup",
            "10.77.98.3:7705",
            "--json",
            "/l/out/n1.manager.json",
            "--only",
            "rails_up_and_placement,restore_hca0",
        ]);
        let a = parse(&leader).unwrap();
        assert_eq!(a.check().unwrap().0, Role::Leader);
        assert_eq!(a.hcas[1].netdev, "eth1");
        assert_eq!(a.only, ["rails_up_and_placement", "restore_hca0"]);
        let mut backup = common.to_vec();
        backup.extend([
            "--role",
            "backup",
            "--listen",
            "10.77.98.3:7704",
            "--listen",
            "10.77.98.3:7705",
            "--leader-done-file",
            "/l/sync/done.n1",
        ]);
        let b = parse(&backup).unwrap();
        assert_eq!(b.check().unwrap().0, Role::Backup);
        assert_eq!(b.listen.len(), 2);
    }

    #[test]
    fn usage_errors_are_refused() {
        assert!(parse(&["--role", "leader", "--sync", "/s", "--hca", "rxe0"]).is_err());
        assert!(parse(&["--role", "boss", "--sync", "/s"]).is_err());
        assert!(parse(&["--role", "leader"]).unwrap().check().is_err());
        let short = parse(&["--role", "leader", "--sync", "/s", "--record-bytes", "10"]);
        assert!(short.unwrap().check().is_err());
        let fast = parse(&[
            "--role",
            "leader",
            "--sync",
            "/s",
            "--link-timeout-ms",
            "100",
        ]);
        assert!(fast.unwrap().check().is_err());
    }
}

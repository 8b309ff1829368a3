//! `bench-lane`'s command line (clap): the two roles, the transport, the figures' sizes and
//! counts, and the checks clap cannot express.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The part one process plays; one per VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Node a: dials the receiver and measures its one-sided writes.
    Sender,
    /// Node b: holds the region the sender writes into.
    Receiver,
    /// On the host after the run: reads `--results`, prints the figures, ratios and table.
    Summary,
}

/// What carries the writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// One RDMA rail: the node sees only `--hca` (RDMA WRITE + marker frame).
    Rdma,
    /// TCP only (verbs disabled): WRITE frames the receiver's manager copies into the region.
    Tcp,
    /// No peercm node: a bare RDMA link on `--hca` (the same writes and markers, each done
    /// when the sender's queue pair completes it), to tell rxe's cost from the manager's.
    RawLink,
}

/// One side of peercm's one-sided write benchmark (a benchmark, not a test: figures only).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench-lane",
    after_help = "Exit status: 0 figures taken, 1 the run failed (no figures), 64 usage error."
)]
pub struct Args {
    /// Which side this process is.
    #[arg(long, value_enum)]
    pub role: Role,
    /// What carries the writes.
    #[arg(long, value_enum, default_value_t = Transport::Rdma)]
    pub transport: Transport,
    /// RDMA: the only device the node may use (e.g. rxe0); the other HCAs stay invisible to it.
    #[arg(long)]
    pub hca: Option<String>,
    /// Raw link: the GID index of `--hca`'s RoCE v2 IPv4 entry.
    #[arg(long, default_value_t = 1)]
    pub gid_index: u8,
    /// Sender: the receiver's address (IP:PORT).
    #[arg(long)]
    pub peer: Option<SocketAddr>,
    /// Receiver: where to accept (IP:PORT).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Sender: TCP connections to keep to the receiver.
    #[arg(long, default_value_t = 1)]
    pub tcp_connections: u32,
    /// Receiver: stop once this file exists.
    #[arg(long)]
    pub stop_file: Option<PathBuf>,
    /// Give up as soon as this file exists (another node failed).
    #[arg(long)]
    pub abort_file: Option<PathBuf>,
    /// Receiver: the `[regions] dir` (a tmpfs in the guest).
    #[arg(long, default_value = "/tmp/peercm-bench-regions")]
    pub region_dir: PathBuf,
    /// Receiver: the region's size in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub region_bytes: u64,
    /// Throughput: bytes per write.
    #[arg(long, default_value_t = 65536)]
    pub bw_bytes: usize,
    /// Throughput: writes measured.
    #[arg(long, default_value_t = 400)]
    pub bw_writes: u64,
    /// Throughput: writes outstanding at most (0: the session's window, as many as it allows).
    #[arg(long, default_value_t = 0)]
    pub window: usize,
    /// Latency: bytes per write.
    #[arg(long, default_value_t = 64)]
    pub lat_bytes: usize,
    /// Latency: writes measured, one at a time.
    #[arg(long, default_value_t = 1000)]
    pub lat_writes: u64,
    /// Writes before each measurement, not counted.
    #[arg(long, default_value_t = 32)]
    pub warmup: u64,
    /// Which phases the sender runs.
    #[arg(long, value_enum, default_value_t = Phases::Both)]
    pub phases: Phases,
    /// RDMA and raw link: how long each link thread busy-polls its completion queue while
    /// the link is busy (`[verbs] busy_poll_us`; 0: it blocks on the completion channel).
    #[arg(long, default_value_t = 0)]
    pub busy_poll_us: u64,
    /// Tokio worker threads (the guests have one vCPU).
    #[arg(long, default_value_t = 1)]
    pub worker_threads: usize,
    /// Seconds to wait for the session, the rail and the partner's region.
    #[arg(long, default_value_t = 60)]
    pub connect_timeout: u64,
    /// Seconds one phase may take.
    #[arg(long, default_value_t = 120)]
    pub phase_timeout: u64,
    /// A label for the figures (e.g. `c0.r1`).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Summary: the directory of raw outputs bench-lane.sh saved.
    #[arg(long)]
    pub results: Option<PathBuf>,
    /// Summary: also write the table as markdown here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

/// The sender's phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phases {
    /// Throughput only.
    Bw,
    /// Latency only.
    Lat,
    /// Throughput, then latency.
    Both,
}

impl Phases {
    pub fn bw(self) -> bool {
        matches!(self, Phases::Bw | Phases::Both)
    }
    pub fn lat(self) -> bool {
        matches!(self, Phases::Lat | Phases::Both)
    }
}

impl Args {
    /// The checks clap cannot express; the message is the usage error.
    pub fn check(&self) -> Result<(), String> {
        if self.role == Role::Summary {
            return match self.results {
                Some(_) => Ok(()),
                None => Err("--role summary needs --results DIR".into()),
            };
        }
        if self.transport != Transport::Tcp && self.hca.is_none() {
            return Err("--transport rdma and raw-link need --hca DEVICE".into());
        }
        match self.role {
            Role::Sender if self.peer.is_none() => return Err("--role sender needs --peer".into()),
            Role::Receiver if self.listen.is_none() => {
                return Err("--role receiver needs --listen".into())
            }
            Role::Receiver if self.stop_file.is_none() && self.transport != Transport::RawLink => {
                return Err("--role receiver needs --stop-file (but with raw-link)".into())
            }
            _ => {}
        }
        let largest = self.bw_bytes.max(self.lat_bytes) as u64;
        if self.bw_bytes == 0 || self.lat_bytes == 0 || largest > self.region_bytes {
            return Err("--bw-bytes and --lat-bytes must be 1..=--region-bytes".into());
        }
        if self.bw_writes == 0 || self.lat_writes == 0 || self.worker_threads == 0 {
            return Err("--bw-writes, --lat-writes and --worker-threads must be positive".into());
        }
        if self.tcp_connections == 0 {
            return Err("--tcp-connections must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("bench-lane").chain(argv.iter().copied()))
    }

    #[test]
    fn the_scripts_command_lines_parse() {
        let s = parse(&[
            "--role",
            "sender",
            "--transport",
            "rdma",
            "--hca",
            "rxe1",
            "--peer",
            "10.77.1.2:7810",
            "--bw-writes",
            "400",
            "--label",
            "c1.r2",
            "--json",
            "/l/out/x.json",
        ])
        .unwrap();
        s.check().unwrap();
        assert_eq!(s.hca.as_deref(), Some("rxe1"));
        assert!(s.phases.bw() && s.phases.lat());
        let r = parse(&[
            "--role",
            "receiver",
            "--transport",
            "tcp",
            "--listen",
            "10.77.0.2:7820",
            "--stop-file",
            "/l/sync/stop",
        ])
        .unwrap();
        r.check().unwrap();
        assert_eq!(r.transport, Transport::Tcp);
    }

    #[test]
    fn usage_errors_are_refused() {
        let no_hca = parse(&["--role", "sender", "--peer", "1.2.3.4:5"]).unwrap();
        assert!(no_hca.check().is_err());
        let no_stop = parse(&[
            "--role",
            "receiver",
            "--transport",
            "tcp",
            "--listen",
            "1.2.3.4:5",
        ]);
        assert!(no_stop.unwrap().check().is_err());
        let big = parse(&[
            "--role",
            "sender",
            "--transport",
            "tcp",
            "--peer",
            "1.2.3.4:5",
            "--bw-bytes",
            "9000000",
        ]);
        assert!(big.unwrap().check().is_err());
        assert!(parse(&["--role", "boss"]).is_err());
        assert!(parse(&["--role", "summary"]).unwrap().check().is_err());
        let sum = parse(&[
            "--role",
            "summary",
            "--results",
            "/r",
            "--markdown",
            "/r/s.md",
        ]);
        sum.unwrap().check().unwrap();
    }
}

//! `verbs-lane`'s command line (clap): the options scripts/softroce/verbs-lane.sh passes, and
//! the checks clap cannot express (the client needs `--peer`, the server `--listen`).

use crate::cli::positive_secs;
use clap::{CommandFactory, Parser, ValueEnum};
use peercm_verbs_shim::scenarios::{HcaSel, Side};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Runs every scenario of the verbs scenario suite (or the --only subset), in order, as one
/// side; the other side is a second verbs-lane process (the server listens, the client
/// connects).
#[derive(Debug, Parser)]
#[command(
    name = "verbs-lane",
    after_help = "Exit status: 0 every scenario passed, 1 some failed, 2 none could run (no RDMA \
    device, no peer, different suites on the two sides), 64 usage error."
)]
pub struct Cli {
    /// Which half of each scenario this process runs.
    #[arg(long, value_enum)]
    side: Option<SideArg>,
    /// An HCA to use, repeated in cable order (e.g. rxe0:1:1).
    #[arg(long = "hca", value_name = "DEV:PORT:GIDIDX", value_parser = parse_hca)]
    hcas: Vec<HcaSel>,
    /// Client: where the server listens (connect is retried).
    #[arg(long, value_name = "IP:PORT")]
    peer: Option<SocketAddr>,
    /// Server: where to accept the client.
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// Run only these scenarios (repeatable; both sides must agree).
    #[arg(long, value_name = "NAME[,NAME...]")]
    only: Vec<String>,
    /// Also write the results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// How long to wait for the other side to connect.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = positive_secs)]
    connect_timeout: Duration,
    /// How long one scenario may run before this process gives up.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = positive_secs)]
    scenario_timeout: Duration,
    /// Give up waiting for the peer as soon as PATH exists.
    #[arg(long, value_name = "PATH")]
    abort_file: Option<PathBuf>,
    /// Print the scenario names and exit.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SideArg {
    Client,
    Server,
}

/// A run's settings, checked.
#[derive(Debug, Clone)]
pub struct Args {
    pub side: Side,
    pub hcas: Vec<HcaSel>,
    pub peer: Option<SocketAddr>,
    pub listen: Option<SocketAddr>,
    pub only: Vec<String>,
    pub json: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub scenario_timeout: Duration,
    pub abort_file: Option<PathBuf>,
}

fn parse_hca(s: &str) -> Result<HcaSel, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 || parts[0].is_empty() {
        return Err("expected DEV:PORT:GIDIDX, e.g. rxe0:1:1".into());
    }
    let port = parts[1]
        .parse::<u8>()
        .map_err(|_| format!("bad port {:?}", parts[1]))?;
    let gid_index = parts[2]
        .parse::<u8>()
        .map_err(|_| format!("bad GID index {:?}", parts[2]))?;
    if port == 0 {
        return Err("ports count from 1".into());
    }
    Ok(HcaSel {
        device: parts[0].to_string(),
        port,
        gid_index,
    })
}

impl Cli {
    /// The run's settings, or the usage error clap prints.
    pub fn check(self) -> Result<Args, clap::Error> {
        let usage =
            |msg: &str| Cli::command().error(clap::error::ErrorKind::MissingRequiredArgument, msg);
        let side = match self.side {
            Some(SideArg::Client) => Side::Client,
            Some(SideArg::Server) => Side::Server,
            None => return Err(usage("--side is required")),
        };
        if self.hcas.is_empty() {
            return Err(usage("at least one --hca DEV:PORT:GIDIDX is required"));
        }
        match (side, self.peer, self.listen) {
            (Side::Client, Some(_), None) | (Side::Server, None, Some(_)) => {}
            (Side::Client, _, _) => {
                return Err(usage("the client needs --peer IP:PORT (and no --listen)"))
            }
            (Side::Server, _, _) => {
                return Err(usage("the server needs --listen IP:PORT (and no --peer)"))
            }
        }
        Ok(Args {
            side,
            hcas: self.hcas,
            peer: self.peer,
            listen: self.listen,
            only: crate::cli::names(&self.only),
            json: self.json,
            connect_timeout: self.connect_timeout,
            scenario_timeout: self.scenario_timeout,
            abort_file: self.abort_file,
        })
    }
}

/// `client` or `server`.
pub fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("verbs-lane").chain(argv.iter().copied()))?.check()
    }

    #[test]
    fn the_lane_scripts_command_lines_parse() {
        let a = parse(&[
            "--hca",
            "rxe0:1:1",
            "--hca",
            "rxe1:1:1",
            "--json",
            "/x/n1.verbs.json",
            "--abort-file",
            "/x/abort",
            "--scenario-timeout",
            "150",
            "--connect-timeout",
            "120",
            "--only",
            "ping_pong,cable_cut",
            "--side",
            "client",
            "--peer",
            "10.77.99.2:18600",
        ])
        .unwrap();
        assert_eq!(a.side, Side::Client);
        assert_eq!(a.hcas.len(), 2);
        assert_eq!(a.hcas[1].device, "rxe1");
        assert_eq!(a.only, ["ping_pong", "cable_cut"]);
        assert_eq!(a.scenario_timeout, Duration::from_secs(150));
        let s = parse(&[
            "--side",
            "server",
            "--listen",
            "10.77.99.2:18600",
            "--hca",
            "rxe0:1:1",
        ]);
        assert_eq!(s.unwrap().side, Side::Server);
    }

    #[test]
    fn usage_errors_are_refused() {
        assert!(parse(&["--side", "client", "--hca", "rxe0:1:1"]).is_err());
        assert!(parse(&[
            "--side",
            "server",
            "--peer",
            "1.2.3.4:5",
            "--hca",
            "rxe0:1:1"
        ])
        .is_err());
        assert!(parse(&["--side", "client", "--peer", "1.2.3.4:5"]).is_err());
        assert!(parse(&[
            "--side",
            "client",
            "--peer",
            "1.2.3.4:5",
            "--hca",
            "rxe0:0:1"
        ])
        .is_err());
        assert!(parse(&["--side", "x", "--peer", "1.2.3.4:5", "--hca", "rxe0:1:1"]).is_err());
        assert!(parse(&[
            "--peer",
            "1.2.3.4:5",
            "--hca",
            "rxe0:1:1",
            "--scenario-timeout",
            "0"
        ])
        .is_err());
    }
}

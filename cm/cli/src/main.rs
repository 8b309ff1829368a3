//! The `peercm` command: `peercm demo` runs two nodes on this machine and proves delivery;
//! `peercm node --config FILE` runs one node as a long-lived process; `peercm status` shows
//! a running node's interconnects and events; `peercm devices` lists RDMA devices;
//! `peercm secret generate` writes a cluster secret.
//!
//! Logging follows `RUST_LOG` (tracing-subscriber's env filter), e.g.
//! `RUST_LOG=peercm_cm_manager=debug peercm node --config a.toml`.

mod demo;
mod devices;
mod node_cmd;
mod secret_cmd;
mod status_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// peercm: the peer connection manager for HA storage pairs.
#[derive(Debug, Parser)]
#[command(name = "peercm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start two nodes on this machine over loopback TCP, mirror a few thousand log records
    /// while killing one TCP connection halfway, and verify every record arrived exactly once,
    /// in order. Exits 0 only if it did.
    Demo(demo::DemoArgs),
    /// Run one node as a long-lived process from a TOML configuration.
    Node(node_cmd::NodeArgs),
    /// List this host's RDMA devices and ports (like ibv_devinfo), or say why verbs are
    /// unavailable and that TCP will be used.
    Devices(devices::DevicesArgs),
    /// Show a running node's interconnects (capacity, utilization, clients placed on each),
    /// partner and epoch, fallback reason and recent events. Reads the node's status_socket.
    Status(status_cmd::StatusArgs),
    /// Cluster secrets: `peercm secret generate [--out FILE] [--force]` writes a strong one.
    Secret(secret_cmd::SecretArgs),
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("peercm: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Demo(args) => {
            init_tracing("warn");
            runtime.block_on(demo::run(args))
        }
        Command::Devices(args) => {
            init_tracing("warn");
            devices::run(args)
        }
        Command::Status(args) => {
            init_tracing("warn");
            runtime.block_on(status_cmd::run(args))
        }
        Command::Secret(args) => {
            init_tracing("warn");
            secret_cmd::run(args)
        }
        Command::Node(args) => {
            init_tracing("info");
            runtime.block_on(node_cmd::run(args))
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("peercm: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

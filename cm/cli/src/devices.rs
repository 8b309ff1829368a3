//! `peercm devices`: the RDMA devices and ports this host has, in the manner of `ibv_devinfo`,
//! or why verbs cannot be used here (and that peercm will use TCP). Exits 0 either way:
//! no RDMA is a supported configuration, not an error.

use clap::Args;
use peercm_verbs_shim::real::RealProvider;
use peercm_verbs_shim::{DeviceInfo, PortState, Provider};
use serde::Serialize;
use std::net::Ipv6Addr;

/// Options of `peercm devices`.
#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    transport: &'static str,
    devices: Vec<DeviceInfo>,
}

fn state_text(s: PortState) -> String {
    match s {
        PortState::Down => "PORT_DOWN (1)".into(),
        PortState::Init => "PORT_INIT (2)".into(),
        PortState::Armed => "PORT_ARMED (3)".into(),
        PortState::Active => "PORT_ACTIVE (4)".into(),
        PortState::Other(n) => format!("UNKNOWN ({n})"),
    }
}

fn guid_text(g: u64) -> String {
    let b = g.to_be_bytes();
    format!(
        "{:02x}{:02x}:{:02x}{:02x}:{:02x}{:02x}:{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
    )
}

fn report() -> Report {
    let listed = RealProvider::load_any().and_then(|p| p.devices());
    match listed {
        Ok(devices) => {
            let active = devices
                .iter()
                .any(|d| d.ports.iter().any(|p| p.state == PortState::Active));
            Report {
                available: active,
                reason: (!active).then(|| "no RDMA port is ACTIVE".to_string()),
                transport: if active { "rdma" } else { "tcp" },
                devices,
            }
        }
        Err(why) => Report {
            available: false,
            reason: Some(why.to_string()),
            transport: "tcp",
            devices: Vec::new(),
        },
    }
}

/// Prints the report.
pub fn run(args: DevicesArgs) -> anyhow::Result<bool> {
    let r = report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(true);
    }
    for d in &r.devices {
        println!("hca_id:\t{}", d.name);
        println!("\tnode_guid:\t\t{}", guid_text(d.guid));
        for p in &d.ports {
            println!("\t\tport:\t{}", p.port);
            println!("\t\t\tstate:\t\t{}", state_text(p.state));
            println!("\t\t\tlink_layer:\t{:?}", p.link_layer);
            println!(
                "\t\t\tcapacity:\t{:.1} Gb/s",
                f64::from(p.capacity_mbps) / 1000.0
            );
            for (i, g) in p.gids.iter().enumerate() {
                println!("\t\t\tGID[{i:>3}]:\t{}", Ipv6Addr::from(*g));
            }
        }
        println!();
    }
    match &r.reason {
        Some(why) => println!("RDMA verbs unavailable: {why}\npeercm will use TCP."),
        None => println!("RDMA verbs available: peercm will use these HCAs."),
    }
    Ok(true)
}

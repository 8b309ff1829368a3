//! `peercm devices`: the RDMA devices and ports this host has, in the manner of `ibv_devinfo`,
//! or why verbs cannot be used here (and that peercm will use TCP). Exits 0 either way:
//! no RDMA is a supported configuration, not an error. Devices whose ports are all down are
//! listed with their port states, and the report says, as information, that no port is ACTIVE:
//! a node opens and watches them anyway, uses TCP meanwhile and moves its clients to RDMA
//! when a port becomes ACTIVE.

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
    /// Verbs work here: libibverbs loads and lists at least one device.
    available: bool,
    /// Why verbs cannot be used here, when they cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Ports in state ACTIVE, over every device.
    active_ports: usize,
    /// What peercm would use right now: `rdma` with an ACTIVE port, else `tcp`.
    transport: &'static str,
    /// Information, not an error: devices exist but no port is ACTIVE.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    devices: Vec<DeviceInfo>,
}

/// What the report says when devices exist but no port is ACTIVE.
const NO_ACTIVE_PORT: &str = "no RDMA port is ACTIVE: peercm opens and watches these devices, \
     uses TCP meanwhile, and moves clients to RDMA when a port becomes ACTIVE";

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
    let listed = RealProvider::load().and_then(|p| p.devices());
    match listed {
        Ok(devices) => {
            let active_ports = devices
                .iter()
                .flat_map(|d| &d.ports)
                .filter(|p| p.state == PortState::Active)
                .count();
            Report {
                available: true,
                reason: None,
                active_ports,
                transport: if active_ports > 0 { "rdma" } else { "tcp" },
                note: (active_ports == 0).then(|| NO_ACTIVE_PORT.to_string()),
                devices,
            }
        }
        Err(why) => Report {
            available: false,
            reason: Some(why.to_string()),
            active_ports: 0,
            transport: "tcp",
            note: None,
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
                f64::from(p.capacity_mbits_per_s) / 1000.0
            );
            for (i, g) in p.gids.iter().enumerate() {
                println!("\t\t\tGID[{i:>3}]:\t{}", Ipv6Addr::from(*g));
            }
        }
        println!();
    }
    match (&r.reason, &r.note) {
        (Some(why), _) => println!("RDMA verbs unavailable: {why}\npeercm will use TCP."),
        (None, Some(note)) => println!("RDMA verbs available, but {note}."),
        (None, None) => println!(
            "RDMA verbs available: peercm will use these HCAs ({} port{} ACTIVE).",
            r.active_ports,
            if r.active_ports == 1 { "" } else { "s" }
        ),
    }
    Ok(true)
}

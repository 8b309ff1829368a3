//! The HCAs one side runs on: the pre-flight check through libibverbs (every `--hca` device
//! present with an ACTIVE port, so the lane never passes vacuously) and the sysfs facts the
//! fault injector and the between-scenario checks need (the netdev under each HCA, its GID).

use super::args::Args;
use crate::sysfs::{gid, ib_port_dir, port_state, read_trim};
use peercm_verbs_shim::api::Provider;
use peercm_verbs_shim::real::RealProvider;
use peercm_verbs_shim::scenarios::HcaSel;
use peercm_verbs_shim::types::{DeviceInfo, PortState};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One HCA with what sysfs says about it.
#[derive(Debug, Clone)]
pub struct Hca {
    pub sel: HcaSel,
    /// The Ethernet device under the HCA (rxe: the netdev it was created on).
    pub netdev: Option<String>,
    /// The GID at `sel.gid_index` at start, as sysfs prints it.
    pub gid: Option<String>,
}

impl Hca {
    /// `DEV:PORT:GIDIDX on NETDEV`, for the readiness log line.
    pub fn describe(&self) -> String {
        format!(
            "{}:{}:{} on {}",
            self.sel.device,
            self.sel.port,
            self.sel.gid_index,
            self.netdev.as_deref().unwrap_or("?")
        )
    }
}

/// The netdev of an RoCE HCA port: the GID entry's ndev in sysfs, else `rdma link show`.
fn find_netdev(h: &HcaSel) -> Option<String> {
    let ndevs = ib_port_dir(&h.device, h.port).join("gid_attrs/ndevs");
    if let Some(n) = read_trim(ndevs.join(h.gid_index.to_string())) {
        return Some(n);
    }
    if let Ok(rd) = std::fs::read_dir(&ndevs) {
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        if let Some(n) = names.iter().find_map(read_trim) {
            return Some(n);
        }
    }
    let out = Command::new("rdma")
        .args(["link", "show", &format!("{}/{}", h.device, h.port)])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "netdev" {
            return words.next().map(str::to_string);
        }
    }
    None
}

/// The port's state as sysfs prints it, or `MISSING`.
pub fn port_state_word(h: &HcaSel) -> String {
    port_state(&h.device, h.port)
}

fn current_gid(h: &HcaSel) -> Option<String> {
    gid(&h.device, h.port, h.gid_index)
}

/// Waits until the HCA's port is ACTIVE and its GID entry is back; returns how long it took.
/// A device without a sysfs entry (not a kernel RDMA device) is taken as ready.
pub fn wait_port_ready(h: &Hca, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    if !ib_port_dir(&h.sel.device, h.sel.port).exists() {
        return Ok(Duration::ZERO);
    }
    loop {
        let state = port_state_word(&h.sel);
        let gid_ok = match &h.gid {
            Some(g) => current_gid(&h.sel).as_deref() == Some(g.as_str()),
            None => true,
        };
        if state.contains("ACTIVE") && gid_ok {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "{}/{}: port {state}, GID[{}] {} (wanted ACTIVE and {}) after {} ms",
                h.sel.device,
                h.sel.port,
                h.sel.gid_index,
                current_gid(&h.sel).unwrap_or_else(|| "missing".into()),
                h.gid.as_deref().unwrap_or("?"),
                start.elapsed().as_millis()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pre-flight: the provider, the devices, the HCAs. Every `--hca` device must exist and its
/// port must be ACTIVE.
pub fn preflight(args: &Args) -> Result<(Arc<dyn Provider>, Vec<Hca>), String> {
    let provider = RealProvider::load().map_err(|e| format!("RDMA verbs unavailable: {e}"))?;
    let devices: Vec<DeviceInfo> = provider
        .devices()
        .map_err(|e| format!("RDMA verbs unavailable: {e}"))?;
    if devices.is_empty() {
        return Err("no RDMA device found".into());
    }
    let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
    let mut hcas = Vec::new();
    for sel in &args.hcas {
        let dev = devices
            .iter()
            .find(|d| d.name == sel.device)
            .ok_or_else(|| {
                format!(
                    "RDMA device {} not found (found: {})",
                    sel.device,
                    names.join(", ")
                )
            })?;
        let port = dev
            .ports
            .iter()
            .find(|p| p.port == sel.port)
            .ok_or_else(|| {
                format!(
                    "{} has no port {} ({} ports)",
                    sel.device,
                    sel.port,
                    dev.ports.len()
                )
            })?;
        if port.state != PortState::Active {
            return Err(format!(
                "{} port {} is {:?}, not ACTIVE",
                sel.device, sel.port, port.state
            ));
        }
        let netdev = find_netdev(sel);
        let gid = current_gid(sel);
        if netdev.is_none() {
            eprintln!(
                "verbs-lane: warning: no netdev found for {}/{}; cutting its cable will fail",
                sel.device, sel.port
            );
        }
        hcas.push(Hca {
            sel: sel.clone(),
            netdev,
            gid,
        });
    }
    let provider: Arc<dyn Provider> = Arc::new(provider);
    Ok((provider, hcas))
}

//! What the manager lane reads about its VM: the devices libibverbs lists (every `--hca`
//! present with an ACTIVE port), the ports' state and GID tables, rxe's packet counters and
//! the vCPU's busy time.

use super::args::Hca;
use crate::sysfs::{gid, port_state_name, read_trim};
use peercm_verbs_shim::api::Provider;
use peercm_verbs_shim::real::RealProvider;
use peercm_verbs_shim::types::PortState;

/// Checks that libibverbs lists every wanted device with an ACTIVE port.
pub fn check_devices(hcas: &[Hca]) -> Result<String, String> {
    if hcas.is_empty() {
        return Err("no --hca given".into());
    }
    let p = RealProvider::load().map_err(|e| format!("no RDMA device usable: {e}"))?;
    let devs = p
        .devices()
        .map_err(|e| format!("no RDMA device usable: {e}"))?;
    let mut seen = Vec::new();
    for h in hcas {
        let d = devs.iter().find(|d| d.name == h.device).ok_or_else(|| {
            format!(
                "device {} not found (libibverbs lists: {})",
                h.device,
                devs.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        if !d.ports.iter().any(|p| p.state == PortState::Active) {
            return Err(format!("device {} has no ACTIVE port", h.device));
        }
        seen.push(format!("{}({})", h.device, h.netdev));
    }
    Ok(format!("libibverbs lists {} ACTIVE", seen.join(" ")))
}

/// What libibverbs says on a node that must have no RDMA (the backup's VM has no rxe).
pub fn describe_no_rdma() -> String {
    match RealProvider::load() {
        Ok(p) => format!(
            "libibverbs lists devices: {:?}",
            p.devices()
                .map(|d| d.into_iter().map(|d| d.name).collect::<Vec<_>>())
                .unwrap_or_default()
        ),
        Err(e) => format!("no RDMA here, as intended: {e}"),
    }
}

/// Port 1's GID table as sysfs shows it: the non-empty entries as `index=gid`.
pub fn gid_table(dev: &str) -> String {
    let mut out = Vec::new();
    for i in 0..8 {
        if let Some(g) = gid(dev, 1, i) {
            if g.chars().any(|c| c != '0' && c != ':') {
                out.push(format!("{i}={g}"));
            }
        }
    }
    if out.is_empty() {
        "empty".into()
    } else {
        out.join(" ")
    }
}

/// Port 1's state name (`ACTIVE`, `DOWN`, ...).
pub fn port_state(dev: &str) -> String {
    port_state_name(dev, 1)
}

/// rxe packet counters of a device (sent, received).
pub fn pkts(dev: &str) -> (u64, u64) {
    let get = |c: &str| {
        read_trim(format!(
            "/sys/class/infiniband/{dev}/ports/1/hw_counters/{c}"
        ))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
    };
    (get("sent_pkts"), get("rcvd_pkts"))
}

/// This VM's CPU time so far from /proc/stat: (busy, total) in clock ticks.
pub fn cpu_ticks() -> (u64, u64) {
    let line = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Percent of the time this VM's vCPU was busy between two [`cpu_ticks`] samples.
pub fn busy_percent(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return 0.0;
    }
    (b.0.saturating_sub(a.0) as f64 * 1000.0 / total as f64).round() / 10.0
}

//! Reads of the kernel's RDMA port files (`/sys/class/infiniband/<dev>/ports/<port>/...`): port
//! state and GID entries, as the runners check and log them.

use std::path::{Path, PathBuf};

/// A sysfs file's content, trimmed; `None` if missing or empty.
pub fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `/sys/class/infiniband/<device>/ports/<port>`.
pub fn ib_port_dir(device: &str, port: u8) -> PathBuf {
    PathBuf::from(format!("/sys/class/infiniband/{device}/ports/{port}"))
}

/// The port's state as sysfs prints it (`4: ACTIVE`), or `MISSING`.
pub fn port_state(device: &str, port: u8) -> String {
    read_trim(ib_port_dir(device, port).join("state")).unwrap_or_else(|| "MISSING".into())
}

/// The port's state name alone (`ACTIVE`, `DOWN`, ...), or `MISSING`.
pub fn port_state_name(device: &str, port: u8) -> String {
    match read_trim(ib_port_dir(device, port).join("state")) {
        Some(s) => s.rsplit(' ').next().unwrap_or("").to_string(),
        None => "MISSING".into(),
    }
}

/// The port's GID at `index` as sysfs prints it.
pub fn gid(device: &str, port: u8, index: u8) -> Option<String> {
    read_trim(ib_port_dir(device, port).join(format!("gids/{index}")))
}

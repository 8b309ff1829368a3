//! Cutting and restoring a cable from inside a guest: the administrative state of the netdev
//! under an rxe HCA. Admin down raises PORT_ERR and fails the HCA's QPs at once; admin up
//! brings the port back to ACTIVE (docs/softroce-lane.md, "rxe behaviour").

use crate::sysfs::read_trim;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Sets the netdev's administrative state, like `ip link set dev NETDEV up|down`: sets or
/// clears IFF_UP through `/sys/class/net/NETDEV/flags` (the kernel's dev_change_flags, as for
/// `ip`), which costs no process start (an exec of `ip` takes 50-70 ms under TCG and would
/// blur the fault timings). Falls back to running `ip`. Returns how long it took and how.
pub fn set_admin_state(netdev: &str, up: bool) -> Result<(Duration, &'static str), String> {
    const IFF_UP: u32 = 1;
    let start = Instant::now();
    let flags_path = PathBuf::from(format!("/sys/class/net/{netdev}/flags"));
    let via_sysfs = read_trim(&flags_path)
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .map(|f| if up { f | IFF_UP } else { f & !IFF_UP })
        .is_some_and(|f| std::fs::write(&flags_path, format!("{f:#x}")).is_ok());
    if via_sysfs {
        return Ok((start.elapsed(), "sysfs flags"));
    }
    let updown = if up { "up" } else { "down" };
    let out = Command::new("ip")
        .args(["link", "set", "dev", netdev, updown])
        .output()
        .map_err(|e| format!("cannot run `ip link set dev {netdev} {updown}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip link set dev {netdev} {updown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok((start.elapsed(), "ip link"))
}

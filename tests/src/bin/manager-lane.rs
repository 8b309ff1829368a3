//! `manager-lane`: the connection manager's scenarios on real RDMA devices (rdma_rxe in the
//! soft-RoCE lane, see docs/softroce-lane.md). The real-rxe counterparts of
//! `tests/tests/interconnects_sim.rs`: every node is a `peercm_cm_manager::Node` started with
//! `VerbsSource::Real`, so rails are discovered by rdma-core and every RDMA link is a real RC
//! queue pair on an rxe HCA.
//!
//! One process per VM, each with a role:
//!
//! ```text
//! n1: manager-lane --role leader  --peer 10.77.99.2:7700 --no-rdma-peer 10.77.98.3:7704
//!                                 --hca rxe0:eth0 --hca rxe1:eth1 --sync $LANE/sync
//! n2: manager-lane --role partner --listen 10.77.99.2:7700 --hca rxe0:eth0 --hca rxe1:eth1 ...
//! n3: manager-lane --role backup  --listen 10.77.98.3:7704 ...   (a VM without rxe)
//! ```
//!
//! - The **leader** (node a, the dialer) drives every scenario and is the only judge: it sends
//!   the records, injects the faults (its HCA0 netdev administratively down/up through
//!   `/sys/class/net/<netdev>/flags`, which raises PORT_ERR / PORT_ACTIVE on rxe), watches its
//!   node's status, and asks the other roles for their receive statistics.
//! - The **partner** (node b, the acceptor) and the **backup** (n3) only receive: every record
//!   is checked (magic, CRC32C over the record, content regenerated from its index, index in
//!   order) and a sync record is answered with a return code derived from its checksum, or a
//!   negative code naming what was wrong, so every ack the leader gets proves that the partner
//!   got exactly that record, in order.
//! - Control between the roles is not peercm (that is what is under test): small files in the
//!   lane's shared sync dir (`--sync`), written then renamed. The leader sends numbered
//!   requests (`mlane.req.<role>.<n>`: `report`, `exit`) and waits for the answers
//!   (`mlane.resp.<role>.<n>`); roles announce themselves with `mlane.ready.<role>`.
//! - Devices: the leader and the partner load libibverbs and require every `--hca` device with
//!   an ACTIVE port, and their node must discover a rail on each. Otherwise every scenario FAILs
//!   ("not run"): the lane never passes without rxe.
//!
//! Output (leader): `scenario <name>: PASS|FAIL <details> (<ms> ms)` per scenario, then
//! `manager-lane: N passed, M failed`; `--json FILE` writes the same with every figure.
//! Exit status: 0 all passed, 1 a scenario failed, 2 nothing could run, 64 usage error.

use clap::{Parser, ValueEnum};
use peercm_cm_manager::config::PeerConfig;
use peercm_cm_manager::status::NodeStatus;
use peercm_cm_manager::{
    ClientEvent, ClientHandle, ClientSpec, ClusterSecret, LatencyClass, Node, NodeConfig,
    SendModel, VerbsSource,
};
use peercm_verbs_shim::api::Provider;
use peercm_verbs_shim::real::RealProvider;
use peercm_verbs_shim::types::{AsyncEvent, PortState};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"peercm-manager-lane-secret-0123456789";
const CLUSTER: &str = "softroce-lane";
/// The nodes' session link timeout in ms (`--link-timeout-ms`, see `node_config`).
static LINK_TIMEOUT_MS: AtomicU64 = AtomicU64::new(1500);

/// The scenarios, in the order they run.
const SCENARIOS: &[&str] = &[
    "rails_up_and_placement",
    "cable_cut_hca0_under_stream",
    "restore_hca0",
    "no_rdma_node_uses_tcp",
    // Last: the partner is dead afterwards.
    "partner_crash_switches_to_backup",
];

/// The three clients of a storage pair: name, record tag, spec.
const MIRROR: &str = "mirror";
const CONFIG: &str = "config";
const HEARTBEAT: &str = "heartbeat";

fn client_specs() -> [(&'static str, u8, ClientSpec); 3] {
    [
        (
            MIRROR,
            1,
            ClientSpec {
                bandwidth_mbps: 2000,
                latency: LatencyClass::Bulk,
                model: SendModel::Sync,
            },
        ),
        (
            CONFIG,
            2,
            ClientSpec {
                bandwidth_mbps: 50,
                latency: LatencyClass::Normal,
                model: SendModel::Async,
            },
        ),
        (
            HEARTBEAT,
            3,
            ClientSpec {
                bandwidth_mbps: 1,
                latency: LatencyClass::Critical,
                model: SendModel::Async,
            },
        ),
    ]
}

fn tag_of(name: &str) -> u8 {
    client_specs()
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or(0, |(_, t, _)| *t)
}

// ---------------------------------------------------------------------------------------------
// Arguments

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Node a on n1: dials the partner, drives and judges every scenario.
    Leader,
    /// Node b on n2: the acceptor with the same two HCAs.
    Partner,
    /// n3: a node without RDMA (the no-RDMA acceptor, and the backup partner).
    Backup,
}

impl Role {
    fn name(self) -> &'static str {
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
struct Args {
    /// Which part this process plays.
    #[arg(long, value_enum)]
    role: Option<Role>,
    /// The lane's shared sync directory (control files between the roles).
    #[arg(long)]
    sync: Option<PathBuf>,
    /// Give up as soon as this file exists (another node failed).
    #[arg(long)]
    abort_file: Option<PathBuf>,
    /// Receivers: stop once this file exists (the leader's script ended).
    #[arg(long)]
    leader_done_file: Option<PathBuf>,
    /// An HCA, as DEVICE:NETDEV, repeated in cable order (HCA0 first).
    #[arg(long = "hca")]
    hcas: Vec<String>,
    /// Leader: the partner node b (IP:PORT).
    #[arg(long)]
    peer: Option<SocketAddr>,
    /// Leader: the node without RDMA for no_rdma_node_uses_tcp (IP:PORT).
    #[arg(long)]
    no_rdma_peer: Option<SocketAddr>,
    /// Leader: the backup partner for partner_crash_switches_to_backup (IP:PORT).
    #[arg(long)]
    backup: Option<SocketAddr>,
    /// Partner/backup: where to accept (IP:PORT); the backup's first is the no-RDMA node.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// Run only these scenarios (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Mirror records per stream.
    #[arg(long, default_value_t = 2000)]
    records: u64,
    /// Bytes per record (payload, at least 24).
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records a sync sender keeps unacknowledged.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Seconds one scenario may take.
    #[arg(long, default_value_t = 120)]
    scenario_timeout: u64,
    /// Seconds to wait for the other roles to start.
    #[arg(long, default_value_t = 120)]
    connect_timeout: u64,
    /// The nodes' session link timeout (ms); heartbeats stay at 100 ms.
    #[arg(long, default_value_t = 1500)]
    link_timeout_ms: u64,
    /// Print the scenario names and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Debug, Clone)]
struct Hca {
    device: String,
    netdev: String,
}

fn parse_hcas(list: &[String]) -> Result<Vec<Hca>, String> {
    list.iter()
        .map(|s| match s.split_once(':') {
            Some((d, n)) if !d.is_empty() && !n.is_empty() => Ok(Hca {
                device: d.to_string(),
                netdev: n.to_string(),
            }),
            _ => Err(format!(
                "--hca {s}: expected DEVICE:NETDEV (e.g. rxe0:eth0)"
            )),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Records: [magic "PCML"][tag u8][index u64 BE][body len u32 BE][body][crc32c u32 BE over all
// before it]. The body is regenerated from (tag, index), so any corruption is caught.

mod record {
    use bytes::{BufMut, Bytes, BytesMut};

    const MAGIC: &[u8; 4] = b"PCML";
    pub const OVERHEAD: usize = 4 + 1 + 8 + 4 + 4;

    fn body_byte_stream(tag: u8, index: u64) -> impl Iterator<Item = u8> {
        let mut x = (u64::from(tag) << 56) ^ index ^ 0x243F_6A88_85A3_08D3;
        std::iter::repeat_with(move || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .flatten()
    }

    /// A record of `total` bytes (at least [`OVERHEAD`]).
    pub fn encode(tag: u8, index: u64, total: usize) -> Bytes {
        let body = total.saturating_sub(OVERHEAD);
        let mut b = BytesMut::with_capacity(OVERHEAD + body);
        b.put_slice(MAGIC);
        b.put_u8(tag);
        b.put_u64(index);
        b.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
        b.extend(body_byte_stream(tag, index).take(body));
        let crc = crc32c::crc32c(&b);
        b.put_u32(crc);
        b.freeze()
    }

    /// The return code a receiver answers a good record with (positive).
    pub fn code(payload: &[u8]) -> i32 {
        (crc32c::crc32c(payload) & 0x3FFF_FFFF) as i32
    }

    /// Checks a record; returns its tag and index.
    pub fn verify(p: &[u8]) -> Result<(u8, u64), String> {
        if p.len() < OVERHEAD {
            return Err(format!("{} bytes, shorter than a record header", p.len()));
        }
        if &p[..4] != MAGIC {
            return Err("bad magic".into());
        }
        let (data, crc) = p.split_at(p.len() - 4);
        let want = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32c::crc32c(data) != want {
            return Err("CRC32C mismatch".into());
        }
        let tag = p[4];
        let mut ix = [0u8; 8];
        ix.copy_from_slice(&p[5..13]);
        let index = u64::from_be_bytes(ix);
        let len = u32::from_be_bytes([p[13], p[14], p[15], p[16]]) as usize;
        if len != p.len() - OVERHEAD {
            return Err(format!(
                "record {index}: header says {len} body bytes, has {}",
                p.len() - OVERHEAD
            ));
        }
        if !body_byte_stream(tag, index)
            .take(len)
            .eq(p[17..17 + len].iter().copied())
        {
            return Err(format!("record {index}: body differs from its generator"));
        }
        Ok((tag, index))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trip_and_corruption() {
            let r = encode(1, 42, 300);
            assert_eq!(r.len(), 300);
            assert_eq!(verify(&r).unwrap(), (1, 42));
            let mut bad = r.to_vec();
            bad[100] ^= 1;
            assert!(verify(&bad).is_err());
            assert!(code(&r) > 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Control files in the lane's sync dir.

#[derive(Clone)]
struct SyncDir {
    dir: PathBuf,
    abort: Option<PathBuf>,
    stop: Option<PathBuf>,
}

impl SyncDir {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn put(&self, name: &str, content: &str) -> Result<(), String> {
        let tmp = self.dir.join(format!(".{name}.tmp.{}", std::process::id()));
        std::fs::write(&tmp, content).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, self.path(name)).map_err(|e| format!("renaming to {name}: {e}"))
    }

    fn aborted(&self) -> Option<String> {
        let a = self.abort.as_ref()?;
        if a.exists() {
            let why = std::fs::read_to_string(a).unwrap_or_default();
            return Some(format!("a node failed ({})", why.trim()));
        }
        None
    }

    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|p| p.exists())
    }

    /// Waits for `name` and returns its content.
    async fn wait(&self, name: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let p = self.path(name);
        loop {
            if let Ok(s) = std::fs::read_to_string(&p) {
                return Ok(s);
            }
            if let Some(why) = self.aborted() {
                return Err(format!("gave up waiting for {name}: {why}"));
            }
            if Instant::now() >= deadline {
                return Err(format!("no {name} after {} s", timeout.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The leader's side of the request/answer files.
struct Rpc {
    sync: SyncDir,
    next: HashMap<&'static str, u64>,
}

impl Rpc {
    async fn call(&mut self, role: Role, cmd: &str) -> Result<Value, String> {
        let n = self.next.entry(role.name()).or_insert(0);
        *n += 1;
        let n = *n;
        self.sync
            .put(&format!("mlane.req.{}.{n}", role.name()), cmd)?;
        let text = self
            .sync
            .wait(
                &format!("mlane.resp.{}.{n}", role.name()),
                Duration::from_secs(30),
            )
            .await?;
        serde_json::from_str(&text).map_err(|e| format!("bad answer from {}: {e}", role.name()))
    }
}

// ---------------------------------------------------------------------------------------------
// Devices

/// Checks that libibverbs lists every wanted device with an ACTIVE port.
fn check_devices(hcas: &[Hca]) -> Result<String, String> {
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

fn sysfs(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// The port's GID table as sysfs shows it: the non-empty entries as `index=gid`.
fn gid_table(dev: &str) -> String {
    let mut out = Vec::new();
    for i in 0..8 {
        if let Some(g) = sysfs(&format!("/sys/class/infiniband/{dev}/ports/1/gids/{i}")) {
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

fn port_state(dev: &str) -> String {
    sysfs(&format!("/sys/class/infiniband/{dev}/ports/1/state"))
        .map(|s| s.rsplit(' ').next().unwrap_or("").to_string())
        .unwrap_or_else(|| "MISSING".into())
}

/// rxe packet counters of a device (sent, received).
fn pkts(dev: &str) -> (u64, u64) {
    let get = |c: &str| {
        sysfs(&format!(
            "/sys/class/infiniband/{dev}/ports/1/hw_counters/{c}"
        ))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
    };
    (get("sent_pkts"), get("rcvd_pkts"))
}

/// This VM's CPU time so far from /proc/stat: (busy, total) in clock ticks.
fn cpu_ticks() -> (u64, u64) {
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
fn busy_percent(a: (u64, u64), b: (u64, u64)) -> f64 {
    let total = b.1.saturating_sub(a.1);
    if total == 0 {
        return 0.0;
    }
    (b.0.saturating_sub(a.0) as f64 * 1000.0 / total as f64).round() / 10.0
}

/// An async event as the observer saw it: when, on which device, what, and the device's GID
/// table read right after.
type SeenEvent = (Instant, String, AsyncEvent, String);

/// An independent observer of the HCAs' async events (its own device contexts), so that fault
/// timings are taken on the test's clock, not inferred from the manager's log.
struct PortWatch {
    events: Arc<Mutex<Vec<SeenEvent>>>,
    stop: Arc<AtomicBool>,
}

impl PortWatch {
    fn start(hcas: &[Hca]) -> Result<PortWatch, String> {
        let p = RealProvider::load_any().map_err(|e| format!("event observer: {e}"))?;
        let events: Arc<Mutex<Vec<SeenEvent>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        for h in hcas {
            let dev = p
                .open(&h.device)
                .map_err(|e| format!("event observer: opening {}: {e}", h.device))?;
            let (events, stop, name) = (events.clone(), stop.clone(), h.device.clone());
            std::thread::Builder::new()
                .name(format!("lane-events-{name}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match dev.next_async_event(Duration::from_millis(100)) {
                            Ok(Some(ev)) => {
                                let at = Instant::now();
                                // The GID table as the event arrives: is the RoCE v2 GID there?
                                let gids = gid_table(&name);
                                lock(&events).push((at, name.clone(), ev, gids));
                            }
                            Ok(None) => {}
                            Err(_) => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                })
                .map_err(|e| format!("event observer thread: {e}"))?;
        }
        Ok(PortWatch { events, stop })
    }

    /// The first event on `device` after `t` matching `pred`, waiting up to `timeout`, with the
    /// GID table read right after it arrived.
    async fn first_after(
        &self,
        device: &str,
        t: Instant,
        timeout: Duration,
        pred: impl Fn(&AsyncEvent) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let hit = lock(&self.events)
                .iter()
                .find(|(at, d, ev, _)| *at >= t && d == device && pred(ev))
                .map(|(at, _, _, gids)| (*at, gids.clone()));
            if hit.is_some() || Instant::now() >= deadline {
                return hit;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for PortWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sets a netdev administratively up or down, like `ip link set dev NETDEV up|down`, through
/// `/sys/class/net/NETDEV/flags` (no process start to blur the timing); falls back to `ip`.
fn set_link(netdev: &str, up: bool) -> Result<&'static str, String> {
    const IFF_UP: u32 = 1;
    let path = format!("/sys/class/net/{netdev}/flags");
    let ok = sysfs(&path)
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .map(|f| if up { f | IFF_UP } else { f & !IFF_UP })
        .is_some_and(|f| std::fs::write(&path, format!("{f:#x}")).is_ok());
    if ok {
        return Ok("sysfs flags");
    }
    let word = if up { "up" } else { "down" };
    let out = std::process::Command::new("ip")
        .args(["link", "set", "dev", netdev, word])
        .output()
        .map_err(|e| format!("cannot run ip link set dev {netdev} {word}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip link set dev {netdev} {word}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok("ip link")
}

// ---------------------------------------------------------------------------------------------
// Nodes

fn secret() -> ClusterSecret {
    ClusterSecret::new(SECRET).expect("the lane secret is long enough")
}

fn node_config(id: &str, hcas: &[Hca]) -> NodeConfig {
    let mut cfg = NodeConfig::new(id, CLUSTER);
    cfg.session.reconnect_backoff_min_ms = 20;
    cfg.session.reconnect_backoff_max_ms = 200;
    // Heartbeats every 100 ms as by default, but a link is declared dead after 1.5 s of silence
    // instead of 0.5 s: a TCG vCPU shared by three VMs on two host cores can stall for longer
    // than 0.5 s (and setting up a rail blocks the manager task; see docs/softroce-lane.md).
    // Failures in the scenarios are detected by events (PORT_ERR, closed sockets, RDMA
    // completion errors), not by this timeout.
    cfg.session.link_timeout_ms = LINK_TIMEOUT_MS.load(Ordering::Relaxed);
    // Small receive rings (256 KiB instead of 4 MiB): every link's ring wraps every ~240
    // records, and setting a rail up blocks the manager task for less time (registering 2 x
    // 4 MiB under TCG took 0.3-1.2 s, see docs/softroce-lane.md). Frames stay far below the
    // 64 KiB payload limit this needs (a ring must hold two largest frames).
    cfg.session.max_payload_bytes = 64 << 10;
    cfg.verbs.ring_bytes = 256 << 10;
    // rxe reports a nominal port speed; give the rails the capacity the simulated-fabric
    // tests use (25 Gb/s), so that the placement is the same as there.
    for h in hcas {
        cfg.verbs.capacity_mbps.insert(h.device.clone(), 25_000);
    }
    cfg
}

async fn wait_status(
    node: &Node,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&NodeStatus) -> bool,
) -> Result<(NodeStatus, Instant), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = node
            .status()
            .await
            .map_err(|e| format!("{}: status: {e}", node.node_id()))?;
        if pred(&s) {
            return Ok((s, Instant::now()));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{}: no {what} within {} s; {}",
                node.node_id(),
                timeout.as_secs(),
                brief(&s)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rdma_links(s: &NodeStatus) -> Vec<u32> {
    let mut v: Vec<u32> = s
        .links
        .iter()
        .filter(|l| l.transport == "rdma")
        .map(|l| l.interconnect)
        .collect();
    v.sort_unstable();
    v
}

fn placed(s: &NodeStatus, client: &str) -> Option<u32> {
    s.clients
        .iter()
        .find(|c| c.name == client)
        .and_then(|c| c.interconnect)
}

/// The policy's steady state on two rails: the heavy mirror alone on one rail, the light
/// clients (heartbeat included) on the other.
fn separated(s: &NodeStatus) -> bool {
    let m = placed(s, MIRROR);
    rdma_links(s) == [1, 2]
        && matches!(m, Some(1 | 2))
        && matches!(placed(s, HEARTBEAT), Some(1 | 2))
        && placed(s, HEARTBEAT) != m
        && placed(s, CONFIG) != m
}

/// A one-line summary of a status for failure messages.
fn brief(s: &NodeStatus) -> String {
    let links: Vec<String> = s
        .links
        .iter()
        .map(|l| format!("{}@{}", l.transport, l.interconnect))
        .collect();
    let clients: Vec<String> = s
        .clients
        .iter()
        .map(|c| {
            format!(
                "{}:{:?}@{}",
                c.name,
                c.state,
                c.interconnect.map_or("-".into(), |i| i.to_string())
            )
        })
        .collect();
    let tail: Vec<&str> = s
        .timeline
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|t| t.what.as_str())
        .collect();
    format!(
        "session {:?}, links [{}], clients [{}], fallback {:?}, verbs_unavailable {:?}, last events: {}",
        s.session,
        links.join(" "),
        clients.join(" "),
        s.fallback,
        s.verbs_unavailable,
        tail.join(" | ")
    )
}

/// Measures how responsive a node's manager task is: a status request every 50 ms; the
/// longest round trip since the last [`StallProbe::take`] is how long the manager processed
/// nothing (no link input, no heartbeats).
#[derive(Clone, Default)]
struct StallProbe(Arc<Mutex<Option<(Duration, String)>>>);

impl StallProbe {
    fn spawn(node: Arc<Node>, t0: Instant) -> StallProbe {
        let probe = StallProbe::default();
        let p = probe.clone();
        tokio::spawn(async move {
            loop {
                let t = Instant::now();
                if node.status().await.is_err() {
                    return;
                }
                let rtt = t.elapsed();
                {
                    let mut g = lock(&p.0);
                    if g.as_ref().is_none_or(|(d, _)| rtt > *d) {
                        *g = Some((rtt, format!("at +{:.1} s", since(t, t0) / 1000.0)));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        probe
    }

    /// The longest status round trip since the last call, in ms, and when it began.
    fn take(&self) -> Value {
        match lock(&self.0).take() {
            Some((d, at)) => json!(format!("{:.0} ms {at}", ms(d))),
            None => Value::Null,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Receiving side (partner, backup)

#[derive(Debug, Default, Clone, Serialize)]
struct RecvStats {
    received: u64,
    first: Option<u64>,
    last: Option<u64>,
    next: Option<u64>,
    duplicates: u64,
    gaps: u64,
    bad: u64,
    errors: Vec<String>,
    ups: u64,
    downs: u64,
    switched: u64,
    /// Every index received, in order (only on the backup partner, which gets what the partner
    /// did not acknowledge: increasing, possibly with holes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    indices: Vec<u64>,
}

impl RecvStats {
    fn error(&mut self, e: String) {
        if self.errors.len() < 8 {
            self.errors.push(e);
        }
    }
}

type Stats = Arc<Mutex<BTreeMap<String, RecvStats>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a receiving client does besides checking records.
#[derive(Clone, Default)]
struct RecvHooks {
    /// Record every index received (the backup partner).
    keep_indices: bool,
    /// Partner: crash (abort the process) on receiving this record (0 = never); the marker
    /// file is written first so the node script knows the crash was ordered.
    crash_at: Option<(Arc<AtomicU64>, SyncDir)>,
}

/// The partner's planned crash: no cleanup, no goodbye on any link (as `kill -9`).
fn crash_now(sync: &SyncDir, index: u64) -> ! {
    let _ = sync.put(
        "mlane.crashed.partner",
        &format!("aborted on receiving mirror record {index}"),
    );
    eprintln!("[manager-lane partner] mirror record {index} received: aborting the process now");
    std::process::abort()
}

/// Takes every event of a receiving client: checks each record, answers sync ones.
fn spawn_receiver(mut h: ClientHandle, tag: u8, stats: Stats, hooks: RecvHooks) {
    let name = h.name().to_string();
    tokio::spawn(async move {
        while let Some(ev) = h.next_event().await {
            match ev {
                ClientEvent::Data {
                    seq,
                    payload,
                    reply_needed,
                } => {
                    let code = {
                        let mut all = lock(&stats);
                        let st = all.entry(name.clone()).or_default();
                        st.received += 1;
                        match record::verify(&payload) {
                            Err(e) => {
                                st.bad += 1;
                                st.error(format!("seq {seq}: {e}"));
                                -1
                            }
                            Ok((t, _)) if t != tag => {
                                st.bad += 1;
                                st.error(format!("seq {seq}: tag {t}, expected {tag}"));
                                -2
                            }
                            Ok((_, index)) => match st.next {
                                Some(n) if index < n => {
                                    st.duplicates += 1;
                                    st.error(format!(
                                        "record {index} again (expected {n}): duplicate"
                                    ));
                                    -3
                                }
                                // The backup partner gets what the partner did not
                                // acknowledge: in order, but with holes where an ack from
                                // the partner made it back (the leader checks the exact list).
                                Some(n) if index > n && !hooks.keep_indices => {
                                    st.gaps += index - n;
                                    st.error(format!(
                                        "record {index} after {}: {} missing",
                                        n - 1,
                                        index - n
                                    ));
                                    st.next = Some(index + 1);
                                    st.last = Some(index);
                                    -4
                                }
                                _ => {
                                    if let Some((at, sync)) = &hooks.crash_at {
                                        if at.load(Ordering::SeqCst) == index {
                                            crash_now(sync, index);
                                        }
                                    }
                                    st.first.get_or_insert(index);
                                    st.next = Some(index + 1);
                                    st.last = Some(index);
                                    if hooks.keep_indices {
                                        st.indices.push(index);
                                    }
                                    record::code(&payload)
                                }
                            },
                        }
                    };
                    if reply_needed {
                        if let Err(e) = h.reply(seq, code).await {
                            let mut all = lock(&stats);
                            all.entry(name.clone())
                                .or_default()
                                .error(format!("reply to {seq}: {e}"));
                        }
                    }
                }
                ClientEvent::Up => lock(&stats).entry(name.clone()).or_default().ups += 1,
                ClientEvent::Down { .. } => {
                    lock(&stats).entry(name.clone()).or_default().downs += 1
                }
                ClientEvent::PeerSwitched { .. } => {
                    lock(&stats).entry(name.clone()).or_default().switched += 1
                }
                _ => {}
            }
        }
    });
}

struct Receiver {
    node: Arc<Node>,
    stats: Stats,
    probe: StallProbe,
}

async fn start_receiver(
    id: &str,
    listen: SocketAddr,
    hcas: &[Hca],
    hooks: RecvHooks,
) -> Result<Receiver, String> {
    let mut cfg = node_config(id, hcas);
    cfg.listen = Some(listen);
    let node = Node::start_with_verbs(cfg, secret(), VerbsSource::Real)
        .await
        .map_err(|e| format!("starting {id} on {listen}: {e}"))?;
    let stats: Stats = Arc::default();
    for (name, tag, spec) in client_specs() {
        let h = node
            .register(name, spec)
            .await
            .map_err(|e| format!("{id}: registering {name}: {e}"))?;
        lock(&stats).insert(name.to_string(), RecvStats::default());
        let mut hk = hooks.clone();
        if name != MIRROR {
            hk.crash_at = None;
        }
        spawn_receiver(h, tag, stats.clone(), hk);
    }
    let node = Arc::new(node);
    let probe = StallProbe::spawn(node.clone(), Instant::now());
    Ok(Receiver { node, stats, probe })
}

async fn receiver_report(r: &Receiver) -> Value {
    let status = match r.node.status().await {
        Ok(s) => serde_json::to_value(&s).unwrap_or(Value::Null),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let stats = serde_json::to_value(&*lock(&r.stats)).unwrap_or(Value::Null);
    json!({
        "status": status,
        "clients": stats,
        "cpu_ticks": cpu_ticks(),
        "max_status_rtt": r.probe.take(),
    })
}

async fn run_receiver(role: Role, args: &Args, sync: SyncDir, hcas: Vec<Hca>) -> ExitCode {
    let t0 = Instant::now();
    let log = |m: String| eprintln!("[manager-lane {} {:8.3}] {m}", role.name(), secs(t0));
    let devices = if role == Role::Partner {
        check_devices(&hcas)
    } else {
        // The backup runs in a VM without rxe: it must NOT have RDMA (that is the point of
        // no_rdma_node_uses_tcp); it only reports what libibverbs says.
        match RealProvider::load() {
            Ok(p) => Ok(format!(
                "libibverbs lists devices: {:?}",
                p.devices()
                    .map(|d| d.into_iter().map(|d| d.name).collect::<Vec<_>>())
                    .unwrap_or_default()
            )),
            Err(e) => Ok(format!("no RDMA here, as intended: {e}")),
        }
    };
    let mut nodes: Vec<Receiver> = Vec::new();
    let mut ready = json!({ "ok": true });
    let crash_at = Arc::new(AtomicU64::new(0));
    match &devices {
        Ok(d) => {
            log(d.clone());
            ready["devices"] = json!(d);
            let names: &[&str] = if role == Role::Partner {
                &["node-b"]
            } else {
                &["node-c-nordma", "node-c-backup"]
            };
            for (id, addr) in names.iter().zip(args.listen.iter()) {
                let hooks = RecvHooks {
                    keep_indices: *id == "node-c-backup",
                    crash_at: (role == Role::Partner).then(|| (crash_at.clone(), sync.clone())),
                };
                match start_receiver(id, *addr, &hcas, hooks).await {
                    Ok(r) => {
                        log(format!("{id} listening on {addr}"));
                        nodes.push(r);
                    }
                    Err(e) => {
                        log(e.clone());
                        ready = json!({ "ok": false, "why": e });
                        break;
                    }
                }
            }
            if nodes.is_empty() && ready["ok"] == json!(true) {
                ready = json!({ "ok": false, "why": "no --listen address given" });
            }
        }
        Err(e) => {
            log(format!("FAIL: {e}"));
            ready = json!({ "ok": false, "why": e });
        }
    }
    let ok = ready["ok"] == json!(true);
    if let Err(e) = sync.put(&format!("mlane.ready.{}", role.name()), &ready.to_string()) {
        log(e);
        return ExitCode::from(2);
    }
    // Serve the leader's requests until it says exit (or is gone).
    let mut n = 0u64;
    let mut last_seen = Instant::now();
    let limit = Duration::from_secs(args.connect_timeout + 20 * args.scenario_timeout);
    loop {
        let req = sync.path(&format!("mlane.req.{}.{}", role.name(), n + 1));
        if let Ok(cmd) = std::fs::read_to_string(&req) {
            n += 1;
            last_seen = Instant::now();
            let cmd = cmd.trim().to_string();
            let answer = match cmd.as_str() {
                "report" | "exit" => {
                    let mut per_node = serde_json::Map::new();
                    for r in &nodes {
                        per_node.insert(r.node.node_id().to_string(), receiver_report(r).await);
                    }
                    json!({ "ok": ok, "nodes": per_node })
                }
                other => match other.strip_prefix("crash-at ").map(str::parse::<u64>) {
                    Some(Ok(ix)) if role == Role::Partner => {
                        crash_at.store(ix, Ordering::SeqCst);
                        log(format!("armed: abort on receiving mirror record {ix}"));
                        json!({ "ok": true })
                    }
                    _ => json!({ "ok": false, "why": format!("unknown request {other:?}") }),
                },
            };
            if let Err(e) = sync.put(
                &format!("mlane.resp.{}.{n}", role.name()),
                &answer.to_string(),
            ) {
                log(e);
            }
            if cmd == "exit" {
                log(format!("exit requested; final report: {answer}"));
                break;
            }
            continue;
        }
        if sync.aborted().is_some() || sync.stopped() {
            log("the leader is gone; stopping".into());
            for r in &nodes {
                log(format!(
                    "{}: {}",
                    r.node.node_id(),
                    receiver_report(r).await
                ));
            }
            break;
        }
        if last_seen.elapsed() > limit {
            log("no request for too long; stopping".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

// ---------------------------------------------------------------------------------------------
// Sending side (leader)

fn secs(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn since(t: Instant, from: Instant) -> f64 {
    ms(t.saturating_duration_since(from))
}

#[derive(Debug, Clone)]
struct StreamCfg {
    name: &'static str,
    tag: u8,
    sync: bool,
    first: u64,
    /// Records to send; `None`: until the stop flag is set.
    count: Option<u64>,
    window: usize,
    pace: Option<Duration>,
    bytes: usize,
}

/// What one sending client saw.
#[derive(Debug, Default)]
struct StreamOut {
    sent: u64,
    last_sent: u64,
    acked: u64,
    bytes_acked: u64,
    /// Highest index such that every record up to it was acked.
    acked_prefix: u64,
    bad_codes: Vec<String>,
    nacks: Vec<String>,
    downs: Vec<(Instant, String)>,
    migrations: Vec<(Instant, u32, u32)>,
    switched: Vec<(Instant, String)>,
    ack_times: Vec<Instant>,
    /// The record index of each ack, in the order of `ack_times`.
    ack_indices: Vec<u64>,
    latencies_us: Vec<u64>,
    started: Option<Instant>,
    last_ack: Option<Instant>,
    fatal: Option<String>,
}

impl StreamOut {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(f) = &self.fatal {
            p.push(f.clone());
        }
        if !self.bad_codes.is_empty() {
            p.push(format!(
                "{} acks with a wrong code (first: {})",
                self.bad_codes.len(),
                self.bad_codes[0]
            ));
        }
        if !self.nacks.is_empty() {
            p.push(format!(
                "{} NACKs (first: {})",
                self.nacks.len(),
                self.nacks[0]
            ));
        }
        if !self.downs.is_empty() {
            p.push(format!("Down: {}", self.downs[0].1));
        }
        if self.acked != self.sent {
            p.push(format!("{} sent, {} acked", self.sent, self.acked));
        }
        p
    }

    fn mbytes_per_s(&self) -> f64 {
        match (self.started, self.last_ack) {
            (Some(a), Some(b)) if b > a => {
                self.bytes_acked as f64 / b.duration_since(a).as_secs_f64() / 1e6
            }
            _ => 0.0,
        }
    }

    fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i.min(v.len() - 1)] as f64 / 1000.0
    }

    /// First ack after `t`.
    fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.ack_times.iter().copied().find(|a| *a > t)
    }

    /// The longest time without an ack that overlaps `from..from + span` (the stall a fault
    /// caused), and when it ended.
    fn stall(&self, from: Instant, span: Duration) -> Option<(Duration, Instant)> {
        let to = from + span;
        self.ack_times
            .windows(2)
            .filter(|w| w[1] > from && w[0] < to)
            .map(|w| (w[1].duration_since(w[0]), w[1]))
            .max_by_key(|(d, _)| *d)
    }
}

struct Outstanding {
    index: u64,
    code: Option<i32>,
    bytes: usize,
    sent_at: Instant,
}

struct StreamState {
    cfg: StreamCfg,
    out: StreamOut,
    outstanding: BTreeMap<u64, Outstanding>,
    acked_indices: std::collections::BTreeSet<u64>,
    last_progress: Instant,
    progress: Arc<AtomicU64>,
}

impl StreamState {
    fn on_event(&mut self, ev: ClientEvent) {
        let now = Instant::now();
        match ev {
            ClientEvent::Acked { seq, code } => {
                self.last_progress = now;
                let Some(o) = self.outstanding.remove(&seq) else {
                    self.out
                        .bad_codes
                        .push(format!("ack for seq {seq}, which is not outstanding"));
                    return;
                };
                if code != o.code {
                    self.out.bad_codes.push(format!(
                        "record {}: code {code:?}, expected {:?}",
                        o.index, o.code
                    ));
                }
                self.out.acked += 1;
                self.out.bytes_acked += o.bytes as u64;
                self.out.ack_times.push(now);
                self.out.ack_indices.push(o.index);
                self.out.last_ack = Some(now);
                self.out
                    .latencies_us
                    .push(now.duration_since(o.sent_at).as_micros() as u64);
                self.acked_indices.insert(o.index);
                while self.acked_indices.remove(&(self.out.acked_prefix + 1)) {
                    self.out.acked_prefix += 1;
                }
                self.progress.fetch_add(1, Ordering::Relaxed);
            }
            ClientEvent::Nacked { seq, reason } => {
                let ix = self.outstanding.remove(&seq).map_or(0, |o| o.index);
                self.out
                    .nacks
                    .push(format!("record {ix} (seq {seq}): {reason:?}"));
            }
            ClientEvent::Down { reason } => self.out.downs.push((now, format!("{reason:?}"))),
            ClientEvent::Migrated { from, to } => self.out.migrations.push((now, from, to)),
            ClientEvent::PeerSwitched { node, .. } => self.out.switched.push((now, node)),
            ClientEvent::Data { .. }
            | ClientEvent::Up
            | ClientEvent::Transmitted { .. }
            | ClientEvent::FlowControl { .. } => {}
        }
    }
}

const STALL: Duration = Duration::from_secs(20);

/// Sends records with at most `window` unacknowledged and collects every event.
async fn run_stream(
    mut h: ClientHandle,
    cfg: StreamCfg,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> (ClientHandle, StreamOut) {
    let mut st = StreamState {
        out: StreamOut {
            acked_prefix: cfg.first.saturating_sub(1),
            ..StreamOut::default()
        },
        cfg,
        outstanding: BTreeMap::new(),
        acked_indices: Default::default(),
        last_progress: Instant::now(),
        progress,
    };
    let mut next_index = st.cfg.first;
    let end = st.cfg.count.map(|c| st.cfg.first + c);
    let mut next_send_at = Instant::now();
    st.out.started = Some(Instant::now());
    loop {
        while let Some(ev) = h.try_next_event() {
            st.on_event(ev);
        }
        let more = match end {
            Some(e) => next_index < e,
            None => !stop.load(Ordering::Relaxed),
        };
        if !more && st.outstanding.is_empty() {
            break;
        }
        if !st.out.downs.is_empty() {
            st.out.fatal = Some(format!(
                "{}: Down with {} outstanding",
                st.cfg.name,
                st.outstanding.len()
            ));
            break;
        }
        let now = Instant::now();
        let can_send = more && st.outstanding.len() < st.cfg.window;
        if can_send && now >= next_send_at {
            let rec = record::encode(st.cfg.tag, next_index, st.cfg.bytes);
            let code = st.cfg.sync.then(|| record::code(&rec));
            let len = rec.len();
            match h.send(rec).await {
                Ok(seq) => {
                    st.outstanding.insert(
                        seq,
                        Outstanding {
                            index: next_index,
                            code,
                            bytes: len,
                            sent_at: now,
                        },
                    );
                    st.out.sent += 1;
                    st.out.last_sent = next_index;
                    next_index += 1;
                    if st.outstanding.len() == 1 {
                        st.last_progress = now;
                    }
                }
                Err(e) => {
                    st.out.fatal = Some(format!(
                        "{}: send of record {next_index} failed: {e}",
                        st.cfg.name
                    ));
                    break;
                }
            }
            if let Some(p) = st.cfg.pace {
                next_send_at = now + p;
            }
            continue;
        }
        let wait = if can_send {
            next_send_at.saturating_duration_since(now)
        } else {
            Duration::from_millis(200)
        };
        match tokio::time::timeout(wait, h.next_event()).await {
            Ok(Some(ev)) => st.on_event(ev),
            Ok(None) => {
                st.out.fatal = Some(format!("{}: event channel closed", st.cfg.name));
                break;
            }
            Err(_) => {}
        }
        if !st.outstanding.is_empty() && st.last_progress.elapsed() > STALL {
            let oldest = st.outstanding.values().next().map_or(0, |o| o.index);
            st.out.fatal = Some(format!(
                "{}: no ack for {} s with {} records outstanding (oldest {oldest})",
                st.cfg.name,
                STALL.as_secs(),
                st.outstanding.len()
            ));
            break;
        }
    }
    (h, st.out)
}

/// A running sending stream: client name, its task, its ack counter.
type Stream = (
    &'static str,
    tokio::task::JoinHandle<(ClientHandle, StreamOut)>,
    Arc<AtomicU64>,
);

struct Leader {
    t0: Instant,
    args: Args,
    hcas: Vec<Hca>,
    rpc: Rpc,
    node: Option<Arc<Node>>,
    probe: StallProbe,
    handles: HashMap<&'static str, ClientHandle>,
    /// Records sent so far per client (the next record index is this + 1).
    sent: HashMap<&'static str, u64>,
    rail_down: bool,
    /// The partner was aborted (partner_crash_switches_to_backup): ask it nothing more.
    partner_crashed: bool,
    /// Async clients keep sending whatever is unacknowledged (see `stream_cfg`).
    keep_sending: bool,
    /// The other roles that reported ready.
    ready: Vec<Role>,
    watch: Option<PortWatch>,
}

#[derive(Debug, Serialize)]
struct Outcome {
    name: String,
    pass: bool,
    details: String,
    ms: u128,
    figures: BTreeMap<String, Value>,
}

type Figures = BTreeMap<String, Value>;

macro_rules! fig {
    ($f:expr, $k:expr, $v:expr) => {
        $f.insert($k.to_string(), json!($v))
    };
}

impl Leader {
    fn log(&self, m: impl AsRef<str>) {
        eprintln!("[manager-lane leader {:8.3}] {}", secs(self.t0), m.as_ref());
    }

    fn node(&self) -> Result<&Arc<Node>, String> {
        self.node
            .as_ref()
            .ok_or_else(|| "node a is not running".into())
    }

    fn take(&mut self, name: &'static str) -> Result<ClientHandle, String> {
        self.handles.remove(name).ok_or_else(|| {
            format!("client {name} was lost in an earlier scenario (its handle is gone)")
        })
    }

    fn stream_cfg(&self, name: &'static str, count: Option<u64>) -> StreamCfg {
        StreamCfg {
            name,
            tag: tag_of(name),
            sync: name == MIRROR,
            first: self.sent.get(name).copied().unwrap_or(0) + 1,
            count,
            // Across a partner switch the async clients keep sending at their pace (sends must
            // be accepted while messages are held for the new partner), so their windows then
            // cover seconds of it.
            window: match name {
                MIRROR => self.args.window,
                _ if self.keep_sending => 4096,
                _ => 32,
            },
            pace: match name {
                CONFIG => Some(Duration::from_millis(2)),
                HEARTBEAT => Some(Duration::from_millis(20)),
                _ => None,
            },
            bytes: if name == HEARTBEAT {
                64
            } else {
                self.args.record_bytes
            },
        }
    }

    /// Starts streams for the given clients; `count` per client (None = until stopped).
    fn start_streams(
        &mut self,
        which: &[(&'static str, Option<u64>)],
        stop: &Arc<AtomicBool>,
    ) -> Result<Vec<Stream>, String> {
        let mut v = Vec::new();
        for (name, count) in which {
            let h = self.take(name)?;
            let cfg = self.stream_cfg(name, *count);
            let progress = Arc::new(AtomicU64::new(0));
            v.push((
                *name,
                tokio::spawn(run_stream(h, cfg, stop.clone(), progress.clone())),
                progress,
            ));
        }
        Ok(v)
    }

    async fn join_streams(
        &mut self,
        streams: Vec<Stream>,
    ) -> Result<BTreeMap<&'static str, StreamOut>, String> {
        let mut out = BTreeMap::new();
        let mut err = None;
        for (name, task, _) in streams {
            match task.await {
                Ok((h, o)) => {
                    *self.sent.entry(name).or_insert(0) = o.last_sent.max(self.sent_of(name));
                    self.handles.insert(name, h);
                    out.insert(name, o);
                }
                Err(e) => {
                    err.get_or_insert(format!("stream {name} panicked or was cancelled: {e}"));
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn sent_of(&self, name: &str) -> u64 {
        self.sent.get(name).copied().unwrap_or(0)
    }

    /// Checks a receiver's report for one node: every client's records all arrived, in order,
    /// intact, exactly once, up to what this side sent.
    fn check_receiver(&self, report: &Value, node: &str, clients: &[&str]) -> Vec<String> {
        let mut p = Vec::new();
        let n = &report["nodes"][node];
        if n.is_null() {
            return vec![format!("no report from {node}: {report}")];
        }
        for c in clients {
            let s = &n["clients"][c];
            let sent = self.sent_of(c);
            let got = s["received"].as_u64().unwrap_or(0);
            let last = s["last"].as_u64().unwrap_or(0);
            for k in ["duplicates", "gaps", "bad"] {
                if s[k].as_u64().unwrap_or(0) != 0 {
                    p.push(format!("{node}/{c}: {k} = {} ({})", s[k], s["errors"]));
                }
            }
            if got != sent || last != sent {
                p.push(format!(
                    "{node}/{c}: received {got} records, last {last}; {sent} were sent"
                ));
            }
        }
        p
    }

    fn receiver_figures(report: &Value, node: &str, f: &mut Figures) {
        let st = &report["nodes"][node]["status"];
        let links: Vec<String> = st["links"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        format!(
                            "{}@{}",
                            l["transport"].as_str().unwrap_or("?"),
                            l["interconnect"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        fig!(f, format!("{node}_links"), links.join(" "));
        fig!(
            f,
            format!("{node}_manager_max_stall"),
            report["nodes"][node]["max_status_rtt"].clone()
        );
        fig!(
            f,
            format!("{node}_delivered"),
            st["stats"]["delivered"].clone()
        );
    }

    // ---- scenario 1 ---------------------------------------------------------------------------

    async fn rails_up_and_placement(&mut self, f: &mut Figures) -> Result<String, String> {
        let node = self.node()?;
        let (s, t_rails) = wait_status(node, "two RDMA links", Duration::from_secs(30), |s| {
            rdma_links(s) == [1, 2]
        })
        .await?;
        fig!(f, "start_to_two_rdma_links_ms", since(t_rails, self.t0));
        let (s2, t_sep) = wait_status(
            node,
            "mirror alone on one rail, the others on the other",
            Duration::from_secs(30),
            separated,
        )
        .await?;
        fig!(f, "start_to_separated_ms", since(t_sep, self.t0));
        let _ = s;
        let mut problems = Vec::new();
        if s2.fallback.is_some() || s2.verbs_unavailable.is_some() {
            problems.push(format!(
                "fallback {:?} / verbs_unavailable {:?} with RDMA up",
                s2.fallback, s2.verbs_unavailable
            ));
        }
        let devs: Vec<String> = s2
            .interconnects
            .iter()
            .filter_map(|i| i.device.clone().map(|d| format!("rail {}={d}", i.id)))
            .collect();
        fig!(f, "rails", devs.join(", "));
        let mirror_rail = placed(&s2, MIRROR).unwrap_or(0);
        fig!(
            f,
            "placement",
            format!(
                "mirror@{} config@{} heartbeat@{}",
                mirror_rail,
                placed(&s2, CONFIG).unwrap_or(0),
                placed(&s2, HEARTBEAT).unwrap_or(0)
            )
        );
        // Placement moves while converging are fine; nothing else may have happened yet.
        for name in [MIRROR, CONFIG, HEARTBEAT] {
            if let Some(h) = self.handles.get_mut(name) {
                while let Some(ev) = h.try_next_event() {
                    if !matches!(ev, ClientEvent::Migrated { .. }) {
                        problems.push(format!("{name}: unexpected early event {ev:?}"));
                    }
                }
            }
        }

        // The mirror streams alone: the throughput figure (with both VMs' CPU use).
        let b_before = self.rpc.call(Role::Partner, "report").await?;
        // How long each manager task went unresponsive so far (rail setup at startup).
        fig!(f, "node-a_manager_max_stall_at_startup", self.probe.take());
        fig!(
            f,
            "node-b_manager_max_stall_at_startup",
            b_before["nodes"]["node-b"]["max_status_rtt"].clone()
        );
        let before: Vec<(u64, u64)> = self.hcas.iter().map(|h| pkts(&h.device)).collect();
        let cpu0 = cpu_ticks();
        let stop = Arc::new(AtomicBool::new(false));
        let n = self.args.records;
        let streams = self.start_streams(&[(MIRROR, Some(n))], &stop)?;
        let outs = self.join_streams(streams).await?;
        let cpu1 = cpu_ticks();
        let after: Vec<(u64, u64)> = self.hcas.iter().map(|h| pkts(&h.device)).collect();
        let b_after = self.rpc.call(Role::Partner, "report").await?;
        let ticks = |v: &Value| {
            let t = &v["nodes"]["node-b"]["cpu_ticks"];
            (t[0].as_u64().unwrap_or(0), t[1].as_u64().unwrap_or(0))
        };
        fig!(
            f,
            "n1_vcpu_busy_percent_during_mirror",
            busy_percent(cpu0, cpu1)
        );
        fig!(
            f,
            "n2_vcpu_busy_percent_during_mirror",
            busy_percent(ticks(&b_before), ticks(&b_after))
        );
        let m = &outs[MIRROR];
        problems.extend(m.problems().into_iter().map(|p| format!("mirror: {p}")));
        if !m.migrations.is_empty() {
            problems.push(format!(
                "mirror migrated without a fault: {:?}",
                m.migrations.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>()
            ));
        }
        fig!(f, "mirror_records", m.acked);
        fig!(
            f,
            "mirror_mbytes_per_s",
            (m.mbytes_per_s() * 100.0).round() / 100.0
        );
        fig!(
            f,
            "mirror_records_per_s",
            (m.acked as f64
                / m.last_ack
                    .zip(m.started)
                    .map_or(1.0, |(b, a)| b.duration_since(a).as_secs_f64()))
            .round()
        );
        fig!(f, "mirror_ack_latency_p50_ms", m.latency_ms(0.5));
        fig!(f, "mirror_ack_latency_p99_ms", m.latency_ms(0.99));
        let mut per_rail = Vec::new();
        for (i, h) in self.hcas.iter().enumerate() {
            let (s0, r0) = before[i];
            let (s1, r1) = after[i];
            per_rail.push(format!("{}: sent {} rcvd {}", h.device, s1 - s0, r1 - r0));
        }
        fig!(f, "rxe_pkts_during_mirror", per_rail.join(", "));
        // The mirror's rail must have carried its data: at least one packet per record.
        if let Some(k) = (mirror_rail as usize).checked_sub(1) {
            if let (Some((s0, _)), Some((s1, _))) = (before.get(k), after.get(k)) {
                if s1 - s0 < n {
                    problems.push(format!(
                        "{} sent {} packets for {n} mirror records: the data did not go over rail {mirror_rail}",
                        self.hcas[k].device,
                        s1 - s0
                    ));
                }
            }
        }

        // Then the light clients, together.
        let streams = self.start_streams(&[(CONFIG, Some(500)), (HEARTBEAT, Some(50))], &stop)?;
        let outs = self.join_streams(streams).await?;
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
        }
        fig!(
            f,
            "heartbeat_latency_p50_ms",
            outs[HEARTBEAT].latency_ms(0.5)
        );

        let report = self.rpc.call(Role::Partner, "report").await?;
        problems.extend(self.check_receiver(&report, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&report, "node-b", f);
        let b_rdma = report["nodes"]["node-b"]["status"]["links"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|l| l["transport"] == "rdma").count());
        if b_rdma != 2 {
            problems.push(format!("node b holds {b_rdma} RDMA links, expected 2"));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "rails {} up {:.0} ms after start, {} (mirror alone); mirror {} x {} B sync: {:.2} MB/s, ack p50 {:.1} ms; config 500 + heartbeat 50 async; node b got all in order, CRCs ok",
            devs.join(" "),
            since(t_rails, self.t0),
            f["placement"].as_str().unwrap_or(""),
            n,
            self.args.record_bytes,
            m.mbytes_per_s(),
            m.latency_ms(0.5)
        ))
    }

    // ---- scenario 2 ---------------------------------------------------------------------------

    async fn cable_cut_hca0_under_stream(&mut self, f: &mut Figures) -> Result<String, String> {
        let hca0 = self.hcas.first().cloned().ok_or("no HCA0")?;
        let node = self.node()?;
        let (s, _) = wait_status(
            node,
            "the steady placement",
            Duration::from_secs(30),
            separated,
        )
        .await?;
        let placement0: BTreeMap<&str, Option<u32>> = [MIRROR, CONFIG, HEARTBEAT]
            .iter()
            .map(|c| (*c, placed(&s, c)))
            .collect();
        let n = (self.args.records / 2).max(30);
        let stop = Arc::new(AtomicBool::new(false));
        let streams = self.start_streams(
            &[(MIRROR, Some(n)), (CONFIG, None), (HEARTBEAT, None)],
            &stop,
        )?;
        let mirror_progress = streams[0].2.clone();
        // Cut once a third of the mirror is acknowledged.
        let deadline = Instant::now() + Duration::from_secs(60);
        while mirror_progress.load(Ordering::Relaxed) < n / 3 {
            if Instant::now() > deadline || streams[0].1.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let acked_at_cut = mirror_progress.load(Ordering::Relaxed);
        let t_cut = Instant::now();
        let how = set_link(&hca0.netdev, false);
        self.rail_down = true;
        let took = t_cut.elapsed();
        // Detection as the manager acts on it: its status no longer lists rail 1's link.
        let node = self.node()?;
        let detect = wait_status(
            node,
            "rail 1's link dropped",
            Duration::from_secs(15),
            |s| !rdma_links(s).contains(&1),
        )
        .await;
        let port_after = port_state(&hca0.device);
        fig!(f, "gids_after_cut", gid_table(&hca0.device));
        let port_err = match &self.watch {
            Some(w) => {
                w.first_after(&hca0.device, t_cut, Duration::from_secs(5), |e| {
                    matches!(e, AsyncEvent::PortError { .. })
                })
                .await
            }
            None => None,
        };
        let outs_res = self.join_streams_after_mirror(streams, &stop).await;
        let how = how?;
        let outs = outs_res?;
        let (s_detect, t_detect) = detect?;
        fig!(f, "cut", format!(
            "{}/{} admin down via {how} (the write took {:.1} ms) at mirror ack {acked_at_cut}/{n}; port then {port_after}",
            hca0.device, hca0.netdev, ms(took)
        ));
        let mut problems = Vec::new();
        match &port_err {
            Some((t, gids)) => {
                fig!(f, "cut_to_port_err_ms", since(*t, t_cut));
                fig!(f, "port_err_to_link_dropped_ms", since(t_detect, *t));
                fig!(f, "gids_at_port_err", gids.clone());
            }
            None => problems.push(format!(
                "the event observer saw no PORT_ERR on {} within 5 s",
                hca0.device
            )),
        }
        fig!(f, "cut_to_link_dropped_ms", since(t_detect, t_cut));
        // On the manager's own clock: its PORT_ERR note vs. the link being dropped. The link
        // may close on its failed completion (LOC_QP_OP_ERR) before the event is read, so wait
        // (up to 5 s) for the note instead of reading the snapshot taken at the drop.
        let dev = hca0.device.clone();
        let s_noted = match self.node() {
            Ok(node) => wait_status(
                node,
                "the manager's PORT_ERR note",
                Duration::from_secs(5),
                |s| {
                    s.timeline
                        .iter()
                        .any(|t| t.what.contains(&dev) && t.what.contains("PortError"))
                },
            )
            .await
            .map(|(s, _)| s)
            .unwrap_or_else(|_| s_detect.clone()),
            Err(_) => s_detect.clone(),
        };
        let tl = &s_noted.timeline;
        let m_port_err = tl
            .iter()
            .find(|t| t.what.contains(&hca0.device) && t.what.contains("PortError"));
        let m_lost = tl
            .iter()
            .rev()
            .find(|t| t.what.starts_with("rdma link") && t.what.contains("lost"));
        if let (Some(pe), Some(l)) = (m_port_err, m_lost) {
            fig!(
                f,
                "manager_port_err_to_link_lost_ms",
                l.at_ms as i64 - pe.at_ms as i64
            );
            fig!(f, "manager_link_lost", l.what.clone());
        }
        if m_port_err.is_none() {
            problems.push("the manager's timeline shows no PortError for HCA0".to_string());
        }
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            let on_rail1 = placement0.get(name).copied().flatten() == Some(1);
            let mig = o.migrations.iter().find(|m| m.0 >= t_cut);
            if let Some(m) = mig {
                fig!(
                    f,
                    format!("{name}_migrated"),
                    format!(
                        "rail {} -> rail {} at cut +{:.1} ms",
                        m.1,
                        m.2,
                        since(m.0, t_cut)
                    )
                );
            } else if on_rail1 {
                problems.push(format!("{name} was on rail 1 and got no Migrated event"));
            }
            match o.first_ack_after(t_detect) {
                Some(a) => {
                    fig!(
                        f,
                        format!("{name}_detect_to_first_ack_ms"),
                        since(a, t_detect)
                    );
                }
                None => problems.push(format!("{name}: no ack after the link was dropped")),
            }
            let stall = o.stall(t_cut, Duration::from_secs(3));
            if let Some((d, end)) = stall {
                fig!(f, format!("{name}_stall_ms"), ms(d));
                fig!(
                    f,
                    format!("{name}_stall_ends_at_cut_plus_ms"),
                    since(end, t_cut)
                );
            }
            per_client.push(format!(
                "{name}{} {} recs, longest ack gap {:.0} ms",
                if on_rail1 { " (on rail 1)" } else { "" },
                o.acked,
                stall.map_or(0.0, |s| ms(s.0))
            ));
        }
        let node = self.node()?;
        let (s_end, _) = wait_status(
            node,
            "every client on rail 2",
            Duration::from_secs(15),
            |s| {
                rdma_links(s) == [2]
                    && [MIRROR, CONFIG, HEARTBEAT]
                        .iter()
                        .all(|c| placed(s, c) == Some(2))
            },
        )
        .await?;
        if s_end.fallback.is_some() {
            problems.push(format!(
                "fallback reported with rail 2 up: {:?}",
                s_end.fallback
            ));
        }
        let report = self.rpc.call(Role::Partner, "report").await?;
        problems.extend(self.check_receiver(&report, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&report, "node-b", f);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "HCA0 cut at mirror ack {acked_at_cut}/{n}: PORT_ERR +{:.0} ms, rail-1 link dropped +{:.0} ms; {}; all on rail 2, node b got every record once, in order",
            port_err.as_ref().map_or(0.0, |(t, _)| since(*t, t_cut)),
            since(t_detect, t_cut),
            per_client.join(", ")
        ))
    }

    /// Waits for the mirror (the first stream), then stops and joins the others.
    async fn join_streams_after_mirror(
        &mut self,
        mut streams: Vec<Stream>,
        stop: &Arc<AtomicBool>,
    ) -> Result<BTreeMap<&'static str, StreamOut>, String> {
        let rest = streams.split_off(1);
        let first = self.join_streams(streams).await;
        stop.store(true, Ordering::Relaxed);
        let others = self.join_streams(rest).await;
        let mut all = first?;
        all.extend(others?);
        Ok(all)
    }

    // ---- scenario 3 ---------------------------------------------------------------------------

    async fn restore_hca0(&mut self, f: &mut Figures) -> Result<String, String> {
        let hca0 = self.hcas.first().cloned().ok_or("no HCA0")?;
        if !self.rail_down && port_state(&hca0.device) == "ACTIVE" {
            // Run on its own (--only): cut first, without traffic.
            set_link(&hca0.netdev, false)?;
            self.rail_down = true;
            let node = self.node()?;
            wait_status(node, "rail 1 down", Duration::from_secs(15), |s| {
                !rdma_links(s).contains(&1)
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(1100)).await; // linkwatch spacing
        }
        let stop = Arc::new(AtomicBool::new(false));
        let streams =
            self.start_streams(&[(MIRROR, None), (CONFIG, None), (HEARTBEAT, None)], &stop)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t_up = Instant::now();
        let res = set_link(&hca0.netdev, true);
        // Port ACTIVE (guest clock, polled).
        let mut t_active = None;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if port_state(&hca0.device) == "ACTIVE" {
                t_active = Some(Instant::now());
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let node = self.node()?;
        let port_active_ev = match &self.watch {
            Some(w) => {
                w.first_after(&hca0.device, t_up, Duration::from_secs(5), |e| {
                    matches!(e, AsyncEvent::PortActive { .. })
                })
                .await
            }
            None => None,
        };
        let rail = wait_status(
            node,
            "rail 1 re-established",
            Duration::from_secs(20),
            |s| rdma_links(s) == [1, 2],
        )
        .await;
        let spread = match &rail {
            Ok(_) => Some(
                wait_status(
                    node,
                    "clients spread over both rails again",
                    Duration::from_secs(20),
                    separated,
                )
                .await,
            ),
            Err(_) => None,
        };
        // Keep streaming a little after the spread, then stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        let outs = self.join_streams(streams).await;
        res?;
        self.rail_down = false;
        let t_active =
            t_active.ok_or_else(|| format!("{} not ACTIVE 15 s after link up", hca0.device))?;
        let (s_rail, t_rail) = rail?;
        let (s_spread, t_spread) = spread.ok_or("no spread")??;
        let outs = outs?;
        fig!(f, "up_to_port_active_ms", since(t_active, t_up));
        match port_active_ev {
            Some((t, gids)) => {
                fig!(f, "up_to_port_active_event_ms", since(t, t_up));
                fig!(f, "port_active_event_to_rail1_link_ms", since(t_rail, t));
                fig!(f, "gids_at_port_active", gids);
            }
            None => {
                return Err(format!(
                    "the event observer saw no PORT_ACTIVE on {} within 5 s of link up",
                    hca0.device
                ))
            }
        }
        fig!(f, "up_to_rail1_link_ms", since(t_rail, t_up));
        fig!(f, "up_to_spread_ms", since(t_spread, t_up));
        fig!(f, "rail_to_spread_ms", since(t_spread, t_rail));
        fig!(
            f,
            "placement",
            format!(
                "mirror@{} config@{} heartbeat@{}",
                placed(&s_spread, MIRROR).unwrap_or(0),
                placed(&s_spread, CONFIG).unwrap_or(0),
                placed(&s_spread, HEARTBEAT).unwrap_or(0)
            )
        );
        let mut problems = Vec::new();
        let tl = &s_rail.timeline;
        if let Some(pa) = tl
            .iter()
            .rev()
            .find(|t| t.what.contains(&hca0.device) && t.what.contains("PortActive"))
        {
            fig!(f, "timeline_port_active", pa.what.clone());
        } else {
            problems.push("the manager's timeline shows no PortActive for HCA0".to_string());
        }
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            let moves: Vec<String> = o
                .migrations
                .iter()
                .filter(|m| m.0 >= t_up)
                .map(|m| format!("{}->{} +{:.0} ms", m.1, m.2, since(m.0, t_up)))
                .collect();
            per_client.push(format!(
                "{name} {} recs{}",
                o.acked,
                if moves.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", moves.join(", "))
                }
            ));
        }
        let report = self.rpc.call(Role::Partner, "report").await?;
        problems.extend(self.check_receiver(&report, "node-b", &[MIRROR, CONFIG, HEARTBEAT]));
        Self::receiver_figures(&report, "node-b", f);
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "HCA0 up: port ACTIVE +{:.0} ms, rail 1 link +{:.0} ms, clients spread +{:.0} ms ({}; failback hold 2 s); {}; node b got every record once, in order",
            since(t_active, t_up),
            since(t_rail, t_up),
            since(t_spread, t_up),
            f["placement"].as_str().unwrap_or(""),
            per_client.join(", ")
        ))
    }

    // ---- scenario 4 ---------------------------------------------------------------------------

    async fn no_rdma_node_uses_tcp(&mut self, f: &mut Figures) -> Result<String, String> {
        let peer = self.args.no_rdma_peer.ok_or("no --no-rdma-peer given")?;
        let mut cfg = node_config("node-a-tcp", &self.hcas);
        cfg.peer = Some(PeerConfig::new(peer, 2));
        let t_start = Instant::now();
        let a2 = Node::start_with_verbs(cfg, secret(), VerbsSource::Real)
            .await
            .map_err(|e| format!("starting node-a-tcp: {e}"))?;
        let res = self.tcp_scenario(&a2, t_start, f).await;
        a2.shutdown();
        res
    }

    async fn tcp_scenario(
        &mut self,
        a2: &Node,
        t_start: Instant,
        f: &mut Figures,
    ) -> Result<String, String> {
        let mut handles = Vec::new();
        for (name, tag, spec) in client_specs() {
            let mut h = a2
                .register(name, spec)
                .await
                .map_err(|e| format!("register {name}: {e}"))?;
            h.connect()
                .await
                .map_err(|e| format!("connect {name}: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(deadline.into(), h.next_event()).await {
                    Ok(Some(ClientEvent::Up)) => break,
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(format!("{name}: channel closed")),
                    Err(_) => {
                        return Err(format!(
                            "{name}: not Up within 30 s; {}",
                            brief(&a2.status().await.map_err(|e| e.to_string())?)
                        ))
                    }
                }
            }
            handles.push((name, tag, h));
        }
        let (s, t_up) = wait_status(
            a2,
            "every client placed on TCP",
            Duration::from_secs(15),
            |s| s.clients.len() == 3 && s.clients.iter().all(|c| c.interconnect == Some(0)),
        )
        .await?;
        fig!(f, "start_to_clients_up_on_tcp_ms", since(t_up, t_start));
        let mut problems = Vec::new();
        if s.fallback.as_deref() != Some("the partner offers no RDMA") {
            problems.push(format!(
                "fallback reason {:?}, expected \"the partner offers no RDMA\"",
                s.fallback
            ));
        }
        fig!(f, "fallback", s.fallback.clone());
        if s.verbs_unavailable.is_some() {
            problems.push(format!(
                "this node (n1) has rxe but says {:?}",
                s.verbs_unavailable
            ));
        }
        if !rdma_links(&s).is_empty() || s.links.iter().any(|l| l.transport != "tcp") {
            problems.push(format!("non-TCP links: {}", brief(&s)));
        }
        fig!(
            f,
            "links",
            s.links
                .iter()
                .map(|l| format!("{}@{}", l.transport, l.interconnect))
                .collect::<Vec<_>>()
                .join(" ")
        );
        // Mirror records over TCP, checked like on the rails.
        let n = (self.args.records / 2).max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let mut outs = BTreeMap::new();
        for (name, tag, h) in handles {
            let count = if name == MIRROR { n } else { 50 };
            let cfg = StreamCfg {
                name,
                tag,
                sync: name == MIRROR,
                first: 1,
                count: Some(count),
                window: self.args.window,
                pace: None,
                bytes: self.args.record_bytes,
            };
            let (_h, o) = run_stream(h, cfg, stop.clone(), Arc::new(AtomicU64::new(0))).await;
            outs.insert(name, o);
        }
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            if !o.migrations.is_empty() {
                problems.push(format!(
                    "{name} migrated: {:?}",
                    o.migrations.iter().map(|m| (m.1, m.2)).collect::<Vec<_>>()
                ));
            }
        }
        let m = &outs[MIRROR];
        fig!(
            f,
            "mirror_mbytes_per_s_tcp",
            (m.mbytes_per_s() * 100.0).round() / 100.0
        );
        fig!(f, "mirror_ack_latency_p50_ms_tcp", m.latency_ms(0.5));
        let report = self.rpc.call(Role::Backup, "report").await?;
        let c = &report["nodes"]["node-c-nordma"];
        if c.is_null() {
            problems.push(format!("no report from node-c-nordma: {report}"));
        } else {
            for (name, o) in &outs {
                let s = &c["clients"][name];
                let bad: u64 = ["duplicates", "gaps", "bad"]
                    .iter()
                    .map(|k| s[k].as_u64().unwrap_or(0))
                    .sum();
                if s["received"].as_u64() != Some(o.sent)
                    || s["last"].as_u64() != Some(o.last_sent)
                    || bad != 0
                {
                    problems.push(format!("node-c-nordma/{name}: {s} (sent {})", o.sent));
                }
            }
            let vu = &c["status"]["verbs_unavailable"];
            fig!(f, "n3_verbs_unavailable", vu.clone());
            if vu.is_null() {
                problems.push("node-c-nordma (n3, no rxe) does not say why it has no RDMA".into());
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "n3 has no rxe ({}); node-a-tcp on n1 reports fallback \"{}\", links {}; mirror {n} x {} B sync over TCP {:.2} MB/s + config/heartbeat 50 each; n3 got all in order, CRCs ok",
            c["status"]["verbs_unavailable"].as_str().unwrap_or("?"),
            s.fallback.as_deref().unwrap_or(""),
            f["links"].as_str().unwrap_or(""),
            self.args.record_bytes,
            m.mbytes_per_s()
        ))
    }
}

impl Leader {
    // ---- scenario 5 ---------------------------------------------------------------------------

    async fn partner_crash_switches_to_backup(
        &mut self,
        f: &mut Figures,
    ) -> Result<String, String> {
        let backup = self.args.backup.ok_or("no --backup given")?;
        let node = self.node()?;
        let (s0, _) = wait_status(
            node,
            "two RDMA links to node b",
            Duration::from_secs(30),
            |s| rdma_links(s) == [1, 2] && s.peer.as_deref() == Some("node-b"),
        )
        .await?;
        let epoch0 = s0.epoch;
        let n = (self.args.records / 2).max(30);
        let crash_ix = self.sent_of(MIRROR) + n / 3;
        let first: BTreeMap<&str, u64> = [MIRROR, CONFIG, HEARTBEAT]
            .iter()
            .map(|c| (*c, self.sent_of(c) + 1))
            .collect();
        let armed = self
            .rpc
            .call(Role::Partner, &format!("crash-at {crash_ix}"))
            .await?;
        if armed["ok"] != json!(true) {
            return Err(format!("the partner did not arm the crash: {armed}"));
        }
        // From now on the partner may be gone at any moment: ask it nothing more.
        self.partner_crashed = true;
        let stop = Arc::new(AtomicBool::new(false));
        self.keep_sending = true;
        let streams = self.start_streams(
            &[(MIRROR, Some(n)), (CONFIG, None), (HEARTBEAT, None)],
            &stop,
        );
        self.keep_sending = false;
        let streams = streams?;
        // Poll the status while the mirror runs: TCP to b gone, every link gone.
        let mut t_tcp_gone = None;
        let mut t_all_gone = None;
        let t_begin = Instant::now();
        while !streams[0].1.is_finished() && t_begin.elapsed() < Duration::from_secs(60) {
            let node = self.node()?;
            let st = node.status().await.map_err(|e| e.to_string())?;
            let now = Instant::now();
            let to_b = st.peer.as_deref() == Some("node-b");
            if t_tcp_gone.is_none() && to_b && !st.links.iter().any(|l| l.transport == "tcp") {
                t_tcp_gone = Some(now);
            }
            if t_all_gone.is_none() && st.links.is_empty() {
                t_all_gone = Some(now);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let outs = self.join_streams_after_mirror(streams, &stop).await?;
        let node = self.node()?;
        let (s_end, _) = wait_status(
            node,
            "the session up with the backup",
            Duration::from_secs(20),
            |s| {
                s.peer.as_deref() == Some("node-c-backup")
                    && s.session == peercm_cm_manager::SessionState::Up
            },
        )
        .await?;
        let mut problems = Vec::new();
        // Per client: acks from b (before PeerSwitched) and from c (after); c must have got
        // exactly the records b did not acknowledge, in order, once.
        let report = self.rpc.call(Role::Backup, "report").await?;
        let c = &report["nodes"]["node-c-backup"];
        if c.is_null() {
            problems.push(format!("no report from node-c-backup: {report}"));
        }
        let mut t_switch = None;
        let mut per_client = Vec::new();
        for (name, o) in &outs {
            problems.extend(o.problems().into_iter().map(|p| format!("{name}: {p}")));
            let sw = match o.switched.as_slice() {
                [(t, node)] if node == "node-c-backup" => *t,
                other => {
                    problems.push(format!(
                        "{name}: expected one PeerSwitched to node-c-backup, got {:?}",
                        other.iter().map(|x| x.1.clone()).collect::<Vec<_>>()
                    ));
                    continue;
                }
            };
            t_switch = Some(t_switch.map_or(sw, |t: Instant| t.min(sw)));
            let by_b: std::collections::BTreeSet<u64> = o
                .ack_times
                .iter()
                .zip(&o.ack_indices)
                .filter(|(t, _)| **t < sw)
                .map(|(_, i)| *i)
                .collect();
            let start = first[name];
            let expected: Vec<u64> = (start..=o.last_sent)
                .filter(|i| !by_b.contains(i))
                .collect();
            let got: Vec<u64> = c["clients"][name]["indices"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            let bad: u64 = ["duplicates", "gaps", "bad"]
                .iter()
                .map(|k| c["clients"][name][k].as_u64().unwrap_or(0))
                .sum();
            if got != expected || bad != 0 {
                let head = |v: &[u64]| {
                    v.iter()
                        .take(5)
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                problems.push(format!(
                    "{name}: the backup got {} records [{}..] (errors {}), expected the {} b did not acknowledge [{}..]",
                    got.len(),
                    head(&got),
                    c["clients"][name]["errors"],
                    expected.len(),
                    head(&expected)
                ));
            }
            let first_after = o.first_ack_after(sw);
            if let Some(a) = first_after {
                fig!(f, format!("{name}_switch_to_first_ack_ms"), since(a, sw));
            } else if !expected.is_empty() {
                problems.push(format!("{name}: no ack after the switch"));
            }
            per_client.push(format!(
                "{name}: {} acked by b, {} resent to and acked by c",
                by_b.len(),
                expected.len()
            ));
            fig!(f, format!("{name}_acked_by_b"), by_b.len());
            fig!(f, format!("{name}_resent_to_backup"), expected.len());
        }
        // Timings on this node's clock: the last ack from b, then detection and the switch.
        let last_b = outs
            .values()
            .filter_map(|o| {
                let sw = o.switched.first()?.0;
                o.ack_times.iter().copied().filter(|t| *t < sw).max()
            })
            .max();
        if let Some(lb) = last_b {
            if let Some(t) = t_tcp_gone {
                fig!(f, "last_ack_from_b_to_tcp_links_gone_ms", since(t, lb));
            }
            if let Some(t) = t_all_gone {
                fig!(f, "last_ack_from_b_to_all_links_gone_ms", since(t, lb));
            }
            if let Some(t) = t_switch {
                fig!(f, "last_ack_from_b_to_peer_switched_ms", since(t, lb));
            }
            let first_c = outs
                .values()
                .filter_map(|o| o.first_ack_after(o.switched.first()?.0))
                .min();
            if let Some(t) = first_c {
                fig!(f, "last_ack_from_b_to_first_ack_from_c_ms", since(t, lb));
            }
        }
        // On the manager's clock: what it noted.
        let tl = &s_end.timeline;
        let pick = |needle: &str| tl.iter().find(|e| e.what.contains(needle));
        for (key, needle) in [
            ("timeline_unreachable", "partner unreachable"),
            ("timeline_switching", "switching partner"),
        ] {
            if let Some(e) = pick(needle) {
                fig!(f, key, format!("+{} ms: {}", e.at_ms, e.what));
            } else {
                problems.push(format!("the timeline shows no {needle:?}"));
            }
        }
        let fenced = tl.iter().filter(|e| e.what.contains("fenced")).count();
        fig!(f, "fenced_rdma_links", fenced);
        if s_end.epoch <= epoch0 {
            problems.push(format!(
                "epoch {} after the switch, {epoch0} before",
                s_end.epoch
            ));
        }
        if s_end.fallback.as_deref() != Some("the partner offers no RDMA") {
            problems.push(format!(
                "fallback {:?} with the backup (no RDMA), expected \"the partner offers no RDMA\"",
                s_end.fallback
            ));
        }
        if !self.sync_marker_exists("mlane.crashed.partner") {
            problems.push("the partner never crashed (no mlane.crashed.partner)".into());
        }
        fig!(f, "crash_at_mirror_record", crash_ix);
        fig!(f, "backup", backup.to_string());
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(format!(
            "node b aborted on receiving mirror record {crash_ix}; switched to node-c-backup {:.0} ms after b's last ack (all links gone +{:.0} ms), first ack from c +{:.0} ms; {}; no NACK, no Down, each record once and in order at c",
            f.get("last_ack_from_b_to_peer_switched_ms").and_then(Value::as_f64).unwrap_or(0.0),
            f.get("last_ack_from_b_to_all_links_gone_ms").and_then(Value::as_f64).unwrap_or(0.0),
            f.get("last_ack_from_b_to_first_ack_from_c_ms").and_then(Value::as_f64).unwrap_or(0.0),
            per_client.join("; ")
        ))
    }

    fn sync_marker_exists(&self, name: &str) -> bool {
        self.rpc.sync.path(name).exists()
    }
}

fn select_scenarios(only: &[String]) -> Result<Vec<&'static str>, String> {
    if only.is_empty() {
        return Ok(SCENARIOS.to_vec());
    }
    let mut v = Vec::new();
    for o in only {
        let s = SCENARIOS
            .iter()
            .find(|s| **s == o.as_str())
            .ok_or_else(|| format!("unknown scenario {o:?} (see --list)"))?;
        if !v.contains(s) {
            v.push(*s);
        }
    }
    v.sort_by_key(|s| SCENARIOS.iter().position(|x| x == s));
    Ok(v)
}

async fn run_leader(args: Args, sync: SyncDir, hcas: Vec<Hca>) -> ExitCode {
    let t0 = Instant::now();
    let scenarios = match select_scenarios(&args.only) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("manager-lane: {e}");
            return ExitCode::from(64);
        }
    };
    let json_path = args.json.clone();
    let mut leader = Leader {
        t0,
        rpc: Rpc {
            sync: sync.clone(),
            next: HashMap::new(),
        },
        hcas,
        node: None,
        probe: StallProbe::default(),
        handles: HashMap::new(),
        sent: HashMap::new(),
        rail_down: false,
        partner_crashed: false,
        keep_sending: false,
        ready: Vec::new(),
        watch: None,
        args,
    };
    let switch = scenarios.contains(&"partner_crash_switches_to_backup");
    let need_backup = switch || scenarios.contains(&"no_rdma_node_uses_tcp");
    // Everything that must hold before any scenario can run.
    let setup = async {
        let d = check_devices(&leader.hcas)?;
        leader.log(&d);
        leader.watch = Some(PortWatch::start(&leader.hcas)?);
        let timeout = Duration::from_secs(leader.args.connect_timeout);
        let mut roles = vec![Role::Partner];
        if need_backup {
            roles.push(Role::Backup);
        }
        for r in roles {
            let ready = sync
                .wait(&format!("mlane.ready.{}", r.name()), timeout)
                .await?;
            let v: Value =
                serde_json::from_str(&ready).map_err(|e| format!("{}: {e}", r.name()))?;
            if v["ok"] != json!(true) {
                return Err(format!("the {} cannot run: {}", r.name(), v["why"]));
            }
            leader.log(format!("{} ready: {}", r.name(), v["devices"]));
            leader.ready.push(r);
        }
        let peer = leader.args.peer.ok_or("no --peer given")?;
        let mut cfg = node_config("node-a", &leader.hcas);
        let mut pc = PeerConfig::new(peer, 2);
        if switch {
            pc.backups = vec![leader.args.backup.ok_or("no --backup given")?];
            pc.autoswitch = true;
        }
        cfg.peer = Some(pc);
        leader.t0 = Instant::now();
        let node = Node::start_with_verbs(cfg, secret(), VerbsSource::Real)
            .await
            .map_err(|e| format!("starting node a: {e}"))?;
        let s = node.status().await.map_err(|e| e.to_string())?;
        if let Some(why) = &s.verbs_unavailable {
            return Err(format!("node a has no RDMA: {why}"));
        }
        let rails: Vec<String> = s
            .interconnects
            .iter()
            .filter_map(|i| i.device.clone())
            .collect();
        for h in &leader.hcas {
            if !rails
                .iter()
                .any(|r| r.starts_with(&format!("{} ", h.device)))
            {
                return Err(format!(
                    "node a found no rail on {} (rails: {rails:?})",
                    h.device
                ));
            }
        }
        for (name, _, spec) in client_specs() {
            let mut h = node
                .register(name, spec)
                .await
                .map_err(|e| format!("register {name}: {e}"))?;
            h.connect()
                .await
                .map_err(|e| format!("connect {name}: {e}"))?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match tokio::time::timeout_at(deadline.into(), h.next_event()).await {
                    Ok(Some(ClientEvent::Up)) => break,
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(format!("{name}: channel closed")),
                    Err(_) => {
                        let s = node.status().await.map_err(|e| e.to_string())?;
                        return Err(format!("{name}: not Up within 30 s; {}", brief(&s)));
                    }
                }
            }
            leader.handles.insert(name, h);
        }
        leader.log(format!(
            "node a up, clients connected ({:.0} ms)",
            since(Instant::now(), leader.t0)
        ));
        let node = Arc::new(node);
        leader.probe = StallProbe::spawn(node.clone(), leader.t0);
        leader.node = Some(node);
        Ok::<(), String>(())
    }
    .await;

    let mut outcomes: Vec<Outcome> = Vec::new();
    let scenario_timeout = Duration::from_secs(leader.args.scenario_timeout);
    let mut broken: Option<String> = setup.err().map(|e| format!("not run: {e}"));
    for name in &scenarios {
        let started = Instant::now();
        let mut figures = Figures::new();
        let res = if let Some(why) = &broken {
            Err(why.clone())
        } else {
            leader.log(format!("begin {name}"));
            let fut = async {
                match *name {
                    "rails_up_and_placement" => leader.rails_up_and_placement(&mut figures).await,
                    "cable_cut_hca0_under_stream" => {
                        leader.cable_cut_hca0_under_stream(&mut figures).await
                    }
                    "restore_hca0" => leader.restore_hca0(&mut figures).await,
                    "no_rdma_node_uses_tcp" => leader.no_rdma_node_uses_tcp(&mut figures).await,
                    "partner_crash_switches_to_backup" => {
                        leader.partner_crash_switches_to_backup(&mut figures).await
                    }
                    other => Err(format!("no such scenario {other}")),
                }
            };
            match tokio::time::timeout(scenario_timeout, fut).await {
                Ok(r) => r,
                Err(_) => {
                    broken = Some(format!(
                        "not run: {name} timed out and left the clients in an unknown state"
                    ));
                    Err(format!("timed out after {} s", scenario_timeout.as_secs()))
                }
            }
        };
        if leader.node.is_some() {
            fig!(figures, "node-a_manager_max_stall", leader.probe.take());
        }
        let (pass, details) = match res {
            Ok(d) => (true, d),
            Err(e) => (false, e),
        };
        let o = Outcome {
            name: name.to_string(),
            pass,
            details,
            ms: started.elapsed().as_millis(),
            figures,
        };
        println!(
            "scenario {}: {} {} ({} ms)",
            o.name,
            if o.pass { "PASS" } else { "FAIL" },
            o.details,
            o.ms
        );
        for (k, v) in &o.figures {
            println!("  {k} = {v}");
        }
        leader.log(format!(
            "end {name}: {}",
            if o.pass { "PASS" } else { "FAIL" }
        ));
        outcomes.push(o);
    }
    // Leave the HCA as found.
    if leader.rail_down {
        if let Some(h) = leader.hcas.first() {
            let _ = set_link(&h.netdev, true);
        }
    }
    for r in [Role::Partner, Role::Backup] {
        // Only roles that came up and can still answer (an absent role would cost the full
        // answer timeout).
        if !leader.ready.contains(&r) || (r == Role::Partner && leader.partner_crashed) {
            continue;
        }
        if let Err(e) = leader.rpc.call(r, "exit").await {
            leader.log(format!("{}: exit request: {e}", r.name()));
        }
    }
    if let Some(node) = leader.node.take() {
        if let Ok(s) = node.status().await {
            leader.log(format!("final status: {}", brief(&s)));
            for t in &s.timeline {
                leader.log(format!("  timeline +{} ms: {}", t.at_ms, t.what));
            }
        }
    }
    let passed = outcomes.iter().filter(|o| o.pass).count();
    let failed = outcomes.len() - passed;
    println!("manager-lane: {passed} passed, {failed} failed");
    if let Some(p) = json_path {
        let v = json!({ "scenarios": outcomes, "passed": passed, "failed": failed });
        if let Err(e) = std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap_or_default()) {
            eprintln!("manager-lane: writing {}: {e}", p.display());
        }
    }
    if passed == 0
        && failed > 0
        && broken.is_some()
        && outcomes.iter().all(|o| o.details.starts_with("not run"))
    {
        ExitCode::from(2)
    } else if failed > 0 || outcomes.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if args.list {
        for s in SCENARIOS {
            println!("{s}");
        }
        return ExitCode::SUCCESS;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let (Some(role), Some(dir)) = (args.role, args.sync.clone()) else {
        eprintln!("manager-lane: --role and --sync are required (see --help)");
        return ExitCode::from(64);
    };
    let hcas = match parse_hcas(&args.hcas) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("manager-lane: {e}");
            return ExitCode::from(64);
        }
    };
    if args.link_timeout_ms < 200 {
        eprintln!("manager-lane: --link-timeout-ms must be at least 200 (heartbeats every 100 ms)");
        return ExitCode::from(64);
    }
    LINK_TIMEOUT_MS.store(args.link_timeout_ms, Ordering::Relaxed);
    if args.record_bytes < record::OVERHEAD + 3 || args.window == 0 || args.records < 3 {
        eprintln!(
            "manager-lane: --record-bytes must be at least {}, --window and --records (>= 3) positive",
            record::OVERHEAD + 3
        );
        return ExitCode::from(64);
    }
    let sync = SyncDir {
        dir,
        abort: args.abort_file.clone(),
        stop: args.leader_done_file.clone(),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("manager-lane: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async move {
        match role {
            Role::Leader => run_leader(args, sync, hcas).await,
            Role::Partner | Role::Backup => run_receiver(role, &args, sync, hcas).await,
        }
    });
    // Node tasks and RDMA link threads may still be winding down: do not wait for them.
    rt.shutdown_timeout(Duration::from_millis(500));
    code
}

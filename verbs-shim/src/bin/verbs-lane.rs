//! `verbs-lane`: runs the shared verbs scenario suite ([`scenarios::all`]) on real RDMA devices
//! (rdma_rxe in the soft-RoCE lane, see docs/softroce-lane.md) as ONE side of each scenario.
//! The other side is a second `verbs-lane` process, normally in another VM:
//!
//! ```text
//! verbs-lane --side server --listen 10.77.99.2:18600 --hca rxe0:1:1 --hca rxe1:1:1
//! verbs-lane --side client --peer   10.77.99.2:18600 --hca rxe0:1:1 --hca rxe1:1:1
//! ```
//!
//! - The [`Exchange`] is one TCP connection carrying length-prefixed frames. Control frames keep
//!   both sides in lockstep (`hello`, then `begin <i> <name>` / `end <i> <name> <verdict>` around
//!   every scenario); data frames carry the scenario's own messages, tagged with the scenario
//!   index so a frame left over from a failed scenario can never reach the next one. When one side
//!   finishes a scenario (pass or fail) while the other still waits for a message, the waiting
//!   side's `recv` fails at once instead of timing out.
//! - The [`FaultInjector`] takes the HCA's netdev administratively down/up (what `ip link set`
//!   does, through `/sys/class/net/<netdev>/flags` so no process start blurs the timings), which
//!   raises PORT_ERR and fails the HCA's QPs at once. Between scenarios every link a scenario left
//!   down is brought back and every port must be ACTIVE again with its GID in place.
//! - Devices come from [`RealProvider::load`] (libibverbs). No device, a missing `--hca` device or
//!   a port that is not ACTIVE fails every scenario: the lane never passes vacuously.
//!
//! Output: one line per scenario, `scenario <name> <side>: PASS|FAIL <details> (<ms> ms)`, then
//! `verbs-lane <side>: N passed, M failed`; with `--json FILE` also a JSON report.
//! Exit status: 0 all passed, 1 a scenario failed, 2 nothing could run (no device, no peer,
//! mismatched suites), 64 usage error.

use peercm_verbs_shim::api::Provider;
use peercm_verbs_shim::real::RealProvider;
use peercm_verbs_shim::scenarios::{self, Env, Exchange, FaultInjector, HcaSel, Scenario, Side};
use peercm_verbs_shim::types::{DeviceInfo, PortState, QpParams};
use std::collections::{BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: verbs-lane --side client|server --hca DEV:PORT:GIDIDX [--hca ...]
                  (--peer IP:PORT | --listen IP:PORT) [options]
       verbs-lane --list

Runs every scenario of the verbs scenario suite (or the --only subset), in order, as one side;
the other side is a second verbs-lane process (the server listens, the client connects).

  --side client|server     which half of each scenario this process runs
  --hca DEV:PORT:GIDIDX    an HCA to use, repeated in cable order (e.g. rxe0:1:1)
  --peer IP:PORT           client: where the server listens (connect is retried)
  --listen IP:PORT         server: where to accept the client
  --only NAME[,NAME...]    run only these scenarios (repeatable; both sides must agree)
  --json FILE              also write the results as JSON
  --connect-timeout SECS   how long to wait for the other side to connect (default 120)
  --scenario-timeout SECS  how long one scenario may run before this process gives up (default 120)
  --abort-file PATH        give up waiting for the peer as soon as PATH exists
  --list                   print the scenario names and exit

Exit status: 0 every scenario passed, 1 some failed, 2 none could run (no RDMA device, no peer,
different suites on the two sides), 64 usage error.";

const PROTO: &str = "verbs-lane-1";
const MAX_FRAME: usize = 64 << 20;
const KIND_CTL: u8 = 0;
const KIND_DATA: u8 = 1;

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    side: Side,
    hcas: Vec<HcaSel>,
    peer: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    only: Vec<String>,
    json: Option<PathBuf>,
    connect_timeout: Duration,
    scenario_timeout: Duration,
    abort_file: Option<PathBuf>,
}

enum Parsed {
    Run(Args),
    List,
    Help,
}

fn parse_hca(s: &str) -> Result<HcaSel, String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 || parts[0].is_empty() {
        return Err(format!(
            "--hca {s:?}: expected DEV:PORT:GIDIDX, e.g. rxe0:1:1"
        ));
    }
    let port = parts[1]
        .parse::<u8>()
        .map_err(|_| format!("--hca {s:?}: bad port {:?}", parts[1]))?;
    let gid_index = parts[2]
        .parse::<u8>()
        .map_err(|_| format!("--hca {s:?}: bad GID index {:?}", parts[2]))?;
    if port == 0 {
        return Err(format!("--hca {s:?}: ports count from 1"));
    }
    Ok(HcaSel {
        device: parts[0].to_string(),
        port,
        gid_index,
    })
}

fn parse_secs(flag: &str, v: &str) -> Result<Duration, String> {
    match v.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{flag} {v:?}: expected a positive number of seconds"
        )),
    }
}

fn parse_args(argv: &[String]) -> Result<Parsed, String> {
    let mut side = None;
    let mut hcas = Vec::new();
    let (mut peer, mut listen, mut json, mut abort_file) = (None, None, None, None);
    let mut only = Vec::new();
    let mut connect_timeout = Duration::from_secs(120);
    let mut scenario_timeout = Duration::from_secs(120);
    let mut list = false;
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        if matches!(flag, "-h" | "--help") {
            return Ok(Parsed::Help);
        }
        if flag == "--list" {
            list = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .as_str();
        match flag {
            "--side" => {
                side = Some(match value {
                    "client" => Side::Client,
                    "server" => Side::Server,
                    _ => return Err(format!("--side {value:?}: expected client or server")),
                })
            }
            "--hca" => hcas.push(parse_hca(value)?),
            "--peer" => {
                peer = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--peer {value:?}: {e}"))?,
                )
            }
            "--listen" => {
                listen = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {value:?}: {e}"))?,
                )
            }
            "--only" => only.extend(
                value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            ),
            "--json" => json = Some(PathBuf::from(value)),
            "--abort-file" => abort_file = Some(PathBuf::from(value)),
            "--connect-timeout" => connect_timeout = parse_secs(flag, value)?,
            "--scenario-timeout" => scenario_timeout = parse_secs(flag, value)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if list {
        return Ok(Parsed::List);
    }
    let side = side.ok_or("--side is required")?;
    if hcas.is_empty() {
        return Err("at least one --hca DEV:PORT:GIDIDX is required".into());
    }
    match (side, peer, listen) {
        (Side::Client, Some(_), None) | (Side::Server, None, Some(_)) => {}
        (Side::Client, _, _) => {
            return Err("the client needs --peer IP:PORT (and no --listen)".into())
        }
        (Side::Server, _, _) => {
            return Err("the server needs --listen IP:PORT (and no --peer)".into())
        }
    }
    Ok(Parsed::Run(Args {
        side,
        hcas,
        peer,
        listen,
        only,
        json,
        connect_timeout,
        scenario_timeout,
        abort_file,
    }))
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

/// Milliseconds since this process started, for log lines.
fn stamp(t0: Instant) -> String {
    format!("{:.3}s", t0.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// The HCAs: sysfs facts (netdev, GID) the fault injector and the between-scenario checks need.

#[derive(Debug, Clone)]
struct Hca {
    sel: HcaSel,
    /// The Ethernet device under the HCA (rxe: the netdev it was created on).
    netdev: Option<String>,
    /// The GID at `sel.gid_index` at start, as sysfs prints it.
    gid: Option<String>,
}

fn sysfs_port(h: &HcaSel) -> PathBuf {
    PathBuf::from(format!(
        "/sys/class/infiniband/{}/ports/{}",
        h.device, h.port
    ))
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The netdev of an RoCE HCA port: the GID entry's ndev in sysfs, else `rdma link show`.
fn find_netdev(h: &HcaSel) -> Option<String> {
    let ndevs = sysfs_port(h).join("gid_attrs/ndevs");
    if let Some(n) = read_trim(&ndevs.join(h.gid_index.to_string())) {
        return Some(n);
    }
    if let Ok(rd) = std::fs::read_dir(&ndevs) {
        let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        names.sort();
        if let Some(n) = names.iter().find_map(|p| read_trim(p)) {
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

fn port_state_word(h: &HcaSel) -> String {
    read_trim(&sysfs_port(h).join("state")).unwrap_or_else(|| "MISSING".into())
}

fn current_gid(h: &HcaSel) -> Option<String> {
    read_trim(&sysfs_port(h).join(format!("gids/{}", h.gid_index)))
}

/// Waits until the HCA's port is ACTIVE and its GID entry is back; returns how long it took.
/// A device without a sysfs entry (not a kernel RDMA device) is taken as ready.
fn wait_port_ready(h: &Hca, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    if !sysfs_port(&h.sel).exists() {
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

/// Sets the netdev's administrative state, like `ip link set dev NETDEV up|down`: clears or
/// sets IFF_UP through `/sys/class/net/NETDEV/flags` (the kernel's dev_change_flags, as for
/// `ip`), which costs no process start (an exec of `ip` takes 50-70 ms under TCG and would
/// blur the fault timings). Falls back to running `ip`. Returns how long it took and how.
fn ip_link(netdev: &str, updown: &str) -> Result<(Duration, &'static str), String> {
    const IFF_UP: u32 = 1;
    let start = Instant::now();
    let flags_path = PathBuf::from(format!("/sys/class/net/{netdev}/flags"));
    let via_sysfs = read_trim(&flags_path)
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
        .map(|f| {
            if updown == "up" {
                f | IFF_UP
            } else {
                f & !IFF_UP
            }
        })
        .is_some_and(|f| std::fs::write(&flags_path, format!("{f:#x}")).is_ok());
    if via_sysfs {
        return Ok((start.elapsed(), "sysfs flags"));
    }
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

/// Cuts an HCA's cable by taking its netdev administratively down (PORT_ERR at once, QPs on
/// the HCA fail with LOC_QP_OP_ERR / WR_FLUSH_ERR); restore brings it up and waits for the port
/// to be ACTIVE with its GID again.
/// Log lines are kept in memory and printed between scenarios, so that writing stderr (a file
/// on the 9p lane share) never delays a scenario right after a fault.
struct LinkFaults {
    hcas: Arc<Vec<Hca>>,
    down: Arc<Mutex<BTreeSet<usize>>>,
    log: Arc<Mutex<Vec<String>>>,
    t0: Instant,
}

impl LinkFaults {
    fn hca(&self, i: usize) -> Result<(&Hca, &str), String> {
        let h = self
            .hcas
            .get(i)
            .ok_or_else(|| format!("no HCA #{i} (this side has {})", self.hcas.len()))?;
        let nd = h
            .netdev
            .as_deref()
            .ok_or_else(|| format!("no netdev known for {}", h.sel.device))?;
        Ok((h, nd))
    }

    fn down_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, line: String) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line);
    }

    fn flush_log(&self) {
        let lines = std::mem::take(&mut *self.log.lock().unwrap_or_else(|p| p.into_inner()));
        for l in lines {
            eprintln!("{l}");
        }
    }
}

impl FaultInjector for LinkFaults {
    fn cut(&mut self, hca: usize) -> Result<(), String> {
        let (h, nd) = self.hca(hca)?;
        let dev = h.sel.device.clone();
        let nd = nd.to_string();
        self.down_set().insert(hca);
        let (took, how) = ip_link(&nd, "down")?;
        self.note(format!(
            "[verbs-lane {}] cut hca{hca} ({dev}/{nd} admin down via {how} in {} us; port then {})",
            stamp(self.t0),
            took.as_micros(),
            port_state_word(&self.hcas[hca].sel)
        ));
        Ok(())
    }

    fn restore(&mut self, hca: usize) -> Result<(), String> {
        let (h, nd) = self.hca(hca)?;
        let h = h.clone();
        let nd = nd.to_string();
        let (took, how) = ip_link(&nd, "up")?;
        let ready = wait_port_ready(&h, Duration::from_secs(15))?;
        self.down_set().remove(&hca);
        self.note(format!(
            "[verbs-lane {}] restored hca{hca} ({}/{nd} up via {how} in {} us, ACTIVE with GID {} ms later)",
            stamp(self.t0),
            h.sel.device,
            took.as_micros(),
            ready.as_millis()
        ));
        Ok(())
    }
}

/// Between scenarios: brings back every link a scenario left cut and checks every port is
/// ACTIVE with its GID. Returns notes for the log, or an error if a port stays unusable.
fn heal_links(faults: &LinkFaults) -> Result<Vec<String>, String> {
    faults.flush_log();
    let mut notes = Vec::new();
    let left: Vec<usize> = faults.down_set().iter().copied().collect();
    for i in left {
        let (h, nd) = faults.hca(i)?;
        notes.push(format!("hca{i} ({}) left cut; restored", h.sel.device));
        ip_link(nd, "up")?;
        faults.down_set().remove(&i);
    }
    for h in faults.hcas.iter() {
        wait_port_ready(h, Duration::from_secs(15))?;
    }
    Ok(notes)
}

// ---------------------------------------------------------------------------------------------
// The TCP exchange: frames are [len u32 BE][kind u8][scenario index u32 BE][payload], with len
// counting kind + index + payload.

struct Frame {
    kind: u8,
    index: u32,
    payload: Vec<u8>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Control messages read while waiting for something else, in arrival order.
    pending: VecDeque<String>,
    abort_file: Option<PathBuf>,
    broken: Option<String>,
}

fn aborted(abort_file: &Option<PathBuf>) -> bool {
    abort_file.as_deref().is_some_and(Path::exists)
}

impl Conn {
    fn new(stream: TcpStream, abort_file: Option<PathBuf>) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            pending: VecDeque::new(),
            abort_file,
            broken: None,
        })
    }

    fn write_frame(&mut self, kind: u8, index: u32, payload: &[u8]) -> io::Result<()> {
        if let Some(why) = &self.broken {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone()));
        }
        let len = payload.len() + 5;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes is too large", payload.len()),
            ));
        }
        let mut out = Vec::with_capacity(len + 4);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(payload);
        let r = self
            .stream
            .write_all(&out)
            .and_then(|()| self.stream.flush());
        if let Err(e) = &r {
            self.broken = Some(format!("exchange connection lost: {e}"));
        }
        r
    }

    fn send_ctl(&mut self, msg: &str) -> io::Result<()> {
        self.write_frame(KIND_CTL, 0, msg.as_bytes())
    }

    fn parse_buffered(&mut self) -> io::Result<Option<Frame>> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if !(5..=MAX_FRAME).contains(&len) {
            let why = format!("exchange protocol error: frame length {len}");
            self.broken = Some(why.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let kind = self.buf[4];
        let index = u32::from_be_bytes([self.buf[5], self.buf[6], self.buf[7], self.buf[8]]);
        let payload = self.buf[9..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(Frame {
            kind,
            index,
            payload,
        }))
    }

    /// The next frame, waiting until `deadline`. Partial frames stay buffered across timeouts.
    /// Data already sent by the peer is always read before a timeout or the abort file counts.
    fn read_frame(&mut self, deadline: Instant) -> io::Result<Frame> {
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            if let Some(f) = self.parse_buffered()? {
                return Ok(f);
            }
            if let Some(why) = &self.broken {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, why.clone()));
            }
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(250));
            self.stream.set_read_timeout(Some(slice))?;
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    let why = "exchange connection lost: the peer closed it".to_string();
                    self.broken = Some(why.clone());
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
                    }
                    if aborted(&self.abort_file) {
                        return Err(io::Error::new(
                            io::ErrorKind::Interrupted,
                            "the lane aborted (abort file exists)",
                        ));
                    }
                }
                Err(e) => {
                    self.broken = Some(format!("exchange connection lost: {e}"));
                    return Err(e);
                }
            }
        }
    }

    /// Waits for a control message starting with `prefix` (pending ones first); data frames
    /// met on the way are stale (from a finished scenario) and dropped.
    fn wait_ctl(&mut self, prefix: &str, timeout: Duration) -> io::Result<String> {
        let deadline = Instant::now() + timeout;
        if let Some(pos) = self.pending.iter().position(|m| m.starts_with(prefix)) {
            if let Some(m) = self.pending.remove(pos) {
                return Ok(m);
            }
        }
        loop {
            let f = self.read_frame(deadline).map_err(|e| {
                io::Error::new(e.kind(), format!("waiting for the peer's {prefix:?}: {e}"))
            })?;
            if f.kind != KIND_CTL {
                continue;
            }
            let m = String::from_utf8_lossy(&f.payload).into_owned();
            if m.starts_with(prefix) {
                return Ok(m);
            }
            self.pending.push_back(m);
        }
    }
}

/// The [`Exchange`] one scenario sees: data frames tagged with its index.
struct ScenarioExchange {
    conn: Conn,
    index: u32,
    /// The peer's `end` message, once seen: the peer finished this scenario.
    peer_end: Option<String>,
}

impl Exchange for ScenarioExchange {
    fn send(&mut self, msg: &[u8]) -> io::Result<()> {
        self.conn.write_frame(KIND_DATA, self.index, msg)
    }

    fn recv(&mut self, timeout: Duration) -> io::Result<Vec<u8>> {
        if let Some(end) = &self.peer_end {
            return Err(peer_ended_error(end));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let f = self.conn.read_frame(deadline)?;
            if f.kind == KIND_DATA {
                if f.index == self.index {
                    return Ok(f.payload);
                }
                continue; // stale data from an earlier scenario
            }
            let m = String::from_utf8_lossy(&f.payload).into_owned();
            let is_end = m.starts_with(&format!("end {} ", self.index));
            self.conn.pending.push_back(m.clone());
            if is_end {
                self.peer_end = Some(m.clone());
                return Err(peer_ended_error(&m));
            }
        }
    }
}

fn peer_ended_error(end_msg: &str) -> io::Error {
    // "end <i> <name> <PASS|FAIL> <text>"
    let rest: Vec<&str> = end_msg.splitn(4, ' ').collect();
    let verdict = rest.get(3).copied().unwrap_or("?");
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!(
            "the peer side already finished this scenario ({verdict}) and will send nothing more"
        ),
    )
}

fn connect(args: &Args, t0: Instant) -> Result<Conn, String> {
    let deadline = Instant::now() + args.connect_timeout;
    let abort_file = args.abort_file.clone();
    if let Some(addr) = args.listen {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        eprintln!("[verbs-lane {}] listening on {addr}", stamp(t0));
        loop {
            match listener.accept() {
                Ok((stream, from)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| format!("accepted socket: {e}"))?;
                    eprintln!("[verbs-lane {}] client connected from {from}", stamp(t0));
                    return Conn::new(stream, abort_file)
                        .map_err(|e| format!("accepted socket: {e}"));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("accept on {addr}: {e}")),
            }
            if aborted(&abort_file) {
                return Err("the lane aborted while waiting for the client".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no client connected to {addr} within {} s",
                    args.connect_timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let addr = args.peer.ok_or("no --peer")?;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let last = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => {
                eprintln!(
                    "[verbs-lane {}] connected to {addr} (attempt {tries})",
                    stamp(t0)
                );
                return Conn::new(stream, abort_file).map_err(|e| format!("socket to {addr}: {e}"));
            }
            Err(e) => e,
        };
        if aborted(&abort_file) {
            return Err("the lane aborted while connecting to the server".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "cannot connect to the server at {addr} within {} s ({tries} attempts, last: {last})",
                args.connect_timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Results

#[derive(Debug, Clone)]
struct ScenarioResult {
    name: String,
    pass: bool,
    /// PASS: measured details; FAIL: what failed.
    text: String,
    details: Vec<(String, String)>,
    ms: u128,
    peer: Option<String>,
    notes: Vec<String>,
}

impl ScenarioResult {
    fn fail(name: &str, text: impl Into<String>) -> ScenarioResult {
        ScenarioResult {
            name: name.to_string(),
            pass: false,
            text: text.into(),
            details: Vec::new(),
            ms: 0,
            peer: None,
            notes: Vec::new(),
        }
    }

    fn line(&self, side: Side) -> String {
        let mut parts: Vec<String> = Vec::new();
        if !self.text.is_empty() {
            parts.push(self.text.clone());
        }
        parts.extend(self.notes.iter().map(|n| format!("note: {n}")));
        if let Some(p) = self.peer.as_deref().filter(|p| !p.starts_with("PASS")) {
            parts.push(format!("peer: {p}"));
        }
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        let text = parts.join("; ");
        let sep = if text.is_empty() { "" } else { " " };
        format!(
            "scenario {} {}: {verdict}{sep}{text} ({} ms)",
            self.name,
            side_name(side),
            self.ms
        )
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

struct Report<'a> {
    side: Side,
    hcas: &'a [Hca],
    error: Option<&'a str>,
    results: &'a [ScenarioResult],
    wall: Duration,
}

fn write_json(path: &Path, r: &Report<'_>) -> io::Result<()> {
    let passed = r.results.iter().filter(|s| s.pass).count();
    let mut o = String::from("{\n");
    o.push_str(&format!("  \"side\": {},\n", json_str(side_name(r.side))));
    let hcas: Vec<String> = r
        .hcas
        .iter()
        .map(|h| {
            format!(
                "{{\"device\": {}, \"port\": {}, \"gid_index\": {}, \"netdev\": {}, \"gid\": {}}}",
                json_str(&h.sel.device),
                h.sel.port,
                h.sel.gid_index,
                h.netdev.as_deref().map_or("null".into(), json_str),
                h.gid.as_deref().map_or("null".into(), json_str)
            )
        })
        .collect();
    o.push_str(&format!("  \"hcas\": [{}],\n", hcas.join(", ")));
    o.push_str(&format!(
        "  \"error\": {},\n",
        r.error.map_or("null".into(), json_str)
    ));
    o.push_str(&format!("  \"passed\": {passed},\n"));
    o.push_str(&format!("  \"failed\": {},\n", r.results.len() - passed));
    o.push_str(&format!("  \"wall_ms\": {},\n", r.wall.as_millis()));
    o.push_str("  \"scenarios\": [");
    for (i, s) in r.results.iter().enumerate() {
        let details: Vec<String> = s
            .details
            .iter()
            .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
            .collect();
        let notes: Vec<String> = s.notes.iter().map(|n| json_str(n)).collect();
        o.push_str(if i == 0 { "\n" } else { ",\n" });
        o.push_str(&format!(
            "    {{\"name\": {}, \"status\": {}, \"ms\": {}, \"details\": {{{}}}, \"error\": {}, \"peer\": {}, \"notes\": [{}]}}",
            json_str(&s.name),
            json_str(if s.pass { "PASS" } else { "FAIL" }),
            s.ms,
            details.join(", "),
            if s.pass { "null".into() } else { json_str(&s.text) },
            s.peer.as_deref().map_or("null".into(), json_str),
            notes.join(", ")
        ));
    }
    o.push_str(if r.results.is_empty() {
        "]\n}\n"
    } else {
        "\n  ]\n}\n"
    });
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, o)?;
    std::fs::rename(&tmp, path)
}

// ---------------------------------------------------------------------------------------------
// Pre-flight: the provider, the devices, the HCAs.

fn preflight(args: &Args) -> Result<(Arc<dyn Provider>, Vec<Hca>), String> {
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

// ---------------------------------------------------------------------------------------------
// The run

type Suite = Vec<(&'static str, Scenario)>;

fn select(only: &[String]) -> Result<Suite, String> {
    let all = scenarios::all();
    if all.is_empty() {
        return Err("the scenario suite is empty (scenarios::all() returned nothing)".into());
    }
    if only.is_empty() {
        return Ok(all);
    }
    for n in only {
        if !all.iter().any(|(name, _)| name == n) {
            let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "--only {n}: no such scenario (have: {})",
                names.join(", ")
            ));
        }
    }
    Ok(all
        .into_iter()
        .filter(|(name, _)| only.iter().any(|o| o == name))
        .collect())
}

type Ran = (ScenarioExchange, Result<Vec<(String, String)>, String>);

/// Runs one scenario in its own thread so a hang can be reported; gives the exchange back.
fn run_scenario(
    f: Scenario,
    mut env: Env,
    mut ex: ScenarioExchange,
    timeout: Duration,
) -> Result<Ran, String> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("scenario".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut env, &mut ex)));
            let r = match r {
                Ok(Ok(outcome)) => Ok(outcome.details),
                Ok(Err(e)) => Err(one_line(&e.what)),
                Err(p) => {
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic".into());
                    Err(format!("panicked: {}", one_line(&msg)))
                }
            };
            drop(env);
            let _ = tx.send((ex, r));
        })
        .map_err(|e| format!("cannot start the scenario thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok((ex, r)) => {
            let _ = spawned.join();
            Ok((ex, r))
        }
        Err(_) => Err(format!(
            "did not finish within {} s (--scenario-timeout)",
            timeout.as_secs()
        )),
    }
}

struct Run {
    args: Args,
    t0: Instant,
    results: Vec<ScenarioResult>,
    hcas: Vec<Hca>,
    error: Option<String>,
}

impl Run {
    /// Prints the totals, writes the JSON report; returns the exit status.
    fn finish(&self, code_if_failed: u8) -> u8 {
        let side = self.args.side;
        let passed = self.results.iter().filter(|r| r.pass).count();
        let failed = self.results.len() - passed;
        if let Some(e) = &self.error {
            println!("verbs-lane {}: ERROR {e}", side_name(side));
        }
        println!(
            "verbs-lane {}: {passed} passed, {failed} failed",
            side_name(side)
        );
        if let Some(p) = &self.args.json {
            let report = Report {
                side,
                hcas: &self.hcas,
                error: self.error.as_deref(),
                results: &self.results,
                wall: self.t0.elapsed(),
            };
            if let Err(e) = write_json(p, &report) {
                eprintln!("verbs-lane: cannot write {}: {e}", p.display());
                return 2;
            }
        }
        if failed > 0 || self.results.is_empty() || self.error.is_some() {
            code_if_failed
        } else {
            0
        }
    }

    /// Marks every scenario from `from` on as failed with `why`, printing each line.
    fn fail_rest(&mut self, suite: &Suite, from: usize, why: &str) {
        for (name, _) in suite.iter().skip(from) {
            let r = ScenarioResult::fail(name, format!("not run: {why}"));
            println!("{}", r.line(self.args.side));
            self.results.push(r);
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::List) => {
            for (name, _) in scenarios::all() {
                println!("{name}");
            }
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("verbs-lane: {e}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    let t0 = Instant::now();
    let side = args.side;
    let mut run = Run {
        args,
        t0,
        results: Vec::new(),
        hcas: Vec::new(),
        error: None,
    };

    let suite = match select(&run.args.only) {
        Ok(s) => s,
        Err(e) => {
            run.error = Some(e);
            return ExitCode::from(run.finish(2));
        }
    };
    let names: Vec<&str> = suite.iter().map(|(n, _)| *n).collect();

    // Local readiness first; even when it fails, connect and tell the peer so both fail fast.
    let local = preflight(&run.args);
    let local_status = match &local {
        Ok((_, hcas)) => {
            let desc: Vec<String> = hcas
                .iter()
                .map(|h| {
                    format!(
                        "{}:{}:{} on {}",
                        h.sel.device,
                        h.sel.port,
                        h.sel.gid_index,
                        h.netdev.as_deref().unwrap_or("?")
                    )
                })
                .collect();
            eprintln!(
                "[verbs-lane {}] {} side ready: {}; {} scenario(s): {}",
                stamp(t0),
                side_name(side),
                desc.join(", "),
                names.len(),
                names.join(" ")
            );
            "ok".to_string()
        }
        Err(e) => {
            eprintln!(
                "[verbs-lane {}] {} side NOT ready: {e}",
                stamp(t0),
                side_name(side)
            );
            format!("unusable {}", one_line(e))
        }
    };

    let mut conn = match connect(&run.args, t0) {
        Ok(c) => c,
        Err(e) => {
            let why = match &local {
                Err(le) => le.clone(),
                Ok(_) => format!("no exchange with the peer: {e}"),
            };
            run.error = Some(why.clone());
            run.fail_rest(&suite, 0, &why);
            return ExitCode::from(run.finish(2));
        }
    };
    // hello <proto> <side> <names,...> <ok | unusable reason...>
    let hello = format!(
        "hello {PROTO} {} {} {local_status}",
        side_name(side),
        names.join(",")
    );
    let peer_hello = conn
        .send_ctl(&hello)
        .and_then(|()| conn.wait_ctl("hello ", run.args.connect_timeout));
    let setup_error = match (&local, peer_hello) {
        (Err(le), _) => Some(le.clone()),
        (Ok(_), Err(e)) => Some(format!("no hello from the peer: {e}")),
        (Ok(_), Ok(h)) => {
            let parts: Vec<&str> = h.splitn(5, ' ').collect();
            let (proto, pside, pnames, pstatus) = (
                parts.get(1).copied().unwrap_or(""),
                parts.get(2).copied().unwrap_or(""),
                parts.get(3).copied().unwrap_or(""),
                parts.get(4).copied().unwrap_or(""),
            );
            if proto != PROTO {
                Some(format!("the peer speaks {proto:?}, not {PROTO:?}"))
            } else if pside == side_name(side) {
                Some(format!("both sides are {pside}"))
            } else if pnames != names.join(",") {
                Some(format!(
                    "the two sides run different suites: here [{}], peer [{pnames}]",
                    names.join(",")
                ))
            } else if pstatus != "ok" {
                Some(format!(
                    "the peer ({pside}) cannot run: {}",
                    pstatus.strip_prefix("unusable ").unwrap_or(pstatus)
                ))
            } else {
                None
            }
        }
    };
    let (provider, hcas) = match (local, setup_error) {
        (Ok(l), None) => l,
        (l, e) => {
            let e = e
                .or_else(|| l.err())
                .unwrap_or_else(|| "setup failed".into());
            run.error = Some(e.clone());
            run.fail_rest(&suite, 0, &e);
            let _ = conn.send_ctl("bye");
            return ExitCode::from(run.finish(2));
        }
    };
    run.hcas = hcas.clone();
    let hcas = Arc::new(hcas);
    let down = Arc::new(Mutex::new(BTreeSet::new()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let heal = LinkFaults {
        hcas: hcas.clone(),
        down: down.clone(),
        log: log.clone(),
        t0,
    };

    let mut i = 0usize;
    while i < suite.len() {
        let (name, f) = suite[i];
        let idx = i as u32;
        // Every port ACTIVE with its GID before each scenario.
        let pre_notes = match heal_links(&heal) {
            Ok(n) => n,
            Err(e) => {
                let why = format!("links not usable before the scenario: {e}");
                run.fail_rest(&suite, i, &why);
                break;
            }
        };
        let begin = format!("begin {idx} {name}");
        if let Err(e) = conn.send_ctl(&begin).and_then(|()| {
            conn.wait_ctl(&begin, run.args.scenario_timeout + Duration::from_secs(30))
        }) {
            let why = format!("the peer did not begin {name}: {e}");
            run.fail_rest(&suite, i, &why);
            break;
        }
        eprintln!("[verbs-lane {}] begin {name}", stamp(t0));
        let params = QpParams {
            port: hcas[0].sel.port,
            gid_index: hcas[0].sel.gid_index,
            ..QpParams::default()
        };
        let env = Env {
            provider: provider.clone(),
            hcas: hcas.iter().map(|h| h.sel.clone()).collect(),
            side,
            faults: Box::new(LinkFaults {
                hcas: hcas.clone(),
                down: down.clone(),
                log: log.clone(),
                t0,
            }),
            params,
        };
        let ex = ScenarioExchange {
            conn,
            index: idx,
            peer_end: None,
        };
        let started = Instant::now();
        let (ex, outcome) = match run_scenario(f, env, ex, run.args.scenario_timeout) {
            Ok(v) => v,
            Err(why) => {
                // The scenario thread is stuck holding the exchange: report, undo cuts, quit.
                let mut r = ScenarioResult::fail(name, why);
                r.ms = started.elapsed().as_millis();
                println!("{}", r.line(side));
                run.results.push(r);
                if let Err(e) = heal_links(&heal) {
                    eprintln!("verbs-lane: could not restore the links: {e}");
                }
                run.fail_rest(&suite, i + 1, &format!("scenario {name} did not finish"));
                std::process::exit(i32::from(run.finish(1)));
            }
        };
        let ms = started.elapsed().as_millis();
        conn = ex.conn;
        let mut notes = pre_notes;
        match heal_links(&heal) {
            Ok(n) => notes.extend(n),
            Err(e) => notes.push(format!("links not restored: {e}")),
        }
        let mut r = match outcome {
            Ok(details) => {
                let text = details
                    .iter()
                    .map(|(k, v)| format!("{k}={}", one_line(v)))
                    .collect::<Vec<_>>()
                    .join(" ");
                ScenarioResult {
                    name: name.to_string(),
                    pass: true,
                    text,
                    details,
                    ms,
                    peer: None,
                    notes,
                }
            }
            Err(what) => ScenarioResult {
                name: name.to_string(),
                pass: false,
                text: what,
                details: Vec::new(),
                ms,
                peer: None,
                notes,
            },
        };
        let verdict = if r.pass {
            "PASS".to_string()
        } else {
            format!("FAIL {}", one_line(&r.text))
        };
        let end_prefix = format!("end {idx} ");
        let peer_end = conn
            .send_ctl(&format!("end {idx} {name} {verdict}"))
            .and_then(|()| {
                conn.wait_ctl(
                    &end_prefix,
                    run.args.scenario_timeout + Duration::from_secs(30),
                )
            });
        let lost = match peer_end {
            Ok(m) => {
                let v = m.splitn(4, ' ').nth(3).unwrap_or("?").to_string();
                r.peer = Some(v);
                None
            }
            Err(e) => {
                r.peer = Some(format!("unknown ({e})"));
                Some(e.to_string())
            }
        };
        eprintln!("[verbs-lane {}] end {name}", stamp(t0));
        println!("{}", r.line(side));
        run.results.push(r);
        i += 1;
        if let Some(e) = lost {
            run.fail_rest(&suite, i, &format!("lost the peer: {e}"));
            break;
        }
    }
    let _ = conn.send_ctl("bye");
    let code = run.finish(1);
    drop(provider);
    ExitCode::from(code)
}

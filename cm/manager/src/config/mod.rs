//! A node's configuration (TOML, via serde), validated with errors that name the field.
//!
//! ```toml
//! node_id = "ctrl-a"
//! cluster_id = "pair-1"
//! listen = "0.0.0.0:7700"          # accept the partner's links (the target side)
//! secret_file = "/etc/peercm/secret"
//! status_socket = "/run/peercm/ctrl-a.sock"   # `peercm status --socket ...` reads it
//!
//! [peer]                             # dial the partner (the source side)
//! address = "10.0.0.2:7700"
//! connections = 4
//! backups = ["10.0.0.3:7700"]        # tried in order when the partner fails
//! autoswitch = true                  # switch by itself (false: clients call switch_peer)
//! switch_after_ms = 500              # partner unreachable this long -> next backup
//! switch_hold_ms = 10000             # unacknowledged messages held for the new partner
//!
//! [session]
//! window = 256
//! heartbeat_interval_ms = 100
//! link_timeout_ms = 500
//!
//! [verbs]                            # RDMA rails (HCA ports); TCP when unavailable
//! enabled = true
//! ring_bytes = 4194304
//! capacity_mbits_per_s = { rxe0 = 10000 }   # override what the port reports
//!
//! [regions]                          # client regions: mapped files the partner writes into
//! dir = "/dev/shm/peercm"            # one `<name>.region` file per region (no dir: no regions)
//! max_bytes = 1073741824             # all regions of the node together
//!
//! [[clients]]                        # clients `peercm node` exposes for testing
//! name = "echo"
//! bandwidth_mbytes_per_s = 10
//! [[clients.regions]]                # regions it holds (needs [regions] dir)
//! name = "log"
//! len_bytes = 4194304
//! latency = "normal"
//! model = "sync"
//! ```

use crate::error::CmError;
use peercm_cm_proto::control::{validate_name, MAX_CLIENTS_PER_NODE};
use peercm_cm_proto::frame::DEFAULT_MAX_PAYLOAD_BYTES;
use peercm_cm_proto::session::{ClientSpec, LatencyClass, SessionConfig};
use peercm_cm_proto::stream::SendModel;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name (1..=64 of `[A-Za-z0-9_.-]`).
    pub node_id: String,
    /// The cluster both partners belong to.
    pub cluster_id: String,
    /// Where to accept the partner's links. Needed on the target side.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The partner to dial. Exactly one of the two partners has this.
    #[serde(default)]
    pub peer: Option<PeerConfig>,
    /// File holding the shared cluster secret (at least 32 bytes and about 128 bits of entropy;
    /// `peercm secret generate --out FILE` writes one).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Session tunables.
    #[serde(default)]
    pub session: SessionTunables,
    /// RDMA interconnects.
    #[serde(default)]
    pub verbs: VerbsTunables,
    /// Client regions (mapped files the partner may RDMA-write into).
    #[serde(default)]
    pub regions: RegionTunables,
    /// Unix socket where `peercm node` serves its status to `peercm status`.
    #[serde(default)]
    pub status_socket: Option<PathBuf>,
    /// Clients `peercm node` registers and answers for (testing and smoke checks).
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
}

/// Client region settings (`[regions]`; see `crate::regions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegionTunables {
    /// The directory holding the region files, one `<name>.region` each. Without it the node
    /// has no regions (a client asking for one is refused). A tmpfs (`/dev/shm/...`) keeps the
    /// files across a crash of the process, not of the host; see docs/operations.md.
    pub dir: Option<PathBuf>,
    /// The most bytes all regions of the node may hold together; a region that would go
    /// beyond is refused.
    pub max_bytes: u64,
}

impl Default for RegionTunables {
    fn default() -> Self {
        RegionTunables {
            dir: None,
            max_bytes: 1 << 30,
        }
    }
}

/// The largest `[verbs] max_client_qps`.
pub const MAX_CLIENT_QPS: usize = 1024;

/// RDMA interconnect settings (`[verbs]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerbsTunables {
    /// Use RDMA when this host and the partner have it (else TCP only).
    pub enabled: bool,
    /// Bytes of each link's receive ring (the partner RDMA-writes frames into it). Must hold
    /// at least two largest frames.
    pub ring_bytes: usize,
    /// Receives posted per RDMA link.
    pub recv_depth: u32,
    /// An offer for a rail not answered within this time is abandoned and retried.
    pub rail_offer_timeout_ms: u64,
    /// How often rails without a link are offered again; after a failed attempt (a link lost
    /// before its activation round trip) the first retry waits about this long, each further
    /// one twice as long, up to `rail_retry_max_ms`, with jitter.
    pub rail_retry_interval_ms: u64,
    /// The longest backoff between offers of a failing rail.
    pub rail_retry_max_ms: u64,
    /// How long an RDMA link judged dead stays fenced and parked (its resources kept, its
    /// receive ring deregistered) waiting for a zombie partner's WRITE to close it, before it
    /// is freed anyway.
    pub fence_park_ms: u64,
    /// The most queue pairs of their own clients may hold on this node at once, those its
    /// clients asked for and those the partner's clients asked for together (0..=1024; 0: no
    /// client gets one). A request beyond it is refused with a typed error; an offer from the
    /// partner beyond it is refused.
    pub max_client_qps: usize,
    /// Each RDMA link's thread busy-polls its completion queue for up to this long while the
    /// link is busy, before it blocks on the completion channel: lower completion latency
    /// for a CPU kept busy while traffic flows (0..=10000; 0: never, the default). See
    /// `RdmaLinkConfig::busy_poll_us`.
    pub busy_poll_us: u64,
    /// Per-device capacity overrides in Mb/s (`rxe0 = 10000`): soft-RoCE reports a nominal
    /// speed that says nothing about what the emulated link carries. Accepts the old name
    /// `capacity_mbps`.
    #[serde(alias = "capacity_mbps")]
    pub capacity_mbits_per_s: std::collections::BTreeMap<String, u32>,
}

impl Default for VerbsTunables {
    fn default() -> Self {
        VerbsTunables {
            enabled: true,
            ring_bytes: 4 << 20,
            recv_depth: 256,
            rail_offer_timeout_ms: 3000,
            rail_retry_interval_ms: 1000,
            rail_retry_max_ms: 30_000,
            fence_park_ms: 60_000,
            max_client_qps: 16,
            busy_poll_us: 0,
            capacity_mbits_per_s: Default::default(),
        }
    }
}

/// The partner to dial.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its address.
    pub address: SocketAddr,
    /// How many TCP connections to keep open to it (messages are spread over all of them).
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// Backup partners, tried in this order when the partner fails \[CDP\].
    #[serde(default)]
    pub backups: Vec<SocketAddr>,
    /// Switch to the next backup by itself (true), or tell clients the partner is down and let
    /// one of them call `switch_peer()` (false).
    #[serde(default = "default_true")]
    pub autoswitch: bool,
    /// How long the partner may stay unreachable after the last link is lost before the
    /// manager switches to the next backup (the detection window).
    #[serde(default = "default_switch_after_ms")]
    pub switch_after_ms: u64,
    /// With autoswitch, how long unacknowledged messages are held for a new partner before
    /// they are NACKed after all.
    #[serde(default = "default_switch_hold_ms")]
    pub switch_hold_ms: u64,
}

fn default_true() -> bool {
    true
}

fn default_switch_after_ms() -> u64 {
    500
}

fn default_switch_hold_ms() -> u64 {
    10_000
}

impl PeerConfig {
    /// A partner at `address` with the default number of connections and no backups.
    pub fn new(address: SocketAddr, connections: u32) -> Self {
        PeerConfig {
            address,
            connections,
            backups: Vec::new(),
            autoswitch: true,
            switch_after_ms: default_switch_after_ms(),
            switch_hold_ms: default_switch_hold_ms(),
        }
    }

    /// Every partner address in switch order: the partner, then the backups.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        std::iter::once(self.address)
            .chain(self.backups.iter().copied())
            .collect()
    }
}

fn default_connections() -> u32 {
    4
}

/// Session tunables with units in their names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionTunables {
    /// Unacknowledged messages per client stream (and credit granted to the partner).
    pub window: u32,
    /// Heartbeat on a link quiet for this long.
    pub heartbeat_interval_ms: u64,
    /// A link silent this long is declared dead.
    pub link_timeout_ms: u64,
    /// Handshake deadline.
    pub handshake_timeout_ms: u64,
    /// Inbound handshakes in progress at once; a connection beyond is closed unread and counted.
    pub max_pending_handshakes: usize,
    /// Inbound handshakes in progress at once from one source IP address.
    pub max_pending_handshakes_per_source: usize,
    /// First reconnect delay after a failed dial (doubles up to the maximum).
    pub reconnect_backoff_min_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_backoff_max_ms: u64,
    /// Largest message.
    pub max_payload_bytes: u32,
    /// Queued messages at which a client is told to throttle.
    pub flow_high_water: usize,
    /// Queue length at which throttling ends.
    pub flow_low_water: usize,
}

impl Default for SessionTunables {
    fn default() -> Self {
        let s = SessionConfig::default();
        SessionTunables {
            window: s.window,
            heartbeat_interval_ms: s.heartbeat_interval.as_millis() as u64,
            link_timeout_ms: s.link_timeout.as_millis() as u64,
            handshake_timeout_ms: 5000,
            max_pending_handshakes: 128,
            max_pending_handshakes_per_source: 16,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 1000,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            flow_high_water: s.flow_high_water,
            flow_low_water: s.flow_low_water,
        }
    }
}

/// A client declared in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name (shared with its namesake on the partner).
    pub name: String,
    /// Expected bandwidth, MB/s (megabytes per second). Accepts the old name `bandwidth_mbps`.
    #[serde(default, alias = "bandwidth_mbps")]
    pub bandwidth_mbytes_per_s: u32,
    /// Latency class.
    #[serde(default = "default_latency")]
    pub latency: LatencyClass,
    /// Send model.
    #[serde(default = "default_model")]
    pub model: SendModel,
    /// Default acknowledgement timeout of the client registered under this name, ms (`None`:
    /// sends wait for their acknowledgement for ever). A sync or async send not acknowledged
    /// in time is NACKed with `Timeout`.
    #[serde(default)]
    pub ack_timeout_ms: Option<u64>,
    /// Whether `peercm node` asks for a queue pair of this client's own
    /// (`ClientHandle::request_queue_pair`; at most `[verbs] max_client_qps` clients).
    #[serde(default)]
    pub own_queue_pair: bool,
    /// Regions `peercm node` registers for this client (`[[clients.regions]]`), which the
    /// partner's namesake can write into one-sided. Needs `[regions] dir`.
    #[serde(default)]
    pub regions: Vec<ClientRegionConfig>,
}

/// A region a configured client holds (`[[clients.regions]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRegionConfig {
    /// Its name (unique per client; the file `<[regions] dir>/<client>/<name>.region`).
    pub name: String,
    /// Its size in bytes.
    pub len_bytes: u64,
}

fn default_latency() -> LatencyClass {
    LatencyClass::Normal
}

fn default_model() -> SendModel {
    SendModel::Sync
}

impl ClientConfig {
    /// The registration spec.
    pub fn spec(&self) -> ClientSpec {
        ClientSpec {
            bandwidth_mbytes_per_s: self.bandwidth_mbytes_per_s,
            latency: self.latency,
            model: self.model,
        }
    }
}

impl NodeConfig {
    /// A minimal configuration (used by the demo and tests).
    pub fn new(node_id: &str, cluster_id: &str) -> Self {
        NodeConfig {
            node_id: node_id.into(),
            cluster_id: cluster_id.into(),
            listen: None,
            peer: None,
            secret_file: None,
            session: SessionTunables::default(),
            verbs: VerbsTunables::default(),
            regions: RegionTunables::default(),
            status_socket: None,
            clients: Vec::new(),
        }
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, CmError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CmError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| match e {
            CmError::Config(m) => CmError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, CmError> {
        let cfg: NodeConfig = toml::from_str(text).map_err(|e| CmError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field; the error names the field and the rule.
    pub fn validate(&self) -> Result<(), CmError> {
        let bad = |m: String| Err(CmError::Config(m));
        if let Err(e) = validate_name("node_id", &self.node_id) {
            return bad(e.to_string());
        }
        if let Err(e) = validate_name("cluster_id", &self.cluster_id) {
            return bad(e.to_string());
        }
        if self.listen.is_none() && self.peer.is_none() {
            return bad(
                "set `listen` (accept the partner) or `[peer] address` (dial it), or both".into(),
            );
        }
        if let Some(p) = &self.peer {
            if !(1..=64).contains(&p.connections) {
                return bad(format!(
                    "peer.connections = {} must be 1..=64",
                    p.connections
                ));
            }
            if p.backups.contains(&p.address) {
                return bad(format!(
                    "peer.backups lists the partner itself ({})",
                    p.address
                ));
            }
            if p.switch_hold_ms == 0 {
                return bad("peer.switch_hold_ms must be > 0".into());
            }
        }
        let s = &self.session;
        if s.window == 0 || s.window > 1 << 20 {
            return bad(format!("session.window = {} must be 1..=1048576", s.window));
        }
        if s.heartbeat_interval_ms == 0 || s.link_timeout_ms < 2 * s.heartbeat_interval_ms {
            return bad(format!(
                "session.link_timeout_ms ({}) must be at least twice session.heartbeat_interval_ms ({}), which must be > 0",
                s.link_timeout_ms, s.heartbeat_interval_ms
            ));
        }
        if s.handshake_timeout_ms == 0 {
            return bad("session.handshake_timeout_ms must be > 0".into());
        }
        if !(1..=65_536).contains(&s.max_pending_handshakes)
            || !(1..=s.max_pending_handshakes).contains(&s.max_pending_handshakes_per_source)
        {
            return bad(format!(
                "session.max_pending_handshakes ({}) must be 1..=65536 and \
                 session.max_pending_handshakes_per_source ({}) 1..=max_pending_handshakes",
                s.max_pending_handshakes, s.max_pending_handshakes_per_source
            ));
        }
        if s.reconnect_backoff_min_ms == 0
            || s.reconnect_backoff_max_ms < s.reconnect_backoff_min_ms
        {
            return bad(
                "session.reconnect_backoff_min_ms must be > 0 and <= reconnect_backoff_max_ms"
                    .into(),
            );
        }
        if s.max_payload_bytes == 0 || s.max_payload_bytes > 64 << 20 {
            return bad(format!(
                "session.max_payload_bytes = {} must be 1..=67108864",
                s.max_payload_bytes
            ));
        }
        if s.flow_low_water >= s.flow_high_water {
            return bad("session.flow_low_water must be below session.flow_high_water".into());
        }
        let v = &self.verbs;
        let max_frame = s.max_payload_bytes as usize + peercm_cm_proto::frame::HEADER_LEN;
        if v.ring_bytes < 2 * max_frame || v.ring_bytes > 1 << 30 {
            return bad(format!(
                "verbs.ring_bytes = {} must hold two largest frames ({} bytes, from session.max_payload_bytes) and be at most 1 GiB",
                v.ring_bytes,
                2 * max_frame
            ));
        }
        if !(4..=8192).contains(&v.recv_depth) {
            return bad(format!(
                "verbs.recv_depth = {} must be 4..=8192",
                v.recv_depth
            ));
        }
        if v.rail_offer_timeout_ms == 0 || v.rail_retry_interval_ms == 0 {
            return bad(
                "verbs.rail_offer_timeout_ms and verbs.rail_retry_interval_ms must be > 0".into(),
            );
        }
        if v.rail_retry_max_ms < v.rail_retry_interval_ms {
            return bad(format!(
                "verbs.rail_retry_max_ms ({}) must be at least verbs.rail_retry_interval_ms ({})",
                v.rail_retry_max_ms, v.rail_retry_interval_ms
            ));
        }
        if v.fence_park_ms == 0 || v.fence_park_ms > 3_600_000 {
            return bad(format!(
                "verbs.fence_park_ms is {}: must be 1..=3600000 (one hour)",
                v.fence_park_ms
            ));
        }
        if v.busy_poll_us > peercm_cm_rdma_link::MAX_BUSY_POLL_US {
            return bad(format!(
                "verbs.busy_poll_us is {}: must be 0..={}",
                v.busy_poll_us,
                peercm_cm_rdma_link::MAX_BUSY_POLL_US
            ));
        }
        if v.max_client_qps > MAX_CLIENT_QPS {
            return bad(format!(
                "verbs.max_client_qps is {}: must be 0..={MAX_CLIENT_QPS}",
                v.max_client_qps
            ));
        }
        let own_qps = self.clients.iter().filter(|c| c.own_queue_pair).count();
        if own_qps > v.max_client_qps {
            return bad(format!(
                "{own_qps} [[clients]] ask for own_queue_pair, above verbs.max_client_qps = {}",
                v.max_client_qps
            ));
        }
        if let Some((dev, _)) = v.capacity_mbits_per_s.iter().find(|(_, c)| **c == 0) {
            return bad(format!("verbs.capacity_mbits_per_s.{dev} must be > 0"));
        }
        if self.regions.max_bytes == 0 {
            return bad("regions.max_bytes must be > 0".into());
        }
        if self
            .regions
            .dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return bad("regions.dir must not be empty (leave it out for no regions)".into());
        }
        let mut region_bytes: u64 = 0;
        for c in &self.clients {
            for r in &c.regions {
                if self.regions.dir.is_none() {
                    return bad(format!(
                        "client {:?} declares region {:?}, but [regions] dir is not set",
                        c.name, r.name
                    ));
                }
                if let Err(e) = crate::regions::RegionName::new(&r.name) {
                    return bad(format!("client {:?}: {e}", c.name));
                }
                if r.len_bytes == 0 || r.len_bytes > peercm_cm_proto::region::MAX_REGION_BYTES {
                    return bad(format!(
                        "client {:?} region {:?}: len_bytes must be 1..={}",
                        c.name,
                        r.name,
                        peercm_cm_proto::region::MAX_REGION_BYTES
                    ));
                }
                if c.regions.iter().filter(|o| o.name == r.name).count() > 1 {
                    return bad(format!(
                        "client {:?} declares region {:?} twice",
                        c.name, r.name
                    ));
                }
                region_bytes = region_bytes.saturating_add(r.len_bytes);
            }
            if c.regions.len() > peercm_cm_proto::region::MAX_REGIONS_PER_CLIENT {
                return bad(format!(
                    "client {:?} declares {} regions; a client may hold at most {}",
                    c.name,
                    c.regions.len(),
                    peercm_cm_proto::region::MAX_REGIONS_PER_CLIENT
                ));
            }
        }
        if region_bytes > self.regions.max_bytes {
            return bad(format!(
                "the [[clients.regions]] declared hold {region_bytes} bytes together, above regions.max_bytes = {}",
                self.regions.max_bytes
            ));
        }
        if self.clients.len() > MAX_CLIENTS_PER_NODE {
            return bad(format!(
                "{} [[clients]] declared, but a node may have at most {MAX_CLIENTS_PER_NODE} clients registered",
                self.clients.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.clients {
            if let Err(e) = validate_name("clients.name", &c.name) {
                return bad(e.to_string());
            }
            if !seen.insert(&c.name) {
                return bad(format!("client {:?} is declared twice", c.name));
            }
            if c.ack_timeout_ms == Some(0) {
                return bad(format!(
                    "clients.ack_timeout_ms of {:?} must be > 0 (leave it out to wait for ever)",
                    c.name
                ));
            }
        }
        Ok(())
    }

    /// The session configuration these tunables describe.
    pub fn session_config(&self) -> SessionConfig {
        let s = &self.session;
        SessionConfig {
            window: s.window,
            heartbeat_interval: Duration::from_millis(s.heartbeat_interval_ms),
            link_timeout: Duration::from_millis(s.link_timeout_ms),
            flow_high_water: s.flow_high_water,
            flow_low_water: s.flow_low_water,
            max_payload_bytes: s.max_payload_bytes,
            hold_on_partner_loss: self
                .peer
                .as_ref()
                .filter(|p| p.autoswitch && !p.backups.is_empty())
                .map(|p| Duration::from_millis(p.switch_hold_ms)),
            ..SessionConfig::default()
        }
    }
}

#[cfg(test)]
mod tests;

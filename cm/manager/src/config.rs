//! A node's configuration (TOML, via serde), validated with errors that name the field.
//!
//! ```toml
//! node_id = "ctrl-a"
//! cluster_id = "pair-1"
//! listen = "0.0.0.0:7700"          # accept the partner's links (the target side)
//! secret_file = "/etc/peercm/secret"
//!
//! [peer]                             # dial the partner (the source side)
//! address = "10.0.0.2:7700"
//! connections = 4
//!
//! [session]
//! window = 256
//! heartbeat_interval_ms = 100
//! link_timeout_ms = 1500
//!
//! [[clients]]                        # clients `peercm node` exposes for testing
//! name = "echo"
//! bandwidth_mbps = 10
//! latency = "normal"
//! model = "sync"
//! ```

use crate::error::CmError;
use peercm_proto::control::validate_name;
use peercm_proto::frame::DEFAULT_MAX_PAYLOAD_BYTES;
use peercm_proto::session::{ClientSpec, LatencyClass, SessionConfig};
use peercm_proto::stream::SendModel;
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
    /// File holding the shared cluster secret (at least 16 bytes).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Session tunables.
    #[serde(default)]
    pub session: SessionTunables,
    /// Clients `peercm node` registers and answers for (testing and smoke checks).
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
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
    /// Expected bandwidth, MB/s.
    #[serde(default)]
    pub bandwidth_mbps: u32,
    /// Latency class.
    #[serde(default = "default_latency")]
    pub latency: LatencyClass,
    /// Send model.
    #[serde(default = "default_model")]
    pub model: SendModel,
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
            bandwidth_mbps: self.bandwidth_mbps,
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
        let mut seen = std::collections::HashSet::new();
        for c in &self.clients {
            if let Err(e) = validate_name("clients.name", &c.name) {
                return bad(e.to_string());
            }
            if !seen.insert(&c.name) {
                return bad(format!("client {:?} is declared twice", c.name));
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_example() {
        let cfg = NodeConfig::parse(
            r#"
            node_id = "a"
            cluster_id = "c"
            listen = "127.0.0.1:7700"
            secret_file = "/tmp/s"
            [peer]
            address = "127.0.0.1:7701"
            [session]
            window = 64
            [[clients]]
            name = "echo"
            model = "async"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.peer.unwrap().connections, 4);
        assert_eq!(cfg.session.window, 64);
        assert_eq!(cfg.clients[0].model, SendModel::Async);
    }

    #[test]
    fn errors_name_the_field() {
        let e = NodeConfig::parse("node_id = \"a\"\ncluster_id = \"c\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let e = NodeConfig::parse("node_id = \"a b\"\ncluster_id = \"c\"\nlisten=\"127.0.0.1:1\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node_id"), "{e}");
        let e = NodeConfig::parse(
            "node_id = \"a\"\ncluster_id = \"c\"\nlisten=\"127.0.0.1:1\"\ntypo = 1",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("typo"), "{e}");
        let e = NodeConfig::parse(
            "node_id = \"a\"\ncluster_id = \"c\"\nlisten=\"127.0.0.1:1\"\n[session]\nheartbeat_interval_ms = 500\nlink_timeout_ms = 600",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("link_timeout_ms"), "{e}");
    }
}

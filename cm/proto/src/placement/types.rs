//! The placement policy's vocabulary: what the runtime tells it about interconnects, its
//! tunables, the moves it decides and the loads it reports.

use std::time::Duration;

use super::InterconnectId;
use crate::session::ClientId;

/// The kind of an interconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InterconnectKind {
    /// The TCP fallback: used only when no RDMA interconnect is usable.
    Tcp,
    /// An RDMA HCA port.
    Rdma,
}

/// What the runtime knows about one interconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterconnectInfo {
    /// Its id.
    pub id: InterconnectId,
    /// RDMA or TCP.
    pub kind: InterconnectKind,
    /// Capacity in megabits per second (port speed x width, e.g. `25_000` for 25 Gb/s).
    pub capacity_mbits_per_s: u32,
    /// Interconnects that fail together share a failure domain: the HCA device name for RDMA
    /// ports (two ports of one HCA share it), `"tcp"` for TCP.
    pub failure_domain: String,
    /// The port is active and the link to the peer is established.
    pub usable: bool,
}

/// Tunables of the placement policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementConfig {
    /// An interconnect whose utilization is above this is hot (default 0.85).
    pub hot_utilization: f64,
    /// Hysteresis: a move off a hot interconnect must lower the higher utilization of the two
    /// interconnects involved by at least this fraction of it (default 0.10; clamped to 0..=1).
    pub min_improvement: f64,
    /// A client moved voluntarily is not moved voluntarily again before this (default 5 s).
    pub min_move_interval: Duration,
    /// An interconnect must have been usable without interruption this long before voluntary
    /// moves (rebalance, failback) may target it (default 2 s).
    pub failback_hold: Duration,
    /// Half-life of the measured-rate average (default 1 s; at least 1 ms).
    pub rate_half_life: Duration,
    /// How often [`Placement::handle_timeout`](super::Placement::handle_timeout) re-evaluates
    /// while clients exist (default 250 ms; at least 1 ms).
    pub rebalance_interval: Duration,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            hot_utilization: 0.85,
            min_improvement: 0.10,
            min_move_interval: Duration::from_secs(5),
            failback_hold: Duration::from_secs(2),
            rate_half_life: Duration::from_secs(1),
            rebalance_interval: Duration::from_millis(250),
        }
    }
}

/// Why a client moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MoveReason {
    /// First placement of a client (it had no interconnect yet).
    Initial,
    /// Its interconnect became unusable or was removed (forced, immediate).
    InterconnectDown,
    /// Voluntary: failure-domain repair, heavy-client isolation, hot interconnect or spreading.
    Rebalance,
    /// Voluntary: load moved onto an interconnect that came back (after `failback_hold`).
    Failback,
    /// No RDMA interconnect is usable any more: the client goes to TCP (forced, immediate).
    FallbackToTcp,
    /// An RDMA interconnect is usable again: the client leaves TCP (forced, immediate).
    BackToRdma,
}

impl MoveReason {
    /// Whether the move is voluntary (rate-limited by `min_move_interval`): `Rebalance` and
    /// `Failback`. The others are forced by a link change or a registration.
    pub fn is_voluntary(self) -> bool {
        matches!(self, MoveReason::Rebalance | MoveReason::Failback)
    }
}

/// One decision for the runtime to apply to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Move {
    /// The client.
    pub client: ClientId,
    /// Its previous interconnect (`None` for a first placement).
    pub from: Option<InterconnectId>,
    /// Its new interconnect.
    pub to: InterconnectId,
    /// Why.
    pub reason: MoveReason,
}

/// Load of one interconnect, for status output and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct InterconnectLoad {
    /// The interconnect.
    pub id: InterconnectId,
    /// Its kind.
    pub kind: InterconnectKind,
    /// Its capacity in megabits per second.
    pub capacity_mbits_per_s: u32,
    /// Whether it is usable.
    pub usable: bool,
    /// Sum of the declared demands of its clients, MB/s.
    pub declared_mbytes_per_s: f64,
    /// Sum of the smoothed measured rates of its clients, MB/s.
    pub measured_mbytes_per_s: f64,
    /// Sum of the effective demands / (capacity_mbits_per_s / 8); see rule 2 for zero capacity.
    pub utilization: f64,
    /// Its clients (assigned to it, including a last assignment kept while nothing is usable),
    /// in id order.
    pub clients: Vec<ClientId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_default_config_values() {
        let cfg = PlacementConfig::default();
        assert_eq!(cfg.hot_utilization, 0.85);
        assert_eq!(cfg.min_improvement, 0.10);
        assert_eq!(cfg.min_move_interval, Duration::from_secs(5));
        assert_eq!(cfg.failback_hold, Duration::from_secs(2));
        assert_eq!(cfg.rate_half_life, Duration::from_secs(1));
        assert_eq!(cfg.rebalance_interval, Duration::from_millis(250));
    }

    #[test]
    fn placement_voluntary_reasons() {
        assert!(MoveReason::Rebalance.is_voluntary());
        assert!(MoveReason::Failback.is_voluntary());
        for r in [
            MoveReason::Initial,
            MoveReason::InterconnectDown,
            MoveReason::FallbackToTcp,
            MoveReason::BackToRdma,
        ] {
            assert!(!r.is_voluntary());
        }
    }
}

//! The leader (node a on n1): drives and judges every scenario. Its parts, by job:
//!
//! - `setup`: before the first scenario, the devices, the other roles' readiness, node a
//!   and its three clients;
//! - `peers`: coordination with the other VMs through the sync dir (readiness, reports,
//!   the final `exit`);
//! - `streams`: the clients' sending streams across scenarios (record numbering, handles);
//! - `faults`: fault injection (cable cut and restore on HCA0, host-side faults through the
//!   lane runner, the partner's planned crash);
//! - `checks`: judging what the receivers report;
//! - `report`: the result lines, the JSON report and the exit status;
//! - `run`: the run itself, every scenario in order with its timeout.
//!
//! The scenarios themselves are in `super::scenarios`, one file each.

mod checks;
mod faults;
mod peers;
mod report;
mod run;
mod setup;
mod streams;

pub use faults::CablePull;
pub use run::run_leader;
pub use setup::connect_client;

use super::args::{Args, Hca, Role};
use super::secs;
use super::sync::Rpc;
use super::watch::{PortWatch, StallProbe};
use peercm_cm_manager::{ClientHandle, Node};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// A scenario's figures, by name.
pub type Figures = BTreeMap<String, Value>;

pub struct Leader {
    /// When node a started (before: when the process started); figures count from here.
    pub t0: Instant,
    pub args: Args,
    pub hcas: Vec<Hca>,
    pub rpc: Rpc,
    pub node: Option<Arc<Node>>,
    pub probe: StallProbe,
    handles: HashMap<&'static str, ClientHandle>,
    /// Records sent so far per client (the next record index is this + 1).
    sent: HashMap<&'static str, u64>,
    /// HCA0's netdev is down (a scenario cut it): the run brings it back at the end.
    rail_down: bool,
    /// Requests that undo the host faults still in place (`host_fault`), in order.
    host_undo: Vec<String>,
    /// The partner was aborted (partner_crash_switches_to_backup): ask it nothing more.
    partner_crashed: bool,
    /// Async clients keep sending whatever is unacknowledged (see `stream_cfg`).
    pub keep_sending: bool,
    /// The other roles that reported ready.
    ready: Vec<Role>,
    pub watch: Option<PortWatch>,
}

impl Leader {
    pub fn log(&self, m: impl AsRef<str>) {
        eprintln!("[manager-lane leader {:8.3}] {}", secs(self.t0), m.as_ref());
    }

    /// The id of node a's backup partner.
    pub fn backup_id(&self) -> &'static str {
        "node-c-backup"
    }

    /// The address of node a's backup partner.
    pub fn backup_addr(&self) -> Result<std::net::SocketAddr, String> {
        self.args.backup.ok_or_else(|| "no --backup given".into())
    }

    pub fn node(&self) -> Result<&Arc<Node>, String> {
        self.node
            .as_ref()
            .ok_or_else(|| "node a is not running".into())
    }
}

//! The leader's coordination with the other VMs through the sync dir: waiting for the roles to
//! announce themselves, asking for their reports, and telling them to exit at the end.

use super::super::Role;
use super::Leader;
use serde_json::{json, Value};
use std::time::Duration;

impl Leader {
    /// Waits for each role's `mlane.ready.<role>`; a role that cannot run fails the setup.
    pub(super) async fn wait_for_roles(&mut self, roles: &[Role]) -> Result<(), String> {
        let timeout = Duration::from_secs(self.args.connect_timeout);
        for &r in roles {
            let ready = self
                .rpc
                .sync
                .wait(&format!("mlane.ready.{}", r.name()), timeout)
                .await?;
            let v: Value =
                serde_json::from_str(&ready).map_err(|e| format!("{}: {e}", r.name()))?;
            if v["ok"] != json!(true) {
                return Err(format!("the {} cannot run: {}", r.name(), v["why"]));
            }
            self.log(format!("{} ready: {}", r.name(), v["devices"]));
            self.ready.push(r);
        }
        Ok(())
    }

    /// A role's report: per node, its status, its clients' receive counts, CPU ticks and the
    /// manager's longest stall.
    pub async fn report(&mut self, role: Role) -> Result<Value, String> {
        self.rpc.call(role, "report").await
    }

    /// Tells every role that came up and can still answer to exit (an absent role would cost
    /// the full answer timeout).
    pub(super) async fn release_roles(&mut self) {
        for r in [Role::Partner, Role::Backup] {
            if !self.ready.contains(&r) || (r == Role::Partner && self.partner_crashed) {
                continue;
            }
            if let Err(e) = self.rpc.call(r, "exit").await {
                self.log(format!("{}: exit request: {e}", r.name()));
            }
        }
    }

    /// Whether a role left the marker file `name` in the sync dir.
    pub fn sync_marker_exists(&self, name: &str) -> bool {
        self.rpc.sync.path(name).exists()
    }
}

//! The leader's fault injection: HCA0's cable cut and restore (its netdev administratively
//! down/up, remembered so the run leaves the HCA as found), faults the host runner injects
//! from outside the VMs (QEMU monitor `set_link`, `stop`, `cont`; undone at the end of the run
//! if a scenario left them), and arming the partner's planned crash.

use super::super::args::{Hca, Role};
use super::super::node::{rdma_links, wait_status};
use super::Leader;
use crate::netdev::set_admin_state;
use peercm_cm_manager::status::NodeStatus;
use peercm_cm_manager::{InterconnectId, Node};
use peercm_verbs_shim::types::AsyncEvent;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a host-side cable pull showed ([`Leader::pull_cable`]).
pub struct CablePull {
    /// When the pull was asked for.
    pub t_req: Instant,
    /// When the host answered.
    pub t_ack: Instant,
    /// The host's answer (or why no pull was made).
    pub pull: Result<String, String>,
    /// The node's status once its link on the pulled rail was gone, and when.
    pub detect: Result<(NodeStatus, Instant), String>,
    /// The first PORT_ERR the event observer saw on the HCA after the request, if any.
    pub port_err: Option<(Instant, String)>,
}

/// How long the host runner may take to answer a request (it polls every 20 ms; its round trip
/// was measured at 110-470 ms on a loaded host).
const HOST_ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// The request that undoes `req` (`n1-cable0-off` -> `n1-cable0-on`, `n2-stop` -> `n2-cont`).
fn undo_of(req: &str) -> Option<String> {
    if let Some(base) = req.strip_suffix("-off") {
        return Some(format!("{base}-on"));
    }
    req.strip_suffix("-stop").map(|base| format!("{base}-cont"))
}

impl Leader {
    /// Cuts the HCA's cable (its netdev admin down; rxe raises PORT_ERR); returns how.
    pub fn cut_link(&mut self, hca: &Hca) -> Result<&'static str, String> {
        let how = set_admin_state(&hca.netdev, false).map(|(_, how)| how);
        self.rail_down = true;
        how
    }

    /// Restores the HCA's cable (its netdev admin up; rxe raises PORT_ACTIVE).
    pub fn restore_link(&mut self, hca: &Hca) -> Result<(), String> {
        set_admin_state(&hca.netdev, true)?;
        self.rail_down = false;
        Ok(())
    }

    /// Whether a scenario left HCA0 cut.
    pub fn rail_down(&self) -> bool {
        self.rail_down
    }

    /// After the run: brings HCA0 back if a scenario left it cut.
    pub(super) fn leave_links_as_found(&mut self) {
        if self.rail_down {
            if let Some(h) = self.hcas.first() {
                let _ = set_admin_state(&h.netdev, true);
            }
        }
    }

    /// The lane's `ctl` dir (the sync dir's sibling), where the host runner takes requests.
    fn ctl_dir(&self) -> Result<PathBuf, String> {
        self.rpc
            .sync
            .dir
            .parent()
            .map(|p| p.join("ctl"))
            .ok_or_else(|| "the sync dir has no parent: no ctl dir".to_string())
    }

    /// Asks the host runner for `req` (`<node>-cable<k>-off|on`: QEMU `set_link c<k>` on that
    /// node's VM; `<node>-stop|cont`: freeze or resume it) and waits for its ack (protocol:
    /// docs/softroce-lane.md, "Fault-injection protocol"). Returns the ack line. A fault
    /// injected this way is undone at the end of the run unless a later request undid it.
    pub async fn host_fault(&mut self, req: &str) -> Result<String, String> {
        let dir = self.ctl_dir()?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!("n1.{}.{nanos}", std::process::id());
        let tmp = dir.join(format!("{req}.tmp.n1.{}", std::process::id()));
        std::fs::write(&tmp, format!("{token}\n"))
            .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, dir.join(req)).map_err(|e| format!("requesting {req}: {e}"))?;
        let ack = dir.join(format!("{req}.ack"));
        let deadline = Instant::now() + HOST_ACK_TIMEOUT;
        let line = loop {
            if let Ok(text) = std::fs::read_to_string(&ack) {
                let line = text.lines().next().unwrap_or_default().to_string();
                if line.contains(&format!(" {token} ")) {
                    break line;
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the host runner did not answer {req} within {} s",
                    HOST_ACK_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if !line.starts_with("ok ") {
            return Err(format!("the host runner refused {req}: {line}"));
        }
        match undo_of(req) {
            Some(undo) => self.host_undo.push(undo),
            None => self.host_undo.retain(|u| u != req),
        }
        Ok(line)
    }

    /// Whether the host fault that `undo` undoes is still in place.
    /// Pulls cable `k` on the host side (only the near port sees PORT_ERR), unless `go` says
    /// why not, then waits (15 s at most) for `node`'s link on rail `pulled` to drop and looks
    /// (5 s at most) for the PORT_ERR on `device`.
    pub async fn pull_cable(
        &mut self,
        node: &Node,
        k: u32,
        pulled: InterconnectId,
        device: &str,
        go: Result<(), String>,
    ) -> CablePull {
        let t_req = Instant::now();
        let pull = match go {
            Ok(()) => self.host_fault(&format!("n1-cable{k}-off")).await,
            Err(e) => Err(e),
        };
        let t_ack = Instant::now();
        let detect = match &pull {
            Ok(_) => {
                wait_status(
                    node,
                    "the pulled rail's link dropped",
                    Duration::from_secs(15),
                    |s| !rdma_links(s).contains(&pulled),
                )
                .await
            }
            Err(e) => Err(e.clone()),
        };
        let port_err = match &self.watch {
            Some(w) => {
                w.first_after(device, t_req, Duration::from_secs(5), |e| {
                    matches!(e, AsyncEvent::PortError { .. })
                })
                .await
            }
            None => None,
        };
        CablePull {
            t_req,
            t_ack,
            pull,
            detect,
            port_err,
        }
    }

    pub fn host_fault_in_place(&self, undo: &str) -> bool {
        self.host_undo.iter().any(|u| u == undo)
    }

    /// After the run: undoes the host faults a scenario left in place (a frozen VM resumed, a
    /// link set up again).
    pub(super) async fn undo_host_faults(&mut self) {
        for req in std::mem::take(&mut self.host_undo).into_iter().rev() {
            if let Err(e) = self.host_fault(&req).await {
                self.log(format!("undoing a host fault: {e}"));
            }
        }
    }

    /// Orders the partner to abort its process on receiving mirror record `index`. From then
    /// on the partner may be gone at any moment: it is asked nothing more.
    pub async fn arm_partner_crash(&mut self, index: u64) -> Result<(), String> {
        let armed = self
            .rpc
            .call(Role::Partner, &format!("crash-at {index}"))
            .await?;
        if armed["ok"] != json!(true) {
            return Err(format!("the partner did not arm the crash: {armed}"));
        }
        self.partner_crashed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::undo_of;

    #[test]
    fn host_faults_know_their_undo() {
        assert_eq!(undo_of("n1-cable0-off").as_deref(), Some("n1-cable0-on"));
        assert_eq!(undo_of("n2-stop").as_deref(), Some("n2-cont"));
        assert_eq!(undo_of("n1-cable0-on"), None);
        assert_eq!(undo_of("n2-cont"), None);
    }
}

//! The leader's fault injection: HCA0's cable cut and restore (its netdev administratively
//! down/up, remembered so the run leaves the HCA as found), and arming the partner's planned
//! crash.

use super::super::args::{Hca, Role};
use super::Leader;
use crate::netdev::set_admin_state;
use serde_json::json;

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

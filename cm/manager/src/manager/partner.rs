//! Partner failure: detecting that the partner is gone (no link for the detection window),
//! switching to the next partner in the configured order, and fencing the RDMA links to the old
//! one so that a zombie partner can no longer write into this node's memory.

use super::Manager;
use crate::links::AnyLink;
use crate::timeline::NodeEvent;
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::session::LinkId;
use std::time::{Duration, Instant};

impl Manager {
    /// Takes a link out of service. A TCP link is dropped; an RDMA link is handed to the
    /// reaper to be fenced (its receive ring deregistered, so the partner can no longer write
    /// into this node's memory) and parked until it closes, which a zombie partner's next
    /// WRITE causes, or until `[verbs] fence_park_ms` has passed. Deregistering can block in
    /// the kernel, so it never runs here; the reaper answers `RailDone::Fenced`.
    pub(super) fn retire_link(&mut self, l: AnyLink, now: Instant) {
        match l {
            AnyLink::Rdma { link, .. } => {
                self.fenced.push((now, link.id()));
                link.fence(Duration::from_millis(self.cfg.verbs.fence_park_ms));
            }
            AnyLink::Tcp(_) => l.abort(),
        }
    }

    /// When the switch to the next partner is due (autoswitch, partner unreachable).
    pub(super) fn switch_deadline(&self) -> Option<Instant> {
        let peer = self.cfg.peer.as_ref()?;
        if !peer.autoswitch || peer.backups.is_empty() {
            return None;
        }
        // The detection window runs from the partner's last sign of life (a process crash
        // closes TCP at once while RDMA links only go silent), but never ends before every
        // link is gone.
        let window = Duration::from_millis(peer.switch_after_ms);
        self.lost_all_at
            .map(|lost| lost.max(self.last_partner_rx.unwrap_or(lost) + window))
    }

    /// Tracks when the last link was lost, and switches partner when the detection window
    /// has passed without one.
    pub(super) fn detect_partner_failure(&mut self, now: Instant) {
        if self.role != Role::Dialer {
            return;
        }
        let live = self.links.values().any(|l| l.in_session());
        if live {
            self.lost_all_at = None;
            return;
        }
        if self.session.peer().is_none() {
            return; // never connected: keep dialing the first partner
        }
        let since = *self.lost_all_at.get_or_insert(now);
        if self.switch_deadline().is_some_and(|d| now >= d) {
            self.note(NodeEvent::PartnerUnreachable {
                for_ms: now.saturating_duration_since(since).as_millis() as u64,
            });
            self.switch_peer(now);
        }
    }

    /// Moves to the next partner in the configured order: fences every RDMA link to the old
    /// one and dials the new one at once. Returns its address.
    pub(super) fn switch_peer(&mut self, now: Instant) -> Option<String> {
        let addrs = self.cfg.peer.as_ref()?.addresses();
        if addrs.len() < 2 {
            return None;
        }
        self.peer_index = (self.peer_index + 1) % addrs.len();
        let to = addrs[self.peer_index];
        let old: Vec<LinkId> = self.links.keys().copied().collect();
        for id in old {
            if let Some(l) = self.links.remove(&id) {
                if l.in_session() {
                    self.session.handle_link_down(id, now);
                }
                self.retire_link(l, now);
            }
        }
        self.rails.clear_pending();
        self.refresh_interconnects(now);
        // The new partner gets a full detection window to answer.
        self.lost_all_at = None;
        self.last_partner_rx = None;
        self.dialing = 0; // dials to the old partner finish unheeded
        self.next_dial_at = now;
        self.backoff = Duration::from_millis(self.cfg.session.reconnect_backoff_min_ms);
        self.note(NodeEvent::SwitchingPartner {
            to: to.to_string(),
            epoch: self.session.epoch(),
        });
        Some(to.to_string())
    }
}

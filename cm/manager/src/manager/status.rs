//! What the manager reports about itself: the status snapshot, the interconnect list with its
//! load, the reason clients are on TCP, and the timeline of notable events.

use super::Manager;
use crate::links::AnyLink;
use crate::rails::Rails;
use crate::status::{
    ClientStatus, FallbackReason, InterconnectStatus, LinkStatus, NodeStatus, RailState,
};
use crate::timeline::{ic_name, NodeEvent, TimelineEntry};
use peercm_cm_proto::session::InterconnectId;
use std::time::Instant;

/// Timeline entries kept for status output.
const TIMELINE_MAX: usize = 64;

impl Manager {
    pub(crate) fn note(&mut self, event: NodeEvent) {
        let entry = TimelineEntry::new(self.started.elapsed().as_millis() as u64, event);
        tracing::info!("{}", entry.what);
        if self.timeline.len() == TIMELINE_MAX {
            self.timeline.pop_front();
        }
        self.timeline.push_back(entry);
    }

    pub(super) fn status(&self) -> NodeStatus {
        let mut links: Vec<LinkStatus> = self
            .links
            .iter()
            .map(|(id, l)| LinkStatus {
                id: *id,
                transport: l.transport(),
                interconnect: l.interconnect(),
                remote: l.remote(),
                reserved_for: self
                    .session
                    .link_reserved_for(*id)
                    .and_then(|c| self.session.client_name(c))
                    .map(str::to_string),
                data_frames_out: self.session.link_data_frames_out(*id),
            })
            .collect();
        links.sort_by_key(|l| l.id);
        let clients = self
            .session
            .client_ids()
            .filter_map(|id| {
                Some(ClientStatus {
                    name: self.session.client_name(id)?.to_string(),
                    state: self.session.port_state(id)?,
                    unacked: self.session.unacked(id),
                    interconnect: self.session.placement(id),
                    own_queue_pair: self
                        .session
                        .links()
                        .find(|l| self.session.link_reserved_for(*l) == Some(id))
                        .and_then(|l| self.session.link_interconnect(l)),
                })
            })
            .collect();
        NodeStatus {
            node_id: self.cfg.node_id.clone(),
            session: self.session.state(),
            epoch: self.session.epoch(),
            peer: self.session.peer().map(|p| p.node_id.clone()),
            verbs_unavailable: self.rails.unavailable.clone(),
            fallback: self.fallback_reason(),
            interconnects: self.interconnects(),
            links,
            clients,
            stats: self.session.stats(),
            regions: crate::status::RegionsStatus {
                open: self.regions.len(),
                bytes: self.regions.bytes_in_use(),
            },
            handshakes: self.handshake_counters.snapshot(),
            timeline: self.timeline.iter().cloned().collect(),
        }
    }

    /// Why clients are on TCP, when they are.
    fn fallback_reason(&self) -> Option<FallbackReason> {
        if let Some(why) = &self.rails.unavailable {
            return Some(FallbackReason::VerbsUnavailable(why.clone()));
        }
        let peer_rails = self
            .session
            .peer()
            .map(|p| Rails::peer_rail_count(&p.capabilities))?;
        if peer_rails == 0 {
            return Some(FallbackReason::PartnerHasNoRdma);
        }
        if !self.placement.on_tcp() {
            return None;
        }
        let any_port_up = self
            .rails
            .local
            .iter()
            .any(|r| r.active && r.rail.get() <= peer_rails);
        Some(if any_port_up {
            FallbackReason::NoUsableRail
        } else {
            FallbackReason::PortsDown
        })
    }

    fn interconnects(&self) -> Vec<InterconnectStatus> {
        let now = Instant::now();
        let stuck = self.rails.reaper.stuck(now);
        self.placement
            .loads(now)
            .into_iter()
            .map(|l| {
                let rail = self.rails.local.iter().find(|r| r.rail == l.id);
                let health = self.rails.health.get(l.id);
                InterconnectStatus {
                    id: l.id,
                    name: ic_name(Some(l.id)),
                    device: rail.map(|r| format!("{} port {}", r.device, r.port)),
                    port_active: rail.map(|r| r.active),
                    capacity_mbits_per_s: l.capacity_mbits_per_s,
                    usable: l.usable,
                    declared_mbytes_per_s: l.declared_mbytes_per_s,
                    measured_mbytes_per_s: l.measured_mbytes_per_s,
                    utilization: l.utilization,
                    clients: l
                        .clients
                        .iter()
                        .filter_map(|c| self.session.client_name(*c).map(str::to_string))
                        .collect(),
                    teardowns_stuck: rail
                        .and_then(|r| stuck.iter().find(|s| s.device == r.device))
                        .map_or(0, |s| s.count),
                    state: self.rail_state(l.id, l.usable, rail.map(|r| r.active)),
                    failures: health.failures,
                    offers: health.offers,
                }
            })
            .collect()
    }

    /// What the status says about interconnect `id`.
    fn rail_state(&self, id: InterconnectId, usable: bool, port_active: Option<bool>) -> RailState {
        if usable {
            return RailState::Up;
        }
        if port_active == Some(false) {
            return RailState::PortDown;
        }
        if id.is_tcp() {
            return RailState::Idle;
        }
        if self.rails.health.get(id).failures > 0 {
            return RailState::Failing;
        }
        let setting_up = self.rails.is_pending(id)
            || self
                .links
                .values()
                .any(|l| matches!(l, AnyLink::Rdma { rail, .. } if *rail == id));
        if setting_up {
            RailState::Connecting
        } else {
            RailState::Idle
        }
    }
}

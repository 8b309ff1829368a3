//! The manager's rail glue: offering rails (dialer), answering the partner's TRANSPORT messages,
//! running rail setup on blocking threads and taking the links it produces, reacting to device
//! events, and telling the placement policy which interconnects are usable and how much each
//! client sends.

use super::{DeviceInput, RailAction, RailDone, RailSetupError, Rails, ReapedLink, ReapedPrepared};
use crate::links::{AnyLink, RdmaSink};
use crate::manager::Manager;
use crate::timeline::{CloseCause, NodeEvent};
use bytes::Bytes;
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::control::{self, TransportMsg};
use peercm_cm_proto::placement::{InterconnectInfo, InterconnectKind};
use peercm_cm_proto::session::{ClientId, InterconnectId, LinkId, SessionState};
use peercm_cm_rdma_link::LinkCloseReason;
use peercm_verbs_shim::AsyncEvent;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Nominal capacity given to the TCP interconnect for placement (it is only used when no RDMA
/// rail is, so the figure only matters for utilization reports).
const TCP_CAPACITY_MBITS_PER_S: u32 = 10_000;

impl Manager {
    /// Tells the placement policy which interconnects have live links.
    pub(crate) fn refresh_interconnects(&mut self, now: Instant) {
        // A client's own queue pair does not make its rail usable for the others.
        let live: HashSet<InterconnectId> = self
            .links
            .iter()
            .filter(|(id, l)| l.in_session() && !self.rails.client_qps.links.contains_key(id))
            .map(|(_, l)| l.interconnect())
            .collect();
        let tcp = live.contains(&InterconnectId::TCP);
        self.placement.upsert_interconnect(
            InterconnectInfo {
                id: InterconnectId::TCP,
                kind: InterconnectKind::Tcp,
                capacity_mbits_per_s: TCP_CAPACITY_MBITS_PER_S,
                failure_domain: "tcp".into(),
                usable: tcp,
            },
            now,
        );
        for r in self.rails.local.clone() {
            self.placement.upsert_interconnect(
                InterconnectInfo {
                    id: r.rail,
                    kind: InterconnectKind::Rdma,
                    capacity_mbits_per_s: r.capacity_mbits_per_s,
                    failure_domain: r.device.clone(),
                    usable: live.contains(&r.rail),
                },
                now,
            );
        }
    }

    /// Feeds each client's transmitted bytes since the last call to the placement policy.
    pub(crate) fn feed_placement(&mut self, now: Instant) {
        let ids: Vec<ClientId> = self.session.client_ids().collect();
        for id in ids {
            let total = self.session.client_bytes_out(id);
            let fed = self.bytes_fed.entry(id).or_insert(0);
            let delta = total.saturating_sub(*fed);
            *fed = total;
            if delta > 0 {
                self.placement.record_bytes(id, delta, now);
            }
        }
    }

    /// Dialer: offers every rail that has no link yet.
    pub(crate) fn offer_rails(&mut self, now: Instant) {
        self.next_rail_round = now + Duration::from_millis(self.cfg.verbs.rail_retry_interval_ms);
        if self.role != Role::Dialer
            || self.session.state() != SessionState::Up
            || self.rails.unavailable.is_some()
        {
            return;
        }
        let peer_rails = self
            .session
            .peer()
            .map_or(0, |p| Rails::peer_rail_count(&p.capabilities));
        let linked: Vec<InterconnectId> = self
            .links
            .iter()
            .filter(|(id, _)| !self.rails.client_qps.links.contains_key(id))
            .filter_map(|(_, l)| match l {
                AnyLink::Rdma { rail, .. } => Some(*rail),
                AnyLink::Tcp(_) => None,
            })
            .collect();
        for rail in self.rails.rails_to_offer(peer_rails, &linked, now) {
            let link_id = LinkId::new(self.next_link.fetch_add(1, Ordering::Relaxed));
            match self.rails.begin_offer(rail, link_id, now) {
                Ok(job) => {
                    self.rails.health.offered(rail);
                    let tx = self.rail_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let res = job.prepare();
                        let _ = tx.send(RailDone::Prepared { rail, link_id, res });
                    });
                }
                Err(e) => tracing::warn!(rail = rail.get(), error = %e, "cannot offer rail"),
            }
        }
    }

    /// Blocking rail work finished.
    pub(crate) fn on_rail_done(&mut self, done: RailDone) {
        let now = Instant::now();
        match done {
            RailDone::Region(r) => self.on_region_registered(r),
            RailDone::Prepared { rail, link_id, res } => {
                // Guarded at once: a prepared link abandoned meanwhile is freed by the reaper.
                let reaper = self.rails.reaper.clone();
                let res = res.map(|(p, endpoint)| {
                    let device = p.device().to_string();
                    (ReapedPrepared::new(p, device, reaper), endpoint)
                });
                if let Some(msg) = self.rails.prepared(rail, link_id, res, now) {
                    if let Err(e) = self.session.send_transport(control::encode(&msg)) {
                        tracing::warn!(rail = rail.get(), error = %e, "cannot send rail offer");
                    }
                }
            }
            RailDone::ClientPrepared { link_id, res } => {
                let reaper = self.rails.reaper.clone();
                let res = res.map(|(p, endpoint)| {
                    let device = p.device().to_string();
                    (ReapedPrepared::new(p, device, reaper), endpoint)
                });
                self.client_qp_prepared(link_id, res, now);
            }
            RailDone::Connected {
                rail,
                link_id,
                res,
                reply,
                dedicated: Some(client),
            } => self.client_qp_connected(rail, link_id, res, reply, client, now),
            RailDone::Connected {
                rail,
                link_id,
                res,
                reply,
                dedicated: None,
            } => {
                let dialer = reply.is_none();
                if let Some(m) = &reply {
                    let _ = self.session.send_transport(control::encode(m));
                }
                let link = match res {
                    Ok(link) => ReapedLink::new(link, self.rails.reaper.clone()),
                    Err(e) => {
                        tracing::warn!(rail = rail.get(), error = %e, "rail setup failed");
                        if dialer {
                            self.rails.connected(rail, link_id);
                        }
                        return;
                    }
                };
                let wanted = if dialer {
                    self.rails.connected(rail, link_id) && self.session.state() == SessionState::Up
                } else {
                    self.session.state() == SessionState::Up
                };
                if !wanted {
                    drop(link); // abandoned meanwhile (session down, offer expired): reaped
                    return;
                }
                self.links.insert(
                    link_id,
                    AnyLink::Rdma {
                        link,
                        rail,
                        activated: false,
                    },
                );
                // In the session only after a round trip over it (`activation`).
                self.await_activation(link_id, now);
            }
            RailDone::Fenced { link, res } => match res {
                Ok(()) => self.note(NodeEvent::RdmaLinkFenced { link }),
                Err(error) => {
                    tracing::warn!(link = link.get(), %error, "fencing failed: link closed");
                    self.fenced.retain(|(_, l)| *l != link);
                }
            },
        }
    }

    /// A TRANSPORT message from the partner's manager.
    pub(crate) fn on_transport(&mut self, payload: Bytes) {
        let msg: TransportMsg = match control::decode("TRANSPORT", &payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "malformed TRANSPORT message ignored");
                return;
            }
        };
        if let TransportMsg::Offer { rail, .. } = &msg {
            // The dialer offers a rail it has no link on: any link we still hold there is dead.
            let rail = InterconnectId::rail(*rail);
            let stale: Vec<LinkId> = self
                .links
                .iter()
                .filter(|(id, _)| !self.rails.client_qps.links.contains_key(id))
                .filter(|(_, l)| matches!(l, AnyLink::Rdma { rail: r, .. } if *r == rail))
                .map(|(id, _)| *id)
                .collect();
            let now = Instant::now();
            for id in stale {
                let unactivated = self.links.get(&id).is_some_and(|l| !l.in_session());
                self.close_link(id, CloseCause::RailReoffered);
                if unactivated {
                    // The dialer gave up on it: its round trip never completed.
                    let reason = "re-offered before its activation round trip".to_string();
                    self.rail_attempt_failed(id, rail, reason, now);
                }
            }
        }
        if let TransportMsg::ClientOffer { client, .. } = &msg {
            // The partner offers one only when its client has none on the rail it is placed
            // on, and closes its older ones in the same round: ours are dead.
            if let Some(local) = self.session.client_by_name(client) {
                let stale: Vec<LinkId> = self
                    .rails
                    .client_qps
                    .links
                    .iter()
                    .filter(|(_, d)| d.client == local && !d.ours)
                    .map(|(l, _)| *l)
                    .collect();
                for l in stale {
                    self.rails.client_qps.links.remove(&l);
                    self.close_link(l, CloseCause::RailReoffered);
                }
            }
        }
        let id = match &msg {
            TransportMsg::Offer { .. } | TransportMsg::ClientOffer { .. } => {
                LinkId::new(self.next_link.fetch_add(1, Ordering::Relaxed))
            }
            _ => LinkId::new(0),
        };
        let sink = |link| -> Box<dyn peercm_cm_rdma_link::LinkSink> {
            Box::new(RdmaSink {
                link,
                tx: self.link_tx.clone(),
            })
        };
        let tx = self.rail_tx.clone();
        let action = match &msg {
            TransportMsg::ClientOffer {
                rail,
                attempt,
                client,
                endpoint,
            } => {
                let local = self.session.client_by_name(client);
                let max = self.cfg.verbs.max_client_qps;
                self.rails
                    .handle_client_offer(*rail, *attempt, client, local, endpoint, id, max)
            }
            _ => match self.rails.client_qp_answer(&msg, Instant::now()) {
                Some(a) => a,
                None => self.rails.handle(msg, id),
            },
        };
        match action {
            RailAction::None => {}
            RailAction::Reply(m) => {
                let _ = self.session.send_transport(control::encode(&m));
            }
            RailAction::Accept {
                rail,
                attempt,
                link_id,
                job,
                remote,
                dedicated,
            } => {
                let sink = sink(link_id);
                tokio::task::spawn_blocking(move || {
                    let (res, reply) = match job.prepare() {
                        Ok((prepared, endpoint)) => match prepared.connect(&remote, sink) {
                            Ok(link) => (
                                Ok(link),
                                TransportMsg::Accept {
                                    rail: rail.get(),
                                    attempt,
                                    endpoint,
                                },
                            ),
                            Err(error) => {
                                let e = RailSetupError::Connect { rail, error };
                                let reason = e.to_string();
                                (
                                    Err(e),
                                    TransportMsg::Refuse {
                                        rail: rail.get(),
                                        attempt,
                                        reason,
                                    },
                                )
                            }
                        },
                        Err(e) => {
                            let reason = e.to_string();
                            (
                                Err(e),
                                TransportMsg::Refuse {
                                    rail: rail.get(),
                                    attempt,
                                    reason,
                                },
                            )
                        }
                    };
                    let _ = tx.send(RailDone::Connected {
                        rail,
                        link_id,
                        res,
                        reply: Some(reply),
                        dedicated,
                    });
                });
            }
            RailAction::Connect {
                rail,
                link_id,
                prepared,
                remote,
                dedicated,
            } => {
                let sink = sink(link_id);
                tokio::task::spawn_blocking(move || {
                    let res = prepared
                        .connect(&remote, sink)
                        .map_err(|error| RailSetupError::Connect { rail, error });
                    let _ = tx.send(RailDone::Connected {
                        rail,
                        link_id,
                        res,
                        reply: None,
                        dedicated,
                    });
                });
            }
        }
    }

    /// An async event from one of our devices.
    pub(crate) fn on_device_event(&mut self, d: DeviceInput) {
        let now = Instant::now();
        let (rails, reason, up) = match d.event {
            AsyncEvent::PortError { port } => (
                self.rails.set_port_active(&d.device, port, false, None),
                Some(LinkCloseReason::PortDown),
                false,
            ),
            AsyncEvent::PortActive { port } => (
                self.rails
                    .set_port_active(&d.device, port, true, d.capacity_mbits_per_s),
                None,
                true,
            ),
            AsyncEvent::DeviceFatal => (
                self.rails.rails_of_device(&d.device),
                Some(LinkCloseReason::DeviceFatal),
                false,
            ),
            other => {
                tracing::info!(device = %d.device, event = ?other, "device event");
                return;
            }
        };
        self.note(NodeEvent::DeviceEvent {
            device: d.device.clone(),
            event: d.event,
            rails: rails.clone(),
        });
        if let Some(reason) = reason {
            for l in self.links.values() {
                if let AnyLink::Rdma { link, rail, .. } = l {
                    if rails.contains(rail) {
                        link.fail(reason.clone());
                    }
                }
            }
        }
        if up {
            // Offer the rail again at once (dialer) rather than at the next round; the port
            // changed state, so attempts that failed before are no reason to wait.
            for rail in &rails {
                self.rails.health.activated(*rail);
            }
            self.next_rail_round = now;
        }
    }
}

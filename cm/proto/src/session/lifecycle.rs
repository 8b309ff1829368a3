//! Link lifecycle: links coming up and going down, the RESET that starts an epoch, fences
//! that tell stale frames apart, the resync after a link change, the autoswitch hold, going
//! DOWN, client announcements and path (Up/Down) changes, and the timer that judges silent
//! links dead.

use super::{code_ack, LinkState, Session};
use super::{ClientEvent, ClientId, DownReason, InterconnectId, LinkId, SessionState};
use crate::auth::Role;
use crate::control::{self, NackReason, NodeInfo};
use crate::frame::{Flags, Frame, MsgType};
use crate::port::PortInput;
use bytes::Bytes;
use std::time::Instant;

impl Session {
    /// An authenticated TCP link to `peer` came up.
    pub fn handle_link_up(&mut self, link: LinkId, peer: NodeInfo, now: Instant) {
        self.handle_link_up_on(link, InterconnectId::TCP, peer, now);
    }

    /// A link to `peer` on interconnect `interconnect` came up (an RDMA queue pair set up over
    /// the bootstrap session, or a TCP connection).
    pub fn handle_link_up_on(
        &mut self,
        link: LinkId,
        interconnect: InterconnectId,
        peer: NodeInfo,
        now: Instant,
    ) {
        if self.holding_since.is_some() {
            // A switch whose reset never completed is still a switch, whoever answers.
            let same = !self.switching
                && self
                    .peer
                    .as_ref()
                    .is_some_and(|p| p.node_id == peer.node_id);
            if same {
                // The partner itself is back: resynchronise the classic way.
                self.go_down(DownReason::ConnectionLost, NackReason::ConnectionLost);
            } else {
                tracing::warn!(
                    to = %peer.node_id,
                    "switching partner: unacknowledged messages will be resent there"
                );
                self.holding_since = None;
                self.switching = true;
                self.peer = None;
            }
        }
        if let Some(old) = &self.peer {
            if old.instance != peer.instance {
                tracing::warn!(
                    old = old.instance,
                    new = peer.instance,
                    "partner {} restarted: dropping the old session",
                    peer.node_id
                );
                let old_links: Vec<LinkId> = self.links.keys().copied().collect();
                for l in old_links {
                    self.links.remove(&l);
                    self.closing.push_back(l);
                }
                self.go_down(DownReason::PeerRestarted, NackReason::PeerRestarted);
                if self.role == Role::Acceptor {
                    // The old epoch belonged to the old process's session. A restarted dialer
                    // counts from 1 again, so a RESET-REQUEST fence carrying the old number could
                    // name the new process's session and reset it right after it came up. No
                    // session of the new process is numbered 0.
                    self.epoch = 0;
                }
            }
        }
        let partner_max = peer.max_payload_bytes;
        self.peer = Some(peer);
        for c in self.clients.values_mut() {
            c.send.set_partner_max(partner_max);
        }
        self.links.insert(
            link,
            LinkState {
                last_rx: now,
                last_tx: now,
                queued_bytes: 0,
                interconnect,
                peer_epoch: None,
                reserved: None,
                data_frames_out: 0,
            },
        );
        // Tell the partner our epoch on the new link before anything else goes on it, then (when
        // up) every client, so no DATA on this link can overtake its client's announcement.
        self.fence(link);
        if self.state == SessionState::Up {
            let ids: Vec<ClientId> = self.clients.keys().copied().collect();
            for id in ids {
                if let Some(c) = self.clients.get(&id) {
                    let a = self.announce(id, c);
                    self.control_out.push_back((
                        Some(link),
                        Frame::control(MsgType::ClientUp, control::encode(&a)),
                    ));
                }
            }
        }
        if self.state == SessionState::Down {
            self.begin_reset(link);
        } else if self.state == SessionState::Up {
            self.resync_after_link_change();
        }
    }

    /// Queues a heartbeat carrying our epoch on `link`: everything we send on the link after
    /// it belongs to this epoch.
    fn fence(&mut self, link: LinkId) {
        let hb = self.heartbeat();
        self.control_out.push_back((Some(link), hb));
    }

    /// A heartbeat: our epoch in `seq`, and, from an acceptor that has no session in that
    /// epoch (it lost every link while the dialer kept one it believes in), RESET-REQUEST, so
    /// the dialer starts a reset instead of sending into a session that no longer exists.
    pub(super) fn heartbeat(&self) -> Frame {
        let lost = self.role == Role::Acceptor
            && matches!(self.state, SessionState::Down | SessionState::Resetting);
        let flags = if lost {
            Flags::RESET_REQUEST
        } else {
            Flags::empty()
        };
        Frame::new(MsgType::Heartbeat, flags, 0, self.epoch, 0, Bytes::new())
    }

    pub(super) fn fence_all(&mut self) {
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.fence(link);
        }
    }

    pub(super) fn begin_reset(&mut self, link: LinkId) {
        self.control_link = Some(link);
        self.state = SessionState::Resetting;
        if self.role == Role::Dialer {
            // Saturating: the partner's RESET may have carried u64::MAX (`epoch` adopts it), and
            // overflowing would panic (debug) or wrap below the partner's epoch so that no
            // RESET-ACK could ever match (release).
            self.epoch = self.epoch.saturating_add(1);
            self.control_out.push_back((
                Some(link),
                Frame::new(
                    MsgType::Reset,
                    Flags::empty(),
                    0,
                    self.epoch,
                    0,
                    Bytes::new(),
                ),
            ));
            // Links that survive into the new epoch may still carry the partner's frames of
            // the old one; its fences tell them apart (see `LinkState::peer_epoch`).
            self.fence_all();
        }
        self.early.clear();
    }

    /// A link was lost (closed by the peer, an IO error, or judged dead by this session).
    pub fn handle_link_down(&mut self, link: LinkId, now: Instant) {
        if self.links.remove(&link).is_none() {
            return;
        }
        if self.links.is_empty() {
            let hold = self.role == Role::Dialer
                && self.cfg.hold_on_partner_loss.is_some()
                && (self.state == SessionState::Up || self.switching);
            if hold {
                self.enter_hold(now);
            } else {
                self.go_down(DownReason::ConnectionLost, NackReason::ConnectionLost);
            }
            return;
        }
        let next = self.links.keys().next().copied();
        match self.state {
            SessionState::Up => {
                self.stats.links_lost += 1;
                if self.control_link == Some(link) {
                    // The partner may still be AWAITING-READY with our READY (and the
                    // announcements before it) lost with the link: repeat them on a survivor.
                    // An up partner ignores the repeat.
                    self.control_link = next;
                    self.announce_ready();
                }
                self.resync_after_link_change();
            }
            SessionState::Resetting | SessionState::AwaitingReady
                if self.control_link == Some(link) =>
            {
                if self.role == Role::Dialer {
                    // The reset lost its link: start it again (new epoch) on a survivor.
                    if let Some(next) = next {
                        self.control_out.clear();
                        self.begin_reset(next);
                    }
                } else {
                    // Only the dialer drives resets: it restarts this one if it still needs
                    // to. The dialer may be up already though, waiting for nothing: then our
                    // READY must not be lost with the link, so repeat it (an acceptor that
                    // fell back to RESETTING here could never come up again).
                    self.control_link = next;
                    if self.state == SessionState::AwaitingReady {
                        self.announce_ready();
                    }
                }
            }
            _ => {}
        }
    }

    /// After a link change: retransmit everything unacknowledged and re-announce acks and
    /// credit, since any of them may have died with the link.
    fn resync_after_link_change(&mut self) {
        for (id, c) in self.clients.iter_mut() {
            self.stats.replays += c.send.replay_all() as u64;
            c.recv.regrant();
            if c.port.state().is_up() {
                self.ack_due.insert(*id);
                self.flow_due.insert(*id);
                // Return codes too: an ACK carrying one may have died with the link, and the
                // partner's replay (if any) came before the code existed. Duplicates are
                // ignored by the sender.
                if let Some(peer) = self.peer_clients.get(&c.name) {
                    let delivered = c.recv.delivered();
                    for (seq, code) in c.recv.codes() {
                        let ack = code_ack(peer.id, seq, delivered, code);
                        self.control_out.push_back((None, ack));
                    }
                }
            }
        }
    }

    /// Every link is lost and autoswitch is on: keep every client's unacknowledged messages
    /// and accept new ones until a partner is connected again (see `hold_on_partner_loss`).
    fn enter_hold(&mut self, now: Instant) {
        tracing::warn!("every link to the partner lost: holding messages for a partner switch");
        if self.holding_since.is_none() {
            self.holding_since = Some(now);
        }
        self.state = SessionState::Down;
        self.control_link = None;
        self.control_out.clear();
        self.early.clear();
        self.ack_due.clear();
        self.flow_due.clear();
        self.mark_due.clear();
    }

    pub(super) fn go_down(&mut self, reason: DownReason, nack: NackReason) {
        let held = self.holding_since.take().is_some();
        let switching = std::mem::take(&mut self.switching);
        let was_up = self.state == SessionState::Up || held || switching;
        self.state = SessionState::Down;
        self.control_link = None;
        self.control_out.clear();
        self.early.clear();
        self.ack_due.clear();
        self.flow_due.clear();
        self.mark_due.clear();
        self.peer_clients.clear();
        self.peer_retired.clear();
        self.partner_table.fence_all();
        for (id, c) in self.clients.iter_mut() {
            for seq in c.send.drain_unacked() {
                self.events
                    .push_back((*id, ClientEvent::Nacked { seq, reason: nack }));
            }
            let was_port_up = c.port.state().is_up();
            let _ = c.port.apply(PortInput::PathDown);
            if was_up && was_port_up {
                self.events.push_back((*id, ClientEvent::Down { reason }));
            }
            if c.flow_on {
                c.flow_on = false;
                self.events
                    .push_back((*id, ClientEvent::FlowControl { on: false }));
            }
        }
        self.reindex_ack_all();
    }

    pub(super) fn reset_streams(&mut self) {
        self.stats.resets += 1;
        self.early.clear();
        // Whatever the partner advertised belongs to the old session: written into again only
        // once advertised anew.
        self.partner_table.fence_all();
        if self.switching {
            self.fence_regions_for_switch();
        }
        let partner_max = self.peer.as_ref().map_or(u32::MAX, |p| p.max_payload_bytes);
        for (id, c) in self.clients.iter_mut() {
            if self.switching {
                // Writes name the old partner's memory: not re-issued to the new one.
                for seq in c.send.drain_writes() {
                    self.events.push_back((
                        *id,
                        ClientEvent::Nacked {
                            seq,
                            reason: NackReason::Fenced,
                        },
                    ));
                }
                // A new partner: nothing it has seen, so everything unacknowledged goes to it,
                // renumbered for its fresh receive stream; the client's numbers stay. (Ports
                // stay up; `switching` ends with the partner's READY.) What the new partner
                // would refuse as too large is NACKed here, before the renumbering, so its
                // stream has no hole.
                for seq in c.send.drain_above(partner_max) {
                    self.events.push_back((
                        *id,
                        ClientEvent::Nacked {
                            seq,
                            reason: NackReason::TooLarge,
                        },
                    ));
                }
                self.stats.replays += c.send.rebase(0) as u64;
            } else {
                c.send.reset(0);
            }
            c.recv.reset();
        }
        self.peer_clients.clear();
        self.peer_retired.clear();
        self.reindex_ack_all();
    }

    /// Announces a client. While UP the announcement goes on every link, so on whichever link
    /// the client's first DATA travels, the announcement is ahead of it (links are FIFO).
    /// During a reset it goes on the control link, ahead of READY.
    pub(super) fn queue_client_up(&mut self, id: ClientId) {
        if let Some(c) = self.clients.get(&id) {
            let frame = Frame::control(MsgType::ClientUp, control::encode(&self.announce(id, c)));
            if self.state == SessionState::Up {
                self.queue_on_all_links(frame);
            } else {
                self.control_out.push_back((self.control_link, frame));
            }
        }
    }

    pub(super) fn queue_on_all_links(&mut self, frame: Frame) {
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            self.control_out.push_back((Some(link), frame.clone()));
        }
    }

    pub(super) fn queue_ready(&mut self) {
        self.announce_ready();
        self.state = SessionState::AwaitingReady;
    }

    /// Queues CLIENT-UP for every client, then READY, on the control link.
    fn announce_ready(&mut self) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            self.queue_client_up(id);
        }
        // The regions after their clients, before READY: the partner can write into them as
        // soon as it is up.
        self.queue_region_adverts();
        self.control_out.push_back((
            self.control_link,
            Frame::control(MsgType::Ready, Bytes::new()),
        ));
    }

    /// Re-evaluates whether a client's path is up and emits Up/Down on changes.
    pub(super) fn refresh_path(&mut self, id: ClientId) {
        if self.holding_since.is_some() || self.switching {
            return; // ports stay as they are until the switch settles
        }
        let session_up = self.state == SessionState::Up;
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let peer = self.peer_clients.get(&c.name).copied();
        let was_up = c.port.state().is_up();
        let reachable = session_up && peer.is_some();
        let input = if reachable {
            PortInput::PathUp
        } else {
            PortInput::PathDown
        };
        let _ = c.port.apply(input);
        let is_up = c.port.state().is_up();
        if let Some(p) = peer {
            c.send.on_credit(u64::from(p.window));
        }
        if is_up && !was_up {
            self.events.push_back((id, ClientEvent::Up));
        } else if was_up && !is_up {
            for seq in c.send.drain_unacked() {
                self.events.push_back((
                    id,
                    ClientEvent::Nacked {
                        seq,
                        reason: NackReason::UnknownClient,
                    },
                ));
            }
            self.events.push_back((
                id,
                ClientEvent::Down {
                    reason: DownReason::PeerClientClosed,
                },
            ));
        }
    }

    /// Timer input: judges silent links dead. Harmless when nothing is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_acks(now);
        if let (Some(since), Some(hold)) = (self.holding_since, self.cfg.hold_on_partner_loss) {
            if now.saturating_duration_since(since) >= hold {
                tracing::warn!(
                    hold_ms = hold.as_millis() as u64,
                    "no partner within the hold time: NACKing held messages"
                );
                self.go_down(DownReason::ConnectionLost, NackReason::ConnectionLost);
            }
        }
        let dead: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, l)| self.judged_silent(**id, l.last_rx, now))
            .map(|(id, _)| *id)
            .collect();
        for link in dead {
            tracing::warn!(
                link = link.get(),
                timeout_ms = self.cfg.link_timeout.as_millis() as u64,
                "link silent: closing it"
            );
            self.closing.push_back(link);
            self.handle_link_down(link, now);
        }
    }
}

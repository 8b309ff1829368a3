//! HEARTBEAT, RESET, RESET-ACK and READY: the epoch each link's partner frames belong to, and
//! the reset that takes the session from RESETTING through AWAITING-READY to UP.

use crate::auth::Role;
use crate::control::NackReason;
use crate::frame::{Flags, Frame, Header, MsgType};
use crate::session::Session;
use crate::session::{ClientEvent, ClientId, DownReason, LinkId, ProtocolViolation, SessionState};
use bytes::Bytes;

impl Session {
    /// Records the epoch the partner announced on `link` (RESET, RESET-ACK or a heartbeat).
    fn set_peer_epoch(&mut self, link: LinkId, epoch: u64) {
        if let Some(l) = self.links.get_mut(&link) {
            l.peer_epoch = Some(epoch);
        }
    }

    /// HEARTBEAT: the partner's epoch on `link` (a fence), and from an acceptor that lost the
    /// session, RESET-REQUEST.
    pub(super) fn recv_heartbeat(
        &mut self,
        link: LinkId,
        h: Header,
    ) -> Result<(), ProtocolViolation> {
        self.set_peer_epoch(link, h.seq);
        let lost_by_partner = self.role == Role::Dialer
            && h.flags.contains(Flags::RESET_REQUEST)
            && h.seq == self.epoch
            && matches!(self.state, SessionState::Up | SessionState::AwaitingReady);
        if lost_by_partner {
            // The partner lost this epoch's session (every link, on its side) while
            // we kept one: what we sent since may be gone. Start over.
            tracing::warn!(
                link = link.get(),
                epoch = h.seq,
                "partner lost the session: resetting"
            );
            self.go_down(DownReason::PeerReset, NackReason::ConnectionLost);
            self.begin_reset(link);
        }
        Ok(())
    }

    /// RESET from the dialer: adopt its epoch, start every stream over, answer RESET-ACK and
    /// READY.
    pub(super) fn recv_reset(&mut self, link: LinkId, h: Header) -> Result<(), ProtocolViolation> {
        if self.state == SessionState::Up {
            self.go_down(DownReason::PeerReset, NackReason::ConnectionLost);
        }
        // Follow the dialer's epoch, even downwards: a restarted dialer counts from 1
        // again, and a RESET-ACK carrying any other number would never match.
        self.epoch = h.seq;
        self.set_peer_epoch(link, h.seq);
        self.control_link = Some(link);
        self.reset_streams();
        self.control_out.clear();
        self.control_out.push_back((
            Some(link),
            Frame::new(
                MsgType::ResetAck,
                Flags::empty(),
                0,
                self.epoch,
                0,
                Bytes::new(),
            ),
        ));
        // The reset is adopted: the fences below must not ask for another one.
        self.state = SessionState::AwaitingReady;
        self.fence_all();
        self.queue_ready();
        Ok(())
    }

    /// RESET-ACK from the acceptor: the reset of our epoch is done; send READY.
    pub(super) fn recv_reset_ack(
        &mut self,
        link: LinkId,
        h: Header,
    ) -> Result<(), ProtocolViolation> {
        self.set_peer_epoch(link, h.seq);
        if self.state == SessionState::Resetting && h.seq == self.epoch {
            self.reset_streams();
            self.queue_ready();
        }
        Ok(())
    }

    /// READY: the partner is past the reset; the session is UP (a switch completes here), and
    /// DATA that overtook the READY is delivered.
    pub(super) fn recv_ready(&mut self) -> Result<(), ProtocolViolation> {
        if self.state == SessionState::AwaitingReady {
            self.state = SessionState::Up;
            let ids: Vec<ClientId> = self.clients.keys().copied().collect();
            if std::mem::take(&mut self.switching) {
                let node = self
                    .peer
                    .as_ref()
                    .map_or_else(String::new, |p| p.node_id.clone());
                for &id in &ids {
                    self.events.push_back((
                        id,
                        ClientEvent::PeerSwitched {
                            node: node.clone(),
                            epoch: self.epoch,
                        },
                    ));
                }
            }
            // Re-announce every client on every link before any DATA can be queued: a
            // client registered while AWAITING-READY was announced only on the control
            // link, behind READY, and its first DATA on another link would overtake
            // that. The partner is past its reset (it sent READY), so it keeps these.
            for &id in &ids {
                self.queue_client_up(id);
            }
            for id in ids {
                self.refresh_path(id);
            }
            for (_, early) in std::mem::take(&mut self.early) {
                if let Err(e) = self.recv_data(early) {
                    tracing::debug!("early DATA refused: {e}");
                }
            }
        }
        Ok(())
    }
}

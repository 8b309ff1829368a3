//! DATA and WRITE: delivery to a local client (in order, each message once; a write is placed
//! in its turn, see `region`), the piggybacked ack, DATA or WRITE that overtook READY, and
//! frames for clients that are gone or unknown.

use crate::control::{self, NackReason};
use crate::frame::{Flags, Frame, MsgType};
use crate::session::Session;
use crate::session::{ClientEvent, ClientId, ProtocolViolation, SessionState};
use crate::stream::RecvError;

use super::region::WriteAnswer;

impl Session {
    /// DATA or WRITE for a local client.
    pub(super) fn recv_data(&mut self, frame: Frame) -> Result<(), ProtocolViolation> {
        let now = self.clock;
        let h = frame.header;
        // The frame's client field carries our own number for the client.
        let id = ClientId::new(h.client);
        if self.state == SessionState::AwaitingReady {
            // The partner is up (it only sends DATA then, and the fence proved the frame is of
            // this epoch) but its READY and CLIENT-UPs, sent on the control link, have not
            // arrived yet. Dropping the frame would lose it for good (nothing replays it), so
            // keep it for when READY comes. The fresh credit bounds what may arrive.
            if let Some(c) = self.clients.get(&id) {
                let credit = c.recv.credit();
                if h.seq == 0 || h.seq > credit {
                    let err = if h.seq == 0 {
                        RecvError::ZeroSeq
                    } else {
                        RecvError::BeyondCredit { seq: h.seq, credit }
                    };
                    return Err(ProtocolViolation::Stream { client: id, err });
                }
                self.early.entry((id, h.seq)).or_insert(frame);
                return Ok(());
            }
        }
        if self.state != SessionState::Up && self.state != SessionState::AwaitingReady {
            return Ok(()); // the partner replays or NACKs it after the reset
        }
        let known = self.clients.get(&id).map(|c| c.port.state().is_up());
        if known == Some(false) {
            // The client exists but its partner namesake is gone: announcements travel on every
            // link ahead of DATA, so this was sent by a namesake incarnation that has since
            // closed (and NACKed it locally). Nothing to answer.
            self.stats.stale_frames_dropped += 1;
            tracing::debug!(
                client = id.get(),
                seq = h.seq,
                "DATA from a closed partner client dropped"
            );
            return Ok(());
        }
        if known.is_none() {
            self.stats.unknown_client_frames += 1;
            tracing::warn!(
                client = id.get(),
                seq = h.seq,
                "DATA for a client that is not registered here: NACKed"
            );
            self.control_out.push_back((
                None,
                Frame::new(
                    MsgType::Nack,
                    Flags::empty(),
                    0,
                    h.seq,
                    0,
                    control::encode_nack(NackReason::UnknownClient, id.get()),
                ),
            ));
            return Ok(());
        }
        let (outcome, piggy) = {
            let Some(c) = self.clients.get_mut(&id) else {
                return Ok(());
            };
            let outcome = if h.msg_type == MsgType::Write {
                // Malformed is the partner's violation; whether it may be placed is decided in
                // stream order, at delivery.
                super::region::decode_write(&frame.payload)?;
                c.recv.handle_write(h.seq, frame.payload)
            } else {
                c.recv
                    .handle_data(h.seq, h.flags.contains(Flags::SYNC), frame.payload)
            }
            .map_err(|err| ProtocolViolation::Stream { client: id, err })?;
            let piggy = if h.ack > 0 {
                c.send.on_cumulative_ack(h.ack)
            } else {
                Vec::new()
            };
            (outcome, piggy)
        };
        self.complete(id, piggy);
        if outcome.duplicate {
            self.stats.duplicates_dropped += 1;
        }
        if let Some((seq, code)) = outcome.reack_code {
            if let Some(peer) = self
                .clients
                .get(&id)
                .and_then(|c| self.peer_clients.get(&c.name))
            {
                self.control_out.push_back((
                    None,
                    Frame::new(
                        MsgType::Ack,
                        Flags::empty(),
                        peer.id.get(),
                        seq,
                        0,
                        control::encode_code(code),
                    ),
                ));
            }
        }
        let was_due = !self.ack_due.insert(id);
        let mut wrote = false;
        // Whether the last delivery was a write answered with its code: that ACK carries the
        // cumulative ack too, so no other ACK is due for this frame.
        let mut coded_last = false;
        // Whether every delivery was a write whose acknowledgement may wait.
        let mut deferred_only = !outcome.deliveries.is_empty();
        for d in outcome.deliveries {
            if d.write {
                wrote = true;
                let answer = self.place_write(id, d);
                coded_last = answer == WriteAnswer::Coded;
                deferred_only &= answer == WriteAnswer::Deferred;
                continue;
            }
            deferred_only = false;
            coded_last = false;
            self.stats.delivered += 1;
            self.events.push_back((
                id,
                ClientEvent::Data {
                    seq: d.seq,
                    payload: d.payload,
                    reply_needed: d.sync,
                },
            ));
        }
        if coded_last {
            self.ack_due.remove(&id);
        } else if deferred_only && !was_due {
            // Placed one-sided: the writers' queue pair told them. The cumulative ack waits
            // for a frame to carry it, or goes in a FLOW after `write_ack_delay`.
            self.ack_due.remove(&id);
            let at = now + self.cfg.write_ack_delay;
            self.mark_due.insert(id, Some(at));
        }
        if wrote {
            // Nobody takes a write: the consumed mark passes over it (credit for the writer).
            if let Some(c) = self.clients.get_mut(&id) {
                if c.recv.settle_writes().is_some() {
                    self.flow_due.insert(id);
                }
            }
        }
        Ok(())
    }
}

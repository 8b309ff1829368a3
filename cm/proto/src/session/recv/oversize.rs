//! A DATA frame above this node's `max_payload_bytes` that still arrived (the link's reader
//! skipped its payload, see [`crate::frame_reader`]): that one message is refused with a NACK
//! `TooLarge` and its place in the client's stream is filled, so the messages after it are
//! delivered; the link and every other client are unaffected.

use crate::control::{self, NackReason};
use crate::frame::{Flags, Frame, Header, MsgType};
use crate::session::Session;
use crate::session::{ClientEvent, ClientId, LinkId, ProtocolViolation, SessionState};
use std::time::Instant;

impl Session {
    /// The link's reader skipped a frame above `max_payload_bytes` and hands over its header.
    /// DATA is refused for that message alone (see the module docs). No other message type
    /// is that large from a conforming partner: an error, and the runtime closes the link.
    pub fn handle_oversize(
        &mut self,
        link: LinkId,
        header: Header,
        now: Instant,
    ) -> Result<(), ProtocolViolation> {
        let Some(l) = self.links.get_mut(&link) else {
            return Ok(()); // late input from a link already dropped
        };
        l.last_rx = now;
        let current = l.peer_epoch == Some(self.epoch);
        self.stats.frames_in += 1;
        self.stats.oversize_refused += 1;
        if header.msg_type != MsgType::Data {
            self.stats.violations += 1;
            return Err(ProtocolViolation::Oversize {
                msg_type: header.msg_type,
                len: header.len,
                max: self.cfg.max_payload_bytes,
            });
        }
        let accepting = matches!(self.state, SessionState::Up | SessionState::AwaitingReady);
        if !current || !accepting {
            return Ok(()); // of an older epoch: the partner replays or NACKs it after the reset
        }
        let id = ClientId::new(header.client);
        tracing::warn!(
            client = id.get(),
            seq = header.seq,
            len = header.len,
            max = self.cfg.max_payload_bytes,
            "message larger than max_payload_bytes refused (NACK TooLarge); the link stays"
        );
        let outcome = match self.clients.get_mut(&id) {
            Some(c) => Some(
                c.recv
                    .skip(header.seq)
                    .map_err(|err| ProtocolViolation::Stream { client: id, err })?,
            ),
            None => None,
        };
        self.control_out.push_back((
            None,
            Frame::new(
                MsgType::Nack,
                Flags::empty(),
                0,
                header.seq,
                0,
                control::encode_nack(NackReason::TooLarge, id.get()),
            ),
        ));
        let Some(outcome) = outcome else {
            return Ok(());
        };
        self.ack_due.insert(id);
        for d in outcome.deliveries {
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
        Ok(())
    }
}

//! ACK, NACK and FLOW: completions of our sends (receipt, return codes, refusals) and the
//! partner's credit; and how completions become client events.

use crate::control::{self, NackReason};
use crate::frame::{Flags, Frame, Header};
use crate::session::Session;
use crate::session::{ClientEvent, ClientId, PeerClientId, ProtocolViolation, SessionState};
use crate::stream::SendCompletion;

impl Session {
    /// ACK: a cumulative receipt ack (with the partner client's consumed mark), or the return
    /// code of one synchronous message (with the cumulative ack piggybacked).
    pub(super) fn recv_ack(&mut self, frame: Frame) -> Result<(), ProtocolViolation> {
        let h = frame.header;
        if self.state != SessionState::Up {
            return Ok(());
        }
        let id = ClientId::new(h.client);
        let completion = {
            let Some(c) = self.clients.get_mut(&id) else {
                return Ok(());
            };
            if h.flags.contains(Flags::CUMULATIVE) {
                // `seq`: received in order; `ack`: the partner client's consumed mark.
                let mut v = c.send.on_cumulative_ack(h.seq);
                v.extend(c.send.on_consumed(h.ack));
                v
            } else {
                let code = control::decode_code(&frame.payload)?;
                // The piggybacked cumulative ack releases local sends, and the return code of
                // a sync message `seq` means the partner client took every message up to it
                // (its queue is in order): that completes the async sends before it. Keep
                // those completions (dropping them lost those sends' Acked events). Not so
                // the code of a one-sided write: the partner's manager places a write at
                // delivery, whether or not its client has taken the messages before it.
                let taken = c.send.is_sync_message(h.seq);
                let mut v = c.send.on_cumulative_ack(h.ack);
                if taken {
                    v.extend(c.send.on_consumed(h.seq));
                }
                v.extend(c.send.on_code(h.seq, code));
                v
            }
        };
        self.complete(id, completion);
        Ok(())
    }

    /// NACK: the partner refused one of our messages (e.g. no such client there).
    pub(super) fn recv_nack(&mut self, frame: Frame) -> Result<(), ProtocolViolation> {
        let h = frame.header;
        let (reason, dest) = control::decode_nack(&frame.payload)?;
        let dest = PeerClientId::new(dest);
        let target = self
            .clients
            .iter()
            .find(|(_, c)| self.peer_clients.get(&c.name).is_some_and(|p| p.id == dest))
            .map(|(id, _)| *id);
        if let Some(id) = target {
            if let Some(c) = self.clients.get_mut(&id) {
                if let Some(seq) = c.send.remove(h.seq) {
                    self.events
                        .push_back((id, ClientEvent::Nacked { seq, reason }));
                }
            }
            self.reindex_ack(id);
        }
        Ok(())
    }

    /// FLOW: new credit for one of our send streams (`seq`), and the partner client's consumed
    /// mark (`ack`: the highest sequence it has taken from its queue), which completes our
    /// async sends up to it.
    pub(super) fn recv_flow(&mut self, h: Header) -> Result<(), ProtocolViolation> {
        let id = ClientId::new(h.client);
        let done = match self.clients.get_mut(&id) {
            Some(c) if self.state == SessionState::Up => {
                c.send.on_credit(h.seq);
                c.send.on_consumed(h.ack)
            }
            _ => return Ok(()),
        };
        self.complete(id, done);
        Ok(())
    }

    /// Turns send completions into client events (a late one, of a send that timed out, is
    /// only counted).
    pub(in crate::session) fn complete(&mut self, id: ClientId, done: Vec<SendCompletion>) {
        if done.is_empty() {
            return;
        }
        for d in done {
            let ev = match d {
                SendCompletion::Acked { seq, code } => ClientEvent::Acked { seq, code },
                SendCompletion::Transmitted { seq } => ClientEvent::Transmitted { seq },
                SendCompletion::Placed { seq } => {
                    self.stats.writes_placed_one_sided += 1;
                    ClientEvent::Acked { seq, code: None }
                }
                SendCompletion::TooLarge { seq } => ClientEvent::Nacked {
                    seq,
                    reason: NackReason::TooLarge,
                },
                SendCompletion::WriteRefused { seq, reason } => {
                    self.stats.writes_refused += 1;
                    ClientEvent::Nacked { seq, reason }
                }
                SendCompletion::Late => {
                    self.stats.late_completions += 1;
                    continue;
                }
            };
            self.events.push_back((id, ev));
        }
        self.reindex_ack(id);
    }
}

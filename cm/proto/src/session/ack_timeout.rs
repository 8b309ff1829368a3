//! Acknowledgement timeouts (issue 8, item 3): a client's default ([`Session::set_ack_timeout`])
//! or a send's own ([`crate::session::SendOptions`]). When a sync or async send is not
//! acknowledged in time, its client gets `Nacked { reason: Timeout }` and the send is forgotten
//! for everything but the wire (see [`crate::stream::SendStream::expire`]); a late completion
//! is dropped and counted (`late_completions`). Nothing else is disturbed: other sends, links
//! and the session carry on. Timers are IO-free: deadlines come from the `now` of
//! [`Session::send_with`] (or of the next call that carries the clock, for
//! [`Session::send`]), expire in [`Session::handle_timeout`], and are part of
//! [`Session::poll_timeout`]. The session keeps each client's earliest deadline in one ordered
//! index, so neither costs a pass over every client.

use super::{ClientEvent, ClientId, Session, SessionError};
use crate::control::NackReason;
use std::time::{Duration, Instant};

impl Session {
    /// Sets a client's default acknowledgement timeout for its later sync and async sends
    /// (`None`: wait for ever, the default). A send's own timeout overrides it.
    pub fn set_ack_timeout(
        &mut self,
        id: ClientId,
        timeout: Option<Duration>,
    ) -> Result<(), SessionError> {
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(SessionError::UnknownClient(id))?;
        c.ack_timeout = timeout;
        Ok(())
    }

    /// A client's default acknowledgement timeout.
    pub fn ack_timeout(&self, id: ClientId) -> Option<Duration> {
        self.clients.get(&id).and_then(|c| c.ack_timeout)
    }

    /// The earliest acknowledgement deadline of any client.
    pub(super) fn next_ack_deadline(&self) -> Option<Instant> {
        self.ack_index.first().map(|(d, _)| *d)
    }

    /// Arms the deadlines of sends queued without the clock ([`Session::send`]).
    pub(super) fn arm_ack_timers(&mut self, now: Instant) {
        while let Some(id) = self.unarmed.pop_first() {
            if let Some(c) = self.clients.get_mut(&id) {
                c.send.arm(now);
            }
            self.reindex_ack(id);
        }
    }

    /// NACKs (`Timeout`) every send whose deadline passed.
    pub(super) fn expire_acks(&mut self, now: Instant) {
        self.arm_ack_timers(now);
        while let Some(&(d, id)) = self.ack_index.first() {
            if d > now {
                break;
            }
            let ids = match self.clients.get_mut(&id) {
                Some(c) => c.send.expire(now),
                None => Vec::new(),
            };
            if !ids.is_empty() {
                tracing::info!(
                    client = id.get(),
                    sends = ids.len(),
                    "no acknowledgement within the ack timeout: NACKing"
                );
            }
            for seq in ids {
                self.stats.ack_timeouts += 1;
                self.events.push_back((
                    id,
                    ClientEvent::Nacked {
                        seq,
                        reason: NackReason::Timeout,
                    },
                ));
            }
            self.reindex_ack(id);
        }
    }

    /// Brings client `id`'s entry in the deadline index up to date with its stream.
    pub(super) fn reindex_ack(&mut self, id: ClientId) {
        let Some(c) = self.clients.get_mut(&id) else {
            return; // a closed client's entry went with it (`forget_ack`)
        };
        let new = c.send.next_deadline();
        let old = std::mem::replace(&mut c.indexed_deadline, new);
        if old == new {
            return;
        }
        if let Some(d) = old {
            self.ack_index.remove(&(d, id));
        }
        if let Some(d) = new {
            self.ack_index.insert((d, id));
        }
    }

    /// Drops a client's entries before its slot goes (close).
    pub(super) fn forget_ack(&mut self, id: ClientId) {
        if let Some(d) = self.clients.get(&id).and_then(|c| c.indexed_deadline) {
            self.ack_index.remove(&(d, id));
        }
        self.unarmed.remove(&id);
    }

    /// Every client's entry (after a reset, a rebase or a drain).
    pub(super) fn reindex_ack_all(&mut self) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            self.reindex_ack(id);
        }
    }
}

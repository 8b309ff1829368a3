//! The TRANSPORT offer/answer negotiation over the bootstrap session: the dialer's offers in
//! flight per rail, and what an offer, an answer or a refusal from the partner asks of the
//! manager ([`RailAction`]).

use super::{RailSetupError, Rails, ReapedPrepared, SetupJob};
use peercm_cm_proto::control::TransportMsg;
use peercm_cm_proto::session::{InterconnectId, LinkId};
use peercm_cm_rdma_link::{LocalEndpoint, PreparedLink};
use std::time::{Duration, Instant};

/// Largest serialized endpoint accepted from the partner.
const MAX_ENDPOINT_BYTES: usize = 1024;

/// A dialer's rail setup in flight.
pub(super) enum PendingState {
    /// The queue pair and rings are being created (on a blocking thread).
    Preparing,
    /// The offer went out with this attempt number.
    Offered {
        attempt: u64,
        prepared: ReapedPrepared,
    },
    /// The answer came; the queue pair is being connected (on a blocking thread).
    Connecting,
}

/// The dialer's setup of one rail: the link it will create, since when, how far it got.
pub(super) struct Pending {
    link_id: LinkId,
    since: Instant,
    state: PendingState,
}

/// What the manager should do after a TRANSPORT message.
pub(crate) enum RailAction {
    /// Send this answer to the partner.
    Reply(TransportMsg),
    /// Acceptor: prepare `job`, connect it to `remote` and answer the offer (blocking work).
    Accept {
        rail: InterconnectId,
        attempt: u64,
        link_id: LinkId,
        job: SetupJob,
        remote: LocalEndpoint,
        /// A client's own queue pair (for this local client), not a rail link.
        dedicated: Option<peercm_cm_proto::session::ClientId>,
    },
    /// Dialer: connect the prepared link to the answer (blocking work).
    Connect {
        rail: InterconnectId,
        link_id: LinkId,
        prepared: Box<PreparedLink>,
        remote: LocalEndpoint,
        /// A client's own queue pair (for this local client), not a rail link.
        dedicated: Option<peercm_cm_proto::session::ClientId>,
    },
    /// Nothing to do (logged).
    None,
}

impl Rails {
    /// Dialer: rails to offer now (local port active, partner has the rail, no link, no offer
    /// in flight). Expired offers are dropped first.
    pub fn rails_to_offer(
        &mut self,
        peer_rails: u32,
        linked: &[InterconnectId],
        now: Instant,
    ) -> Vec<InterconnectId> {
        let timeout = Duration::from_millis(self.tunables.rail_offer_timeout_ms);
        self.pending.retain(|rail, p| {
            let keep = now.saturating_duration_since(p.since) < timeout;
            if !keep {
                tracing::warn!(
                    rail = rail.get(),
                    "rail offer unanswered: abandoned, will retry"
                );
            }
            keep
        });
        self.local
            .iter()
            .filter(|r| r.active && r.rail.get() <= peer_rails)
            .filter(|r| !linked.contains(&r.rail) && !self.pending.contains_key(&r.rail))
            .filter(|r| self.health.may_offer(r.rail, now))
            .map(|r| r.rail)
            .collect()
    }

    /// Dialer: starts setting up `rail`; the returned job runs on a blocking thread and its
    /// result comes back through [`Rails::prepared`].
    pub fn begin_offer(
        &mut self,
        rail: InterconnectId,
        link_id: LinkId,
        now: Instant,
    ) -> Result<SetupJob, RailSetupError> {
        let job = self.setup_job(rail, link_id)?;
        self.pending.insert(
            rail,
            Pending {
                link_id,
                since: now,
                state: PendingState::Preparing,
            },
        );
        Ok(job)
    }

    /// Dialer: the rail's resources are ready: the offer to send, unless the setup was
    /// abandoned meanwhile (then the prepared link is dropped).
    pub fn prepared(
        &mut self,
        rail: InterconnectId,
        link_id: LinkId,
        res: Result<(ReapedPrepared, Vec<u8>), RailSetupError>,
        now: Instant,
    ) -> Option<TransportMsg> {
        let current = self
            .pending
            .get(&rail)
            .is_some_and(|p| p.link_id == link_id && matches!(p.state, PendingState::Preparing));
        if !current {
            return None;
        }
        match res {
            Ok((prepared, endpoint)) => {
                let attempt = self.next_attempt;
                self.next_attempt += 1;
                self.pending.insert(
                    rail,
                    Pending {
                        link_id,
                        since: now,
                        state: PendingState::Offered { attempt, prepared },
                    },
                );
                Some(TransportMsg::Offer {
                    rail: rail.get(),
                    attempt,
                    endpoint,
                })
            }
            Err(e) => {
                tracing::warn!(rail = rail.get(), error = %e, "cannot offer rail");
                self.pending.remove(&rail);
                None
            }
        }
    }

    /// Dialer: whether a connected link is the one the rail's setup is waiting for (it is
    /// then no longer pending).
    pub fn connected(&mut self, rail: InterconnectId, link_id: LinkId) -> bool {
        let current = self
            .pending
            .get(&rail)
            .is_some_and(|p| p.link_id == link_id && matches!(p.state, PendingState::Connecting));
        if current {
            self.pending.remove(&rail);
        }
        current
    }

    /// Handles a TRANSPORT message from the partner. `link_id` names the link an offer creates.
    pub fn handle(&mut self, msg: TransportMsg, link_id: LinkId) -> RailAction {
        match msg {
            TransportMsg::Offer {
                rail,
                attempt,
                endpoint,
            } => {
                let refuse = |e: RailSetupError| {
                    tracing::warn!(rail, error = %e, "refusing rail offer");
                    RailAction::Reply(TransportMsg::Refuse {
                        rail,
                        attempt,
                        reason: e.to_string(),
                    })
                };
                let remote = match decode_endpoint(&endpoint) {
                    Ok(e) => e,
                    Err(e) => return refuse(e),
                };
                let ic = InterconnectId::rail(rail);
                match self.setup_job(ic, link_id) {
                    Ok(job) => RailAction::Accept {
                        rail: ic,
                        attempt,
                        link_id,
                        job,
                        remote,
                        dedicated: None,
                    },
                    Err(e) => refuse(e),
                }
            }
            TransportMsg::Accept {
                rail,
                attempt,
                endpoint,
            } => {
                let rail = InterconnectId::rail(rail);
                let offered = self.pending.get(&rail).is_some_and(
                    |p| matches!(p.state, PendingState::Offered { attempt: a, .. } if a == attempt),
                );
                if !offered {
                    tracing::debug!(
                        rail = rail.get(),
                        attempt,
                        "answer to no pending offer ignored"
                    );
                    return RailAction::None;
                }
                let remote = match decode_endpoint(&endpoint) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(rail = rail.get(), error = %e, "bad rail answer");
                        self.pending.remove(&rail);
                        return RailAction::None;
                    }
                };
                let Some(p) = self.pending.get_mut(&rail) else {
                    return RailAction::None;
                };
                let PendingState::Offered { prepared, .. } =
                    std::mem::replace(&mut p.state, PendingState::Connecting)
                else {
                    return RailAction::None;
                };
                let Some(prepared) = prepared.take() else {
                    return RailAction::None;
                };
                RailAction::Connect {
                    rail,
                    link_id: p.link_id,
                    prepared,
                    remote,
                    dedicated: None,
                }
            }
            TransportMsg::Refuse {
                rail,
                attempt,
                reason,
            } => {
                let rail = InterconnectId::rail(rail);
                if self.pending.get(&rail).is_some_and(
                    |p| matches!(p.state, PendingState::Offered { attempt: a, .. } if a == attempt),
                ) {
                    self.pending.remove(&rail);
                    tracing::warn!(rail = rail.get(), %reason, "partner refused rail");
                }
                RailAction::None
            }
            // Answered by `handle_client_offer` (client_qps), which needs the session.
            TransportMsg::ClientOffer { rail, attempt, .. } => {
                RailAction::Reply(TransportMsg::Refuse {
                    rail,
                    attempt,
                    reason: "client queue pair offer not handled".into(),
                })
            }
        }
    }

    /// Whether an offer for `rail` is in flight.
    pub fn is_pending(&self, rail: InterconnectId) -> bool {
        self.pending.contains_key(&rail)
    }

    /// Forgets offers in flight (the session went down).
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }
}

pub(super) fn decode_endpoint(bytes: &[u8]) -> Result<LocalEndpoint, RailSetupError> {
    if bytes.len() > MAX_ENDPOINT_BYTES {
        return Err(RailSetupError::EndpointTooLong {
            len: bytes.len(),
            max: MAX_ENDPOINT_BYTES,
        });
    }
    match postcard::take_from_bytes::<LocalEndpoint>(bytes) {
        Ok((ep, [])) => Ok(ep),
        Ok(_) => Err(RailSetupError::EndpointTrailingBytes),
        Err(e) => Err(RailSetupError::EndpointMalformed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercm_verbs_shim::{QpEndpoint, RemoteMr};

    fn endpoint() -> LocalEndpoint {
        LocalEndpoint {
            qp: QpEndpoint {
                qpn: 0x11,
                psn: 0x1234,
                gid: [7; 16],
                mtu_bytes: 1024,
                lid: 0,
            },
            ring: RemoteMr {
                addr: 0x7f00_0000_0000,
                rkey: 0xabcd,
                len: 4 << 20,
            },
            ring_bytes: 4 << 20,
            recv_depth: 256,
            max_payload_bytes: 1 << 20,
        }
    }

    #[test]
    fn endpoints_round_trip_and_bad_bytes_are_refused_without_panic() {
        let good = postcard::to_stdvec(&endpoint()).unwrap();
        assert_eq!(decode_endpoint(&good).unwrap(), endpoint());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode_endpoint(&trailing),
            Err(RailSetupError::EndpointTrailingBytes)
        ));
        assert!(matches!(
            decode_endpoint(&vec![0u8; MAX_ENDPOINT_BYTES + 1]),
            Err(RailSetupError::EndpointTooLong { len, max: MAX_ENDPOINT_BYTES })
                if len == MAX_ENDPOINT_BYTES + 1
        ));
        // Every truncation and many mutations: an error or some endpoint, never a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for cut in 0..good.len() {
            assert!(decode_endpoint(&good[..cut]).is_err(), "truncated at {cut}");
        }
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut m = good.clone();
            let i = (x as usize) % m.len();
            m[i] ^= (x >> 32) as u8 | 1;
            let _ = decode_endpoint(&m);
        }
    }
}

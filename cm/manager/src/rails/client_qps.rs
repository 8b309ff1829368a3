//! Queue pairs of their own for clients \[CCM\]: the bookkeeping of the links set up for one
//! client's traffic, beside the rail links (one per rail) that every other client shares.
//!
//! A client asks for one (`ClientHandle::request_queue_pair`); the node whose client asked
//! prepares a queue pair on the rail the client is placed on and sends
//! `TransportMsg::ClientOffer { rail, attempt, client, endpoint }`; the partner, if it has a
//! client of that name and room under `[verbs] max_client_qps`, connects its own and answers
//! `Accept` (else `Refuse`), exactly as for a rail offer. Both sides hand the link to the
//! session after the same activation round trip as a rail link and reserve it there for their
//! client of that name (`Session::reserve_link`), so both directions of that client's traffic
//! use it. Attempt numbers are unique per node across both kinds of offer, so an answer names
//! one offer.
//!
//! What this module keeps: the clients that asked (`wanted`), the links set up this way on
//! either side (`links`), the offers in flight (`pending`, keyed by the link they will
//! create), and when a refused or failed client may be offered again (`retry_at`). The
//! manager's side (when to offer, closing a link whose client moved or let go) is in
//! `crate::manager::client_qps`.

use super::negotiation::decode_endpoint;
use super::{RailAction, RailSetupError, Rails, ReapedPrepared};
use peercm_cm_proto::control::TransportMsg;
use peercm_cm_proto::session::{ClientId, InterconnectId, LinkId};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A link set up for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dedicated {
    /// The local client it is reserved for.
    pub client: ClientId,
    /// Its rail.
    pub rail: InterconnectId,
    /// This node offered it (its client asked); otherwise the partner's did.
    pub ours: bool,
}

enum QpState {
    /// The queue pair and rings are being created (on a blocking thread).
    Preparing,
    /// The offer went out.
    Offered {
        attempt: u64,
        prepared: ReapedPrepared,
    },
    /// The answer came; the queue pair is being connected (on a blocking thread).
    Connecting,
}

struct PendingQp {
    client: ClientId,
    rail: InterconnectId,
    since: Instant,
    state: QpState,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct ClientQps {
    /// Local clients that asked for a queue pair of their own.
    pub wanted: BTreeSet<ClientId>,
    /// Links set up for one client, on either side's request.
    pub links: BTreeMap<LinkId, Dedicated>,
    pending: BTreeMap<LinkId, PendingQp>,
    /// A client whose offer was refused or failed is offered again from then on.
    pub retry_at: BTreeMap<ClientId, Instant>,
}

impl ClientQps {
    /// Links and offers in flight that count against `[verbs] max_client_qps`.
    pub fn held(&self) -> usize {
        self.links.len() + self.pending.len()
    }

    /// Whether client `id` has a link or an offer in flight on `rail`.
    pub fn has_on(&self, id: ClientId, rail: InterconnectId) -> bool {
        self.links
            .values()
            .any(|d| d.client == id && d.rail == rail && d.ours)
            || self.pending.values().any(|p| p.client == id)
    }

    /// Forgets client `id`'s offers in flight (their prepared queue pairs go to the reaper).
    pub fn drop_pending_of(&mut self, id: ClientId) {
        self.pending.retain(|_, p| p.client != id);
    }
}

impl Rails {
    /// The client an offer in flight is for.
    pub fn client_qps_pending_client(&self, link_id: LinkId) -> Option<ClientId> {
        self.client_qps.pending.get(&link_id).map(|p| p.client)
    }

    /// Starts setting up a queue pair of its own for client `client` on `rail`; the job runs
    /// on a blocking thread and comes back as `RailDone::ClientPrepared`.
    pub fn begin_client_qp(
        &mut self,
        client: ClientId,
        rail: InterconnectId,
        link_id: LinkId,
        now: Instant,
    ) -> Result<super::SetupJob, RailSetupError> {
        let job = self.setup_job(rail, link_id)?;
        self.client_qps.pending.insert(
            link_id,
            PendingQp {
                client,
                rail,
                since: now,
                state: QpState::Preparing,
            },
        );
        Ok(job)
    }

    /// The queue pair is ready: the offer to send (naming the client `name`), unless it was
    /// abandoned meanwhile (then `res` is dropped, through the reaper).
    pub fn client_qp_prepared(
        &mut self,
        link_id: LinkId,
        name: Option<&str>,
        res: Result<(ReapedPrepared, Vec<u8>), RailSetupError>,
        now: Instant,
    ) -> Option<TransportMsg> {
        let p = self.client_qps.pending.get_mut(&link_id)?;
        if !matches!(p.state, QpState::Preparing) {
            return None;
        }
        let (Some(name), Ok((prepared, endpoint))) = (
            name,
            res.map_err(|e| {
                tracing::warn!(rail = p.rail.get(), error = %e, "cannot offer a client queue pair");
            }),
        ) else {
            let client = p.client;
            self.client_qps.pending.remove(&link_id);
            self.retry_later(client, now);
            return None;
        };
        let attempt = self.next_attempt;
        self.next_attempt += 1;
        p.since = now;
        p.state = QpState::Offered { attempt, prepared };
        Some(TransportMsg::ClientOffer {
            rail: p.rail.get(),
            attempt,
            client: name.to_string(),
            endpoint,
        })
    }

    /// An `Accept` or `Refuse` for one of our client offers: what to do, or `None` if the
    /// message answers no client offer (a rail offer's answer, or a stale one).
    pub fn client_qp_answer(&mut self, msg: &TransportMsg, now: Instant) -> Option<RailAction> {
        let (attempt, endpoint) = match msg {
            TransportMsg::Accept {
                attempt, endpoint, ..
            } => (*attempt, Some(endpoint)),
            TransportMsg::Refuse { attempt, .. } => (*attempt, None),
            _ => return None,
        };
        let link_id = self.client_qps.pending.iter().find_map(|(id, p)| {
            matches!(p.state, QpState::Offered { attempt: a, .. } if a == attempt).then_some(*id)
        })?;
        let p = self.client_qps.pending.get_mut(&link_id)?;
        let (client, rail) = (p.client, p.rail);
        let remote = match endpoint.map(|e| decode_endpoint(e)) {
            Some(Ok(remote)) => remote,
            Some(Err(e)) => {
                tracing::warn!(rail = rail.get(), error = %e, "bad answer to a client queue pair");
                self.client_qps.pending.remove(&link_id);
                self.retry_later(client, now);
                return Some(RailAction::None);
            }
            None => {
                if let TransportMsg::Refuse { reason, .. } = msg {
                    tracing::warn!(rail = rail.get(), %reason, "partner refused a client queue pair");
                }
                self.client_qps.pending.remove(&link_id);
                self.retry_later(client, now);
                return Some(RailAction::None);
            }
        };
        let QpState::Offered { prepared, .. } =
            std::mem::replace(&mut p.state, QpState::Connecting)
        else {
            return Some(RailAction::None);
        };
        let prepared = prepared.take()?;
        Some(RailAction::Connect {
            rail,
            link_id,
            prepared,
            remote,
            dedicated: Some(client),
        })
    }

    /// The partner's client `name` asks for a queue pair of its own on `rail`: accept it for
    /// local client `local` (the namesake), or refuse (no such client here, no room under
    /// `max`, a bad endpoint or rail).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_client_offer(
        &mut self,
        rail: u32,
        attempt: u64,
        name: &str,
        local: Option<ClientId>,
        endpoint: &[u8],
        link_id: LinkId,
        max: usize,
    ) -> RailAction {
        let refuse = |reason: String| {
            tracing::warn!(rail, client = %name.chars().take(64).collect::<String>(), %reason, "refusing a client queue pair");
            RailAction::Reply(TransportMsg::Refuse {
                rail,
                attempt,
                reason,
            })
        };
        let Some(local) = local else {
            return refuse("no client of that name on this node".into());
        };
        if self.client_qps.held() >= max {
            return refuse(format!(
                "this node holds the most client queue pairs it may ({max}, [verbs] max_client_qps)"
            ));
        }
        let remote = match decode_endpoint(endpoint) {
            Ok(r) => r,
            Err(e) => return refuse(e.to_string()),
        };
        let ic = InterconnectId::rail(rail);
        match self.setup_job(ic, link_id) {
            Ok(job) => RailAction::Accept {
                rail: ic,
                attempt,
                link_id,
                job,
                remote,
                dedicated: Some(local),
            },
            Err(e) => refuse(e.to_string()),
        }
    }

    /// Our client queue pair `link_id` connected (or failed): its client, if the offer is
    /// still wanted; it is no longer pending either way.
    pub fn client_qp_connected(
        &mut self,
        link_id: LinkId,
        ok: bool,
        now: Instant,
    ) -> Option<ClientId> {
        let p = self.client_qps.pending.remove(&link_id)?;
        if !matches!(p.state, QpState::Connecting) {
            return None;
        }
        if !ok {
            self.retry_later(p.client, now);
            return None;
        }
        Some(p.client)
    }

    /// Drops client offers unanswered for `rail_offer_timeout_ms`.
    pub fn expire_client_qps(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.tunables.rail_offer_timeout_ms);
        let expired: Vec<(LinkId, ClientId)> = self
            .client_qps
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.since) >= timeout)
            .map(|(id, p)| (*id, p.client))
            .collect();
        for (id, client) in expired {
            tracing::warn!(
                link = id.get(),
                "client queue pair offer unanswered: abandoned"
            );
            self.client_qps.pending.remove(&id);
            self.retry_later(client, now);
        }
    }

    fn retry_later(&mut self, client: ClientId, now: Instant) {
        let wait = Duration::from_millis(self.tunables.rail_retry_interval_ms);
        self.client_qps.retry_at.insert(client, now + wait);
    }
}

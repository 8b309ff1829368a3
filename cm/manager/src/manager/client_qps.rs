//! The manager's side of client queue pairs \[CCM\] (the bookkeeping and the offer exchange are
//! in `crate::rails::client_qps`): a client's request and release, offering a queue pair on
//! the rail the client is placed on, taking the link once connected, reserving it in the
//! session once activated, and closing one whose client moved, let go or closed.

use super::Manager;
use crate::error::CmError;
use crate::links::AnyLink;
use crate::rails::client_qps::Dedicated;
use crate::rails::{RailDone, RailSetupError, ReapedLink, ReapedPrepared};
use crate::timeline::CloseCause;
use peercm_cm_proto::control::{self, TransportMsg};
use peercm_cm_proto::session::{ClientId, InterconnectId, LinkId, SessionError, SessionState};
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Manager {
    /// Client `id` asks for a queue pair of its own: it is set up on the rail the client is
    /// placed on (now if it is on one, else once it is) and follows it when it moves.
    pub(crate) fn request_queue_pair(&mut self, id: ClientId) -> Result<(), CmError> {
        let name = self
            .session
            .client_name(id)
            .ok_or(SessionError::UnknownClient(id))?
            .to_string();
        let qps = &mut self.rails.client_qps;
        if qps.wanted.contains(&id) {
            return Ok(());
        }
        let theirs = qps.links.values().filter(|d| !d.ours).count();
        let max = self.cfg.verbs.max_client_qps;
        if qps.wanted.len() + theirs >= max {
            return Err(CmError::QueuePairLimit { client: name, max });
        }
        qps.wanted.insert(id);
        qps.retry_at.remove(&id);
        tracing::info!(client = %name, "client asked for a queue pair of its own");
        self.next_rail_round = Instant::now();
        Ok(())
    }

    /// Client `id` lets its queue pair go: closed now (its traffic goes back to the rail's
    /// shared queue pair). Releasing what it does not hold is not an error.
    pub(crate) fn release_queue_pair(&mut self, id: ClientId) -> Result<(), CmError> {
        self.session
            .client_name(id)
            .ok_or(SessionError::UnknownClient(id))?;
        self.rails.client_qps.wanted.remove(&id);
        self.rails.client_qps.retry_at.remove(&id);
        self.rails.client_qps.drop_pending_of(id);
        self.close_client_qps(|d| d.client == id && d.ours);
        Ok(())
    }

    /// Client `id` was destroyed: every queue pair held for it goes.
    pub(crate) fn client_qps_of_closed_client(&mut self, id: ClientId) {
        self.rails.client_qps.wanted.remove(&id);
        self.rails.client_qps.retry_at.remove(&id);
        self.rails.client_qps.drop_pending_of(id);
        self.close_client_qps(|d| d.client == id);
    }

    fn close_client_qps(&mut self, which: impl Fn(&Dedicated) -> bool) {
        let gone: Vec<LinkId> = self
            .rails
            .client_qps
            .links
            .iter()
            .filter(|(_, d)| which(d))
            .map(|(l, _)| *l)
            .collect();
        for link in gone {
            self.rails.client_qps.links.remove(&link);
            self.close_link(link, CloseCause::ClientQpReleased);
        }
    }

    /// Every rail round: forget links that are gone, close those whose client moved, drop
    /// offers unanswered in time, and offer a queue pair for every client that wants one and
    /// has none on the rail it is placed on.
    pub(crate) fn offer_client_qps(&mut self, now: Instant) {
        let links = &self.links;
        self.rails
            .client_qps
            .links
            .retain(|l, _| links.contains_key(l));
        let wanted = self.rails.client_qps.wanted.clone();
        let placed: std::collections::BTreeMap<ClientId, Option<InterconnectId>> = wanted
            .iter()
            .map(|c| (*c, self.session.placement(*c)))
            .collect();
        self.close_client_qps(|d| {
            d.ours && placed.get(&d.client).is_none_or(|p| *p != Some(d.rail))
        });
        self.rails.expire_client_qps(now);
        if self.session.state() != SessionState::Up || self.rails.unavailable.is_some() {
            return;
        }
        let peer_rails = self
            .session
            .peer()
            .map_or(0, |p| crate::rails::Rails::peer_rail_count(&p.capabilities));
        for id in wanted {
            let Some(rail) = self.session.placement(id) else {
                continue;
            };
            if rail == InterconnectId::TCP || rail.get() > peer_rails {
                continue;
            }
            let qps = &self.rails.client_qps;
            if qps.has_on(id, rail) || qps.retry_at.get(&id).is_some_and(|t| now < *t) {
                continue;
            }
            if qps.held() >= self.cfg.verbs.max_client_qps {
                break;
            }
            let link_id = LinkId::new(self.next_link.fetch_add(1, Ordering::Relaxed));
            match self.rails.begin_client_qp(id, rail, link_id, now) {
                Ok(job) => {
                    let tx = self.rail_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let res = job.prepare();
                        let _ = tx.send(RailDone::ClientPrepared { link_id, res });
                    });
                }
                Err(e) => {
                    tracing::warn!(rail = rail.get(), error = %e, "cannot offer a client queue pair")
                }
            }
        }
    }

    /// Our client queue pair is prepared: send the offer.
    pub(crate) fn client_qp_prepared(
        &mut self,
        link_id: LinkId,
        res: Result<(ReapedPrepared, Vec<u8>), RailSetupError>,
        now: Instant,
    ) {
        let name = self
            .rails
            .client_qps_pending_client(link_id)
            .and_then(|c| self.session.client_name(c))
            .map(str::to_string);
        if let Some(msg) = self
            .rails
            .client_qp_prepared(link_id, name.as_deref(), res, now)
        {
            if let Err(e) = self.session.send_transport(control::encode(&msg)) {
                tracing::warn!(error = %e, "cannot send a client queue pair offer");
            }
        }
    }

    /// A client queue pair connected (or failed), ours (`reply` is `None`) or the partner's
    /// (`reply` is our answer): the link joins the manager's links and awaits activation like
    /// a rail link; the session reserves it once activated.
    pub(crate) fn client_qp_connected(
        &mut self,
        rail: InterconnectId,
        link_id: LinkId,
        res: Result<peercm_cm_rdma_link::RdmaLink, RailSetupError>,
        reply: Option<TransportMsg>,
        client: ClientId,
        now: Instant,
    ) {
        let ours = reply.is_none();
        if let Some(m) = &reply {
            let _ = self.session.send_transport(control::encode(m));
        }
        let wanted = if ours {
            self.rails
                .client_qp_connected(link_id, res.is_ok(), now)
                .is_some()
        } else {
            true
        };
        let link = match res {
            Ok(link) => ReapedLink::new(link, self.rails.reaper.clone()),
            Err(e) => {
                tracing::warn!(rail = rail.get(), error = %e, "client queue pair setup failed");
                return;
            }
        };
        if !wanted
            || self.session.state() != SessionState::Up
            || self.session.client_name(client).is_none()
        {
            drop(link); // abandoned meanwhile: reaped
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
        self.rails
            .client_qps
            .links
            .insert(link_id, Dedicated { client, rail, ours });
        tracing::info!(
            link = link_id.get(),
            rail = rail.get(),
            client = self.session.client_name(client).unwrap_or("?"),
            ours,
            "client queue pair connected"
        );
        self.await_activation(link_id, now);
    }

    /// A link joined the session: reserve it if it is a client's own.
    pub(crate) fn reserve_if_client_qp(&mut self, link: LinkId) {
        if let Some(d) = self.rails.client_qps.links.get(&link) {
            if let Err(e) = self.session.reserve_link(link, d.client) {
                tracing::warn!(link = link.get(), error = %e, "client queue pair not reserved");
            }
        }
    }
}

//! Rail link activation: a new RDMA link counts as up only after a round trip over it.
//!
//! A queue pair that connects proves nothing about the path: with every frame lost in one
//! direction (a black-holed cable) the dialer used to hand its new link to the session at once,
//! the link died a second later when the hardware gave up retrying, and the rail was offered
//! again, every second, building and fencing queue pairs and rings on both sides each time.
//!
//! Now, on either side, a new rail link stays outside the session until a round trip:
//!
//! 1. the dialer sends a HEARTBEAT with the `LINK_PROBE` flag on the new link;
//! 2. the acceptor answers with a `LINK_PROBE` HEARTBEAT on the same link -- which proves the
//!    dialer-to-acceptor direction, not yet the other;
//! 3. the dialer, hearing the answer, hands the link to the session (it proved both
//!    directions); the session's first frame on it reaches the acceptor, which then hands its
//!    own link over (the dialer could only send it after hearing the answer).
//!
//! Probe frames never reach the session. A link lost before activation, or not activated
//! within `rail_offer_timeout_ms`, is a failed attempt on its rail (`health`): the dialer backs
//! off before the next offer and the status shows the rail as `failing`.

use crate::links::AnyLink;
use crate::manager::Manager;
use crate::timeline::{CloseCause, NodeEvent};
use bytes::Bytes;
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::frame::{Flags, MsgType};
use peercm_cm_proto::session::{InterconnectId, LinkId};
use peercm_cm_proto::Frame;
use std::time::{Duration, Instant};

/// The probe, and its answer: a HEARTBEAT outside the session.
fn probe() -> Frame {
    Frame::new(MsgType::Heartbeat, Flags::LINK_PROBE, 0, 0, 0, Bytes::new())
}

fn is_probe(frame: &Frame) -> bool {
    frame.header.msg_type == MsgType::Heartbeat && frame.header.flags.contains(Flags::LINK_PROBE)
}

impl Manager {
    /// A new RDMA link joined the manager's links (not the session): the dialer probes it; both
    /// sides note since when it waits.
    pub(crate) fn await_activation(&mut self, link: LinkId, now: Instant) {
        self.rails.probing.insert(link, now);
        if self.role == Role::Dialer {
            if let Some(l) = self.links.get(&link) {
                if !l.send(probe(), None) {
                    tracing::debug!(link = link.get(), "probe not sent: the link is closing");
                }
            }
        }
    }

    /// A frame arrived on `link` (before the session sees it). Returns true if it was a probe,
    /// consumed here. Otherwise an RDMA link that is not yet in the session joins it (the
    /// acceptor, on the session's first frame).
    pub(crate) fn rdma_link_activation(
        &mut self,
        link: LinkId,
        frame: &Frame,
        now: Instant,
    ) -> bool {
        let Some(AnyLink::Rdma {
            activated, link: l, ..
        }) = self.links.get(&link)
        else {
            return false;
        };
        if !is_probe(frame) {
            if !*activated {
                self.activate_rdma_link(link, now);
            }
            return false;
        }
        if *activated {
            return true; // a late duplicate
        }
        match self.role {
            Role::Acceptor => {
                // Answer over the same link; activation waits for the session's first frame.
                if !l.get().is_some_and(|l| l.send(probe(), None)) {
                    tracing::debug!(link = link.get(), "probe answer not sent: link closing");
                }
            }
            Role::Dialer => self.activate_rdma_link(link, now),
        }
        true
    }

    /// An RDMA link joins the session: its round trip is done.
    pub(crate) fn activate_rdma_link(&mut self, link: LinkId, now: Instant) {
        let Some(AnyLink::Rdma {
            rail, activated, ..
        }) = self.links.get_mut(&link)
        else {
            return;
        };
        if *activated {
            return;
        }
        *activated = true;
        let rail = *rail;
        self.rails.probing.remove(&link);
        self.rails.health.activated(rail);
        if let Some(peer) = self.session.peer().cloned() {
            self.session.handle_link_up_on(link, rail, peer, now);
            self.reserve_if_client_qp(link);
            self.note(NodeEvent::RdmaLinkUp { link, rail });
            self.refresh_interconnects(now);
        }
    }

    /// A link attempt on `rail` failed (lost or unanswered before activation): back off.
    pub(crate) fn rail_attempt_failed(
        &mut self,
        link: LinkId,
        rail: InterconnectId,
        reason: String,
        now: Instant,
    ) {
        self.rails.probing.remove(&link);
        let v = &self.cfg.verbs;
        let delay = self.rails.health.failed(
            rail,
            reason.clone(),
            now,
            Duration::from_millis(v.rail_retry_interval_ms),
            Duration::from_millis(v.rail_retry_max_ms),
        );
        let failures = self.rails.health.get(rail).failures;
        tracing::warn!(
            rail = rail.get(),
            link = link.get(),
            failures,
            retry_in_ms = delay.as_millis() as u64,
            %reason,
            "rail link failed before its activation round trip"
        );
        self.note(NodeEvent::RailAttemptFailed {
            rail,
            failures,
            retry_in_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            reason,
        });
    }

    /// Closes RDMA links still waiting for their round trip after `rail_offer_timeout_ms`.
    pub(crate) fn expire_activations(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.cfg.verbs.rail_offer_timeout_ms);
        let expired: Vec<LinkId> = self
            .rails
            .probing
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= timeout)
            .map(|(l, _)| *l)
            .collect();
        for link in expired {
            let rail = match self.links.get(&link) {
                Some(AnyLink::Rdma { rail, .. }) => *rail,
                _ => {
                    self.rails.probing.remove(&link);
                    continue;
                }
            };
            self.close_link(link, CloseCause::NotActivated);
            self.rail_attempt_failed(
                link,
                rail,
                format!("no activation round trip within {} ms", timeout.as_millis()),
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_a_link_probe_heartbeat_and_plain_heartbeats_are_not() {
        assert!(is_probe(&probe()));
        let hb = Frame::new(MsgType::Heartbeat, Flags::empty(), 0, 7, 0, Bytes::new());
        assert!(!is_probe(&hb));
        let mut buf = bytes::BytesMut::new();
        probe().encode(&mut buf);
        let d = peercm_cm_proto::frame::FrameDecoder::new(1024);
        let back = d.decode(&mut buf).unwrap().unwrap();
        assert!(is_probe(&back), "the flag survives the wire");
    }
}

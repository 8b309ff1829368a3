//! The dialer: dialing the partner (the current entry of the switch order) with exponential
//! backoff, and turning a handshaken connection (dialed, or accepted by `listener`) into a
//! session link.

use super::Manager;
use crate::links::{AnyLink, TcpSink};
use crate::rails::Rails;
use crate::timeline::NodeEvent;
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::control::NodeInfo;
use peercm_cm_proto::session::LinkId;
use peercm_fallback_tcp::handshake::FramedLink;
use peercm_fallback_tcp::{spawn_link, HandshakeFailure};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::TcpStream;
use tracing::Instrument;

/// A link produced by the dialer or the listener, after a successful handshake.
pub(crate) enum NewLink {
    /// A dial to the partner address at this index of the switch order finished.
    Dialed(usize, Result<(FramedLink, NodeInfo), DialError>),
    /// An inbound connection completed the handshake.
    Accepted(FramedLink, NodeInfo),
}

/// Why a dial to the partner failed.
#[derive(Debug, Error)]
pub(crate) enum DialError {
    /// The TCP connection failed.
    #[error("connect to {addr}: {error}")]
    Connect {
        /// The partner address.
        addr: SocketAddr,
        /// The OS error (part of the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// The TCP connection did not complete within the handshake timeout.
    #[error("connect to {addr}: timed out")]
    ConnectTimeout {
        /// The partner address.
        addr: SocketAddr,
    },
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeFailure),
}

impl Manager {
    pub(super) fn want_links(&self) -> u32 {
        self.cfg.peer.as_ref().map_or(0, |p| p.connections)
    }

    pub(super) fn tcp_links(&self) -> u32 {
        self.links
            .values()
            .filter(|l| matches!(l, AnyLink::Tcp(_)))
            .count() as u32
    }

    pub(super) fn maybe_dial(&mut self, now: Instant) {
        let Some(peer) = self.cfg.peer.clone() else {
            return;
        };
        while self.tcp_links() + self.dialing < self.want_links() && now >= self.next_dial_at {
            self.dialing += 1;
            let mut hs = self.handshake.clone();
            hs.handshake.node = self.node_info.borrow().clone();
            let new_tx = self.new_tx.clone();
            let addrs = peer.addresses();
            let target = self.peer_index % addrs.len().max(1);
            let addr = addrs.get(target).copied().unwrap_or(peer.address);
            tokio::spawn(
                async move {
                    let res = match tokio::time::timeout(hs.timeout, TcpStream::connect(addr)).await
                    {
                        Ok(Ok(stream)) => peercm_fallback_tcp::dial(stream, &hs)
                            .await
                            .map_err(DialError::from),
                        Ok(Err(error)) => Err(DialError::Connect { addr, error }),
                        Err(_) => Err(DialError::ConnectTimeout { addr }),
                    };
                    let _ = new_tx.send(NewLink::Dialed(target, res)).await;
                }
                .in_current_span(),
            );
        }
    }

    pub(super) fn on_new_link(&mut self, new: NewLink) {
        let (framed, peer, dialed) = match new {
            NewLink::Dialed(target, _) if target != self.peer_index => {
                // A dial to the partner we switched away from (no longer counted): drop it.
                return;
            }
            NewLink::Dialed(_, Ok((f, p))) => {
                self.dialing = self.dialing.saturating_sub(1);
                self.backoff = Duration::from_millis(self.cfg.session.reconnect_backoff_min_ms);
                (f, p, true)
            }
            NewLink::Dialed(_, Err(e)) => {
                self.dialing = self.dialing.saturating_sub(1);
                tracing::warn!(error = %e, retry_in_ms = self.backoff.as_millis() as u64, "dial failed");
                self.next_dial_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(Duration::from_millis(
                    self.cfg.session.reconnect_backoff_max_ms,
                ));
                return;
            }
            NewLink::Accepted(f, p) => (f, p, false),
        };
        if !dialed && self.role == Role::Dialer {
            tracing::warn!(peer = %peer.node_id, "this node dials its partner; refusing an inbound session link");
            return;
        }
        if let Some(current) = self.session.peer() {
            if current.node_id != peer.node_id && !self.links.is_empty() {
                tracing::warn!(
                    peer = %peer.node_id,
                    partner = %current.node_id,
                    "already partnered with another node; refusing link"
                );
                return;
            }
        }
        let id = LinkId::new(self.next_link.fetch_add(1, Ordering::Relaxed));
        let sink = TcpSink {
            link: id,
            tx: self.link_tx.clone(),
            #[cfg(feature = "fault-injection")]
            held: self.readers_held_tx.subscribe(),
        };
        let handle = spawn_link(framed, id, sink);
        self.note(NodeEvent::TcpLinkUp {
            link: id,
            dialed,
            remote: handle.remote.clone(),
            peer: peer.node_id.clone(),
        });
        let peer_rails = Rails::peer_rail_count(&peer.capabilities);
        self.links.insert(id, AnyLink::Tcp(handle));
        self.session.handle_link_up(id, peer, Instant::now());
        if peer_rails == 0 && self.rails.unavailable.is_none() {
            self.note(NodeEvent::PartnerHasNoRdma);
        }
        self.refresh_interconnects(Instant::now());
    }
}

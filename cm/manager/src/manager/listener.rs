//! The listener: accepts inbound TCP connections and runs their handshakes, a bounded number at
//! a time (issue 8, item 5).
//!
//! Until a peer has authenticated it costs this node memory and a task, so the handshakes in
//! progress are capped overall (`session.max_pending_handshakes`) and per source IP address
//! (`session.max_pending_handshakes_per_source`). A connection over either cap is closed at once,
//! before a byte is read, and counted; one that stays within them has `handshake_timeout_ms` to
//! finish and may send frames of at most 64 KiB meanwhile (see `peercm_fallback_tcp::handshake`).
//! Every outcome is counted in [`HandshakeStats`] (`peercm status`: `handshakes`).

use super::dialer::NewLink;
use super::Manager;
use peercm_cm_proto::handshake::HandshakeError;
use peercm_fallback_tcp::HandshakeFailure;
use serde::Serialize;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
#[cfg(feature = "fault-injection")]
use std::time::Instant;
use tokio::net::TcpListener;
use tracing::Instrument;

/// What the listener did with inbound connections since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeStats {
    /// Handshakes in progress now.
    pub pending: u64,
    /// Handshakes completed (the peer proved it holds the secret).
    pub accepted: u64,
    /// Connections closed unread: `max_pending_handshakes` were already in progress.
    pub refused_busy: u64,
    /// Connections closed unread: `max_pending_handshakes_per_source` were already in progress
    /// from the same IP address.
    pub refused_source_busy: u64,
    /// Handshakes refused for a wrong cluster id or a wrong secret.
    pub auth_failed: u64,
    /// Handshakes that failed otherwise (bad frames, another protocol version, a closed socket).
    pub failed: u64,
    /// Handshakes that did not finish within `handshake_timeout_ms`.
    pub timed_out: u64,
}

/// The listener's counters, shared with the manager's status snapshot.
#[derive(Debug, Default)]
pub(crate) struct HandshakeCounters {
    accepted: AtomicU64,
    refused_busy: AtomicU64,
    refused_source_busy: AtomicU64,
    auth_failed: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    pending: AtomicU64,
}

impl HandshakeCounters {
    pub(crate) fn snapshot(&self) -> HandshakeStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HandshakeStats {
            pending: get(&self.pending),
            accepted: get(&self.accepted),
            refused_busy: get(&self.refused_busy),
            refused_source_busy: get(&self.refused_source_busy),
            auth_failed: get(&self.auth_failed),
            failed: get(&self.failed),
            timed_out: get(&self.timed_out),
        }
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn outcome(&self, r: &Result<(), HandshakeFailure>) {
        match r {
            Ok(()) => Self::bump(&self.accepted),
            Err(HandshakeFailure::Timeout(_)) => Self::bump(&self.timed_out),
            Err(HandshakeFailure::Protocol(
                HandshakeError::AuthFailed | HandshakeError::WrongCluster { .. },
            )) => Self::bump(&self.auth_failed),
            Err(_) => Self::bump(&self.failed),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The overall cap is reached.
    Busy,
    /// The cap for this source address is reached.
    SourceBusy,
}

/// Handshakes in progress, overall and per source address, against their caps.
#[derive(Debug)]
struct Admission {
    max_pending: usize,
    max_per_source: usize,
    pending: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl Admission {
    fn new(max_pending: usize, max_per_source: usize) -> Self {
        Admission {
            max_pending,
            max_per_source,
            pending: 0,
            per_source: HashMap::new(),
        }
    }

    fn admit(&mut self, ip: IpAddr) -> Result<(), Refusal> {
        if self.pending >= self.max_pending {
            return Err(Refusal::Busy);
        }
        let n = self.per_source.entry(ip).or_insert(0);
        if *n >= self.max_per_source {
            return Err(Refusal::SourceBusy);
        }
        *n += 1;
        self.pending += 1;
        Ok(())
    }

    fn release(&mut self, ip: IpAddr) {
        self.pending = self.pending.saturating_sub(1);
        if let Some(n) = self.per_source.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }
}

/// One admitted handshake's slot, given back when the handshake ends however it ends (a panic
/// or the listener's shutdown included).
struct Slot {
    admission: Arc<Mutex<Admission>>,
    counters: Arc<HandshakeCounters>,
    ip: IpAddr,
}

impl Slot {
    fn take(
        admission: &Arc<Mutex<Admission>>,
        counters: &Arc<HandshakeCounters>,
        ip: IpAddr,
    ) -> Result<Slot, Refusal> {
        let mut a = admission.lock().unwrap_or_else(|p| p.into_inner());
        a.admit(ip)?;
        counters.pending.store(a.pending as u64, Ordering::Relaxed);
        Ok(Slot {
            admission: admission.clone(),
            counters: counters.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut a = self.admission.lock().unwrap_or_else(|p| p.into_inner());
        a.release(self.ip);
        self.counters
            .pending
            .store(a.pending as u64, Ordering::Relaxed);
    }
}

impl Manager {
    pub(super) fn spawn_listener(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let new_tx = self.new_tx.clone();
        let base = self.handshake.clone();
        let info = self.node_info.subscribe();
        let counters = self.handshake_counters.clone();
        let admission = Arc::new(Mutex::new(Admission::new(
            self.cfg.session.max_pending_handshakes,
            self.cfg.session.max_pending_handshakes_per_source,
        )));
        #[cfg(feature = "fault-injection")]
        let frozen = self.frozen_tx.subscribe();
        tokio::spawn(
            async move {
                let mut handshakes = tokio::task::JoinSet::new();
                loop {
                    while handshakes.try_join_next().is_some() {}
                    let (stream, from) = match listener.accept().await {
                        Ok(x) => x,
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    #[cfg(feature = "fault-injection")]
                    let hung = *frozen.borrow();
                    #[cfg(feature = "fault-injection")]
                    if let Some(until) = hung.filter(|u| *u > Instant::now()) {
                        // Fault injection (a hung process): the connection waits unanswered.
                        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
                    }
                    let slot = match Slot::take(&admission, &counters, from.ip()) {
                        Ok(slot) => slot,
                        Err(refusal) => {
                            let (counter, cap) = match refusal {
                                Refusal::Busy => (&counters.refused_busy, "max_pending_handshakes"),
                                Refusal::SourceBusy => (
                                    &counters.refused_source_busy,
                                    "max_pending_handshakes_per_source",
                                ),
                            };
                            HandshakeCounters::bump(counter);
                            tracing::debug!(%from, cap, "refused inbound connection: too many handshakes in progress");
                            drop(stream);
                            continue;
                        }
                    };
                    let mut hs = base.clone();
                    hs.handshake.node = info.borrow().clone();
                    let new_tx = new_tx.clone();
                    let counters = counters.clone();
                    handshakes.spawn(
                        async move {
                            let result = peercm_fallback_tcp::accept(stream, &hs).await;
                            drop(slot);
                            match result {
                                Ok((framed, peer)) => {
                                    counters.outcome(&Ok(()));
                                    let _ = new_tx.send(NewLink::Accepted(framed, peer)).await;
                                }
                                Err(e) => {
                                    tracing::warn!(%from, error = %e, "refused inbound connection");
                                    counters.outcome(&Err(e));
                                }
                            }
                        }
                        .in_current_span(),
                    );
                }
            }
            .in_current_span(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn caps_overall_and_per_source_and_releases() {
        let mut a = Admission::new(3, 2);
        assert_eq!(a.admit(ip(1)), Ok(()));
        assert_eq!(a.admit(ip(1)), Ok(()));
        assert_eq!(a.admit(ip(1)), Err(Refusal::SourceBusy));
        assert_eq!(a.admit(ip(2)), Ok(()));
        assert_eq!(a.admit(ip(3)), Err(Refusal::Busy));
        a.release(ip(1));
        assert_eq!(a.admit(ip(3)), Ok(()));
        for _ in 0..3 {
            a.release(ip(1));
            a.release(ip(2));
            a.release(ip(3));
        }
        assert_eq!(a.pending, 0);
        assert!(a.per_source.is_empty(), "{:?}", a.per_source);
    }

    #[test]
    fn a_slot_is_given_back_when_dropped() {
        let adm = Arc::new(Mutex::new(Admission::new(1, 1)));
        let counters = Arc::new(HandshakeCounters::default());
        let slot = Slot::take(&adm, &counters, ip(1)).unwrap();
        assert_eq!(counters.snapshot().pending, 1);
        assert!(Slot::take(&adm, &counters, ip(2)).is_err());
        drop(slot);
        assert_eq!(counters.snapshot().pending, 0);
        assert!(Slot::take(&adm, &counters, ip(2)).is_ok());
    }
}

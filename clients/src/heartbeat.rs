//! The heartbeat client: beats to the partner at a fixed interval (async send model) and tracks
//! when the partner was last heard, so a failover monitor can ask "is my partner alive?".

use bytes::Bytes;
use peercm_cm_manager::{ClientEvent, ClientHandle, CmError};
use std::time::{Duration, Instant};

/// Counters and liveness of one heartbeat client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartbeatStats {
    /// Beats sent.
    pub sent: u64,
    /// Beats that failed fast because the connection was down.
    pub skipped: u64,
    /// Beats received from the partner.
    pub received: u64,
    /// Out-of-order beats seen (must stay 0: streams are ordered).
    pub out_of_order: u64,
}

/// A heartbeat client.
#[derive(Debug)]
pub struct Heartbeat {
    handle: ClientHandle,
    interval: Duration,
    counter: u64,
    last_heard: Option<Instant>,
    last_partner_counter: u64,
    stats: HeartbeatStats,
}

impl Heartbeat {
    /// Wraps a registered, connected client.
    pub fn new(handle: ClientHandle, interval: Duration) -> Self {
        Heartbeat {
            handle,
            interval,
            counter: 0,
            last_heard: None,
            last_partner_counter: 0,
            stats: HeartbeatStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> HeartbeatStats {
        self.stats
    }

    /// Whether the partner was heard within `timeout` of `now`.
    pub fn partner_alive(&self, now: Instant, timeout: Duration) -> bool {
        self.last_heard
            .is_some_and(|t| now.saturating_duration_since(t) <= timeout)
    }

    fn on_event(&mut self, ev: ClientEvent) {
        if let ClientEvent::Data { payload, .. } = ev {
            self.stats.received += 1;
            self.last_heard = Some(Instant::now());
            if payload.len() == 8 {
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload);
                let c = u64::from_be_bytes(b);
                if c <= self.last_partner_counter {
                    self.stats.out_of_order += 1;
                }
                self.last_partner_counter = c;
            }
        }
    }

    /// Beats every interval and listens, until `stop` resolves.
    pub async fn run_until(
        &mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), CmError> {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                _ = tick.tick() => {
                    self.counter += 1;
                    match self.handle.send(Bytes::copy_from_slice(&self.counter.to_be_bytes())).await {
                        Ok(_) => self.stats.sent += 1,
                        Err(CmError::Session(_)) => self.stats.skipped += 1,
                        Err(e) => return Err(e),
                    }
                }
                ev = self.handle.next_event() => match ev {
                    Some(ev) => self.on_event(ev),
                    None => return Ok(()),
                },
            }
        }
    }
}

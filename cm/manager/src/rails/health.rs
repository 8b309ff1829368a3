//! Rail health: how a rail's link attempts went, when the dialer may offer it again, and the
//! state the status shows for it.
//!
//! A rail link that is lost before its activation round trip (`activation`) is a **failed
//! attempt**; so is a probe that goes unanswered. After `n` failed attempts in a row the dialer
//! offers the rail again only after [`backoff`]: `rail_retry_interval_ms × 2^(n-1)`, capped at
//! `rail_retry_max_ms`, times a random factor in [0.5, 1.0) (jitter, so both rails of a pair,
//! or many nodes, do not retry in step). A successful activation clears the count. A black-holed
//! rail (frames lost in one direction) therefore costs a handful of attempts a minute instead of
//! one a second, and the status shows it as `failing`, never as linked. A PORT_ACTIVE event
//! clears the record too: the port changed state, so the rail is offered at once.

use peercm_cm_proto::session::InterconnectId;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The delay before the next offer after `failures` failed attempts in a row (≥ 1):
/// `interval × 2^(failures-1)` capped at `max`, times `0.5 + draw / 2` with `draw` in [0, 1).
pub fn backoff(interval: Duration, max: Duration, failures: u32, draw: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let full = interval.saturating_mul(1 << exp).min(max.max(interval));
    full.mul_f64(0.5 + draw.clamp(0.0, 1.0) / 2.0)
}

/// One rail's record.
#[derive(Debug, Clone, Default)]
pub(crate) struct RailHealth {
    /// Failed attempts in a row.
    pub failures: u32,
    /// No offer before then.
    pub retry_at: Option<Instant>,
    /// Offers made (dialer), for the status.
    pub offers: u64,
    /// Why the last attempt failed.
    pub last_failure: Option<String>,
}

/// Every rail's record.
#[derive(Debug, Default)]
pub(crate) struct Health {
    rails: BTreeMap<InterconnectId, RailHealth>,
}

impl Health {
    /// The rail's record (a default one if it has none yet).
    pub fn get(&self, rail: InterconnectId) -> RailHealth {
        self.rails.get(&rail).cloned().unwrap_or_default()
    }

    /// Whether the dialer may offer `rail` now.
    pub fn may_offer(&self, rail: InterconnectId, now: Instant) -> bool {
        self.rails
            .get(&rail)
            .and_then(|h| h.retry_at)
            .is_none_or(|at| now >= at)
    }

    /// The dialer offers `rail`.
    pub fn offered(&mut self, rail: InterconnectId) {
        self.rails.entry(rail).or_default().offers += 1;
    }

    /// A link attempt on `rail` failed; returns the delay before the next offer.
    pub fn failed(
        &mut self,
        rail: InterconnectId,
        why: String,
        now: Instant,
        interval: Duration,
        max: Duration,
    ) -> Duration {
        let h = self.rails.entry(rail).or_default();
        h.failures = h.failures.saturating_add(1);
        let delay = backoff(interval, max, h.failures, rand::random::<f64>());
        h.retry_at = Some(now + delay);
        h.last_failure = Some(why);
        delay
    }

    /// A link on `rail` completed its activation round trip, or its port came back
    /// (PORT_ACTIVE): the failures are forgotten.
    pub fn activated(&mut self, rail: InterconnectId) {
        let h = self.rails.entry(rail).or_default();
        h.failures = 0;
        h.retry_at = None;
        h.last_failure = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_lower_half() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(S, max, 1, 0.999_999).as_millis(), 999);
        assert_eq!(backoff(S, max, 1, 0.0), S / 2);
        assert_eq!(backoff(S, max, 2, 0.0), S);
        assert_eq!(backoff(S, max, 3, 0.0), 2 * S);
        assert_eq!(
            backoff(S, max, 6, 0.0),
            15 * S,
            "capped at 30 s before jitter"
        );
        assert_eq!(backoff(S, max, 1_000, 0.0), 15 * S, "no overflow");
        assert_eq!(
            backoff(S, Duration::ZERO, 4, 0.0),
            S / 2,
            "the cap is at least the interval"
        );
    }

    #[test]
    fn failures_back_off_and_an_activation_clears_them() {
        let mut h = Health::default();
        let rail = InterconnectId::rail(1);
        let t0 = Instant::now();
        assert!(h.may_offer(rail, t0));
        let mut total = Duration::ZERO;
        for n in 1..=5u32 {
            let d = h.failed(rail, "lost".into(), t0, S, 30 * S);
            assert!(
                d >= S * (1 << (n - 1)) / 2 && d < S * (1 << (n - 1)),
                "{n}: {d:?}"
            );
            total += d;
            assert!(!h.may_offer(rail, t0));
            assert!(h.may_offer(rail, t0 + d));
        }
        // Five failures in a row cost at least 0.5 + 1 + 2 + 4 + 8 = 15.5 s of waiting, where
        // a fixed 1 s retry would have made 15 more attempts.
        assert!(total >= Duration::from_millis(15_500));
        assert_eq!(h.get(rail).failures, 5);
        h.activated(rail);
        assert!(h.may_offer(rail, t0));
        assert_eq!(h.get(rail).failures, 0);
        assert!(h.get(rail).retry_at.is_none());
    }
}

//! Measured rates (rule 2): an exponentially decaying average of the bytes each client sent,
//! with half-life `rate_half_life`.

use std::time::Instant;

use super::{Client, Placement, MIN_DURATION};
use crate::session::ClientId;

impl Placement {
    /// Reports `bytes` sent by a client up to `now`, feeding its measured rate: an exponentially
    /// decaying average (half-life `rate_half_life`) in which each report adds
    /// `bytes x ln 2 / half_life` bytes/s, so a steady stream of R bytes/s converges to R.
    /// Report at least every `rebalance_interval` for a smooth estimate. Unknown clients are
    /// ignored.
    pub fn record_bytes(&mut self, client: ClientId, bytes: u64, now: Instant) {
        let half_life = self.half_life_secs();
        if let Some(c) = self.clients.get_mut(&client) {
            let decayed = decayed_rate(c, now, half_life);
            // u64 -> f64 loses precision only above 2^53 bytes, irrelevant for a rate.
            let bytes = bytes as f64;
            c.rate = decayed + bytes * std::f64::consts::LN_2 / half_life;
            c.rate_at = Some(c.rate_at.map_or(now, |t| t.max(now)));
        }
    }

    pub(super) fn half_life_secs(&self) -> f64 {
        self.cfg.rate_half_life.max(MIN_DURATION).as_secs_f64()
    }
}

/// A client's smoothed rate in bytes/s as of `now` (decayed since the last report).
pub(super) fn decayed_rate(c: &Client, now: Instant, half_life_secs: f64) -> f64 {
    match c.rate_at {
        Some(t) => {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            c.rate * 0.5f64.powf(dt / half_life_secs)
        }
        None => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{PlacementConfig, BYTES_PER_MB};
    use crate::session::{ClientId, LatencyClass};
    use std::time::Duration;

    #[test]
    fn placement_rate_ewma_converges_and_decays() {
        let mut p = Placement::new(PlacementConfig::default());
        let t0 = Instant::now();
        let c1 = ClientId::new(1);
        p.add_client(c1, 0, LatencyClass::Bulk, t0);
        let mut now = t0;
        // 800 MB/s reported every 250 ms for 10 s.
        for _ in 0..40 {
            now += Duration::from_millis(250);
            p.record_bytes(c1, 200_000_000, now);
        }
        let c = &p.clients[&c1];
        let rate = decayed_rate(c, now, 1.0) / BYTES_PER_MB;
        assert!((rate - 800.0).abs() < 800.0 * 0.12, "{rate}");
        // Silence for one half-life halves it; for a minute makes it negligible.
        let half = decayed_rate(c, now + Duration::from_secs(1), 1.0) / BYTES_PER_MB;
        assert!((half - rate / 2.0).abs() < 1e-6);
        assert!(decayed_rate(c, now + Duration::from_secs(60), 1.0) < 1.0);
        // Time going backwards does not panic nor grow the rate.
        assert_eq!(decayed_rate(c, t0, 1.0), c.rate);
    }
}

//! Independent observers on the leader's and receivers' VMs: [`PortWatch`] sees the HCAs'
//! async events through its own device contexts (fault timings on the test's clock, not
//! inferred from the manager's log); [`StallProbe`] measures how long a node's manager task
//! went without answering.

use super::args::Hca;
use super::devices::gid_table;
use super::{lock, ms, since};
use peercm_cm_manager::Node;
use peercm_verbs_shim::api::Provider;
use peercm_verbs_shim::real::RealProvider;
use peercm_verbs_shim::types::AsyncEvent;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An async event as the observer saw it: when, on which device, what, and the device's GID
/// table read right after.
type SeenEvent = (Instant, String, AsyncEvent, String);

/// Watches the HCAs' async events from threads of its own.
pub struct PortWatch {
    events: Arc<Mutex<Vec<SeenEvent>>>,
    stop: Arc<AtomicBool>,
}

impl PortWatch {
    pub fn start(hcas: &[Hca]) -> Result<PortWatch, String> {
        let p = RealProvider::load().map_err(|e| format!("event observer: {e}"))?;
        let events: Arc<Mutex<Vec<SeenEvent>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        for h in hcas {
            let dev = p
                .open(&h.device)
                .map_err(|e| format!("event observer: opening {}: {e}", h.device))?;
            let (events, stop, name) = (events.clone(), stop.clone(), h.device.clone());
            std::thread::Builder::new()
                .name(format!("lane-events-{name}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match dev.next_async_event(Duration::from_millis(100)) {
                            Ok(Some(ev)) => {
                                let at = Instant::now();
                                // The GID table as the event arrives: is the RoCE v2 GID there?
                                let gids = gid_table(&name);
                                lock(&events).push((at, name.clone(), ev, gids));
                            }
                            Ok(None) => {}
                            Err(_) => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                })
                .map_err(|e| format!("event observer thread: {e}"))?;
        }
        Ok(PortWatch { events, stop })
    }

    /// The first event on `device` after `t` matching `pred`, waiting up to `timeout`, with the
    /// GID table read right after it arrived.
    pub async fn first_after(
        &self,
        device: &str,
        t: Instant,
        timeout: Duration,
        pred: impl Fn(&AsyncEvent) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let hit = lock(&self.events)
                .iter()
                .find(|(at, d, ev, _)| *at >= t && d == device && pred(ev))
                .map(|(at, _, _, gids)| (*at, gids.clone()));
            if hit.is_some() || Instant::now() >= deadline {
                return hit;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for PortWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Measures how responsive a node's manager task is: a status request every 50 ms; the
/// longest round trip since the last [`StallProbe::take`] is how long the manager processed
/// nothing (no link input, no heartbeats). It holds the node weakly, so whoever owns the node
/// can still stop it (the probe ends with it).
#[derive(Clone, Default)]
pub struct StallProbe(Arc<Mutex<Option<(Duration, String)>>>);

impl StallProbe {
    pub fn spawn(node: Arc<Node>, t0: Instant) -> StallProbe {
        let probe = StallProbe::default();
        let p = probe.clone();
        let node = Arc::downgrade(&node);
        tokio::spawn(async move {
            loop {
                let Some(node) = node.upgrade() else {
                    return;
                };
                let t = Instant::now();
                if node.status().await.is_err() {
                    return;
                }
                drop(node);
                let rtt = t.elapsed();
                {
                    let mut g = lock(&p.0);
                    if g.as_ref().is_none_or(|(d, _)| rtt > *d) {
                        *g = Some((rtt, format!("at +{:.1} s", since(t, t0) / 1000.0)));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        probe
    }

    /// The longest status round trip since the last call, in ms, and when it began.
    pub fn take(&self) -> Value {
        match lock(&self.0).take() {
            Some((d, at)) => json!(format!("{:.0} ms {at}", ms(d))),
            None => Value::Null,
        }
    }
}

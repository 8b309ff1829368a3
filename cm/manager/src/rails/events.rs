//! Device events: one thread per opened device forwards its async events (port up or down,
//! device fatal) to the manager, which marks the rails they concern. Every opened device is
//! watched, including one whose ports were all down when the node started: its PORT_ACTIVE
//! is what brings its rails up.

use super::Rails;
use peercm_cm_proto::session::InterconnectId;
use peercm_verbs_shim::AsyncEvent;
use std::time::Duration;
use tokio::sync::mpsc;

/// A device event for the manager.
#[derive(Debug)]
pub(crate) struct DeviceInput {
    pub device: String,
    pub event: AsyncEvent,
    /// For PORT_ACTIVE: the port's capacity now (Mb/s), read by the watcher thread. A port that
    /// was down at discovery had no real speed to report then.
    pub capacity_mbits_per_s: Option<u32>,
}

impl Rails {
    /// Starts one thread per device that forwards its async events to the manager.
    pub fn spawn_watchers(&self, tx: mpsc::Sender<DeviceInput>) {
        for (name, dev) in &self.devices {
            let dev = dev.clone();
            let name = name.clone();
            let tx = tx.clone();
            let thread_name = format!("peercm-events-{name}");
            let spawned = std::thread::Builder::new()
                .name(thread_name.clone())
                .spawn(move || {
                    while !tx.is_closed() {
                        match dev.next_async_event(Duration::from_millis(200)) {
                            Ok(Some(event)) => {
                                // Read here, off the manager task (a port query may wait on
                                // the kernel's locks).
                                let capacity_mbits_per_s = match event {
                                    AsyncEvent::PortActive { port } => {
                                        dev.query_port(port).ok().map(|p| p.capacity_mbits_per_s)
                                    }
                                    _ => None,
                                };
                                let input = DeviceInput {
                                    device: name.clone(),
                                    event,
                                    capacity_mbits_per_s,
                                };
                                if tx.blocking_send(input).is_err() {
                                    return;
                                }
                            }
                            Ok(None) => {}
                            Err(e) => {
                                tracing::warn!(device = %name, error = %e, "reading async events failed");
                                std::thread::sleep(Duration::from_millis(500));
                            }
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(thread = %thread_name, error = %e, "cannot start the event watcher");
            }
        }
    }

    /// Marks a port active or not; returns the rails it carries. `capacity_mbits_per_s` is the port's
    /// capacity now, if known; it replaces the rail's unless the configuration sets one.
    pub fn set_port_active(
        &mut self,
        device: &str,
        port: u8,
        active: bool,
        capacity_mbits_per_s: Option<u32>,
    ) -> Vec<InterconnectId> {
        let configured = self.tunables.capacity_mbits_per_s.contains_key(device);
        let mut hit = Vec::new();
        for r in self
            .local
            .iter_mut()
            .filter(|r| r.device == device && r.port == port)
        {
            r.active = active;
            if let Some(c) = capacity_mbits_per_s.filter(|c| *c > 0 && !configured) {
                r.capacity_mbits_per_s = c;
            }
            hit.push(r.rail);
        }
        hit
    }

    /// Rails of a device (for DEVICE_FATAL).
    pub fn rails_of_device(&mut self, device: &str) -> Vec<InterconnectId> {
        self.local
            .iter_mut()
            .filter(|r| r.device == device)
            .map(|r| {
                r.active = false;
                r.rail
            })
            .collect()
    }
}

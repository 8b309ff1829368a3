//! Device events: one thread per opened device forwards its async events (port up or down,
//! device fatal) to the manager, which marks the rails they concern.

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
                                let input = DeviceInput {
                                    device: name.clone(),
                                    event,
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

    /// Marks a port active or not; returns the rails it carries.
    pub fn set_port_active(&mut self, device: &str, port: u8, active: bool) -> Vec<InterconnectId> {
        let mut hit = Vec::new();
        for r in self
            .local
            .iter_mut()
            .filter(|r| r.device == device && r.port == port)
        {
            r.active = active;
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

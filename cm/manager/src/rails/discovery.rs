//! Rail discovery: the devices the provider lists, opened, their ports numbered as rails (see
//! the numbering in [`super`]), each port's GID chosen, and the capabilities announced to the
//! partner in the bootstrap handshake.
//!
//! Every device is opened whatever its ports' states: a rail whose port is down is created
//! inactive, its device is watched, and PORT_ACTIVE brings it up later. The ports' states are
//! read from the opened context, after opening it, so a change after that read raises an async
//! event on that context, which its watcher delivers: none is lost between discovery and the
//! watchers' start.

use super::{LocalRail, Rails, Reaper, VerbsSource};
use crate::config::VerbsTunables;
use crate::status::RdmaUnavailable;
use peercm_cm_proto::control::TransportCap;
use peercm_cm_proto::session::InterconnectId;
use peercm_verbs_shim::{Device, PortState, Provider};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The GID index to address a port by, given its GID table by index (empty entries zero): the
/// RoCEv2 IPv4-mapped entry (`::ffff:a.b.c.d`) when there is one, else the first non-empty
/// entry (InfiniBand, or RoCE without an IPv4 address).
pub(super) fn pick_gid(gids: &[[u8; 16]]) -> (u8, [u8; 16]) {
    let mapped = |g: &[u8; 16]| g[..10].iter().all(|b| *b == 0) && g[10] == 0xff && g[11] == 0xff;
    gids.iter()
        .enumerate()
        .find(|(_, g)| mapped(g))
        .or_else(|| gids.iter().enumerate().find(|(_, g)| **g != [0; 16]))
        .map(|(i, g)| (i.min(255) as u8, *g))
        .unwrap_or((0, [0; 16]))
}

/// A port's GID table by index: its first 16 entries, an empty or unreadable one as zeros,
/// trailing empty ones left out. `PortInfo::gids` skips empty entries, so a position in it is
/// not a GID index once the table has a hole before the entry wanted (an address removed, or
/// not re-added yet); `sgid_index` must be the real index.
pub(super) fn gid_table(dev: &dyn Device, port: u8) -> Vec<[u8; 16]> {
    let mut table: Vec<[u8; 16]> = (0..16u8)
        .map(|i| dev.gid(port, i).unwrap_or([0; 16]))
        .collect();
    while table.last() == Some(&[0; 16]) {
        table.pop();
    }
    table
}

impl Rails {
    /// Lists and opens the devices. Never fails: a reason is kept when RDMA is unusable.
    pub fn discover(
        source: &VerbsSource,
        tunables: &VerbsTunables,
        max_payload: u32,
        reaper: Reaper,
    ) -> Rails {
        let mut rails = Rails {
            unavailable: None,
            devices: BTreeMap::new(),
            shared_pds: BTreeMap::new(),
            local: Vec::new(),
            pending: BTreeMap::new(),
            next_attempt: 1,
            tunables: tunables.clone(),
            max_payload_bytes: max_payload,
            reaper,
            probing: BTreeMap::new(),
            health: Default::default(),
            client_qps: Default::default(),
        };
        let provider: Arc<dyn Provider> = match source {
            _ if !tunables.enabled => {
                rails.unavailable = Some(RdmaUnavailable::DisabledInConfig);
                return rails;
            }
            VerbsSource::Disabled => {
                rails.unavailable = Some(RdmaUnavailable::DisabledForNode);
                return rails;
            }
            VerbsSource::Real => match peercm_verbs_shim::real::RealProvider::load() {
                Ok(p) => Arc::new(p),
                Err(why) => {
                    rails.unavailable = Some(RdmaUnavailable::Verbs(why));
                    return rails;
                }
            },
            VerbsSource::Provider(p) => p.clone(),
        };
        let mut infos = match provider.devices() {
            Ok(d) => d,
            Err(why) => {
                rails.unavailable = Some(RdmaUnavailable::Verbs(why));
                return rails;
            }
        };
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        for info in infos {
            let dev = match provider.open(&info.name) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(device = %info.name, error = %e, "cannot open RDMA device: skipped");
                    continue;
                }
            };
            // The ports as the opened context sees them now (see the module docs).
            let fresh = dev.info().ports;
            let mut ports = if fresh.len() == info.ports.len() {
                fresh
            } else {
                info.ports.clone() // a port could not be queried again: keep the listing
            };
            ports.sort_by_key(|p| p.port);
            for p in ports {
                let table = gid_table(dev.as_ref(), p.port);
                let (gid_index, gid) = pick_gid(if table.is_empty() { &p.gids } else { &table });
                let capacity = tunables
                    .capacity_mbits_per_s
                    .get(&info.name)
                    .copied()
                    .unwrap_or(p.capacity_mbits_per_s);
                rails.local.push(LocalRail {
                    rail: InterconnectId::rail(rails.local.len() as u32 + 1),
                    device: info.name.clone(),
                    port: p.port,
                    gid,
                    gid_index,
                    capacity_mbits_per_s: capacity,
                    active: p.state == PortState::Active,
                });
            }
            // One protection domain for every link of the device and the client regions
            // registered for them (see `region_pds`). Without it the device's links each
            // get their own and regions are written through WRITE frames only.
            match dev.clone().alloc_pd() {
                Ok(pd) => {
                    rails.shared_pds.insert(info.name.clone(), pd);
                }
                Err(e) => tracing::warn!(
                    device = %info.name,
                    error = %e,
                    "no shared protection domain: client regions are not registered on this device"
                ),
            }
            rails.devices.insert(info.name.clone(), dev);
        }
        if rails.local.is_empty() {
            rails.unavailable = Some(RdmaUnavailable::NoDeviceOpened);
        }
        rails
    }

    /// The capabilities to announce: TCP, then every rail in order.
    pub fn capabilities(&self) -> Vec<TransportCap> {
        let mut caps = vec![TransportCap::Tcp];
        caps.extend(self.local.iter().map(|r| TransportCap::Verbs {
            device: r.device.clone(),
            port: r.port,
            gid: r.gid,
            capacity_mbits_per_s: r.capacity_mbits_per_s,
        }));
        caps
    }

    /// The partner's rails (its Verbs capabilities in order, numbered from 1).
    pub fn peer_rail_count(caps: &[TransportCap]) -> u32 {
        caps.iter()
            .filter(|c| matches!(c, TransportCap::Verbs { .. }))
            .count() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercm_verbs_shim::sim::SimFabric;

    /// One node "a" with one HCA whose cable to "b" is cut: every port of "a" is down.
    fn ports_down() -> SimFabric {
        let f = SimFabric::new(7);
        for n in ["a", "b"] {
            f.add_node(n).unwrap();
            f.add_device(n, "hca0", 25).unwrap();
        }
        f.cable(("a", "hca0", 1), ("b", "hca0", 1)).unwrap();
        f.cut_cable(("a", "hca0", 1)).unwrap();
        f
    }

    fn reaper() -> Reaper {
        Reaper::new(tokio::sync::mpsc::unbounded_channel().0)
    }

    #[test]
    fn a_device_with_every_port_down_is_opened_as_an_inactive_rail() {
        let f = ports_down();
        let source = VerbsSource::Provider(f.provider("a"));
        let mut rails = Rails::discover(&source, &VerbsTunables::default(), 1 << 20, reaper());
        assert_eq!(
            rails.unavailable, None,
            "ports down is not RDMA unavailable"
        );
        assert_eq!(rails.local.len(), 1);
        assert!(!rails.local[0].active);
        assert_eq!(rails.local[0].capacity_mbits_per_s, 25_000);
        assert_eq!(
            rails.capabilities().len(),
            2,
            "TCP and the rail are announced"
        );
        assert_eq!(
            rails.devices.len(),
            1,
            "the device is open (and will be watched)"
        );
        // PORT_ACTIVE: the rail comes up with the capacity the port reports now.
        let hit = rails.set_port_active("hca0", 1, true, Some(100_000));
        assert_eq!(hit, [InterconnectId::rail(1)]);
        assert!(rails.local[0].active);
        assert_eq!(rails.local[0].capacity_mbits_per_s, 100_000);
        // A configured capacity wins over what the port reports.
        let mut tunables = VerbsTunables::default();
        tunables.capacity_mbits_per_s.insert("hca0".into(), 16);
        let mut rails = Rails::discover(&source, &tunables, 1 << 20, reaper());
        rails.set_port_active("hca0", 1, true, Some(100_000));
        assert_eq!(rails.local[0].capacity_mbits_per_s, 16);
    }

    #[test]
    fn the_ipv4_mapped_gid_is_preferred() {
        let link_local = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
        assert_eq!(pick_gid(&[link_local, mapped]), (1, mapped));
        assert_eq!(pick_gid(&[link_local]), (0, link_local));
        assert_eq!(pick_gid(&[]), (0, [0; 16]));
        // Indices are table indices: holes (empty entries) count.
        let empty = [0u8; 16];
        assert_eq!(pick_gid(&[link_local, empty, mapped]), (2, mapped));
        assert_eq!(pick_gid(&[empty, link_local]), (1, link_local));
    }
}

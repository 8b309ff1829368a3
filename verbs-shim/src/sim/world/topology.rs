//! The fabric's topology: nodes, HCAs with their ports and GID tables, cables, each port's
//! effective state (with port events and failing the QPs of a port that went down), and
//! routing a packet from a port to its partner.

use super::engine::FailMode;
use super::{invalid, World};
use crate::error::VerbsError;
use crate::types::{AsyncEvent, DeviceInfo, LinkLayer, PortInfo, PortState, QpState};
use std::time::Duration;

pub(crate) struct NodeRec {
    pub name: String,
    /// Requests to this node's QPs go unanswered (a frozen responder).
    pub stalled: bool,
    /// Deregistering a region on this node fails (an injected driver failure).
    pub fail_dereg: bool,
    /// Destroying a QP or CQ, or deregistering a region, on this node blocks until cleared
    /// (as `rxe_destroy_qp` can block while packets of the QP are held up).
    pub hang_teardowns: bool,
    /// Teardown calls blocked by `hang_teardowns` right now.
    pub teardowns_hung: usize,
}

pub(crate) struct PortRec {
    pub num: u8,
    pub capacity_gbps: u32,
    /// Administratively up (`ip link set ... up`).
    pub admin_up: bool,
    pub cable: Option<usize>,
    /// GID table: index 0 link-local, index 1 IPv4-mapped (once cabled).
    pub gids: Vec<[u8; 16]>,
    /// Effective state last reported (ACTIVE or DOWN).
    pub active: bool,
}

pub(crate) struct DevRec {
    pub node: usize,
    pub name: String,
    pub guid: u64,
    pub ports: Vec<PortRec>,
    pub(super) next_addr: u64,
}

pub(crate) struct CableRec {
    pub ends: [(usize, u8); 2],
    pub cut: bool,
    pub latency: Duration,
    pub jitter: Duration,
    pub loss: f64,
    /// Extra loss of the transmissions leaving each end (`ends[k]`): one-directional loss.
    pub loss_from: [f64; 2],
}

/// Whether a GID is IPv4-mapped (`::ffff:a.b.c.d`).
fn is_v4_mapped(g: &[u8; 16]) -> bool {
    g[..10].iter().all(|b| *b == 0) && g[10] == 0xff && g[11] == 0xff
}

impl World {
    pub(crate) fn node_index(&self, name: &str) -> Result<usize, VerbsError> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| invalid(format!("no simulated node named {name:?}")))
    }

    pub(crate) fn dev_index(&self, node: &str, dev: &str) -> Result<usize, VerbsError> {
        let n = self.node_index(node)?;
        self.devs
            .iter()
            .position(|d| d.node == n && d.name == dev)
            .ok_or_else(|| VerbsError::NoSuchDevice(format!("{node}/{dev}")))
    }

    pub(crate) fn port_ref(
        &self,
        node: &str,
        dev: &str,
        port: u8,
    ) -> Result<(usize, u8), VerbsError> {
        let d = self.dev_index(node, dev)?;
        if port == 0 || usize::from(port) > self.devs[d].ports.len() {
            return Err(invalid(format!("{node}/{dev} has no port {port}")));
        }
        Ok((d, port))
    }

    pub(super) fn port(&self, dev: usize, port: u8) -> Option<&PortRec> {
        self.devs
            .get(dev)?
            .ports
            .get(usize::from(port).checked_sub(1)?)
    }

    fn port_mut(&mut self, dev: usize, port: u8) -> Option<&mut PortRec> {
        self.devs
            .get_mut(dev)?
            .ports
            .get_mut(usize::from(port).checked_sub(1)?)
    }

    pub(crate) fn add_node(&mut self, name: &str) -> Result<(), VerbsError> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(invalid(format!("node {name:?} already exists")));
        }
        if self.nodes.len() >= 254 {
            return Err(invalid("at most 254 simulated nodes"));
        }
        self.nodes.push(NodeRec {
            name: name.to_string(),
            stalled: false,
            fail_dereg: false,
            hang_teardowns: false,
            teardowns_hung: 0,
        });
        Ok(())
    }

    pub(crate) fn add_device(
        &mut self,
        node: &str,
        name: &str,
        capacities_gbps: &[u32],
    ) -> Result<(), VerbsError> {
        let n = self.node_index(node)?;
        if self.devs.iter().any(|d| d.node == n && d.name == name) {
            return Err(invalid(format!("device {node}/{name} already exists")));
        }
        if capacities_gbps.is_empty() || capacities_gbps.len() > 8 {
            return Err(invalid(format!(
                "device {node}/{name}: 1 to 8 ports, not {}",
                capacities_gbps.len()
            )));
        }
        let index = self.devs.len() as u64;
        // Locally administered, unique by device index, seeded low bits.
        let guid =
            0x0200_5e00_0000_0000 | ((index & 0xffff) << 24) | (self.rng.next_u64() & 0xff_ffff);
        let ports = capacities_gbps
            .iter()
            .enumerate()
            .map(|(i, &cap)| {
                let num = i as u8 + 1;
                let mut ll = [0u8; 16];
                ll[0] = 0xfe;
                ll[1] = 0x80;
                ll[8..].copy_from_slice(&(guid ^ u64::from(num)).to_be_bytes());
                PortRec {
                    num,
                    capacity_gbps: cap,
                    admin_up: true,
                    cable: None,
                    gids: vec![ll],
                    active: false,
                }
            })
            .collect();
        self.devs.push(DevRec {
            node: n,
            name: name.to_string(),
            guid,
            ports,
            next_addr: 0x7f00_0000_0000 | (index << 32),
        });
        Ok(())
    }

    pub(crate) fn cable(&mut self, a: (usize, u8), b: (usize, u8)) -> Result<(), VerbsError> {
        let name = |w: &World, (d, p): (usize, u8)| {
            format!("{}/{}:{p}", w.nodes[w.devs[d].node].name, w.devs[d].name)
        };
        for end in [a, b] {
            if self.port(end.0, end.1).and_then(|p| p.cable).is_some() {
                return Err(invalid(format!(
                    "port {} already has a cable",
                    name(self, end)
                )));
            }
        }
        let (na, nb) = (self.devs[a.0].node, self.devs[b.0].node);
        if na == nb {
            // As on rdma_rxe: two HCAs in one host cannot reach each other.
            return Err(invalid(format!(
                "cable {} <-> {}: both ends on one node (devices in one host cannot talk to each other)",
                name(self, a),
                name(self, b)
            )));
        }
        let c = self.cables.len();
        if c >= 255 {
            return Err(invalid("at most 255 simulated cables"));
        }
        self.cables.push(CableRec {
            ends: [a, b],
            cut: false,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            loss_from: [0.0; 2],
        });
        for ((d, p), n) in [(a, na), (b, nb)] {
            let mut v4 = [0u8; 16];
            v4[10] = 0xff;
            v4[11] = 0xff;
            v4[12..].copy_from_slice(&[10, 77, c as u8 + 1, n as u8 + 1]);
            if let Some(port) = self.port_mut(d, p) {
                port.cable = Some(c);
                port.gids.truncate(1);
                port.gids.push(v4);
            }
        }
        self.refresh_ports();
        Ok(())
    }

    pub(crate) fn cable_of(&self, end: (usize, u8)) -> Result<usize, VerbsError> {
        self.port(end.0, end.1)
            .and_then(|p| p.cable)
            .ok_or_else(|| invalid("that port has no cable"))
    }

    pub(crate) fn port_state(&self, dev: usize, port: u8) -> PortState {
        match self.port(dev, port) {
            Some(p) if p.active => PortState::Active,
            _ => PortState::Down,
        }
    }

    pub(super) fn port_is_active(&self, dev: usize, port: u8) -> bool {
        self.port(dev, port).is_some_and(|p| p.active)
    }

    /// Recomputes every port's effective state from admin state and cables, raising port
    /// events and failing the QPs of ports that went down.
    pub(crate) fn refresh_ports(&mut self) {
        for d in 0..self.devs.len() {
            for pi in 0..self.devs[d].ports.len() {
                let p = &self.devs[d].ports[pi];
                let active = p.admin_up && p.cable.is_some_and(|c| !self.cables[c].cut);
                if active == p.active {
                    continue;
                }
                let num = p.num;
                self.devs[d].ports[pi].active = active;
                if active {
                    self.push_dev_event(d, AsyncEvent::PortActive { port: num });
                } else {
                    self.push_dev_event(d, AsyncEvent::PortError { port: num });
                    let victims: Vec<u32> = self
                        .qps
                        .iter()
                        .filter(|(_, q)| {
                            q.dev == d
                                && q.port == num
                                && matches!(
                                    q.state,
                                    QpState::Rtr | QpState::Rts | QpState::Sqd | QpState::Sqe
                                )
                        })
                        .map(|(n, _)| *n)
                        .collect();
                    for qpn in victims {
                        self.fail(qpn, FailMode::Port);
                    }
                }
            }
        }
    }

    pub(crate) fn device_info(&self, dev: usize) -> DeviceInfo {
        let d = &self.devs[dev];
        DeviceInfo {
            name: d.name.clone(),
            guid: d.guid,
            ports: d.ports.iter().map(|p| self.port_info(p)).collect(),
        }
    }

    fn port_info(&self, p: &PortRec) -> PortInfo {
        PortInfo {
            port: p.num,
            state: if p.active {
                PortState::Active
            } else {
                PortState::Down
            },
            link_layer: LinkLayer::Ethernet,
            capacity_mbits_per_s: p.capacity_gbps.saturating_mul(1000),
            gids: p.gids.clone(),
        }
    }

    pub(crate) fn query_port(&self, dev: usize, port: u8) -> Result<PortInfo, VerbsError> {
        self.port(dev, port)
            .map(|p| self.port_info(p))
            .ok_or_else(|| invalid(format!("device {} has no port {port}", self.devs[dev].name)))
    }

    pub(crate) fn gid(&self, dev: usize, port: u8, index: u8) -> Result<[u8; 16], VerbsError> {
        let p = self
            .port(dev, port)
            .ok_or_else(|| invalid(format!("device {} has no port {port}", self.devs[dev].name)))?;
        p.gids.get(usize::from(index)).copied().ok_or_else(|| {
            invalid(format!(
                "GID index {index} of {}:{port} is not populated ({} entries)",
                self.devs[dev].name,
                p.gids.len()
            ))
        })
    }

    pub(crate) fn node_devices(&self, node: usize) -> Vec<usize> {
        (0..self.devs.len())
            .filter(|d| self.devs[*d].node == node)
            .collect()
    }

    /// Where a packet from (dev, port) addressed to `remote_gid` lands, if anywhere.
    pub(super) fn route(
        &self,
        dev: usize,
        port: u8,
        gid_index: u8,
        remote_gid: &[u8; 16],
    ) -> Option<(usize, u8)> {
        let p = self.port(dev, port)?;
        let c = &self.cables[p.cable?];
        if c.cut {
            return None;
        }
        let peer = if c.ends[0] == (dev, port) {
            c.ends[1]
        } else {
            c.ends[0]
        };
        let pp = self.port(peer.0, peer.1)?;
        let local_gid = p.gids.get(usize::from(gid_index))?;
        // RoCEv2: an IPv4-mapped source reaches IPv4-mapped destinations, IPv6 reaches IPv6.
        (pp.active
            && is_v4_mapped(local_gid) == is_v4_mapped(remote_gid)
            && pp.gids.contains(remote_gid))
        .then_some(peer)
    }
}

//! RDMA rails: this node's HCA ports numbered as interconnects, the opened devices and their
//! async-event watchers, and the offer/accept bookkeeping that turns a rail into an RDMA link.
//!
//! Rail numbering: every port of every device the provider lists, sorted by device name then
//! port number, is rail 1, 2, ... Both partners number their own ports the same way and
//! announce them, in that order, as `TransportCap::Verbs` capabilities in the bootstrap
//! handshake, so rail k pairs this node's k-th port with the partner's k-th port (rxe0 with
//! rxe0, rxe1 with rxe1 on a dual-rail pair). A rail is the placement policy's interconnect id
//! k; TCP is interconnect 0.
//!
//! Setup ("slam connect" over the bootstrap session): the dialer prepares a queue pair and its
//! receive ring for a rail and sends `TransportMsg::Offer`; the acceptor prepares its own,
//! connects it to the offer (INIT -> RTR -> RTS) and answers `Accept`; the dialer connects to
//! the answer. The acceptor hands its link to the session on the first frame that arrives on
//! it, which proves the dialer's queue pair is ready; the dialer hands its link over at once.

use crate::config::VerbsTunables;
use peercm_cm_proto::control::{TransportCap, TransportMsg};
use peercm_cm_proto::session::LinkId;
use peercm_cm_rdma_link::{LinkCloseReason, LinkSink, LocalEndpoint, PreparedLink, RdmaLinkConfig};
use peercm_fallback_tcp::LinkInput;
use peercm_verbs_shim::{AsyncEvent, Device, PortState, Provider, QpParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// QP local ACK timeout: exponent 15, 4.096 us x 2^15 = 134 ms. With [`QP_RETRY_COUNT`]
/// retries the hardware gives up after at least (6 + 1) x 134 ms = 0.94 s of silence, well
/// after the session's 500 ms heartbeat verdict: the manager, not the HCA, decides that a
/// partner is gone (docs/operations.md, "Detection").
const QP_ACK_TIMEOUT_US: u64 = 134_000;
/// QP transport retries (rdma_rxe treats 7 as "forever", so 6).
const QP_RETRY_COUNT: u8 = 6;
/// Largest serialized endpoint accepted from the partner.
const MAX_ENDPOINT_BYTES: usize = 1024;

/// Where the verbs provider comes from.
#[derive(Clone)]
pub enum VerbsSource {
    /// rdma-core's libibverbs, loaded at run time (production).
    Real,
    /// A given provider (a node of a simulated fabric in tests).
    Provider(Arc<dyn Provider>),
    /// No RDMA: TCP only.
    Disabled,
}

impl std::fmt::Debug for VerbsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerbsSource::Real => "Real",
            VerbsSource::Provider(_) => "Provider",
            VerbsSource::Disabled => "Disabled",
        })
    }
}

/// One local HCA port.
#[derive(Debug, Clone)]
pub(crate) struct LocalRail {
    pub rail: u32,
    pub device: String,
    pub port: u8,
    pub gid: [u8; 16],
    pub gid_index: u8,
    pub capacity_mbps: u32,
    pub active: bool,
}

/// A device event for the manager.
#[derive(Debug)]
pub(crate) struct DeviceInput {
    pub device: String,
    pub event: AsyncEvent,
}

/// A dialer's rail setup in flight.
enum PendingState {
    /// The queue pair and rings are being created (on a blocking thread).
    Preparing,
    /// The offer went out with this attempt number.
    Offered {
        attempt: u64,
        prepared: Box<PreparedLink>,
    },
    /// The answer came; the queue pair is being connected (on a blocking thread).
    Connecting,
}

struct Pending {
    link_id: LinkId,
    since: Instant,
    state: PendingState,
}

/// Resource creation for one rail link: cheap to build on the manager task, run on a blocking
/// thread (creating a PD, CQ, QP and registering rings takes milliseconds on hardware and up
/// to seconds under emulation, and the manager must keep heartbeating meanwhile).
pub(crate) struct SetupJob {
    rail: u32,
    device: Arc<dyn Device>,
    cfg: RdmaLinkConfig,
}

impl SetupJob {
    /// Creates the queue pair and rings; returns them with this side's encoded endpoint.
    pub fn prepare(self) -> Result<(Box<PreparedLink>, Vec<u8>), String> {
        let rail = self.rail;
        let (prepared, ep) = PreparedLink::new(self.device, self.cfg)
            .map_err(|e| format!("preparing rail {rail}: {e}"))?;
        let bytes = postcard::to_stdvec(&ep).map_err(|e| format!("encoding endpoint: {e}"))?;
        Ok((Box::new(prepared), bytes))
    }
}

/// What the manager should do after a TRANSPORT message.
pub(crate) enum RailAction {
    /// Send this answer to the partner.
    Reply(TransportMsg),
    /// Acceptor: prepare `job`, connect it to `remote` and answer the offer (blocking work).
    Accept {
        rail: u32,
        attempt: u64,
        link_id: LinkId,
        job: SetupJob,
        remote: LocalEndpoint,
    },
    /// Dialer: connect the prepared link to the answer (blocking work).
    Connect {
        rail: u32,
        link_id: LinkId,
        prepared: Box<PreparedLink>,
        remote: LocalEndpoint,
    },
    /// Nothing to do (logged).
    None,
}

/// Blocking rail work finished; back on the manager task.
pub(crate) enum RailDone {
    /// Dialer: the rail's resources exist; the offer can go out.
    Prepared {
        rail: u32,
        link_id: LinkId,
        res: Result<(Box<PreparedLink>, Vec<u8>), String>,
    },
    /// A link is connected (or failed to). `reply` is the acceptor's answer to send.
    Connected {
        rail: u32,
        link_id: LinkId,
        res: Result<peercm_cm_rdma_link::RdmaLink, String>,
        reply: Option<TransportMsg>,
    },
}

/// The node's RDMA side. See the module docs.
pub(crate) struct Rails {
    pub unavailable: Option<String>,
    devices: BTreeMap<String, Arc<dyn Device>>,
    pub local: Vec<LocalRail>,
    pending: BTreeMap<u32, Pending>,
    next_attempt: u64,
    tunables: VerbsTunables,
    max_payload_bytes: u32,
}

/// The GID index to address a port by, given its GID table by index (empty entries zero): the
/// RoCEv2 IPv4-mapped entry (`::ffff:a.b.c.d`) when there is one, else the first non-empty
/// entry (InfiniBand, or RoCE without an IPv4 address).
fn pick_gid(gids: &[[u8; 16]]) -> (u8, [u8; 16]) {
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
fn gid_table(dev: &dyn Device, port: u8) -> Vec<[u8; 16]> {
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
    pub fn discover(source: &VerbsSource, tunables: &VerbsTunables, max_payload: u32) -> Rails {
        let mut rails = Rails {
            unavailable: None,
            devices: BTreeMap::new(),
            local: Vec::new(),
            pending: BTreeMap::new(),
            next_attempt: 1,
            tunables: tunables.clone(),
            max_payload_bytes: max_payload,
        };
        let provider: Arc<dyn Provider> = match source {
            _ if !tunables.enabled => {
                rails.unavailable =
                    Some("RDMA disabled in the configuration (verbs.enabled = false)".into());
                return rails;
            }
            VerbsSource::Disabled => {
                rails.unavailable = Some("RDMA disabled for this node".into());
                return rails;
            }
            VerbsSource::Real => match peercm_verbs_shim::real::RealProvider::load() {
                Ok(p) => Arc::new(p),
                Err(why) => {
                    rails.unavailable = Some(why.to_string());
                    return rails;
                }
            },
            VerbsSource::Provider(p) => p.clone(),
        };
        let mut infos = match provider.devices() {
            Ok(d) => d,
            Err(why) => {
                rails.unavailable = Some(why.to_string());
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
            let mut ports = info.ports.clone();
            ports.sort_by_key(|p| p.port);
            for p in ports {
                let table = gid_table(dev.as_ref(), p.port);
                let (gid_index, gid) = pick_gid(if table.is_empty() { &p.gids } else { &table });
                let capacity = tunables
                    .capacity_mbps
                    .get(&info.name)
                    .copied()
                    .unwrap_or(p.capacity_mbps);
                rails.local.push(LocalRail {
                    rail: rails.local.len() as u32 + 1,
                    device: info.name.clone(),
                    port: p.port,
                    gid,
                    gid_index,
                    capacity_mbps: capacity,
                    active: p.state == PortState::Active,
                });
            }
            rails.devices.insert(info.name.clone(), dev);
        }
        if rails.local.is_empty() {
            rails.unavailable = Some("no RDMA device could be opened".into());
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
            capacity_mbps: r.capacity_mbps,
        }));
        caps
    }

    /// The partner's rails (its Verbs capabilities in order, numbered from 1).
    pub fn peer_rail_count(caps: &[TransportCap]) -> u32 {
        caps.iter()
            .filter(|c| matches!(c, TransportCap::Verbs { .. }))
            .count() as u32
    }

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
    pub fn set_port_active(&mut self, device: &str, port: u8, active: bool) -> Vec<u32> {
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
    pub fn rails_of_device(&mut self, device: &str) -> Vec<u32> {
        self.local
            .iter_mut()
            .filter(|r| r.device == device)
            .map(|r| {
                r.active = false;
                r.rail
            })
            .collect()
    }

    fn link_config(&self, rail: &LocalRail, link_id: u64) -> RdmaLinkConfig {
        RdmaLinkConfig {
            link_id,
            port: rail.port,
            gid_index: rail.gid_index,
            ring_bytes: self.tunables.ring_bytes,
            recv_depth: self.tunables.recv_depth,
            max_payload_bytes: self.max_payload_bytes,
            qp: QpParams {
                ack_timeout_us: QP_ACK_TIMEOUT_US,
                retry_count: QP_RETRY_COUNT,
                ..QpParams::default()
            },
            ..RdmaLinkConfig::default()
        }
    }

    fn setup_job(&self, rail: u32, link_id: u64) -> Result<SetupJob, String> {
        let r = self
            .local
            .get(rail.wrapping_sub(1) as usize)
            .ok_or_else(|| format!("this node has no rail {rail}"))?;
        if !r.active {
            return Err(format!(
                "rail {rail} ({} port {}) is not ACTIVE",
                r.device, r.port
            ));
        }
        let device = self
            .devices
            .get(&r.device)
            .ok_or_else(|| format!("device {} is not open", r.device))?
            .clone();
        Ok(SetupJob {
            rail,
            device,
            cfg: self.link_config(r, link_id),
        })
    }

    /// Dialer: rails to offer now (local port active, partner has the rail, no link, no offer
    /// in flight). Expired offers are dropped first.
    pub fn rails_to_offer(&mut self, peer_rails: u32, linked: &[u32], now: Instant) -> Vec<u32> {
        let timeout = Duration::from_millis(self.tunables.rail_offer_timeout_ms);
        self.pending.retain(|rail, p| {
            let keep = now.saturating_duration_since(p.since) < timeout;
            if !keep {
                tracing::warn!(rail, "rail offer unanswered: abandoned, will retry");
            }
            keep
        });
        self.local
            .iter()
            .filter(|r| r.active && r.rail <= peer_rails)
            .filter(|r| !linked.contains(&r.rail) && !self.pending.contains_key(&r.rail))
            .map(|r| r.rail)
            .collect()
    }

    /// Dialer: starts setting up `rail`; the returned job runs on a blocking thread and its
    /// result comes back through [`Rails::prepared`].
    pub fn begin_offer(
        &mut self,
        rail: u32,
        link_id: u64,
        now: Instant,
    ) -> Result<SetupJob, String> {
        let job = self.setup_job(rail, link_id)?;
        self.pending.insert(
            rail,
            Pending {
                link_id,
                since: now,
                state: PendingState::Preparing,
            },
        );
        Ok(job)
    }

    /// Dialer: the rail's resources are ready: the offer to send, unless the setup was
    /// abandoned meanwhile (then the prepared link is dropped).
    pub fn prepared(
        &mut self,
        rail: u32,
        link_id: LinkId,
        res: Result<(Box<PreparedLink>, Vec<u8>), String>,
        now: Instant,
    ) -> Option<TransportMsg> {
        let current = self
            .pending
            .get(&rail)
            .is_some_and(|p| p.link_id == link_id && matches!(p.state, PendingState::Preparing));
        if !current {
            return None;
        }
        match res {
            Ok((prepared, endpoint)) => {
                let attempt = self.next_attempt;
                self.next_attempt += 1;
                self.pending.insert(
                    rail,
                    Pending {
                        link_id,
                        since: now,
                        state: PendingState::Offered { attempt, prepared },
                    },
                );
                Some(TransportMsg::Offer {
                    rail,
                    attempt,
                    endpoint,
                })
            }
            Err(e) => {
                tracing::warn!(rail, error = %e, "cannot offer rail");
                self.pending.remove(&rail);
                None
            }
        }
    }

    /// Dialer: whether a connected link is the one the rail's setup is waiting for (it is
    /// then no longer pending).
    pub fn connected(&mut self, rail: u32, link_id: LinkId) -> bool {
        let current = self
            .pending
            .get(&rail)
            .is_some_and(|p| p.link_id == link_id && matches!(p.state, PendingState::Connecting));
        if current {
            self.pending.remove(&rail);
        }
        current
    }

    /// Handles a TRANSPORT message from the partner. `link_id` names the link an offer creates.
    pub fn handle(&mut self, msg: TransportMsg, link_id: LinkId) -> RailAction {
        match msg {
            TransportMsg::Offer {
                rail,
                attempt,
                endpoint,
            } => {
                let refuse = |reason: String| {
                    tracing::warn!(rail, %reason, "refusing rail offer");
                    RailAction::Reply(TransportMsg::Refuse {
                        rail,
                        attempt,
                        reason,
                    })
                };
                let remote = match decode_endpoint(&endpoint) {
                    Ok(e) => e,
                    Err(e) => return refuse(e),
                };
                match self.setup_job(rail, link_id) {
                    Ok(job) => RailAction::Accept {
                        rail,
                        attempt,
                        link_id,
                        job,
                        remote,
                    },
                    Err(e) => refuse(e),
                }
            }
            TransportMsg::Accept {
                rail,
                attempt,
                endpoint,
            } => {
                let offered = self.pending.get(&rail).is_some_and(
                    |p| matches!(p.state, PendingState::Offered { attempt: a, .. } if a == attempt),
                );
                if !offered {
                    tracing::debug!(rail, attempt, "answer to no pending offer ignored");
                    return RailAction::None;
                }
                let remote = match decode_endpoint(&endpoint) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(rail, error = %e, "bad rail answer");
                        self.pending.remove(&rail);
                        return RailAction::None;
                    }
                };
                let Some(p) = self.pending.get_mut(&rail) else {
                    return RailAction::None;
                };
                let PendingState::Offered { prepared, .. } =
                    std::mem::replace(&mut p.state, PendingState::Connecting)
                else {
                    return RailAction::None;
                };
                RailAction::Connect {
                    rail,
                    link_id: p.link_id,
                    prepared,
                    remote,
                }
            }
            TransportMsg::Refuse {
                rail,
                attempt,
                reason,
            } => {
                if self.pending.get(&rail).is_some_and(
                    |p| matches!(p.state, PendingState::Offered { attempt: a, .. } if a == attempt),
                ) {
                    self.pending.remove(&rail);
                    tracing::warn!(rail, %reason, "partner refused rail");
                }
                RailAction::None
            }
        }
    }

    /// Forgets offers in flight (the session went down).
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }
}

fn decode_endpoint(bytes: &[u8]) -> Result<LocalEndpoint, String> {
    if bytes.len() > MAX_ENDPOINT_BYTES {
        return Err(format!(
            "endpoint of {} bytes exceeds {MAX_ENDPOINT_BYTES}",
            bytes.len()
        ));
    }
    match postcard::take_from_bytes::<LocalEndpoint>(bytes) {
        Ok((ep, [])) => Ok(ep),
        Ok(_) => Err("trailing bytes after the endpoint".into()),
        Err(e) => Err(format!("malformed endpoint: {e}")),
    }
}

/// Hands an RDMA link's frames, completions and close to the manager task. Called on the
/// link's own thread, so it may block on the manager's bounded channel (back-pressure).
pub(crate) struct ManagerSink {
    pub link: LinkId,
    pub tx: mpsc::Sender<LinkInput>,
}

impl LinkSink for ManagerSink {
    fn frame(&mut self, frame: peercm_cm_proto::Frame) -> bool {
        self.tx
            .blocking_send(LinkInput::Frame {
                link: self.link,
                frame,
            })
            .is_ok()
    }

    fn written(&mut self, bytes: u64, local_done: Vec<(u32, u64)>) {
        let _ = self.tx.blocking_send(LinkInput::Written {
            link: self.link,
            bytes,
            local_done,
        });
    }

    fn closed(&mut self, reason: LinkCloseReason) {
        let _ = self.tx.blocking_send(LinkInput::Closed {
            link: self.link,
            reason: reason.to_string(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peercm_verbs_shim::{QpEndpoint, RemoteMr};

    fn endpoint() -> LocalEndpoint {
        LocalEndpoint {
            qp: QpEndpoint {
                qpn: 0x11,
                psn: 0x1234,
                gid: [7; 16],
                mtu_bytes: 1024,
                lid: 0,
            },
            ring: RemoteMr {
                addr: 0x7f00_0000_0000,
                rkey: 0xabcd,
                len: 4 << 20,
            },
            ring_bytes: 4 << 20,
            recv_depth: 256,
            max_payload_bytes: 1 << 20,
        }
    }

    #[test]
    fn endpoints_round_trip_and_bad_bytes_are_refused_without_panic() {
        let good = postcard::to_stdvec(&endpoint()).unwrap();
        assert_eq!(decode_endpoint(&good).unwrap(), endpoint());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_endpoint(&trailing).unwrap_err().contains("trailing"));
        assert!(decode_endpoint(&vec![0u8; MAX_ENDPOINT_BYTES + 1])
            .unwrap_err()
            .contains("exceeds"));
        // Every truncation and many mutations: an error or some endpoint, never a panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for cut in 0..good.len() {
            assert!(decode_endpoint(&good[..cut]).is_err(), "truncated at {cut}");
        }
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut m = good.clone();
            let i = (x as usize) % m.len();
            m[i] ^= (x >> 32) as u8 | 1;
            let _ = decode_endpoint(&m);
        }
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

//! Client and node commands: [`Command`], what a [`crate::Node`] or [`crate::ClientHandle`] asks
//! of the manager, and how the manager carries each one out.

use super::{ClientChannel, Manager};
use crate::consumed::ConsumedReport;
use crate::error::CmError;
#[cfg(feature = "fault-injection")]
use crate::links::AnyLink;
use crate::status::NodeStatus;
#[cfg(feature = "fault-injection")]
use crate::timeline::CloseCause;
use bytes::Bytes;
use peercm_cm_proto::auth::Role;
use peercm_cm_proto::port::PortState;
#[cfg(feature = "fault-injection")]
use peercm_cm_proto::session::LinkId;
use peercm_cm_proto::session::{ClientEvent, ClientId, ClientSpec, SendOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

type Reply<T> = oneshot::Sender<Result<T, CmError>>;

/// What a [`crate::Node`] or [`crate::ClientHandle`] asks of the manager.
#[derive(Debug)]
pub(crate) enum Command {
    Register {
        name: String,
        spec: ClientSpec,
        reply: Reply<(
            ClientId,
            mpsc::UnboundedReceiver<ClientEvent>,
            Arc<ConsumedReport>,
        )>,
    },
    Connect {
        id: ClientId,
        reply: Reply<PortState>,
    },
    Close {
        id: ClientId,
        immediate: bool,
        reply: Reply<PortState>,
    },
    Send {
        id: ClientId,
        payload: Bytes,
        opts: SendOptions,
        /// Fault injection: skip the check against the partner's `max_payload_bytes`.
        #[cfg(feature = "fault-injection")]
        past_partner_limit: bool,
        reply: Reply<u64>,
    },
    SetAckTimeout {
        id: ClientId,
        timeout: Option<Duration>,
        reply: Reply<()>,
    },
    Reply {
        id: ClientId,
        seq: u64,
        code: i32,
        reply: Reply<()>,
    },
    /// The client took messages: the latest is in its [`ConsumedReport`].
    Consumed {
        id: ClientId,
    },
    Status {
        reply: Reply<NodeStatus>,
    },
    RegisterRegion {
        id: ClientId,
        name: String,
        len: u64,
        reply: Reply<crate::regions::LocalRegionInfo>,
    },
    RequestQueuePair {
        id: ClientId,
        reply: Reply<()>,
    },
    ReleaseQueuePair {
        id: ClientId,
        reply: Reply<()>,
    },
    GrowRegion {
        id: ClientId,
        name: String,
        len: u64,
        reply: Reply<crate::regions::LocalRegionInfo>,
    },
    ReleaseRegion {
        id: ClientId,
        name: String,
        reply: Reply<()>,
    },
    ReadRegion {
        id: ClientId,
        name: String,
        offset: u64,
        len: usize,
        reply: Reply<Vec<u8>>,
    },
    PartnerRegions {
        id: ClientId,
        reply: Reply<Vec<(String, u64)>>,
    },
    WriteRemote {
        id: ClientId,
        region: String,
        offset: u64,
        data: Bytes,
        ack_timeout: Option<Duration>,
        reply: Reply<u64>,
    },
    /// Fault injection: close one link.
    #[cfg(feature = "fault-injection")]
    KillLink {
        link: Option<LinkId>,
        reply: Reply<Option<LinkId>>,
    },
    SwitchPeer {
        reply: Reply<String>,
    },
    /// Fault injection: process nothing for a while.
    #[cfg(feature = "fault-injection")]
    Freeze {
        duration: Duration,
        /// Hold the TCP link readers too (a whole-process stall).
        readers: bool,
        reply: Reply<()>,
    },
}

impl Manager {
    pub(super) fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Register { name, spec, reply } => {
                let res = self
                    .session
                    .register(&name, spec)
                    .map_err(CmError::from)
                    .map(|id| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let report = Arc::new(ConsumedReport::default());
                        self.clients.insert(
                            id,
                            ClientChannel {
                                tx,
                                report: report.clone(),
                                boundaries: 0,
                            },
                        );
                        (id, rx, report)
                    });
                if let Ok((id, _, _)) = &res {
                    // A client listed in the configuration gets its default ack timeout.
                    let timeout = self
                        .cfg
                        .clients
                        .iter()
                        .find(|c| c.name == name)
                        .and_then(|c| c.ack_timeout_ms)
                        .map(Duration::from_millis);
                    let _ = self.session.set_ack_timeout(*id, timeout);
                    // Placed with the rest of the burst (one pass for all; see PLACE_BATCH).
                    self.to_place
                        .push((*id, spec.bandwidth_mbytes_per_s, spec.latency));
                    self.to_place_at
                        .get_or_insert_with(|| Instant::now() + super::PLACE_BATCH);
                }
                let _ = reply.send(res);
            }
            Command::Connect { id, reply } => {
                let _ = reply.send(self.session.connect(id).map_err(CmError::from));
            }
            Command::Close {
                id,
                immediate,
                reply,
            } => {
                let res = self.session.close(id, immediate).map_err(CmError::from);
                // Flush first so the client sees its final NACKs before its channel closes.
                self.flush(Instant::now());
                if matches!(res, Ok(PortState::Destroyed)) {
                    self.release_client_regions(id);
                    self.client_qps_of_closed_client(id);
                    self.to_place.retain(|(c, _, _)| *c != id);
                    self.clients.remove(&id);
                    self.placement.remove_client(id);
                    self.bytes_fed.remove(&id);
                }
                let _ = reply.send(res);
            }
            Command::Send {
                id,
                payload,
                opts,
                #[cfg(feature = "fault-injection")]
                past_partner_limit,
                reply,
            } => {
                #[cfg(feature = "fault-injection")]
                let res = if past_partner_limit {
                    self.session
                        .send_past_partner_limit(id, payload, opts, Instant::now())
                } else {
                    self.session.send_with(id, payload, opts, Instant::now())
                };
                #[cfg(not(feature = "fault-injection"))]
                let res = self.session.send_with(id, payload, opts, Instant::now());
                let _ = reply.send(res.map_err(CmError::from));
            }
            Command::SetAckTimeout { id, timeout, reply } => {
                let res = self.session.set_ack_timeout(id, timeout);
                let _ = reply.send(res.map_err(CmError::from));
            }
            Command::Reply {
                id,
                seq,
                code,
                reply,
            } => {
                let _ = reply.send(self.session.reply(id, seq, code).map_err(CmError::from));
            }
            Command::Consumed { id } => {
                if let Some(ch) = self.clients.get(&id) {
                    let (boundaries, seq) = ch.report.take();
                    // A report made before the client took the latest Down/PeerSwitched
                    // names a message of an older session: dropped.
                    if boundaries == ch.boundaries {
                        self.session.consumed(id, seq);
                    }
                }
            }
            Command::RegisterRegion {
                id,
                name,
                len,
                reply,
            } => {
                let _ = reply.send(self.register_region(id, &name, len));
            }
            Command::RequestQueuePair { id, reply } => {
                let _ = reply.send(self.request_queue_pair(id));
            }
            Command::ReleaseQueuePair { id, reply } => {
                let _ = reply.send(self.release_queue_pair(id));
            }
            Command::GrowRegion {
                id,
                name,
                len,
                reply,
            } => {
                let _ = reply.send(self.grow_region(id, &name, len));
            }
            Command::ReleaseRegion { id, name, reply } => {
                let _ = reply.send(self.release_region(id, &name));
            }
            Command::ReadRegion {
                id,
                name,
                offset,
                len,
                reply,
            } => {
                let _ = reply.send(self.read_region(id, &name, offset, len));
            }
            Command::PartnerRegions { id, reply } => {
                let regions = self
                    .session
                    .partner_regions(id)
                    .into_iter()
                    .map(|r| (r.name, r.len))
                    .collect();
                let _ = reply.send(Ok(regions));
            }
            Command::WriteRemote {
                id,
                region,
                offset,
                data,
                ack_timeout,
                reply,
            } => {
                let _ = reply.send(self.write_remote(id, &region, offset, data, ack_timeout));
            }
            Command::Status { reply } => {
                // Status shows where every client is: place the ones still waiting for their
                // batch (PLACE_BATCH) first.
                let now = Instant::now();
                self.place_registered(now);
                self.flush(now);
                let _ = reply.send(Ok(self.status()));
            }
            Command::SwitchPeer { reply } => {
                let res = if self.role != Role::Dialer {
                    Err(CmError::NotDialer)
                } else {
                    self.switch_peer(Instant::now())
                        .ok_or(CmError::NoBackupPartner)
                };
                let _ = reply.send(res);
            }
            #[cfg(feature = "fault-injection")]
            Command::Freeze {
                duration,
                readers,
                reply,
            } => {
                let until = Instant::now() + duration;
                self.frozen_until = Some(until);
                self.frozen_tx.send_replace(Some(until));
                if readers {
                    self.readers_held_tx.send_replace(Some(until));
                }
                let _ = reply.send(Ok(()));
            }
            #[cfg(feature = "fault-injection")]
            Command::KillLink { link, reply } => {
                let victim = link.or_else(|| {
                    self.links
                        .iter()
                        .filter(|(_, l)| matches!(l, AnyLink::Tcp(_)))
                        .map(|(id, _)| *id)
                        .min()
                });
                let found = victim.filter(|v| self.links.contains_key(v));
                if let Some(v) = found {
                    self.close_link(v, CloseCause::Killed);
                }
                let _ = reply.send(Ok(found));
            }
        }
    }
}

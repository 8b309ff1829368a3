//! [`ClientHandle`]: one registered client's view of the manager. It stays valid through link
//! losses and resets: the connection state is reported as events, never by invalidating the
//! handle.

use crate::consumed::{is_boundary, ConsumedReport};
use crate::error::CmError;
use crate::manager::Command;
use bytes::Bytes;
use peercm_cm_proto::port::PortState;
use peercm_cm_proto::session::{ClientEvent, ClientId, ClientSpec, SendOptions};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A registered client.
#[derive(Debug)]
pub struct ClientHandle {
    id: ClientId,
    name: String,
    spec: ClientSpec,
    cmd: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    /// The latest message taken, for the manager (see [`crate::consumed`]).
    report: Arc<ConsumedReport>,
    /// Session boundaries (`Down`, `PeerSwitched`) taken so far.
    boundaries: u64,
    /// Set once a `close` destroyed the port: every later call is [`CmError::ClientClosed`]
    /// (the manager has forgotten the id, so asking it would only say "unknown client").
    closed: AtomicBool,
    span: tracing::Span,
}

impl ClientHandle {
    pub(crate) fn new(
        id: ClientId,
        name: String,
        spec: ClientSpec,
        cmd: mpsc::UnboundedSender<Command>,
        events: mpsc::UnboundedReceiver<ClientEvent>,
        report: Arc<ConsumedReport>,
    ) -> Self {
        let span = tracing::info_span!("client", name = %name, id = id.get());
        ClientHandle {
            id,
            name,
            spec,
            cmd,
            events,
            report,
            boundaries: 0,
            closed: AtomicBool::new(false),
            span,
        }
    }

    /// The client's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The spec it registered with.
    pub fn spec(&self) -> ClientSpec {
        self.spec
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CmError>>) -> Command,
    ) -> Result<T, CmError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(CmError::ClientClosed);
        }
        let (tx, rx) = oneshot::channel();
        self.cmd.send(make(tx)).map_err(|_| CmError::Stopped)?;
        rx.await.map_err(|_| CmError::Stopped)?
    }

    /// Use-counted connect: CONNECTING until the partner's namesake is reachable, then an `Up`
    /// event and CONNECTED.
    pub async fn connect(&self) -> Result<PortState, CmError> {
        let _g = self.span.enter();
        self.ask(|reply| Command::Connect { id: self.id, reply })
            .await
    }

    /// Sends with the registered send model. Returns the send id (unique for the life of this
    /// handle, across resets and partner switches; not the wire sequence number); its
    /// completion arrives as an `Acked`, `Transmitted` or `Nacked` event. Fails fast while the
    /// connection is down; never fails for flow control (watch `FlowControl` events instead).
    pub async fn send(&self, payload: Bytes) -> Result<u64, CmError> {
        self.send_with(payload, self.spec.model).await
    }

    /// Sends with per-send options: a send model (a [`crate::SendModel`] converts into
    /// options), and an acknowledgement timeout of its own overriding the client's default
    /// ([`ClientHandle::set_ack_timeout`]).
    pub async fn send_with(
        &self,
        payload: Bytes,
        opts: impl Into<SendOptions>,
    ) -> Result<u64, CmError> {
        let opts = opts.into();
        self.ask(|reply| Command::Send {
            id: self.id,
            payload,
            opts,
            #[cfg(feature = "fault-injection")]
            past_partner_limit: false,
            reply,
        })
        .await
    }

    /// Fault injection: sends without the check against the partner's `max_payload_bytes`
    /// (this node's own limit still applies), so a message the partner must refuse as too
    /// large goes on the wire, as from a node that does not know that limit.
    #[cfg(feature = "fault-injection")]
    pub async fn send_past_partner_limit(
        &self,
        payload: Bytes,
        opts: impl Into<SendOptions>,
    ) -> Result<u64, CmError> {
        let opts = opts.into();
        self.ask(|reply| Command::Send {
            id: self.id,
            payload,
            opts,
            past_partner_limit: true,
            reply,
        })
        .await
    }

    /// Sets this client's default acknowledgement timeout for its later sync and async sends
    /// (`None`: wait for ever; the initial value is the configuration's `[[clients]]
    /// ack_timeout_ms` for this name, if any). A send not acknowledged in time completes with
    /// `Nacked { reason: Timeout }`; a completion that comes later is dropped and counted
    /// (`late_completions` in the node's status).
    pub async fn set_ack_timeout(&self, timeout: Option<Duration>) -> Result<(), CmError> {
        self.ask(|reply| Command::SetAckTimeout {
            id: self.id,
            timeout,
            reply,
        })
        .await
    }

    /// Registers a **region** of `len` bytes named `name` (unique for this client): the file
    /// `<[regions] dir>/<client>/<name>.region`, created zeroed or reopened with its contents
    /// (its size must then be `len`), mapped, registered on the node's RDMA devices and
    /// advertised to the partner, whose namesake client can then write into it one-sided
    /// ([`ClientHandle::write_remote`]). Refused with a typed error without `[regions] dir`,
    /// beyond `[regions] max_bytes` or the region limits, for a bad name, or a file of another
    /// size.
    pub async fn register_region(
        &self,
        name: &str,
        len: u64,
    ) -> Result<crate::regions::LocalRegionInfo, CmError> {
        let _g = self.span.enter();
        let name = name.to_string();
        self.ask(|reply| Command::RegisterRegion {
            id: self.id,
            name,
            len,
            reply,
        })
        .await
    }

    /// Asks for a queue pair of this client's own \[CCM\]: its sends and writes then travel on
    /// a queue pair no other client uses (no head-of-line blocking behind their frames), set
    /// up on the RDMA rail the client is placed on, with the partner's namesake client, and
    /// set up again on the new rail when the client migrates. Until it is up (and whenever it
    /// is lost) the client's traffic uses the rail's shared queue pair: nothing waits for it.
    /// On TCP there is none; it comes once the client is on a rail. The status shows it
    /// (`own_queue_pair`). Refused with [`CmError::QueuePairLimit`] beyond `[verbs]
    /// max_client_qps`; the partner may refuse it too (no namesake client, or its own limit):
    /// then it is offered again every `rail_retry_interval_ms`. Asking twice is one request.
    pub async fn request_queue_pair(&self) -> Result<(), CmError> {
        self.ask(|reply| Command::RequestQueuePair { id: self.id, reply })
            .await
    }

    /// Lets this client's own queue pair go (closed now; its traffic goes back to the shared
    /// queue pair of its rail). Not an error if it holds none.
    pub async fn release_queue_pair(&self) -> Result<(), CmError> {
        self.ask(|reply| Command::ReleaseQueuePair { id: self.id, reply })
            .await
    }

    /// Grows this client's region `name` to `len` bytes \[CCM\]: its file grows (the new bytes
    /// are zero, the old ones kept), the grown mapping is registered on the node's RDMA
    /// devices and advertised to the partner with the new length. Until the partner has the
    /// new advertisement (a `PartnerRegion` event there) it writes within the old length, which
    /// stays registered, so no write in flight fails. Refused with a typed error and nothing
    /// changed for an unknown region, a size not above the current one, or one beyond
    /// `[regions] max_bytes` or the region limits. A region declared in `[[clients.regions]]`
    /// keeps its new size on disk: raise `len_bytes` to match, or the next start refuses it
    /// (size mismatch).
    pub async fn grow_region(
        &self,
        name: &str,
        len: u64,
    ) -> Result<crate::regions::LocalRegionInfo, CmError> {
        let _g = self.span.enter();
        let name = name.to_string();
        self.ask(|reply| Command::GrowRegion {
            id: self.id,
            name,
            len,
            reply,
        })
        .await
    }

    /// Releases this client's region `name`: the partner's writes into it are refused from
    /// now on; the file stays with its contents.
    pub async fn release_region(&self, name: &str) -> Result<(), CmError> {
        let name = name.to_string();
        self.ask(|reply| Command::ReleaseRegion {
            id: self.id,
            name,
            reply,
        })
        .await
    }

    /// Reads `len` bytes at `offset` of this client's own region `name` (what the partner
    /// wrote there).
    pub async fn read_region(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, CmError> {
        let name = name.to_string();
        self.ask(|reply| Command::ReadRegion {
            id: self.id,
            name,
            offset,
            len,
            reply,
        })
        .await
    }

    /// The regions the partner's namesake holds now, by name and length (each also arrives
    /// as a `PartnerRegion` event).
    pub async fn partner_regions(&self) -> Result<Vec<(String, u64)>, CmError> {
        self.ask(|reply| Command::PartnerRegions { id: self.id, reply })
            .await
    }

    /// Writes `data` at `offset` of the partner namesake's region `region`, one-sided: an RDMA
    /// WRITE on this client's rail when the partner registered the region there, otherwise a
    /// WRITE frame the partner's manager places. Returns the write's id (the same id space as
    /// sends); it completes with `Acked { code: None }` once the bytes are in the partner's
    /// region, or `Nacked` (refused there, connection lost, timeout, `Fenced` by a switch to
    /// another partner). Ordered with this client's sends: a send made after it is delivered
    /// after it is placed. Refused at once (typed error, nothing sent) outside the region, for
    /// an unknown, released or fenced region, an empty write, or one that does not fit one
    /// frame (`max_payload_bytes` minus 12 bytes).
    pub async fn write_remote(
        &self,
        region: &str,
        offset: u64,
        data: Bytes,
    ) -> Result<u64, CmError> {
        self.write_remote_with(region, offset, data, None).await
    }

    /// [`ClientHandle::write_remote`] with an acknowledgement timeout of its own (`None`: the
    /// client's default).
    pub async fn write_remote_with(
        &self,
        region: &str,
        offset: u64,
        data: Bytes,
        ack_timeout: Option<Duration>,
    ) -> Result<u64, CmError> {
        let region = region.to_string();
        self.ask(|reply| Command::WriteRemote {
            id: self.id,
            region,
            offset,
            data,
            ack_timeout,
            reply,
        })
        .await
    }

    /// Answers a synchronous message with a return code (delivered to the sender's `Acked`).
    pub async fn reply(&self, seq: u64, code: i32) -> Result<(), CmError> {
        self.ask(|reply| Command::Reply {
            id: self.id,
            seq,
            code,
            reply,
        })
        .await
    }

    /// The next event; `None` once the client is destroyed or the node stopped. Taking a
    /// `Data` event is what acknowledges the partner's async send of it.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        let ev = self.events.recv().await;
        self.after_event(&ev);
        ev
    }

    /// The next event if one is ready.
    pub fn try_next_event(&mut self) -> Option<ClientEvent> {
        let ev = self.events.try_recv().ok();
        self.after_event(&ev);
        ev
    }

    /// Taking a message is what the partner's async send waits for (and what grants it
    /// credit): every take is reported to the manager, at most one command at a time (see
    /// [`crate::consumed`]), and its session coalesces the reports into few frames (see
    /// `SessionConfig::consumed_report_interval`).
    fn after_event(&mut self, ev: &Option<ClientEvent>) {
        if let Some(ClientEvent::Data { seq, .. }) = ev {
            let send = self.report.record(self.boundaries, *seq);
            if send {
                let _ = self.cmd.send(Command::Consumed { id: self.id });
            }
        } else if ev.as_ref().is_some_and(is_boundary) {
            self.boundaries += 1;
        }
    }

    /// Controlled close: drops one use; the last one destroys the port (outstanding sends are
    /// NACKed with `Closed`).
    pub async fn close(&self) -> Result<PortState, CmError> {
        let res = self
            .ask(|reply| Command::Close {
                id: self.id,
                immediate: false,
                reply,
            })
            .await;
        self.note_closed(&res);
        res
    }

    fn note_closed(&self, res: &Result<PortState, CmError>) {
        if matches!(res, Ok(PortState::Destroyed)) {
            self.closed.store(true, Ordering::Release);
        }
    }

    /// Switches the node to the next partner in its configured order (partner, then backups).
    /// For clients of a node with `autoswitch = false`: after a `Down` event they decide when
    /// the partner is gone for good \[CDP\]. Returns the new partner's address; the client sees
    /// `Up` once the new partner's namesake is reachable and resends what was NACKed.
    pub async fn switch_peer(&self) -> Result<String, CmError> {
        self.ask(|reply| Command::SwitchPeer { reply }).await
    }

    /// Immediate close, whatever the use count.
    pub async fn close_immediate(&self) -> Result<PortState, CmError> {
        let res = self
            .ask(|reply| Command::Close {
                id: self.id,
                immediate: true,
                reply,
            })
            .await;
        self.note_closed(&res);
        res
    }
}

//! The node's timeline: the notable events a node keeps for `peercm status` (link up and lost,
//! rails found, device events, client moves, partner switches, fencing), each a typed
//! [`NodeEvent`]. Its `Display` is the sentence operators read; in JSON an entry carries both the
//! typed event (`"event": {"kind": ..., fields}`) and that sentence (`"what"`).

use crate::status::{RdmaUnavailable, TransportKind};
use peercm_cm_proto::placement::MoveReason;
use peercm_cm_proto::session::{DownReason, InterconnectId, LinkId};
use peercm_verbs_shim::AsyncEvent;
use serde::Serialize;
use std::fmt;

/// A notable event, with when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    /// Milliseconds since the node started.
    pub at_ms: u64,
    /// What happened.
    pub event: NodeEvent,
    /// `event` as a sentence, for humans.
    pub what: String,
}

impl TimelineEntry {
    /// An entry for `event` at `at_ms`.
    pub fn new(at_ms: u64, event: NodeEvent) -> Self {
        let what = event.to_string();
        TimelineEntry { at_ms, event, what }
    }
}

/// Why the manager itself closed a link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CloseCause {
    /// The partner broke the protocol on it.
    ProtocolViolation {
        /// The violation.
        detail: String,
    },
    /// The partner offered its rail again, so the link held there is dead.
    RailReoffered,
    /// A new RDMA link got no activation round trip in time (`rail_offer_timeout_ms`).
    NotActivated,
    /// The link refused a one-sided write the session handed it (its write-staging region
    /// is smaller than the write): closed, so the session replays the write, with its bytes,
    /// on another link.
    OneSidedRefused,
    /// A client's own queue pair that is no longer wanted: its client let it go, closed, or
    /// moved to another interconnect (a new one is set up there).
    ClientQpReleased,
    /// A test asked for it (fault injection).
    Killed,
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseCause::ProtocolViolation { detail } => write!(f, "protocol violation: {detail}"),
            CloseCause::RailReoffered => f.write_str("partner re-offered its rail"),
            CloseCause::NotActivated => f.write_str("no activation round trip in time"),
            CloseCause::OneSidedRefused => f.write_str("refused a one-sided write"),
            CloseCause::ClientQpReleased => f.write_str("client queue pair no longer wanted"),
            CloseCause::Killed => f.write_str("killed on request (fault injection)"),
        }
    }
}

/// Something the node did or saw that operators want to know about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeEvent {
    /// At start: RDMA cannot be used at all; TCP only.
    VerbsUnavailable {
        /// Why.
        reason: RdmaUnavailable,
    },
    /// At start: an HCA port found and numbered as a rail.
    RailFound {
        /// The rail.
        rail: InterconnectId,
        /// Its device.
        device: String,
        /// Its port.
        port: u8,
        /// Its capacity, Mb/s.
        capacity_mbits_per_s: u32,
        /// Whether the port was ACTIVE.
        active: bool,
    },
    /// A TCP link completed its handshake and joined the session.
    TcpLinkUp {
        /// The link.
        link: LinkId,
        /// This node dialed it (else accepted it).
        dialed: bool,
        /// The remote address.
        remote: String,
        /// The partner's node id.
        peer: String,
    },
    /// The partner announced no RDMA rail.
    PartnerHasNoRdma,
    /// An RDMA link joined the session.
    RdmaLinkUp {
        /// The link.
        link: LinkId,
        /// Its rail.
        rail: InterconnectId,
    },
    /// A link closed on its own.
    LinkLost {
        /// The link.
        link: LinkId,
        /// Its transport.
        transport: TransportKind,
        /// Why, as the transport reported it.
        reason: String,
    },
    /// The manager closed a link.
    LinkClosed {
        /// The link.
        link: LinkId,
        /// Why.
        cause: CloseCause,
    },
    /// The session judged a link dead: nothing arrived on it for the link timeout.
    LinkSilent {
        /// The link.
        link: LinkId,
        /// Its transport.
        transport: TransportKind,
        /// The link timeout, ms.
        silent_ms: u64,
    },
    /// An RDMA link was fenced: its receive ring deregistered, the partner's writes now fail.
    RdmaLinkFenced {
        /// The link.
        link: LinkId,
    },
    /// A rail link failed before its activation round trip (lost, or unanswered): the rail
    /// is failing and the next offer waits `retry_in_ms`.
    RailAttemptFailed {
        /// The rail.
        rail: InterconnectId,
        /// Failed attempts in a row.
        failures: u32,
        /// Backoff before the next offer, ms (dialer; the acceptor waits for offers).
        retry_in_ms: u64,
        /// Why it failed.
        reason: String,
    },
    /// A fenced RDMA link finally closed.
    FencedLinkClosed {
        /// The link.
        link: LinkId,
        /// Why, as the link reported it.
        reason: String,
    },
    /// An HCA reported an async event.
    DeviceEvent {
        /// The device.
        device: String,
        /// The event.
        event: AsyncEvent,
        /// The rails on that device.
        rails: Vec<InterconnectId>,
    },
    /// The placement policy moved a client.
    ClientMoved {
        /// The client's name.
        client: String,
        /// From (None: the client was not placed yet).
        from: Option<InterconnectId>,
        /// To.
        to: InterconnectId,
        /// Why.
        reason: MoveReason,
    },
    /// A client's port came up.
    ClientUp {
        /// The client's name.
        client: String,
    },
    /// A client's port went down.
    ClientDown {
        /// The client's name.
        client: String,
        /// Why.
        reason: DownReason,
    },
    /// No link to the partner for the detection window.
    PartnerUnreachable {
        /// How long, ms.
        for_ms: u64,
    },
    /// Switching to the next partner in the configured order.
    SwitchingPartner {
        /// The new partner's address.
        to: String,
        /// The session epoch before the switch.
        epoch: u64,
    },
}

impl fmt::Display for NodeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeEvent::VerbsUnavailable { reason } => {
                write!(f, "verbs unavailable, using TCP: {reason}")
            }
            NodeEvent::RailFound {
                rail,
                device,
                port,
                capacity_mbits_per_s,
                active,
            } => {
                let state = if *active { "ACTIVE" } else { "down" };
                write!(
                    f,
                    "rail {rail}: {device} port {port} ({capacity_mbits_per_s} Mb/s, {state})"
                )
            }
            NodeEvent::TcpLinkUp {
                link,
                dialed,
                remote,
                peer,
            } => {
                let how = if *dialed { "dialed" } else { "accepted" };
                write!(f, "link {link} up ({how} {remote}, peer {peer})")
            }
            NodeEvent::PartnerHasNoRdma => f.write_str("partner offers no RDMA: using TCP"),
            NodeEvent::RdmaLinkUp { link, rail } => write!(f, "rdma link {link} up on rail {rail}"),
            NodeEvent::LinkLost {
                link,
                transport,
                reason,
            } => write!(f, "{transport} link {link} lost: {reason}"),
            NodeEvent::LinkClosed { link, cause } => write!(f, "link {link} closed: {cause}"),
            NodeEvent::LinkSilent {
                link,
                transport,
                silent_ms,
            } => write!(
                f,
                "{transport} link {link} closed: silent for {silent_ms} ms"
            ),
            NodeEvent::RdmaLinkFenced { link } => write!(f, "rdma link {link} fenced"),
            NodeEvent::RailAttemptFailed {
                rail,
                failures,
                retry_in_ms,
                reason,
            } => write!(
                f,
                "rail {rail} failing ({failures} in a row: {reason}); next offer in {retry_in_ms} ms"
            ),
            NodeEvent::FencedLinkClosed { link, reason } => {
                write!(f, "fenced rdma link {link} closed: {reason}")
            }
            NodeEvent::DeviceEvent {
                device,
                event,
                rails,
            } => write!(f, "{device}: {event:?} (rails {rails:?})"),
            NodeEvent::ClientMoved {
                client,
                from,
                to,
                reason,
            } => write!(
                f,
                "client {client}: {} -> {} ({reason:?})",
                ic_name(*from),
                ic_name(Some(*to))
            ),
            NodeEvent::ClientUp { client } => write!(f, "client {client}: Up"),
            NodeEvent::ClientDown { client, reason } => {
                write!(f, "client {client}: Down {{ reason: {reason:?} }}")
            }
            NodeEvent::PartnerUnreachable { for_ms } => {
                write!(f, "partner unreachable for {for_ms} ms")
            }
            NodeEvent::SwitchingPartner { to, epoch } => {
                write!(f, "switching partner to {to} (epoch after {epoch})")
            }
        }
    }
}

/// How an interconnect is named for operators: `tcp`, `rail k`, or `unplaced`.
pub(crate) fn ic_name(ic: Option<InterconnectId>) -> String {
    match ic {
        None => "unplaced".into(),
        Some(InterconnectId::TCP) => "tcp".into(),
        Some(r) => format!("rail {r}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_carries_the_typed_event_and_its_sentence() {
        let e = TimelineEntry::new(
            1200,
            NodeEvent::ClientMoved {
                client: "mirror".into(),
                from: Some(InterconnectId::rail(1)),
                to: InterconnectId::TCP,
                reason: MoveReason::FallbackToTcp,
            },
        );
        assert_eq!(e.what, "client mirror: rail 1 -> tcp (FallbackToTcp)");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["at_ms"], 1200);
        assert_eq!(v["event"]["kind"], "client_moved");
        assert_eq!(v["event"]["reason"], "FallbackToTcp");
        assert_eq!(v["what"], e.what);
        let closed = NodeEvent::LinkClosed {
            link: LinkId::new(7),
            cause: CloseCause::RailReoffered,
        };
        assert_eq!(
            closed.to_string(),
            "link 7 closed: partner re-offered its rail"
        );
        let v = serde_json::to_value(&closed).unwrap();
        assert_eq!(v["cause"]["kind"], "rail_reoffered");
    }
}

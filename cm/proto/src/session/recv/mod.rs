//! Receive side: [`Session::handle_frame`] drops frames that predate the current reset, then
//! hands each frame to the one receive function of its message type:
//! - `reset`: HEARTBEAT, RESET, RESET-ACK and READY (epochs and session state);
//! - `announce`: CLIENT-UP and CLIENT-DOWN (the partner's clients);
//! - `data`: DATA (delivery to local clients);
//! - `ack`: ACK, NACK and FLOW (send completions and credit);
//! - `transport`: TRANSPORT (setup messages for the partner's manager);
//! - `region`: REGION (the partner's regions) and the placement of WRITEs (which `data`
//!   receives like DATA, in stream order);
//! - `oversize`: a frame above `max_payload_bytes` that the link's reader skipped
//!   ([`Session::handle_oversize`]);
//! - here: the handshake messages, which are a violation on an established link.

mod ack;
mod announce;
mod data;
mod oversize;
mod region;
mod reset;
mod transport;

use super::Session;
use super::{LinkId, ProtocolViolation};
use crate::frame::{Frame, MsgType};
use std::time::Instant;

impl Session {
    /// Handles one frame received on `link`. An error means the partner broke the protocol:
    /// the runtime logs it and closes the link (the session treats that as a link loss).
    pub fn handle_frame(
        &mut self,
        link: LinkId,
        frame: Frame,
        now: Instant,
    ) -> Result<(), ProtocolViolation> {
        let Some(l) = self.links.get_mut(&link) else {
            return Ok(()); // late frame from a link already dropped
        };
        l.last_rx = now;
        self.clock = now;
        self.stats.frames_in += 1;
        let res = self.dispatch(link, frame);
        if res.is_err() {
            self.stats.violations += 1;
        }
        res
    }

    fn dispatch(&mut self, link: LinkId, frame: Frame) -> Result<(), ProtocolViolation> {
        let h = frame.header;
        let carries_epoch = matches!(
            h.msg_type,
            MsgType::Heartbeat | MsgType::Reset | MsgType::ResetAck
        );
        let handshake = matches!(
            h.msg_type,
            MsgType::Hello
                | MsgType::Challenge
                | MsgType::Auth
                | MsgType::Welcome
                | MsgType::Refuse
                | MsgType::Identify
        );
        let current = self
            .links
            .get(&link)
            .is_some_and(|l| l.peer_epoch == Some(self.epoch));
        if !carries_epoch && !handshake && !current {
            // Sent before the partner learned of the current reset (or before it announced its
            // epoch on this link): it belongs to a session state that no longer exists.
            tracing::debug!(
                link = link.get(),
                msg = ?h.msg_type,
                "stale frame from before a reset dropped"
            );
            return Ok(());
        }
        match h.msg_type {
            MsgType::Hello
            | MsgType::Challenge
            | MsgType::Auth
            | MsgType::Welcome
            | MsgType::Refuse
            | MsgType::Identify => Self::recv_handshake(h.msg_type),
            MsgType::Heartbeat => self.recv_heartbeat(link, h),
            MsgType::Reset => self.recv_reset(link, h),
            MsgType::ResetAck => self.recv_reset_ack(link, h),
            MsgType::Ready => self.recv_ready(),
            MsgType::ClientUp => self.recv_client_up(&frame.payload),
            MsgType::ClientDown => self.recv_client_down(&frame.payload),
            MsgType::Data => self.recv_data(frame),
            MsgType::Ack => self.recv_ack(frame),
            MsgType::Nack => self.recv_nack(frame),
            MsgType::Flow => self.recv_flow(h),
            MsgType::Transport => self.recv_transport(link, frame.payload),
            MsgType::Region => self.recv_region(frame),
            MsgType::Write => {
                let tcp = self
                    .links
                    .get(&link)
                    .is_some_and(|l| l.interconnect == crate::ids::InterconnectId::TCP);
                if tcp && frame.payload.len() <= crate::region::wire::WRITE_HEADER_BYTES {
                    // A marker says "placed by RDMA WRITE": impossible on TCP.
                    return Err(ProtocolViolation::Region(
                        crate::region::RegionError::Malformed {
                            what: "WRITE",
                            detail: format!(
                                "{} bytes on a TCP link: no data to place",
                                frame.payload.len()
                            ),
                        },
                    ));
                }
                self.recv_data(frame)
            }
        }
    }

    /// HELLO, CHALLENGE, AUTH, WELCOME, REFUSE: the handshake is over on an established link.
    fn recv_handshake(msg_type: MsgType) -> Result<(), ProtocolViolation> {
        Err(ProtocolViolation::Unexpected(msg_type))
    }
}

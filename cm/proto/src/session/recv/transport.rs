//! TRANSPORT: an opaque setup message (RDMA endpoint offer or answer) for the runtime.

use crate::control;
use crate::session::Session;
use crate::session::{LinkId, ProtocolViolation, SessionState, MAX_TRANSPORT_PAYLOAD_BYTES};
use bytes::Bytes;

impl Session {
    /// TRANSPORT: queued for [`Session::poll_transport`] while the session is up.
    pub(super) fn recv_transport(
        &mut self,
        link: LinkId,
        payload: Bytes,
    ) -> Result<(), ProtocolViolation> {
        if payload.len() > MAX_TRANSPORT_PAYLOAD_BYTES {
            return Err(ProtocolViolation::Control(
                control::ControlError::OutOfBounds {
                    what: "TRANSPORT payload",
                    detail: format!("{} bytes > {MAX_TRANSPORT_PAYLOAD_BYTES}", payload.len()),
                },
            ));
        }
        if self.state == SessionState::Up {
            self.transport_in.push_back((link, payload));
        } else {
            tracing::debug!(
                link = link.get(),
                "TRANSPORT before the session is up dropped"
            );
        }
        Ok(())
    }
}

//! CLIENT-UP and CLIENT-DOWN: which incarnation of each partner client is live, and the
//! retirement of closed ones (late copies from slower links are ignored).

use crate::control::{self, ClientAnnounce, ClientGone, ControlError, MAX_CLIENTS_PER_NODE};
use crate::session::{ClientEvent, PeerClient, Session};
use crate::session::{PeerClientId, ProtocolViolation};
use bytes::Bytes;

impl Session {
    /// CLIENT-UP: a partner client (incarnation) announces itself and its receive window.
    pub(super) fn recv_client_up(&mut self, payload: &Bytes) -> Result<(), ProtocolViolation> {
        let a: ClientAnnounce = control::decode("CLIENT-UP", payload)?;
        control::validate_name("client name", &a.name)?;
        // The partner's own number for its client: frames we send to it carry this.
        let a_id = PeerClientId::new(a.id);
        if self.peer_retired.get(&a.name).is_some_and(|&r| a_id <= r) {
            return Ok(()); // a late copy of a closed incarnation's announcement
        }
        match self.peer_clients.get(&a.name) {
            Some(p) if p.id == a_id => return Ok(()), // another link's copy
            Some(p) if p.id > a_id => return Ok(()),  // older than what we know
            Some(p) => {
                // A newer incarnation is announced before the old one's CLIENT-DOWN
                // arrived (it travels on a slower link): retire the old one now.
                let old = p.id;
                self.retire_peer_client(&a.name, old);
            }
            None if self.peer_clients.len() >= MAX_CLIENTS_PER_NODE => {
                // A conforming partner refuses its client beyond the limit at `register`.
                return Err(ProtocolViolation::Control(ControlError::OutOfBounds {
                    what: "partner clients",
                    detail: format!(
                        "client {:?} would be the partner's client number {}, above the limit of {MAX_CLIENTS_PER_NODE}",
                        a.name,
                        self.peer_clients.len() + 1
                    ),
                }));
            }
            None => {}
        }
        self.peer_clients.insert(
            a.name.clone(),
            PeerClient {
                id: a_id,
                window: a.recv_window,
            },
        );
        if let Some(&id) = self.by_name.get(&a.name) {
            self.refresh_path(id);
            // Regions of this client that arrived before its announcement (on another link):
            // the namesake learns of them now.
            let early: Vec<ClientEvent> = self
                .partner_table
                .of_client(a_id)
                .map(|r| ClientEvent::PartnerRegion {
                    name: r.name.clone(),
                    len: r.len,
                    available: true,
                })
                .collect();
            for ev in early {
                self.events.push_back((id, ev));
            }
        }
        Ok(())
    }

    /// CLIENT-DOWN: a partner client incarnation closed.
    pub(super) fn recv_client_down(&mut self, payload: &Bytes) -> Result<(), ProtocolViolation> {
        let gone: ClientGone = control::decode("CLIENT-DOWN", payload)?;
        control::validate_name("client name", &gone.name)?;
        self.retire_peer_client(&gone.name, PeerClientId::new(gone.id));
        Ok(())
    }

    /// The partner closed incarnation `id` of client `name`: NACK what our namesake had
    /// outstanding, tell it Down, and start both streams over (the next incarnation begins at
    /// sequence 1). Idempotent; an id that is not the current one only raises the retired mark.
    fn retire_peer_client(&mut self, name: &str, id: PeerClientId) {
        let retired = self
            .peer_retired
            .entry(name.to_string())
            .or_insert(PeerClientId::new(0));
        *retired = (*retired).max(id);
        // Its regions went with it.
        self.partner_table.client_gone(id);
        if self.peer_clients.get(name).is_some_and(|p| p.id == id) {
            self.peer_clients.remove(name);
            if let Some(&local) = self.by_name.get(name) {
                self.refresh_path(local);
                if let Some(c) = self.clients.get_mut(&local) {
                    c.send.reset(0);
                    c.recv.reset();
                }
            }
        }
    }
}

//! The NVRAM-log mirroring client \[CDP\]\[CCM\].
//!
//! The production node appends log records; a record is *mirrored* only when the partner's
//! mirroring client has stored it and returned code [`CODE_STORED`] (synchronous send model).
//! [`MirrorSender::mirrored_upto`] is the LSN up to which every record is on the partner: the
//! point up to which the storage system may acknowledge host writes.
//!
//! When the connection drops, records the manager NACKs are kept and resent in LSN order once
//! the connection is back; the receiver stores by LSN, so a record that did arrive before the
//! loss is recognised and answered again without being stored twice.

use crate::record::{self, RecordError};
use bytes::Bytes;
use peercm_cm_manager::{ClientEvent, ClientHandle, CmError};
use std::collections::{BTreeMap, VecDeque};
use thiserror::Error;

/// Receiver's code: stored (or already held).
pub const CODE_STORED: i32 = 0;
/// Receiver's code: the record failed its CRC.
pub const CODE_CORRUPT: i32 = 1;
/// Receiver's code: the record is not the next one expected (a gap).
pub const CODE_GAP: i32 = 2;

/// The mirror cannot continue.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// The partner refused a record.
    #[error("partner refused record {lsn} with code {code}")]
    Refused {
        /// The record.
        lsn: u64,
        /// The partner's code.
        code: i32,
    },
    /// The manager refused a command.
    #[error(transparent)]
    Cm(#[from] CmError),
    /// The node stopped.
    #[error("the node stopped")]
    Stopped,
}

/// Counters of a sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Records appended.
    pub appended: u64,
    /// Records confirmed stored by the partner.
    pub mirrored: u64,
    /// Records resent after a NACK.
    pub resent: u64,
    /// Connection-down events seen.
    pub downs: u64,
    /// Times the manager moved this client to another interconnect (nothing to resend).
    pub migrations: u64,
    /// Times the manager switched to a backup partner (it resent what was unacknowledged).
    pub peer_switches: u64,
}

/// The production side.
#[derive(Debug)]
pub struct MirrorSender {
    handle: ClientHandle,
    next_lsn: u64,
    /// sequence number of the in-flight send -> LSN
    in_flight: BTreeMap<u64, u64>,
    /// LSN -> data, for everything not yet mirrored
    pending: BTreeMap<u64, Bytes>,
    /// LSNs waiting to be (re)sent, in order
    to_send: VecDeque<u64>,
    mirrored: std::collections::BTreeSet<u64>,
    mirrored_upto: u64,
    up: bool,
    stats: SenderStats,
}

impl MirrorSender {
    /// Wraps a registered, connected client (sync send model).
    pub fn new(handle: ClientHandle) -> Self {
        MirrorSender {
            handle,
            next_lsn: 1,
            in_flight: BTreeMap::new(),
            pending: BTreeMap::new(),
            to_send: VecDeque::new(),
            mirrored: Default::default(),
            mirrored_upto: 0,
            up: false,
            stats: SenderStats::default(),
        }
    }

    /// Every record up to this LSN is held by the partner.
    pub fn mirrored_upto(&self) -> u64 {
        self.mirrored_upto
    }

    /// Counters.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// Appends a record; returns its LSN. It is sent now if the connection is up, or as soon as
    /// it is.
    pub async fn append(&mut self, data: Bytes) -> Result<u64, MirrorError> {
        let lsn = self.next_lsn;
        self.next_lsn += 1;
        self.stats.appended += 1;
        self.pending.insert(lsn, data);
        self.to_send.push_back(lsn);
        self.pump().await?;
        Ok(lsn)
    }

    async fn pump(&mut self) -> Result<(), MirrorError> {
        while self.up {
            let Some(&lsn) = self.to_send.front() else {
                break;
            };
            let Some(data) = self.pending.get(&lsn) else {
                self.to_send.pop_front();
                continue;
            };
            match self.handle.send(record::encode(lsn, data)).await {
                Ok(seq) => {
                    self.to_send.pop_front();
                    self.in_flight.insert(seq, lsn);
                }
                Err(CmError::Session(_)) => {
                    // Not connected (the Down event is queued): wait for Up.
                    self.up = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Handles one event.
    async fn on_event(&mut self, ev: ClientEvent) -> Result<(), MirrorError> {
        match ev {
            ClientEvent::Up => {
                self.up = true;
                self.pump().await?;
            }
            ClientEvent::Down { .. } => {
                self.up = false;
                self.stats.downs += 1;
            }
            ClientEvent::Acked { seq, code } => {
                if let Some(lsn) = self.in_flight.remove(&seq) {
                    match code {
                        Some(CODE_STORED) | None => {
                            self.pending.remove(&lsn);
                            self.mirrored.insert(lsn);
                            self.stats.mirrored += 1;
                            while self.mirrored.remove(&(self.mirrored_upto + 1)) {
                                self.mirrored_upto += 1;
                            }
                        }
                        Some(code) => return Err(MirrorError::Refused { lsn, code }),
                    }
                }
            }
            ClientEvent::Nacked { seq, .. } => {
                if let Some(lsn) = self.in_flight.remove(&seq) {
                    // Resend in LSN order, ahead of records never sent.
                    let pos = self
                        .to_send
                        .iter()
                        .position(|&l| l > lsn)
                        .unwrap_or(self.to_send.len());
                    self.to_send.insert(pos, lsn);
                    self.stats.resent += 1;
                }
            }
            ClientEvent::Data {
                seq, reply_needed, ..
            } => {
                // Records flow one way; a record sent to the production side is refused.
                if reply_needed {
                    self.handle.reply(seq, CODE_GAP).await?;
                }
            }
            ClientEvent::Migrated { .. } => self.stats.migrations += 1,
            ClientEvent::PeerSwitched { .. } => self.stats.peer_switches += 1,
            ClientEvent::Transmitted { .. }
            | ClientEvent::FlowControl { .. }
            | ClientEvent::PartnerRegion { .. } => {}
        }
        Ok(())
    }

    async fn step(&mut self) -> Result<(), MirrorError> {
        match self.handle.next_event().await {
            Some(ev) => self.on_event(ev).await,
            None => Err(MirrorError::Stopped),
        }
    }

    /// Waits until the connection is up.
    pub async fn wait_up(&mut self) -> Result<(), MirrorError> {
        while !self.up {
            self.step().await?;
        }
        Ok(())
    }

    /// Processes events until every record up to `lsn` is mirrored.
    pub async fn wait_mirrored(&mut self, lsn: u64) -> Result<(), MirrorError> {
        while self.mirrored_upto < lsn {
            self.step().await?;
        }
        Ok(())
    }

    /// Processes whatever events are ready without waiting.
    pub async fn poll(&mut self) -> Result<(), MirrorError> {
        while let Some(ev) = self.handle.try_next_event() {
            self.on_event(ev).await?;
        }
        Ok(())
    }
}

/// Counters of a receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Records stored.
    pub stored: u64,
    /// Resent records recognised as already held (answered, not stored again).
    pub duplicates: u64,
    /// Records refused for a bad CRC.
    pub corrupt: u64,
    /// Records refused because an earlier one is missing.
    pub gaps: u64,
    /// Bytes of record data stored.
    pub bytes: u64,
}

/// The partner side: holds the mirrored log in memory (a ring of the newest records).
#[derive(Debug)]
pub struct MirrorReceiver {
    handle: ClientHandle,
    held: VecDeque<(u64, Bytes)>,
    capacity: usize,
    next_lsn: u64,
    digest: u32,
    stats: ReceiverStats,
}

impl MirrorReceiver {
    /// Wraps a registered client; keeps the newest `capacity` records.
    pub fn new(handle: ClientHandle, capacity: usize) -> Self {
        MirrorReceiver {
            handle,
            held: VecDeque::new(),
            capacity: capacity.max(1),
            next_lsn: 1,
            digest: 0,
            stats: ReceiverStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Highest LSN stored.
    pub fn stored_upto(&self) -> u64 {
        self.next_lsn - 1
    }

    /// CRC32C chained over every stored record's data in LSN order (compare with the sender's).
    pub fn digest(&self) -> u32 {
        self.digest
    }

    /// The newest records held.
    pub fn held(&self) -> impl Iterator<Item = &(u64, Bytes)> {
        self.held.iter()
    }

    /// Decides the code for one record and stores it if it is the next one.
    pub fn store(&mut self, payload: &Bytes) -> i32 {
        match record::decode(payload) {
            Err(RecordError::Short(_)) | Err(RecordError::BadCrc { .. }) => {
                self.stats.corrupt += 1;
                CODE_CORRUPT
            }
            Ok((lsn, _)) if lsn < self.next_lsn => {
                self.stats.duplicates += 1;
                CODE_STORED
            }
            Ok((lsn, _)) if lsn > self.next_lsn => {
                self.stats.gaps += 1;
                CODE_GAP
            }
            Ok((lsn, data)) => {
                self.digest = crc32c::crc32c_append(self.digest, &data);
                self.stats.stored += 1;
                self.stats.bytes += data.len() as u64;
                self.held.push_back((lsn, data));
                while self.held.len() > self.capacity {
                    self.held.pop_front();
                }
                self.next_lsn += 1;
                CODE_STORED
            }
        }
    }

    /// Serves records until `until_lsn` is stored (or forever with `None`); returns when the
    /// node stops or the target is reached.
    pub async fn serve(&mut self, until_lsn: Option<u64>) -> Result<(), MirrorError> {
        loop {
            if until_lsn.is_some_and(|u| self.stored_upto() >= u) {
                return Ok(());
            }
            let Some(ev) = self.handle.next_event().await else {
                return Ok(());
            };
            if let ClientEvent::Data {
                seq,
                payload,
                reply_needed,
            } = ev
            {
                let code = self.store(&payload);
                if reply_needed {
                    // A reply can only fail if the connection dropped meanwhile; the sender
                    // will resend and we will answer again.
                    let _ = self.handle.reply(seq, code).await;
                }
            }
        }
    }
}

/// The digest a receiver reaches after storing `records` in order (for end-to-end checks).
pub fn digest_of<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    records.into_iter().fold(0, crc32c::crc32c_append)
}

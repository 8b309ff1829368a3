//! The sending half of a client stream: sequence numbers, the unacknowledged messages kept for
//! replay, completions by send model, and the credit and window that bound transmission. The
//! acknowledgement timeout of each send is in the child module `timeout`.

mod timeout;

use crate::frame::Flags;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// When a send completes for the sending client \[CDP\].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendModel {
    /// When the partner client has processed the message and returned a code.
    Sync,
    /// When the partner's client has taken the message from its queue (the partner's
    /// consumed mark, carried by FLOW frames, has reached it).
    Async,
    /// When the message has been handed to the transport.
    Local,
}

/// A send completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendCompletion {
    /// Sync: the partner client's return code. Async: taken by the partner client (`code` is
    /// None).
    Acked {
        /// Sequence number.
        seq: u64,
        /// Return code (sync only).
        code: Option<i32>,
    },
    /// Local model: handed to the transport.
    Transmitted {
        /// Sequence number.
        seq: u64,
    },
    /// The completion of a send that had already timed out (its client was told `Timeout`):
    /// dropped, only counted.
    Late,
    /// The partner refused the message as larger than its `max_payload_bytes` (it was sent
    /// anyway, e.g. queued for a partner with a larger limit): it was not delivered. The
    /// session reports it as `Nacked { reason: TooLarge }`.
    TooLarge {
        /// Sequence number (the client's).
        seq: u64,
    },
    /// A one-sided write went out by RDMA WRITE and the queue pair completed it (the
    /// partner's HCA acknowledged the bytes and the marker behind them): the bytes are in
    /// the partner's region, placed without its CPU. The session reports it as
    /// `Acked { code: None }`; the partner manager's placement code that follows is dropped.
    Placed {
        /// Sequence number (the client's).
        seq: u64,
    },
    /// A one-sided write the partner's manager refused to place (its code names why:
    /// outside the region, unknown or released region). Nothing was written.
    WriteRefused {
        /// Sequence number (the client's).
        seq: u64,
        /// Why.
        reason: crate::control::NackReason,
    },
}

#[derive(Debug)]
struct Unacked {
    /// The number the client was given (the wire number differs after a rebase).
    client_seq: u64,
    payload: Bytes,
    model: SendModel,
    sent: bool,
    transmit_reported: bool,
    /// Acknowledgement timeout of this send, once armed its deadline (see `timeout`).
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    /// Timed out: its client was told; kept only while the wire still needs it (until the
    /// partner has received it), and completes silently.
    timed_out: bool,
    /// A one-sided write into a partner region (payload = the WRITE frame's payload): it goes
    /// out as WRITE, not DATA, and completes with the placement code the partner's manager
    /// returns like a sync reply (0 placed, else a refusal).
    write: bool,
    /// For a write: the link its latest transmission went one-sided on (`None`: not sent yet,
    /// or sent with its bytes in the frame).
    one_sided_on: Option<crate::ids::LinkId>,
    /// A one-sided write its queue pair completed: its client was told (`Placed`). Like a
    /// timed-out send it stays as long as the wire needs it (a replay after a link loss
    /// places the same bytes again) and then goes silently.
    placed: bool,
}

impl Unacked {
    /// Its client has been told how it ended (timed out, or placed one-sided): nothing more
    /// is reported for it.
    fn told(&self) -> bool {
        self.timed_out || self.placed
    }
}

/// The sending half of one client's stream.
#[derive(Debug)]
pub struct SendStream {
    next_seq: u64,
    next_client_seq: u64,
    unacked: BTreeMap<u64, Unacked>,
    to_send: BTreeSet<u64>,
    never_sent: usize,
    acked_upto: u64,
    /// Highest sequence number ever transmitted (new messages go out in order): a consumed
    /// mark beyond it is not believed.
    sent_upto: u64,
    credit: u64,
    window: u32,
    /// Armed acknowledgement deadlines, by (deadline, wire seq).
    deadlines: BTreeSet<(Instant, u64)>,
    /// Sends with a timeout whose deadline is not armed yet (pushed without the clock).
    unarmed: Vec<u64>,
    /// Timed-out sends already released (the partner had them), by wire seq: a completion
    /// that comes for one later is late (bounded, oldest forgotten first).
    released_late: BTreeMap<u64, SendModel>,
    /// The partner's `max_payload_bytes`: the partner skips a larger message (and NACKs it),
    /// so a receipt or consumed mark passing over it does not mean it arrived.
    partner_max: u32,
}

impl SendStream {
    /// A fresh stream: sequence numbers start at 1; `credit` is the partner's initial grant.
    pub fn new(window: u32, credit: u64) -> Self {
        SendStream {
            next_seq: 1,
            next_client_seq: 1,
            unacked: BTreeMap::new(),
            to_send: BTreeSet::new(),
            never_sent: 0,
            acked_upto: 0,
            sent_upto: 0,
            credit,
            window: window.max(1),
            deadlines: BTreeSet::new(),
            unarmed: Vec::new(),
            released_late: BTreeMap::new(),
            partner_max: u32::MAX,
        }
    }

    /// The partner's largest accepted payload (from its node description).
    pub fn set_partner_max(&mut self, max_payload_bytes: u32) {
        self.partner_max = max_payload_bytes;
    }

    fn too_large(&self, u: &Unacked) -> bool {
        u.payload.len() > self.partner_max as usize
    }

    /// Queues a message and returns its send id (the client's number for it): unique for the
    /// life of the stream, across resets and rebases, unlike the wire sequence number.
    pub fn push(&mut self, payload: Bytes, model: SendModel) -> u64 {
        self.push_with(payload, model, None, None)
    }

    /// [`SendStream::push`] with an acknowledgement timeout (sync and async sends; a local
    /// send completes without its partner). Its deadline is armed at `now`, or, without the
    /// clock, by the next [`SendStream::arm`].
    pub fn push_with(
        &mut self,
        payload: Bytes,
        model: SendModel,
        timeout: Option<Duration>,
        now: Option<Instant>,
    ) -> u64 {
        self.push_entry(payload, model, false, timeout, now)
    }

    /// Queues a one-sided write (`payload` is the encoded WRITE payload: region, offset,
    /// bytes) in the same sequence space as messages, so it is ordered with them, replayed
    /// like them and deduplicated by the receiver. It completes with the partner manager's
    /// placement code ([`SendStream::on_code`]): [`SendCompletion::Acked`] when placed,
    /// [`SendCompletion::WriteRefused`] otherwise.
    pub fn push_write(
        &mut self,
        payload: Bytes,
        timeout: Option<Duration>,
        now: Option<Instant>,
    ) -> u64 {
        self.push_entry(payload, SendModel::Sync, true, timeout, now)
    }

    /// Whether wire `seq` is a sync message still waiting for its return code (not a write,
    /// not timed out): its code means the partner client took every message up to it.
    pub fn is_sync_message(&self, seq: u64) -> bool {
        self.unacked
            .get(&seq)
            .is_some_and(|u| u.model == SendModel::Sync && !u.write && !u.told())
    }

    /// Whether wire `seq` is a one-sided write (sent as WRITE rather than DATA).
    pub fn is_write(&self, seq: u64) -> bool {
        self.unacked.get(&seq).is_some_and(|u| u.write)
    }

    /// Whether write `seq` may go one-sided on `link`: it is a first transmission (a replay
    /// goes with its bytes in the frame, so the receiver can drop it as a duplicate instead
    /// of placing old bytes over newer ones), and every earlier write still unacknowledged went
    /// one-sided on that same link (queue pairs do not order against each other, and a write
    /// placed by the partner's manager lands only at its turn in the stream: either could
    /// otherwise be overtaken by this one and overwrite it).
    pub fn may_go_one_sided(&self, seq: u64, link: crate::ids::LinkId) -> bool {
        match self.unacked.get(&seq) {
            Some(u) if u.write && u.one_sided_on.is_none() => {}
            _ => return false,
        }
        self.unacked
            .range(..seq)
            .filter(|(_, u)| u.write)
            .all(|(_, u)| u.one_sided_on == Some(link))
    }

    /// Records how write `seq` went out: one-sided on `link`, or (`None`) with its bytes.
    pub fn note_write_route(&mut self, seq: u64, one_sided_on: Option<crate::ids::LinkId>) {
        if let Some(u) = self.unacked.get_mut(&seq) {
            u.one_sided_on = one_sided_on;
        }
    }

    fn push_entry(
        &mut self,
        payload: Bytes,
        model: SendModel,
        write: bool,
        timeout: Option<Duration>,
        now: Option<Instant>,
    ) -> u64 {
        let timeout = timeout.filter(|_| model != SendModel::Local);
        let seq = self.next_seq;
        self.next_seq += 1;
        let client_seq = self.next_client_seq;
        self.next_client_seq += 1;
        self.unacked.insert(
            seq,
            Unacked {
                client_seq,
                payload,
                model,
                sent: false,
                transmit_reported: false,
                timeout,
                deadline: None,
                timed_out: false,
                write,
                one_sided_on: None,
                placed: false,
            },
        );
        self.to_send.insert(seq);
        self.never_sent += 1;
        if timeout.is_some() {
            match now {
                Some(now) => self.arm_one(seq, now),
                None => self.unarmed.push(seq),
            }
        }
        client_seq
    }

    /// Messages queued that were never transmitted (what flow control watches).
    pub fn queued(&self) -> usize {
        self.never_sent
    }

    /// Messages not yet completed.
    pub fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    /// Highest sequence number the partner acknowledged cumulatively.
    pub fn acked_upto(&self) -> u64 {
        self.acked_upto
    }

    /// Whether the entry [`SendStream::next_transmit`] would consider next is a one-sided write.
    pub fn next_is_write(&self) -> bool {
        self.to_send.first().is_some_and(|&s| self.is_write(s))
    }

    /// Whether [`SendStream::next_transmit`] would return something.
    pub fn can_transmit(&self) -> bool {
        self.to_send.first().is_some_and(|&s| self.allowed(s))
    }

    fn allowed(&self, seq: u64) -> bool {
        match self.unacked.get(&seq) {
            Some(u) if u.sent => true, // replays are always within the window already
            Some(_) => {
                let oldest = self.unacked.keys().next().copied().unwrap_or(seq);
                seq <= self.credit && seq - oldest < u64::from(self.window)
            }
            None => true, // stale entry, dropped by next_transmit
        }
    }

    /// The next message to put on a link, if window and credit allow.
    pub fn next_transmit(&mut self) -> Option<(u64, Flags, Bytes, SendModel)> {
        loop {
            let seq = *self.to_send.first()?;
            if !self.allowed(seq) {
                return None;
            }
            self.to_send.remove(&seq);
            let Some(u) = self.unacked.get_mut(&seq) else {
                continue;
            };
            let mut flags = Flags::empty();
            if u.model == SendModel::Sync {
                flags |= Flags::SYNC;
            }
            if u.sent {
                flags |= Flags::REPLAY;
            } else {
                u.sent = true;
                self.never_sent -= 1;
                self.sent_upto = self.sent_upto.max(seq);
            }
            return Some((seq, flags, u.payload.clone(), u.model));
        }
    }

    /// The partner has every message up to `upto` (in its process, not necessarily taken by
    /// its client). Local messages are released; async ones wait for the consumed mark
    /// ([`SendStream::on_consumed`]); sync ones wait for their code.
    pub fn on_cumulative_ack(&mut self, upto: u64) -> Vec<SendCompletion> {
        let upto = upto.min(self.next_seq.saturating_sub(1));
        if upto <= self.acked_upto {
            return Vec::new();
        }
        self.acked_upto = upto;
        let mut done = Vec::new();
        let seqs: Vec<u64> = self.unacked.range(..=upto).map(|(s, _)| *s).collect();
        for seq in seqs {
            let Some(u) = self.unacked.get(&seq) else {
                continue;
            };
            let client = u.client_seq;
            if u.placed {
                // Its client was told; the partner has the marker or the bytes.
                self.take(seq);
                continue;
            }
            if u.timed_out {
                // Its client was told; the partner has it, so the wire needs it no more.
                let model = u.model;
                self.take(seq);
                self.remember_late(seq, model);
                continue;
            }
            match u.model {
                SendModel::Sync | SendModel::Async => {}
                SendModel::Local if self.too_large(u) => {
                    // Skipped by the partner, whose NACK may come after this mark.
                    self.take(seq);
                    done.push(SendCompletion::TooLarge { seq: client });
                }
                SendModel::Local => {
                    let reported = u.transmit_reported;
                    self.take(seq);
                    if !reported {
                        done.push(SendCompletion::Transmitted { seq: client });
                    }
                }
            }
        }
        done
    }

    /// The partner's client has taken every message up to `upto` from its queue (the consumed
    /// mark of a FLOW frame). Completes async messages (and releases local ones: taken implies
    /// received); sync ones wait for their code.
    pub fn on_consumed(&mut self, upto: u64) -> Vec<SendCompletion> {
        // The partner cannot have taken what was never sent to it.
        let upto = upto.min(self.sent_upto);
        if upto == 0 {
            return Vec::new();
        }
        let mut done = self.on_cumulative_ack(upto);
        let seqs: Vec<u64> = self
            .unacked
            .range(..=upto)
            .filter(|(_, u)| u.model == SendModel::Async)
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            if let Some(u) = self.take(seq) {
                if self.too_large(&u) {
                    // Skipped by the partner (the mark passed over its hole); its NACK may
                    // come after this mark.
                    done.push(SendCompletion::TooLarge { seq: u.client_seq });
                    continue;
                }
                done.push(SendCompletion::Acked {
                    seq: u.client_seq,
                    code: None,
                });
            }
        }
        done.extend(self.late_upto(upto));
        done
    }

    /// The partner client returned `code` for (wire) `seq`.
    pub fn on_code(&mut self, seq: u64, code: i32) -> Option<SendCompletion> {
        if self.released_late.remove(&seq).is_some() {
            return Some(SendCompletion::Late);
        }
        match self.unacked.get(&seq) {
            Some(u) if u.placed => {
                // Completed one-sided already; the partner's code confirms (or, for a write
                // that raced with a release of its region, names a refusal of bytes that
                // were nonetheless placed: see `SendCompletion::Placed`).
                self.take(seq);
                None
            }
            Some(u) if u.model == SendModel::Sync && u.timed_out => {
                self.take(seq);
                Some(SendCompletion::Late)
            }
            Some(u) if u.write => {
                let client = u.client_seq;
                self.take(seq);
                let refusal = u8::try_from(code).ok().filter(|&c| c != 0).map(|c| {
                    crate::control::NackReason::from_u8(c)
                        .unwrap_or(crate::control::NackReason::UnknownRegion)
                });
                Some(match (code, refusal) {
                    (0, _) => SendCompletion::Acked {
                        seq: client,
                        code: None,
                    },
                    (_, Some(reason)) => SendCompletion::WriteRefused {
                        seq: client,
                        reason,
                    },
                    // A code that is no reason byte: refused, for a reason we cannot name.
                    (_, None) => SendCompletion::WriteRefused {
                        seq: client,
                        reason: crate::control::NackReason::UnknownRegion,
                    },
                })
            }
            Some(u) if u.model == SendModel::Sync => {
                let client = u.client_seq;
                self.take(seq);
                Some(SendCompletion::Acked {
                    seq: client,
                    code: Some(code),
                })
            }
            _ => None, // duplicate ACK (after a replay) or not a sync message
        }
    }

    /// The transport took `seq` (reported by the runtime after writing it). For a write that
    /// went one-sided, the runtime reports this when the queue pair completed the marker
    /// behind the RDMA WRITE (on RC, success means the partner's HCA acknowledged both): the
    /// write is [`SendCompletion::Placed`], its deadline disarmed.
    pub fn on_transmitted(&mut self, seq: u64) -> Option<SendCompletion> {
        let u = self.unacked.get_mut(&seq)?;
        if u.model == SendModel::Local && !u.transmit_reported {
            u.transmit_reported = true;
            return Some(SendCompletion::Transmitted { seq: u.client_seq });
        }
        if u.write && u.one_sided_on.is_some() && !u.told() {
            u.placed = true;
            let client = u.client_seq;
            if let Some(d) = u.deadline.take() {
                self.deadlines.remove(&(d, seq));
            }
            return Some(SendCompletion::Placed { seq: client });
        }
        None
    }

    /// New credit from the partner: it accepts sequence numbers up to `credit`.
    pub fn on_credit(&mut self, credit: u64) {
        self.credit = self.credit.max(credit);
    }

    /// Drops one message (NACKed by the partner, by wire `seq`). Returns the client's number
    /// for it, if it was there.
    /// A send that already timed out returns None (its client was told).
    pub fn remove(&mut self, seq: u64) -> Option<u64> {
        self.take(seq).filter(|u| !u.told()).map(|u| u.client_seq)
    }

    fn take(&mut self, seq: u64) -> Option<Unacked> {
        match self.unacked.remove(&seq) {
            Some(u) => {
                if self.to_send.remove(&seq) && !u.sent {
                    self.never_sent -= 1;
                }
                if let Some(d) = u.deadline {
                    self.deadlines.remove(&(d, seq));
                }
                Some(u)
            }
            None => None,
        }
    }

    /// Schedules every unacknowledged message that was already sent for retransmission, except
    /// async messages the partner has already received (cumulative ack): they only wait for
    /// its client to take them, and the partner reports that again after a link change.
    pub fn replay_all(&mut self) -> usize {
        let mut n = 0;
        for (seq, u) in &self.unacked {
            let received = *seq <= self.acked_upto && u.model == SendModel::Async;
            if u.sent && !received && self.to_send.insert(*seq) {
                n += 1;
            }
        }
        n
    }

    /// Removes and returns every unacknowledged (client) sequence number, to be NACKed.
    /// Sends that already timed out are dropped without a number (their client was told).
    pub fn drain_unacked(&mut self) -> Vec<u64> {
        let seqs = self
            .unacked
            .values()
            .filter(|u| !u.told())
            .map(|u| u.client_seq)
            .collect();
        self.unacked.clear();
        self.to_send.clear();
        self.never_sent = 0;
        self.deadlines.clear();
        self.unarmed.clear();
        self.released_late.clear();
        seqs
    }

    /// Starts over after a session reset. Callers drain first; anything left is dropped. The
    /// wire numbering restarts at 1 for the partner's fresh receive stream, but the client's
    /// numbers (send ids) go on from where they were: a send id is never handed out twice for
    /// the life of the stream, so a late `Nacked` of the old epoch cannot be mistaken for a
    /// new send.
    pub fn reset(&mut self, credit: u64) {
        let next_client_seq = self.next_client_seq;
        let partner_max = self.partner_max;
        *self = SendStream::new(self.window, credit);
        self.next_client_seq = next_client_seq;
        self.partner_max = partner_max;
    }

    /// Removes every unacknowledged message above `max_payload_bytes` (a new partner's limit)
    /// and returns their client numbers, to be NACKed `TooLarge`: before a
    /// [`SendStream::rebase`], so the new partner's stream has no hole.
    pub fn drain_above(&mut self, max_payload_bytes: u32) -> Vec<u64> {
        let seqs: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.payload.len() > max_payload_bytes as usize && !u.told())
            .map(|(s, _)| *s)
            .collect();
        seqs.into_iter()
            .filter_map(|s| self.take(s).map(|u| u.client_seq))
            .collect()
    }

    /// Removes every unacknowledged one-sided write and returns their client numbers, to be
    /// NACKed `Fenced`: at a switch to a new partner, before [`SendStream::rebase`]. A write
    /// names a region of the old partner (its id, its memory); the new partner's region of
    /// the same name is another memory, which the writer fills again itself.
    pub fn drain_writes(&mut self) -> Vec<u64> {
        let seqs: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.write && !u.told())
            .map(|(s, _)| *s)
            .collect();
        let mut out: Vec<u64> = seqs
            .into_iter()
            .filter_map(|s| self.take(s).map(|u| u.client_seq))
            .collect();
        // Timed-out and placed writes are dropped silently (their client was told).
        let timed_out: Vec<u64> = self
            .unacked
            .iter()
            .filter(|(_, u)| u.write)
            .map(|(s, _)| *s)
            .collect();
        for s in timed_out {
            self.take(s);
        }
        out.sort_unstable();
        out
    }

    /// Starts over with a new partner (a switch to a backup) keeping every unacknowledged
    /// message: they are renumbered 1.. in their original order for the partner's fresh
    /// receive stream and all sent again; each keeps its client number (and its deadline), and
    /// new messages go on numbering from where the client was. Sends that already timed out
    /// are dropped (their client was told). Returns how many were kept.
    pub fn rebase(&mut self, credit: u64) -> usize {
        let kept = std::mem::take(&mut self.unacked);
        let unarmed: BTreeSet<u64> = std::mem::take(&mut self.unarmed).into_iter().collect();
        self.to_send.clear();
        self.deadlines.clear();
        self.released_late.clear();
        self.next_seq = 1;
        self.acked_upto = 0;
        self.sent_upto = 0;
        self.credit = credit;
        self.never_sent = 0;
        for (old, mut u) in kept {
            if u.told() {
                continue;
            }
            u.sent = false;
            let seq = self.next_seq;
            self.next_seq += 1;
            if let Some(d) = u.deadline {
                self.deadlines.insert((d, seq));
            }
            if unarmed.contains(&old) {
                self.unarmed.push(seq);
            }
            self.unacked.insert(seq, u);
            self.to_send.insert(seq);
            self.never_sent += 1;
        }
        self.never_sent
    }
}

#[cfg(test)]
mod tests;

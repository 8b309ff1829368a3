//! Bookkeeping of the messages: the sides, the actions of the random program, and per client
//! stream what was sent, delivered and completed; payloads name their sender.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Side {
    A,
    B,
}

impl Side {
    pub(super) fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
    pub(super) fn letter(self) -> char {
        match self {
            Side::A => 'A',
            Side::B => 'B',
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Action {
    Send,
    Burst,
    Deliver,
    Answer,
    Kill,
    Add,
    Advance,
    Slow,
    Consume,
}

#[derive(Debug)]
pub(super) struct Msg {
    pub(super) model: SendModel,
    pub(super) seq: u64,
    pub(super) payload: Bytes,
    pub(super) delivered: u32,
    pub(super) acked: Option<Option<i32>>,
    pub(super) transmitted: bool,
    pub(super) nacked: Option<NackReason>,
    /// The receiving client took it from its queue (reported with `consumed`).
    pub(super) consumed: bool,
    /// Its own acknowledgement timeout, if it had one.
    pub(super) ack_timeout: Option<Duration>,
}

/// One direction of one client: what the sender sent and what the receiver got.
#[derive(Debug, Default)]
pub(super) struct Stream {
    pub(super) msgs: Vec<Msg>,
    /// Sender's current sequence number -> message number, for sends not yet completed.
    pub(super) outstanding: BTreeMap<u64, usize>,
    /// Message numbers in delivery order.
    pub(super) delivered: Vec<usize>,
}

/// The code a partner client returns for message `n` of client `client`.
pub(super) fn code_for(client: usize, n: usize) -> i32 {
    (client as i32) * 1_000_000 + n as i32
}

pub(super) fn payload(side: Side, client: usize, n: usize) -> Bytes {
    Bytes::from(format!("{}{client}-{n:08}", side.letter()))
}

pub(super) fn parse(p: &[u8]) -> Option<(Side, usize, usize)> {
    let s = std::str::from_utf8(p).ok()?;
    let side = match s.as_bytes().first()? {
        b'A' => Side::A,
        b'B' => Side::B,
        _ => return None,
    };
    let (c, n) = s[1..].split_once('-')?;
    Some((side, c.parse().ok()?, n.parse().ok()?))
}

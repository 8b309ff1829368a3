//! Bookkeeping of the messages: which side and partner incarnation sent each one, its payload
//! (which names its sender), where it was delivered and how it completed.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Side {
    A,
    B,
}

/// Who sent a message: `a`, or incarnation `n` of the partner (a crash makes a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Who {
    A,
    B(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Send,
    Burst,
    Deliver,
    Drive,
    Answer,
    Consume,
    Pause,
    LongPause,
    Slow,
    RailFlap,
    RailUp,
    RailLinkAdd,
    QpError,
    HalfOpen,
    TcpDrop,
    TcpAdd,
    Crash,
    Return,
}

#[derive(Debug)]
pub(super) struct Msg {
    pub(super) model: SendModel,
    /// The client's number for it (what `send` returned).
    pub(super) seq: u64,
    pub(super) payload: Bytes,
    /// Messages of a: the partner incarnation it is destined for.
    pub(super) home: u32,
    /// Deliveries per receiving partner incarnation (messages of b: key [`AT_A`]).
    pub(super) delivered: BTreeMap<u32, u32>,
    /// Acked with this code by this incarnation.
    pub(super) acked: Option<(Option<i32>, u32)>,
    pub(super) transmitted: bool,
    pub(super) nacked: Option<NackReason>,
    /// A local send completed silently by a cumulative ack.
    pub(super) silent: bool,
    /// Its sender (a crashed partner incarnation) is gone.
    pub(super) orphaned: bool,
}

impl Msg {
    pub(super) fn completed(&self) -> bool {
        self.acked.is_some() || self.nacked.is_some() || self.silent
    }
    pub(super) fn delivered_at(&self, inc: u32) -> u32 {
        self.delivered.get(&inc).copied().unwrap_or(0)
    }
}

/// One direction of one client.
#[derive(Debug, Default)]
pub(super) struct Stream {
    pub(super) msgs: Vec<Msg>,
    /// Sender's client sequence number -> message number, for sends not completed.
    pub(super) outstanding: BTreeMap<u64, usize>,
    /// Message numbers in delivery order, per receiving incarnation.
    pub(super) delivered: BTreeMap<u32, Vec<usize>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Totals {
    pub(super) seeds: u64,
    pub(super) steps: u64,
    pub(super) migrations: u64,
    pub(super) switches: u64,
    pub(super) moves: u64,
    pub(super) crashes: u64,
    pub(super) same_returns: u64,
    pub(super) restarts_seen: u64,
    pub(super) expiries: u64,
    pub(super) messages: u64,
    pub(super) nacked: u64,
    pub(super) up_steps: u64,
    pub(super) refused: u64,
}

pub(super) fn code_for(client: usize, n: usize) -> i32 {
    (client as i32) * 1_000_000 + n as i32
}

pub(super) fn payload(who: Who, client: usize, n: usize) -> Bytes {
    match who {
        Who::A => Bytes::from(format!("A{client}-{n:08}")),
        Who::B(inc) => Bytes::from(format!("B{inc}.{client}-{n:08}")),
    }
}

pub(super) fn parse(p: &[u8]) -> Option<(Who, usize, usize)> {
    let s = std::str::from_utf8(p).ok()?;
    let (head, n) = s.split_once('-')?;
    let n = n.parse().ok()?;
    if let Some(c) = head.strip_prefix('A') {
        return Some((Who::A, c.parse().ok()?, n));
    }
    let (inc, c) = head.strip_prefix('B')?.split_once('.')?;
    Some((Who::B(inc.parse().ok()?), c.parse().ok()?, n))
}

pub(super) fn rx_name(who: Who, rx: u32) -> String {
    match who {
        Who::A => format!("partner incarnation {rx}"),
        Who::B(_) => "a".to_string(),
    }
}

pub(super) fn check_code(ctx: &str, who: Who, c: usize, n: usize, m: &Msg, code: Option<i32>) {
    match m.model {
        SendModel::Async => assert_eq!(
            code, None,
            "{ctx}: async #{n} of {who:?}/client{c} acked with a code"
        ),
        SendModel::Sync => assert_eq!(
            code,
            Some(code_for(c, n)),
            "{ctx}: sync #{n} of {who:?}/client{c} acked with the wrong code"
        ),
        SendModel::Local => panic!("{ctx}: local #{n} of {who:?}/client{c} got Acked"),
    }
}

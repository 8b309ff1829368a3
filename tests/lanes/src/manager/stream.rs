//! A sending client's stream on the leader: records sent with at most `window` unacknowledged
//! (optionally paced), every event collected ([`StreamOut`]: acks with their codes and times,
//! NACKs, Down, migrations, partner switches), and the figures taken from them (throughput,
//! latency quantiles, the stall a fault caused).

use super::record;
use peercm_cm_manager::{ClientEvent, ClientHandle, InterconnectId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct StreamCfg {
    pub name: &'static str,
    pub tag: u8,
    pub sync: bool,
    pub first: u64,
    /// Records to send; `None`: until the stop flag is set.
    pub count: Option<u64>,
    pub window: usize,
    pub pace: Option<Duration>,
    pub bytes: usize,
}

/// What one sending client saw.
#[derive(Debug, Default)]
pub struct StreamOut {
    pub sent: u64,
    pub last_sent: u64,
    pub acked: u64,
    pub bytes_acked: u64,
    /// Highest index such that every record up to it was acked.
    pub acked_prefix: u64,
    pub bad_codes: Vec<String>,
    pub nacks: Vec<String>,
    pub downs: Vec<(Instant, String)>,
    pub migrations: Vec<(Instant, InterconnectId, InterconnectId)>,
    pub switched: Vec<(Instant, String)>,
    pub ack_times: Vec<Instant>,
    /// The record index of each ack, in the order of `ack_times`.
    pub ack_indices: Vec<u64>,
    pub latencies_us: Vec<u64>,
    pub started: Option<Instant>,
    pub last_ack: Option<Instant>,
    pub fatal: Option<String>,
}

impl StreamOut {
    /// Everything that must not happen to a stream: a fatal stop, wrong codes, NACKs, Down,
    /// records sent but not acked.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(f) = &self.fatal {
            p.push(f.clone());
        }
        if !self.bad_codes.is_empty() {
            p.push(format!(
                "{} acks with a wrong code (first: {})",
                self.bad_codes.len(),
                self.bad_codes[0]
            ));
        }
        if !self.nacks.is_empty() {
            p.push(format!(
                "{} NACKs (first: {})",
                self.nacks.len(),
                self.nacks[0]
            ));
        }
        if !self.downs.is_empty() {
            p.push(format!("Down: {}", self.downs[0].1));
        }
        if self.acked != self.sent {
            p.push(format!("{} sent, {} acked", self.sent, self.acked));
        }
        p
    }

    pub fn mbytes_per_s(&self) -> f64 {
        match (self.started, self.last_ack) {
            (Some(a), Some(b)) if b > a => {
                self.bytes_acked as f64 / b.duration_since(a).as_secs_f64() / 1e6
            }
            _ => 0.0,
        }
    }

    pub fn latency_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let i = ((v.len() - 1) as f64 * q).round() as usize;
        v[i.min(v.len() - 1)] as f64 / 1000.0
    }

    /// First ack after `t`.
    pub fn first_ack_after(&self, t: Instant) -> Option<Instant> {
        self.ack_times.iter().copied().find(|a| *a > t)
    }

    /// The longest time without an ack that overlaps `from..from + span` (the stall a fault
    /// caused), and when it ended.
    pub fn stall(&self, from: Instant, span: Duration) -> Option<(Duration, Instant)> {
        let to = from + span;
        self.ack_times
            .windows(2)
            .filter(|w| w[1] > from && w[0] < to)
            .map(|w| (w[1].duration_since(w[0]), w[1]))
            .max_by_key(|(d, _)| *d)
    }
}

struct Outstanding {
    index: u64,
    code: Option<i32>,
    bytes: usize,
    sent_at: Instant,
}

struct StreamState {
    cfg: StreamCfg,
    out: StreamOut,
    outstanding: BTreeMap<u64, Outstanding>,
    acked_indices: BTreeSet<u64>,
    last_progress: Instant,
    progress: Arc<AtomicU64>,
}

impl StreamState {
    fn on_event(&mut self, ev: ClientEvent) {
        let now = Instant::now();
        match ev {
            ClientEvent::Acked { seq, code } => {
                self.last_progress = now;
                let Some(o) = self.outstanding.remove(&seq) else {
                    self.out
                        .bad_codes
                        .push(format!("ack for seq {seq}, which is not outstanding"));
                    return;
                };
                if code != o.code {
                    self.out.bad_codes.push(format!(
                        "record {}: code {code:?}, expected {:?}",
                        o.index, o.code
                    ));
                }
                self.out.acked += 1;
                self.out.bytes_acked += o.bytes as u64;
                self.out.ack_times.push(now);
                self.out.ack_indices.push(o.index);
                self.out.last_ack = Some(now);
                self.out
                    .latencies_us
                    .push(now.duration_since(o.sent_at).as_micros() as u64);
                self.acked_indices.insert(o.index);
                while self.acked_indices.remove(&(self.out.acked_prefix + 1)) {
                    self.out.acked_prefix += 1;
                }
                self.progress.fetch_add(1, Ordering::Relaxed);
            }
            ClientEvent::Nacked { seq, reason } => {
                let ix = self.outstanding.remove(&seq).map_or(0, |o| o.index);
                self.out
                    .nacks
                    .push(format!("record {ix} (seq {seq}): {reason:?}"));
            }
            ClientEvent::Down { reason } => self.out.downs.push((now, format!("{reason:?}"))),
            ClientEvent::Migrated { from, to } => self.out.migrations.push((now, from, to)),
            ClientEvent::PeerSwitched { node, .. } => self.out.switched.push((now, node)),
            ClientEvent::Data { .. }
            | ClientEvent::Up
            | ClientEvent::Transmitted { .. }
            | ClientEvent::FlowControl { .. }
            | ClientEvent::PartnerRegion { .. } => {}
        }
    }
}

/// A stream with records outstanding and no ack for this long stops (fatal).
const STALL: Duration = Duration::from_secs(20);

/// Sends records with at most `window` unacknowledged and collects every event.
pub async fn run_stream(
    mut h: ClientHandle,
    cfg: StreamCfg,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> (ClientHandle, StreamOut) {
    let mut st = StreamState {
        out: StreamOut {
            acked_prefix: cfg.first.saturating_sub(1),
            ..StreamOut::default()
        },
        cfg,
        outstanding: BTreeMap::new(),
        acked_indices: Default::default(),
        last_progress: Instant::now(),
        progress,
    };
    let mut next_index = st.cfg.first;
    let end = st.cfg.count.map(|c| st.cfg.first + c);
    let mut next_send_at = Instant::now();
    st.out.started = Some(Instant::now());
    loop {
        while let Some(ev) = h.try_next_event() {
            st.on_event(ev);
        }
        let more = match end {
            Some(e) => next_index < e,
            None => !stop.load(Ordering::Relaxed),
        };
        if !more && st.outstanding.is_empty() {
            break;
        }
        if !st.out.downs.is_empty() {
            st.out.fatal = Some(format!(
                "{}: Down with {} outstanding",
                st.cfg.name,
                st.outstanding.len()
            ));
            break;
        }
        let now = Instant::now();
        let can_send = more && st.outstanding.len() < st.cfg.window;
        if can_send && now >= next_send_at {
            let rec = record::encode(st.cfg.tag, next_index, st.cfg.bytes);
            let code = st.cfg.sync.then(|| record::code(&rec));
            let len = rec.len();
            match h.send(rec).await {
                Ok(seq) => {
                    st.outstanding.insert(
                        seq,
                        Outstanding {
                            index: next_index,
                            code,
                            bytes: len,
                            sent_at: now,
                        },
                    );
                    st.out.sent += 1;
                    st.out.last_sent = next_index;
                    next_index += 1;
                    if st.outstanding.len() == 1 {
                        st.last_progress = now;
                    }
                }
                Err(e) => {
                    st.out.fatal = Some(format!(
                        "{}: send of record {next_index} failed: {e}",
                        st.cfg.name
                    ));
                    break;
                }
            }
            if let Some(p) = st.cfg.pace {
                next_send_at = now + p;
            }
            continue;
        }
        let wait = if can_send {
            next_send_at.saturating_duration_since(now)
        } else {
            Duration::from_millis(200)
        };
        match tokio::time::timeout(wait, h.next_event()).await {
            Ok(Some(ev)) => st.on_event(ev),
            Ok(None) => {
                st.out.fatal = Some(format!("{}: event channel closed", st.cfg.name));
                break;
            }
            Err(_) => {}
        }
        if !st.outstanding.is_empty() && st.last_progress.elapsed() > STALL {
            let oldest = st.outstanding.values().next().map_or(0, |o| o.index);
            st.out.fatal = Some(format!(
                "{}: no ack for {} s with {} records outstanding (oldest {oldest})",
                st.cfg.name,
                STALL.as_secs(),
                st.outstanding.len()
            ));
            break;
        }
    }
    (h, st.out)
}

/// A running sending stream: client name, its task, its ack counter.
pub type Stream = (
    &'static str,
    tokio::task::JoinHandle<(ClientHandle, StreamOut)>,
    Arc<AtomicU64>,
);

//! The leader's region writer (`region_writes_under_host_cable_pull`): node a's mirror client
//! writes `writes` chunks of 1 B .. `max_chunk` at seeded random offsets of node b's region
//! (one-sided, `write_remote`), keeping at most `in_flight` unfinished, and after every
//! `notice_every` writes sends a commit notice (a sync send) naming the writes of that group
//! that no later write of the group overwrote. Node b's mirror checks at delivery that each is
//! in its region and answers 0 (or a negative code). Until a notice completes, no new write may
//! touch the ranges it names (the checker reads them when it gets the notice). The writer keeps
//! the model of the region, every completion's time, and every NACK, Down and migration.

use super::region::{notice, pattern, Named, Rng, LOG_REGION, LOG_REGION_LEN};
use bytes::Bytes;
use peercm_cm_manager::{ClientEvent, ClientHandle, InterconnectId, SendModel};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct WriterCfg {
    pub writes: u64,
    pub seed: u64,
    pub notice_every: u64,
    pub in_flight: usize,
    pub max_chunk: u64,
}

/// What the writer saw.
#[derive(Debug, Default)]
pub struct WriterOut {
    pub model: Vec<u8>,
    pub issued: u64,
    pub completed: u64,
    /// When each write completed, in order.
    pub completions: Vec<Instant>,
    pub notices_sent: u64,
    pub notices_ok: u64,
    pub notices_bad: Vec<String>,
    pub nacks: Vec<String>,
    pub downs: Vec<String>,
    pub migrations: Vec<(Instant, InterconnectId, InterconnectId)>,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
    pub fatal: Option<String>,
}

impl WriterOut {
    /// Everything that must not happen: a fatal stop, a NACK, a Down, a notice that found a
    /// write missing, a write or notice left unfinished.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self.fatal.iter().cloned().collect();
        let first = |v: &[String]| v.first().cloned().unwrap_or_default();
        if !self.nacks.is_empty() {
            p.push(format!(
                "{} NACKs (first: {})",
                self.nacks.len(),
                first(&self.nacks)
            ));
        }
        if !self.downs.is_empty() {
            p.push(format!("Down: {}", first(&self.downs)));
        }
        if !self.notices_bad.is_empty() {
            p.push(format!(
                "{} commit notices failed at node b (first: {})",
                self.notices_bad.len(),
                first(&self.notices_bad)
            ));
        }
        if self.completed != self.issued
            || self.notices_ok + (self.notices_bad.len() as u64) != self.notices_sent
        {
            p.push(format!(
                "{} writes issued, {} completed; {} notices sent, {} answered",
                self.issued,
                self.completed,
                self.notices_sent,
                self.notices_ok + self.notices_bad.len() as u64
            ));
        }
        p
    }

    /// The longest time without a write completing that overlaps `from..from + span`.
    pub fn stall(&self, from: Instant, span: Duration) -> Option<Duration> {
        let to = from + span;
        self.completions
            .windows(2)
            .filter(|w| w[1] > from && w[0] < to)
            .map(|w| w[1].duration_since(w[0]))
            .max()
    }
}

enum Pending {
    Write,
    /// A notice and the ranges it protects.
    Notice(Vec<Named>),
}

struct State {
    out: WriterOut,
    pending: HashMap<u64, Pending>,
    protected: Vec<Named>,
    progress: Arc<AtomicU64>,
}

fn overlaps(a: &Named, off: u64, len: u64) -> bool {
    off < a.1 + a.2 && a.1 < off + len
}

impl State {
    fn on_event(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Acked { seq, code } => match (self.pending.remove(&seq), code) {
                (Some(Pending::Write), None) => {
                    self.out.completed += 1;
                    self.out.completions.push(Instant::now());
                    self.progress.store(self.out.completed, Ordering::Relaxed);
                }
                (Some(Pending::Notice(named)), Some(c)) => {
                    if c == 0 {
                        self.out.notices_ok += 1;
                    } else {
                        self.out.notices_bad.push(format!("notice {seq}: code {c}"));
                    }
                    self.protected.retain(|p| !named.contains(p));
                }
                (p, c) => {
                    let what = if p.is_some() {
                        "the wrong kind of request"
                    } else {
                        "nothing outstanding"
                    };
                    self.out
                        .fatal
                        .get_or_insert(format!("completion {seq} (code {c:?}) for {what}"));
                }
            },
            ClientEvent::Nacked { seq, reason } => {
                self.pending.remove(&seq);
                self.out.nacks.push(format!("{seq}: {reason:?}"));
            }
            ClientEvent::Down { reason } => self.out.downs.push(format!("{reason:?}")),
            ClientEvent::Migrated { from, to } => {
                self.out.migrations.push((Instant::now(), from, to))
            }
            _ => {}
        }
    }

    async fn settle_one(&mut self, h: &mut ClientHandle) -> bool {
        match tokio::time::timeout(Duration::from_secs(30), h.next_event()).await {
            Ok(Some(ev)) => {
                self.on_event(ev);
                true
            }
            Ok(None) => {
                self.out.fatal = Some("the mirror's event channel closed".into());
                false
            }
            Err(_) => {
                self.out.fatal = Some(format!(
                    "no completion for 30 s ({} outstanding)",
                    self.pending.len()
                ));
                false
            }
        }
    }
}

/// Runs the writer; returns the handle and what it saw. `progress` counts completed writes.
pub async fn run_writer(
    mut h: ClientHandle,
    cfg: WriterCfg,
    progress: Arc<AtomicU64>,
) -> (ClientHandle, WriterOut) {
    let mut st = State {
        out: WriterOut {
            model: vec![0u8; LOG_REGION_LEN as usize],
            started: Some(Instant::now()),
            ..WriterOut::default()
        },
        pending: HashMap::new(),
        protected: Vec::new(),
        progress,
    };
    let mut rng = Rng::new(cfg.seed);
    let mut group: Vec<Named> = Vec::new();
    'writes: for i in 0..cfg.writes {
        while st.pending.len() >= cfg.in_flight {
            if !st.settle_one(&mut h).await {
                break 'writes;
            }
        }
        while let Some(ev) = h.try_next_event() {
            st.on_event(ev);
        }
        if st.out.fatal.is_some() || !st.out.nacks.is_empty() {
            break;
        }
        let len = 1 + rng.below(cfg.max_chunk);
        let mut off = rng.below(LOG_REGION_LEN - len + 1);
        while st.protected.iter().any(|p| overlaps(p, off, len)) {
            off = rng.below(LOG_REGION_LEN - len + 1);
        }
        let data = pattern(i, len as usize);
        st.out.model[off as usize..(off + len) as usize].copy_from_slice(&data);
        match h.write_remote(LOG_REGION, off, Bytes::from(data)).await {
            Ok(id) => {
                st.pending.insert(id, Pending::Write);
                st.out.issued += 1;
            }
            Err(e) => {
                st.out.fatal = Some(format!("write {i} refused: {e}"));
                break;
            }
        }
        group.retain(|g| !overlaps(g, off, len));
        group.push((i, off, len));
        if (i + 1) % cfg.notice_every == 0 || i + 1 == cfg.writes {
            let named = std::mem::take(&mut group);
            match h.send_with(notice(i + 1, &named), SendModel::Sync).await {
                Ok(id) => {
                    st.protected.extend(named.iter().copied());
                    st.pending.insert(id, Pending::Notice(named));
                    st.out.notices_sent += 1;
                }
                Err(e) => {
                    st.out.fatal = Some(format!("notice after write {i} refused: {e}"));
                    break;
                }
            }
        }
    }
    while !st.pending.is_empty() && st.out.fatal.is_none() {
        if !st.settle_one(&mut h).await {
            break;
        }
    }
    st.out.finished = Some(Instant::now());
    (h, st.out)
}

//! What a receiving client checks: every record (magic, CRC32C, content regenerated from its
//! index, tag, index in order), counted per client; a sync record is answered with a return
//! code derived from its checksum, or a negative code naming what was wrong, so every ack the
//! leader gets proves that the receiver got exactly that record, in order. The partner's
//! planned crash hooks in here too, and so do the region scenarios' commit notices and requests
//! (`super::region`).

use super::super::lock;
use super::super::record;
use super::super::region::{is_notice, LOG_REGION};
use super::super::sync::SyncDir;
use super::region::{check_notice, serve, CmdRx, Zombie};
use peercm_cm_manager::{ClientEvent, ClientHandle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Default, Clone, Serialize)]
pub struct RecvStats {
    received: u64,
    first: Option<u64>,
    last: Option<u64>,
    next: Option<u64>,
    duplicates: u64,
    gaps: u64,
    bad: u64,
    errors: Vec<String>,
    ups: u64,
    downs: u64,
    switched: u64,
    /// Commit notices checked (region scenarios), and those that found a write missing.
    notices: u64,
    notices_bad: u64,
    /// Every index received, in order (only on the backup partner, which gets what the partner
    /// did not acknowledge: increasing, possibly with holes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    indices: Vec<u64>,
}

impl RecvStats {
    fn error(&mut self, e: String) {
        if self.errors.len() < 8 {
            self.errors.push(e);
        }
    }
}

/// Per client name.
pub type Stats = Arc<Mutex<BTreeMap<String, RecvStats>>>;

/// What a receiving client does besides checking records.
#[derive(Clone, Default)]
pub struct RecvHooks {
    /// Record every index received (the backup partner).
    pub keep_indices: bool,
    /// Partner: crash (abort the process) on receiving this record (0 = never); the marker
    /// file is written first so the node script knows the crash was ordered.
    pub crash_at: Option<(Arc<AtomicU64>, SyncDir)>,
}

/// The partner's planned crash: no cleanup, no goodbye on any link (as `kill -9`).
fn crash_now(sync: &SyncDir, index: u64) -> ! {
    let _ = sync.put(
        "mlane.crashed.partner",
        &format!("aborted on receiving mirror record {index}"),
    );
    eprintln!("[manager-lane partner] mirror record {index} received: aborting the process now");
    std::process::abort()
}

/// Checks one record against what the client has seen so far; the return code to answer.
fn check_record(st: &mut RecvStats, seq: u64, payload: &[u8], tag: u8, hooks: &RecvHooks) -> i32 {
    st.received += 1;
    match record::verify(payload) {
        Err(e) => {
            st.bad += 1;
            st.error(format!("seq {seq}: {e}"));
            -1
        }
        Ok((t, _)) if t != tag => {
            st.bad += 1;
            st.error(format!("seq {seq}: tag {t}, expected {tag}"));
            -2
        }
        Ok((_, index)) => match st.next {
            Some(n) if index < n => {
                st.duplicates += 1;
                st.error(format!("record {index} again (expected {n}): duplicate"));
                -3
            }
            // The backup partner gets what the partner did not acknowledge: in order, but
            // with holes where an ack from the partner made it back (the leader checks the
            // exact list).
            Some(n) if index > n && !hooks.keep_indices => {
                st.gaps += index - n;
                st.error(format!(
                    "record {index} after {}: {} missing",
                    n - 1,
                    index - n
                ));
                st.next = Some(index + 1);
                st.last = Some(index);
                -4
            }
            _ => {
                if let Some((at, sync)) = &hooks.crash_at {
                    if at.load(Ordering::SeqCst) == index {
                        crash_now(sync, index);
                    }
                }
                st.first.get_or_insert(index);
                st.next = Some(index + 1);
                st.last = Some(index);
                if hooks.keep_indices {
                    st.indices.push(index);
                }
                record::code(payload)
            }
        },
    }
}

/// Every client forgets which record it expects next (the leader's `resync`: the backup took
/// part of each stream, so the next record may come after a hole). Duplicates of what was
/// received before are still not detected across this point.
pub fn resync(stats: &Stats) {
    for st in lock(stats).values_mut() {
        st.next = None;
    }
}

/// Takes every event of a receiving client: checks each record, answers sync ones; a commit
/// notice is checked against the client's region, and `cmds` (the mirror's) serves the region
/// requests and drives the zombie writer (see `region`).
pub fn spawn_receiver(
    mut h: ClientHandle,
    tag: u8,
    stats: Stats,
    hooks: RecvHooks,
    mut cmds: Option<CmdRx>,
) {
    let name = h.name().to_string();
    tokio::spawn(async move {
        let mut zombie = Zombie::default();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ev = tokio::select! {
                ev = h.next_event() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                Some((cmd, reply)) = async {
                    match cmds.as_mut() {
                        Some(c) => c.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let _ = reply.send(serve(&h, &mut zombie, cmd).await);
                    continue;
                }
                _ = tick.tick(), if zombie.active() => {
                    zombie.tick(&h).await;
                    continue;
                }
            };
            if zombie.completion(&ev) {
                continue;
            }
            match ev {
                ClientEvent::Data {
                    seq,
                    payload,
                    reply_needed,
                } => {
                    let code = if is_notice(&payload) {
                        let (code, err) = check_notice(&h, LOG_REGION, &payload).await;
                        let mut all = lock(&stats);
                        let st = all.entry(name.clone()).or_default();
                        st.notices += 1;
                        if let Some(e) = err {
                            st.notices_bad += 1;
                            st.error(e);
                        }
                        code
                    } else {
                        let mut all = lock(&stats);
                        let st = all.entry(name.clone()).or_default();
                        check_record(st, seq, &payload, tag, &hooks)
                    };
                    if reply_needed {
                        if let Err(e) = h.reply(seq, code).await {
                            let mut all = lock(&stats);
                            all.entry(name.clone())
                                .or_default()
                                .error(format!("reply to {seq}: {e}"));
                        }
                    }
                }
                ClientEvent::Up => lock(&stats).entry(name.clone()).or_default().ups += 1,
                ClientEvent::Down { .. } => {
                    lock(&stats).entry(name.clone()).or_default().downs += 1
                }
                ClientEvent::PeerSwitched { .. } => {
                    lock(&stats).entry(name.clone()).or_default().switched += 1
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_checked_in_order() {
        let hooks = RecvHooks::default();
        let mut st = RecvStats::default();
        let r = |i| record::encode(1, i, 100);
        assert_eq!(
            check_record(&mut st, 1, &r(1), 1, &hooks),
            record::code(&r(1))
        );
        assert_eq!(
            check_record(&mut st, 2, &r(2), 1, &hooks),
            record::code(&r(2))
        );
        assert_eq!(check_record(&mut st, 3, &r(2), 1, &hooks), -3);
        assert_eq!(check_record(&mut st, 4, &r(5), 1, &hooks), -4);
        assert_eq!(check_record(&mut st, 5, &r(6), 2, &hooks), -2);
        assert_eq!(check_record(&mut st, 6, b"junk", 1, &hooks), -1);
        assert_eq!((st.received, st.duplicates, st.gaps, st.bad), (6, 1, 2, 2));
        assert_eq!((st.first, st.last), (Some(1), Some(5)));
        let keep = RecvHooks {
            keep_indices: true,
            crash_at: None,
        };
        let mut st = RecvStats::default();
        check_record(&mut st, 1, &r(3), 1, &keep);
        check_record(&mut st, 2, &r(7), 1, &keep);
        assert_eq!((st.gaps, st.indices.clone()), (0, vec![3, 7]));
        // After a resync the next record may come after a hole.
        let stats: Stats = Arc::default();
        let mut st = RecvStats::default();
        check_record(&mut st, 1, &r(1), 1, &hooks);
        lock(&stats).insert("c".into(), st);
        resync(&stats);
        let mut st = lock(&stats).remove("c").unwrap();
        assert_eq!(
            check_record(&mut st, 2, &r(9), 1, &hooks),
            record::code(&r(9))
        );
        assert_eq!((st.gaps, st.first, st.last), (0, Some(1), Some(9)));
    }
}

//! The receiving mirror client's part in the region scenarios (the leader asks for it through
//! the sync dir; the client's task, which owns the handle, does it): opening, releasing and
//! digesting the client's own region; checking a commit notice at delivery (every write it
//! names must already be in the region); and the zombie writer, which keeps writing into the
//! partner's region and records how each write ended (acked, NACKed with a reason, or refused
//! at once with a typed error).

use super::super::region::{digest, parse_notice, pattern, zombie_offset, ZOMBIE_CHUNK};
use bytes::Bytes;
use peercm_cm_manager::{ClientEvent, ClientHandle};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A request for the mirror client's task, with where to answer.
pub enum RegionCmd {
    Open { name: String, len: u64 },
    Release { name: String },
    Digest { name: String, len: u64 },
    ZombieStart { region: String },
    ZombieStop,
    ZombieStats,
}

pub type CmdTx = mpsc::Sender<(RegionCmd, oneshot::Sender<Value>)>;
pub type CmdRx = mpsc::Receiver<(RegionCmd, oneshot::Sender<Value>)>;

/// Parses a leader request (`region-open <name> <len>`, `region-release <name>`,
/// `region-digest <name> <len>`, `zombie-start <region>`, `zombie-stop`, `zombie-stats`).
pub fn parse_cmd(cmd: &str) -> Option<RegionCmd> {
    let w: Vec<&str> = cmd.split_whitespace().collect();
    Some(match w.as_slice() {
        ["region-open", n, l] => RegionCmd::Open {
            name: n.to_string(),
            len: l.parse().ok()?,
        },
        ["region-release", n] => RegionCmd::Release {
            name: n.to_string(),
        },
        ["region-digest", n, l] => RegionCmd::Digest {
            name: n.to_string(),
            len: l.parse().ok()?,
        },
        ["zombie-start", r] => RegionCmd::ZombieStart {
            region: r.to_string(),
        },
        ["zombie-stop"] => RegionCmd::ZombieStop,
        ["zombie-stats"] => RegionCmd::ZombieStats,
        _ => return None,
    })
}

/// Checks a commit notice against the region `name`: every write it names is there.
/// Returns 0, or a negative code and what was wrong.
pub async fn check_notice(h: &ClientHandle, name: &str, payload: &[u8]) -> (i32, Option<String>) {
    let (count, writes) = match parse_notice(payload) {
        Ok(v) => v,
        Err(e) => return (-20, Some(e)),
    };
    for (i, off, len) in writes {
        match h.read_region(name, off, len as usize).await {
            Ok(got) if got == pattern(i, len as usize) => {}
            Ok(_) => {
                return (
                    -21,
                    Some(format!(
                        "notice after {count} writes delivered before write {i} ({len} bytes at {off}) was in the region"
                    )),
                )
            }
            Err(e) => return (-22, Some(format!("reading {name} for notice {count}: {e}"))),
        }
    }
    (0, None)
}

/// How one kind of outcome went: how often, and when first.
struct Seen {
    count: u64,
    first: Instant,
}

/// The zombie writer (see the module docs).
#[derive(Default)]
pub struct Zombie {
    region: Option<String>,
    active: bool,
    next: u64,
    /// Outstanding writes: id -> index.
    ids: HashMap<u64, u64>,
    acked: u64,
    last_acked: Option<u64>,
    refused: BTreeMap<String, Seen>,
    nacked: BTreeMap<String, Seen>,
}

fn seen(m: &mut BTreeMap<String, Seen>, kind: String) {
    m.entry(kind)
        .or_insert(Seen {
            count: 0,
            first: Instant::now(),
        })
        .count += 1;
}

fn seen_json(m: &BTreeMap<String, Seen>) -> Value {
    let now = Instant::now();
    m.iter()
        .map(|(k, s)| {
            let ago = now.duration_since(s.first).as_millis() as u64;
            (k.clone(), json!({ "count": s.count, "first_ago_ms": ago }))
        })
        .collect::<serde_json::Map<String, Value>>()
        .into()
}

impl Zombie {
    pub fn active(&self) -> bool {
        self.active
    }

    /// One tick: a new write while fewer than 4 are outstanding.
    pub async fn tick(&mut self, h: &ClientHandle) {
        let Some(region) = self.region.clone() else {
            return;
        };
        if !self.active || self.ids.len() >= 4 {
            return;
        }
        let i = self.next;
        self.next += 1;
        let data = Bytes::from(pattern(i, ZOMBIE_CHUNK as usize));
        match h.write_remote(&region, zombie_offset(i), data).await {
            Ok(id) => {
                self.ids.insert(id, i);
            }
            Err(e) => seen(&mut self.refused, e.to_string()),
        }
    }

    /// A completion of one of its writes; false if the event is not one.
    pub fn completion(&mut self, ev: &ClientEvent) -> bool {
        match ev {
            ClientEvent::Acked { seq, code: None } => match self.ids.remove(seq) {
                Some(i) => {
                    self.acked += 1;
                    self.last_acked = Some(self.last_acked.map_or(i, |l| l.max(i)));
                    true
                }
                None => false,
            },
            ClientEvent::Nacked { seq, reason } => match self.ids.remove(seq) {
                Some(_) => {
                    seen(&mut self.nacked, format!("{reason:?}"));
                    true
                }
                None => false,
            },
            _ => false,
        }
    }

    fn stats(&self) -> Value {
        json!({
            "ok": true,
            "active": self.active,
            "issued": self.next,
            "acked": self.acked,
            "last_acked": self.last_acked,
            "outstanding": self.ids.len(),
            "refused": seen_json(&self.refused),
            "nacked": seen_json(&self.nacked),
        })
    }
}

/// Serves one request in the client's task.
pub async fn serve(h: &ClientHandle, z: &mut Zombie, cmd: RegionCmd) -> Value {
    let fail = |e: String| json!({ "ok": false, "why": e });
    match cmd {
        RegionCmd::Open { name, len } => {
            let t = Instant::now();
            match h.register_region(&name, len).await {
                Ok(info) => json!({
                    "ok": true,
                    "path": info.path.display().to_string(),
                    "register_ms": t.elapsed().as_millis() as u64,
                }),
                Err(e) => fail(e.to_string()),
            }
        }
        RegionCmd::Release { name } => match h.release_region(&name).await {
            Ok(()) => json!({ "ok": true }),
            Err(e) => fail(e.to_string()),
        },
        RegionCmd::Digest { name, len } => {
            let t = Instant::now();
            let read = |off: u64, n: usize| {
                let name = name.clone();
                async move {
                    h.read_region(&name, off, n)
                        .await
                        .map_err(|e| e.to_string())
                }
            };
            match digest(len, read).await {
                Ok(d) => json!({ "ok": true, "digest": d, "ms": t.elapsed().as_millis() as u64 }),
                Err(e) => fail(e),
            }
        }
        RegionCmd::ZombieStart { region } => {
            z.region = Some(region);
            z.active = true;
            json!({ "ok": true })
        }
        RegionCmd::ZombieStop => {
            z.active = false;
            z.stats()
        }
        RegionCmd::ZombieStats => z.stats(),
    }
}

//! Coordination between the roles (not peercm: that is what is under test): small files in the
//! lane's shared sync dir (`--sync`), written then renamed. Roles announce themselves with
//! `mlane.ready.<role>`; the leader sends numbered requests (`mlane.req.<role>.<n>`: `report`,
//! `crash-at <index>`, `resync`, `exit`) and waits for the answers (`mlane.resp.<role>.<n>`).

use super::args::Role;
use crate::abort::AbortFile;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct SyncDir {
    pub dir: PathBuf,
    pub abort: AbortFile,
    /// Receivers: the leader's script has ended once this exists.
    pub stop: Option<PathBuf>,
}

impl SyncDir {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `name` (a temporary file, then a rename).
    pub fn put(&self, name: &str, content: &str) -> Result<(), String> {
        let tmp = self.dir.join(format!(".{name}.tmp.{}", std::process::id()));
        std::fs::write(&tmp, content).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, self.path(name)).map_err(|e| format!("renaming to {name}: {e}"))
    }

    /// Why the lane aborted, once it has.
    pub fn aborted(&self) -> Option<String> {
        self.abort.reason()
    }

    pub fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|p| p.exists())
    }

    /// Waits for `name` and returns its content.
    pub async fn wait(&self, name: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let p = self.path(name);
        loop {
            if let Ok(s) = std::fs::read_to_string(&p) {
                return Ok(s);
            }
            if let Some(why) = self.aborted() {
                return Err(format!("gave up waiting for {name}: {why}"));
            }
            if Instant::now() >= deadline {
                return Err(format!("no {name} after {} s", timeout.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The leader's side of the request/answer files.
pub struct Rpc {
    pub sync: SyncDir,
    next: HashMap<&'static str, u64>,
}

impl Rpc {
    pub fn new(sync: SyncDir) -> Rpc {
        Rpc {
            sync,
            next: HashMap::new(),
        }
    }

    /// Sends `cmd` to `role` and waits (up to 30 s) for its JSON answer.
    pub async fn call(&mut self, role: Role, cmd: &str) -> Result<Value, String> {
        let n = self.next.entry(role.name()).or_insert(0);
        *n += 1;
        let n = *n;
        self.sync
            .put(&format!("mlane.req.{}.{n}", role.name()), cmd)?;
        let text = self
            .sync
            .wait(
                &format!("mlane.resp.{}.{n}", role.name()),
                Duration::from_secs(30),
            )
            .await?;
        serde_json::from_str(&text).map_err(|e| format!("bad answer from {}: {e}", role.name()))
    }
}

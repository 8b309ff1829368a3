//! The lane's abort file: guest-init writes `$LANE/sync/abort` when a node script fails, and
//! every runner stops waiting for its peers as soon as it exists (`--abort-file`).

use std::path::PathBuf;

/// An optional abort file; without one, nothing ever aborts.
#[derive(Debug, Clone, Default)]
pub struct AbortFile(pub Option<PathBuf>);

impl AbortFile {
    /// Whether the lane has aborted (the file exists).
    pub fn is_set(&self) -> bool {
        self.0.as_deref().is_some_and(|p| p.exists())
    }

    /// `Some("a node failed (<the file's content>)")` once the lane has aborted.
    pub fn reason(&self) -> Option<String> {
        let a = self.0.as_ref()?;
        if a.exists() {
            let why = std::fs::read_to_string(a).unwrap_or_default();
            return Some(format!("a node failed ({})", why.trim()));
        }
        None
    }
}

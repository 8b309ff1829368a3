//! Client regions, the memory side (issue 9, in progress): a **region** is a named,
//! fixed-size file in `[regions] dir`, mapped shared into the manager
//! ([`peercm_verbs_shim::MappedFile`], which owns the `unsafe` mapping and the file's lock), that
//! the partner will RDMA-write into once it is registered on the node's HCAs.
//!
//! - [`RegionStore`]: opens (creating if needed) and releases regions, checking the name, the
//!   size of an existing file and the node's `[regions] max_bytes`, with typed errors.
//! - [`Region`]: one open region; local copies in and out, `flush`, and the mapping to register.
//! - `name`: [`RegionName`], a name that is always safe as a file name.
//! - `error`: [`RegionError`].
//!
//! Registration and invalidation (an MR per device over the mapping, deregistered through the
//! reaper, never on the manager task) are in `registration`; the manager's side (client
//! commands, placing writes that came as WRITE frames, registering anew after a switch) in
//! `runtime`. What is next (the exchange with the
//! partner, `write_remote`, fencing on a switch) is in docs/architecture.md, "Regions (in
//! progress)".

mod error;
mod name;
pub(crate) mod registration;
pub(crate) mod runtime;

pub use error::RegionError;
pub use name::{RegionName, MAX_REGION_NAME};
pub use runtime::LocalRegionInfo;

use crate::config::RegionTunables;
use peercm_verbs_shim::{MapError, MappedFile};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One open region: a mapped file of fixed size. Cloning gives another handle to the same
/// mapping; it stays mapped until the last handle (and the last registration over it) goes.
#[derive(Debug, Clone)]
pub struct Region {
    name: RegionName,
    mem: Arc<MappedFile>,
}

impl Region {
    /// Its name.
    pub fn name(&self) -> &RegionName {
        &self.name
    }

    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.mem.len() as u64
    }

    /// Whether it is empty (never: a region holds at least one byte).
    pub fn is_empty(&self) -> bool {
        self.mem.is_empty()
    }

    /// Its file.
    pub fn path(&self) -> &std::path::Path {
        self.mem.path()
    }

    /// The mapping, to register a memory region over.
    pub fn memory(&self) -> &Arc<MappedFile> {
        &self.mem
    }

    fn bounds(&self, offset: u64, len: usize) -> Result<usize, RegionError> {
        let size = self.len();
        let len64 = len as u64;
        match offset.checked_add(len64) {
            Some(end) if end <= size => Ok(offset as usize),
            _ => Err(RegionError::OutOfBounds {
                name: self.name.to_string(),
                offset,
                len: len64,
                size,
            }),
        }
    }

    /// Copies `data` into the region at `offset` (the TCP emulation of a remote write will
    /// apply frames this way); outside the region nothing is written.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), RegionError> {
        let at = self.bounds(offset, data.len())?;
        self.mem.write(at, data).map_err(|e| self.map_error(e))
    }

    /// Copies `len` bytes out of the region at `offset`.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, RegionError> {
        let at = self.bounds(offset, len)?;
        self.mem.read(at, len).map_err(|e| self.map_error(e))
    }

    /// Writes dirty pages to the file and waits (`msync`); only a host crash needs it.
    pub fn flush(&self) -> Result<(), RegionError> {
        self.mem.flush().map_err(|e| self.map_error(e))
    }

    fn map_error(&self, e: MapError) -> RegionError {
        from_map_error(e, &self.name)
    }
}

fn from_map_error(e: MapError, name: &RegionName) -> RegionError {
    match e {
        MapError::Io { op, path, source } => RegionError::Io { op, path, source },
        MapError::Locked { path } => RegionError::Locked { path },
        MapError::SizeMismatch {
            path,
            found,
            expected,
        } => RegionError::SizeMismatch {
            path,
            found,
            expected,
        },
        MapError::OutOfBounds { offset, len, size } => RegionError::OutOfBounds {
            name: name.to_string(),
            offset: offset as u64,
            len: len as u64,
            size: size as u64,
        },
        MapError::NotLarger { len, asked, .. } => RegionError::NotLarger {
            name: name.to_string(),
            len,
            asked,
        },
        // Zero bytes are refused before mapping; a length the host cannot map is too large.
        MapError::BadLength { len, .. } => RegionError::Empty {
            name: format!("{name} ({len} bytes)"),
        },
        // MapError is non-exhaustive.
        other => RegionError::Io {
            op: "mapping",
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

/// The node's open regions, in `[regions] dir`, within `[regions] max_bytes` together.
#[derive(Debug)]
pub struct RegionStore {
    dir: Option<PathBuf>,
    max_bytes: u64,
    /// By (client directory, region name); the client directory is empty for regions opened
    /// with [`RegionStore::open`].
    open: BTreeMap<(String, RegionName), Region>,
}

impl RegionStore {
    /// A store for the node's `[regions]` settings; nothing is touched until a region opens.
    pub fn new(cfg: &RegionTunables) -> Self {
        RegionStore {
            dir: cfg.dir.clone(),
            max_bytes: cfg.max_bytes,
            open: BTreeMap::new(),
        }
    }

    /// Bytes the open regions hold together.
    pub fn bytes_in_use(&self) -> u64 {
        self.open.values().map(Region::len).sum()
    }

    /// The open region named `name`.
    pub fn get(&self, name: &str) -> Option<&Region> {
        let n = RegionName::new(name).ok()?;
        self.open.get(&(String::new(), n))
    }

    /// Client `client`'s open region `name` (see [`RegionStore::open_for`]).
    pub fn get_for(&self, client: &str, name: &str) -> Option<&Region> {
        let c = RegionName::new(client).ok()?;
        let n = RegionName::new(name).ok()?;
        self.open.get(&(c.as_str().to_string(), n))
    }

    /// Opens region `name` of `len` bytes: its file is created zeroed (and the directory with
    /// it) if it does not exist, or opened with its contents if it does and holds exactly
    /// `len` bytes. Refused for a bad name, no `[regions] dir`, zero bytes, a region open
    /// already, or a size that would take the node beyond `[regions] max_bytes`.
    pub fn open(&mut self, name: &str, len: u64) -> Result<Region, RegionError> {
        self.open_in(None, name, len)
    }

    /// Opens client `client`'s region `name` of `len` bytes, the file
    /// `<dir>/<client>/<name>.region` (so two clients may each hold a region of the same
    /// name); otherwise as [`RegionStore::open`]. The client name must be safe as a directory
    /// name by the same rules as a region name.
    pub fn open_for(&mut self, client: &str, name: &str, len: u64) -> Result<Region, RegionError> {
        let c = RegionName::new(client)?;
        self.open_in(Some(c), name, len)
    }

    fn open_in(
        &mut self,
        client: Option<RegionName>,
        name: &str,
        len: u64,
    ) -> Result<Region, RegionError> {
        let name = RegionName::new(name)?;
        let base = self.dir.as_ref().ok_or(RegionError::NotConfigured)?;
        let dir = match &client {
            Some(c) => base.join(c.as_str()),
            None => base.clone(),
        };
        let key = (
            client
                .as_ref()
                .map_or_else(String::new, |c| c.as_str().to_string()),
            name.clone(),
        );
        if len == 0 {
            return Err(RegionError::Empty {
                name: name.to_string(),
            });
        }
        if self.open.contains_key(&key) {
            return Err(RegionError::AlreadyOpen {
                name: name.to_string(),
            });
        }
        let in_use = self.bytes_in_use();
        if in_use.checked_add(len).is_none_or(|t| t > self.max_bytes) {
            return Err(RegionError::TooLarge {
                name: name.to_string(),
                asked: len,
                in_use,
                max: self.max_bytes,
            });
        }
        std::fs::create_dir_all(&dir).map_err(|source| RegionError::Io {
            op: "creating the regions directory",
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(name.file_name());
        let (mem, created) =
            MappedFile::create_or_open(&path, len).map_err(|e| from_map_error(e, &name))?;
        tracing::info!(region = %name, path = %path.display(), len, created, "region opened");
        let region = Region {
            name: name.clone(),
            mem: Arc::new(mem),
        };
        self.open.insert(key, region.clone());
        Ok(region)
    }

    /// Grows client `client`'s open region `name` to `new_len` bytes (its file grows, the new
    /// bytes are zero): the grown region, whose mapping replaces the old one in the store.
    /// Handles to the old one (and registrations over it) stay valid over the old length, on
    /// the same pages. Refused, with nothing changed, for an unknown region, a size not above
    /// the current one, or one that would take the node beyond `[regions] max_bytes`.
    pub fn grow_for(
        &mut self,
        client: &str,
        name: &str,
        new_len: u64,
    ) -> Result<Region, RegionError> {
        let unknown = || RegionError::Unknown {
            name: name.chars().take(2 * MAX_REGION_NAME).collect(),
        };
        let c = RegionName::new(client).map_err(|_| unknown())?;
        let n = RegionName::new(name).map_err(|_| unknown())?;
        let key = (c.as_str().to_string(), n);
        let old = self.open.get(&key).ok_or_else(unknown)?;
        let len = old.len();
        if new_len <= len {
            return Err(RegionError::NotLarger {
                name: name.to_string(),
                len,
                asked: new_len,
            });
        }
        let others = self.bytes_in_use() - len;
        if others
            .checked_add(new_len)
            .is_none_or(|t| t > self.max_bytes)
        {
            return Err(RegionError::TooLarge {
                name: name.to_string(),
                asked: new_len,
                in_use: self.bytes_in_use(),
                max: self.max_bytes,
            });
        }
        let mem = old.mem.grow(new_len).map_err(|e| old.map_error(e))?;
        let grown = Region {
            name: old.name.clone(),
            mem: Arc::new(mem),
        };
        tracing::info!(region = %grown.name, from = len, to = new_len, "region grown");
        self.open.insert(key, grown.clone());
        Ok(grown)
    }

    /// Releases region `name`: its bytes no longer count against `max_bytes`, and the file is
    /// unmapped (and unlocked) once the last handle and registration over it go. The file
    /// stays on disk with its contents.
    pub fn release(&mut self, name: &str) -> Result<Region, RegionError> {
        self.release_in(String::new(), name)
    }

    /// Releases client `client`'s region `name` (see [`RegionStore::release`]).
    pub fn release_for(&mut self, client: &str, name: &str) -> Result<Region, RegionError> {
        self.release_in(client.to_string(), name)
    }

    fn release_in(&mut self, client: String, name: &str) -> Result<Region, RegionError> {
        RegionName::new(name)
            .ok()
            .and_then(|n| self.open.remove(&(client, n)))
            .ok_or_else(|| RegionError::Unknown {
                name: name.chars().take(2 * MAX_REGION_NAME).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn store(dir: &tempfile::TempDir, max_bytes: u64) -> RegionStore {
        RegionStore::new(&RegionTunables {
            dir: Some(dir.path().join("regions")),
            max_bytes,
        })
    }

    #[test]
    fn a_write_through_the_store_is_in_the_file_after_flush() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(&d, 1 << 20);
        let r = s.open("nvram", 8192).unwrap();
        assert_eq!(r.path(), d.path().join("regions").join("nvram.region"));
        r.write(4000, b"record").unwrap();
        r.flush().unwrap();
        let disk = std::fs::read(r.path()).unwrap();
        assert_eq!(disk.len(), 8192);
        assert_eq!(&disk[4000..4006], b"record");
        assert_eq!(r.read(4000, 6).unwrap(), b"record");
    }

    #[test]
    fn clients_have_a_directory_each() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(&d, 1 << 20);
        let a = s.open_for("mirror", "log", 4096).unwrap();
        let b = s.open_for("heartbeat", "log", 4096).unwrap();
        assert_eq!(a.path(), d.path().join("regions/mirror/log.region"));
        assert_eq!(b.path(), d.path().join("regions/heartbeat/log.region"));
        assert!(matches!(
            s.open_for("mirror", "log", 4096),
            Err(RegionError::AlreadyOpen { .. })
        ));
        assert!(matches!(
            s.open_for("..", "log", 4096),
            Err(RegionError::BadName { .. })
        ));
        assert!(s.get_for("mirror", "log").is_some());
        assert!(s.get("log").is_none());
        assert_eq!(s.bytes_in_use(), 8192);
        s.release_for("mirror", "log").unwrap();
        assert!(s.get_for("mirror", "log").is_none());
        assert_eq!(s.bytes_in_use(), 4096);
    }

    #[test]
    fn reopening_keeps_the_contents() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(&d, 1 << 20);
        let r = s.open("nvram", 4096).unwrap();
        r.write(0, b"survives").unwrap();
        drop(r);
        s.release("nvram").unwrap();
        let mut fresh = store(&d, 1 << 20);
        let again = fresh.open("nvram", 4096).unwrap();
        assert_eq!(again.read(0, 8).unwrap(), b"survives");
    }

    #[test]
    fn an_existing_file_of_another_size_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(&d, 1 << 20);
        drop(s.open("nvram", 4096).unwrap());
        s.release("nvram").unwrap();
        let e = s.open("nvram", 8192).unwrap_err();
        assert!(
            matches!(
                e,
                RegionError::SizeMismatch {
                    found: 4096,
                    expected: 8192,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(s.bytes_in_use(), 0, "a refused region holds nothing");
    }

    #[test]
    fn the_node_limit_counts_every_open_region_and_release_frees_it() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(&d, 12_288);
        s.open("a", 8192).unwrap();
        let e = s.open("b", 8192).unwrap_err();
        assert!(
            matches!(
                e,
                RegionError::TooLarge {
                    asked: 8192,
                    in_use: 8192,
                    max: 12_288,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            !d.path().join("regions").join("b.region").exists(),
            "no file made"
        );
        s.open("b", 4096).unwrap();
        assert_eq!(s.bytes_in_use(), 12_288);
        s.release("a").unwrap();
        s.open("c", 8192).unwrap();
        assert!(matches!(
            s.open("huge", u64::MAX),
            Err(RegionError::TooLarge { .. })
        ));
    }

    #[test]
    fn growing_keeps_the_contents_counts_against_the_limit_and_refuses_shrinking() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(&d, 16_384);
        let old = s.open_for("mirror", "log", 4096).unwrap();
        old.write(0, b"first").unwrap();
        s.open_for("mirror", "other", 4096).unwrap();
        let e = s.grow_for("mirror", "log", 16_384).unwrap_err();
        assert!(
            matches!(
                e,
                RegionError::TooLarge {
                    asked: 16_384,
                    in_use: 8192,
                    max: 16_384,
                    ..
                }
            ),
            "{e}"
        );
        assert!(matches!(
            s.grow_for("mirror", "log", 4096),
            Err(RegionError::NotLarger {
                len: 4096,
                asked: 4096,
                ..
            })
        ));
        assert!(matches!(
            s.grow_for("mirror", "nope", 8192),
            Err(RegionError::Unknown { .. })
        ));
        assert_eq!(s.bytes_in_use(), 8192, "refusals change nothing");
        let grown = s.grow_for("mirror", "log", 12_288).unwrap();
        assert_eq!(grown.len(), 12_288);
        assert_eq!(s.bytes_in_use(), 16_384);
        assert_eq!(grown.read(0, 5).unwrap(), b"first");
        assert_eq!(s.get_for("mirror", "log").unwrap().len(), 12_288);
        // The old handle still reaches the first 4096 bytes of the same file.
        old.write(100, b"old").unwrap();
        assert_eq!(grown.read(100, 3).unwrap(), b"old");
        assert_eq!(std::fs::metadata(grown.path()).unwrap().len(), 12_288);
    }

    #[test]
    fn bad_names_empty_regions_duplicates_and_no_dir_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(&d, 1 << 20);
        assert!(matches!(
            s.open("../etc", 4096),
            Err(RegionError::BadName { .. })
        ));
        assert!(matches!(s.open("z", 0), Err(RegionError::Empty { .. })));
        s.open("r", 4096).unwrap();
        assert!(matches!(
            s.open("r", 4096),
            Err(RegionError::AlreadyOpen { .. })
        ));
        assert!(matches!(
            s.release("nope"),
            Err(RegionError::Unknown { .. })
        ));
        let mut off = RegionStore::new(&RegionTunables::default());
        assert!(matches!(
            off.open("r", 4096),
            Err(RegionError::NotConfigured)
        ));
    }

    #[test]
    fn a_region_another_process_holds_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut a = store(&d, 1 << 20);
        let mut b = store(&d, 1 << 20);
        let _held = a.open("r", 4096).unwrap();
        // Another store on the same directory stands for another process: the file's lock
        // refuses it.
        assert!(matches!(b.open("r", 4096), Err(RegionError::Locked { .. })));
    }

    #[test]
    fn copies_outside_the_region_fail_and_touch_nothing() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store(&d, 1 << 20);
        let r = s.open("r", 4096).unwrap();
        let e = r.write(4093, b"four").unwrap_err();
        assert!(
            matches!(
                e,
                RegionError::OutOfBounds {
                    offset: 4093,
                    len: 4,
                    size: 4096,
                    ..
                }
            ),
            "{e}"
        );
        assert!(r.write(u64::MAX, b"x").is_err());
        assert!(r.read(4096, 1).is_err());
        assert_eq!(r.read(4088, 8).unwrap(), vec![0; 8]);
    }

    #[test]
    fn io_errors_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        let blocker = d.path().join("file");
        std::fs::write(&blocker, b"not a directory").unwrap();
        let mut s = RegionStore::new(&RegionTunables {
            dir: Some(blocker.join("regions")),
            max_bytes: 1 << 20,
        });
        let e = s.open("r", 4096).unwrap_err();
        assert!(matches!(e, RegionError::Io { .. }), "{e}");
        assert!(e.to_string().contains("file/regions"), "{e}");
    }
}

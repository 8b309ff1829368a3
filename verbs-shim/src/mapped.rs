//! [`MappedFile`]: a fixed-size file mapped shared into this process, the memory a client
//! region lives in. A memory region can be registered over it
//! ([`crate::api::ProtectionDomain::reg_mapped`]), so the partner's RDMA WRITEs land in the
//! file's page cache and survive this process (`kill -9`) once they have landed.
//!
//! Mapping a file is `unsafe` (another process could truncate it under us: every access past the
//! new end faults with SIGBUS), which is why it lives in this crate, the only one allowed FFI.
//! What keeps that away: the file is locked exclusively (`flock`, non-blocking) before it is
//! mapped and for as long as the mapping lives, so a second peercm (or anything else that
//! honours the lock) cannot open, resize or map it; a file that is locked already is refused
//! with [`MapError::Locked`]. A process that ignores advisory locks and truncates the file is
//! outside what peercm can defend against, as with any mapped file.
//!
//! The bytes are only reachable by copy ([`MappedFile::write`], [`MappedFile::read`]), never by
//! reference: once the region is registered the HCA (or the partner) may change them at any
//! time, and no Rust reference may point at memory that changes under it.
//!
//! A memory region registered over a mapping holds an `Arc` of it, so the mapping outlives
//! every region over it by construction; a region whose deregistration fails is leaked with its
//! mapping (see `crate::teardown`).

#![allow(unsafe_code)]

use memmap2::{MmapMut, MmapOptions};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a file cannot be mapped, or a copy in or out of it failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MapError {
    /// An IO operation on the file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "opening", "sizing", "mapping", "flushing").
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the file's lock (it is mapped elsewhere).
    #[error("{} is in use by another process (locked)", path.display())]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The existing file has another size than asked for.
    #[error("{} holds {found} bytes, not the {expected} asked for", path.display())]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// Its size on disk.
        found: u64,
        /// The size asked for.
        expected: u64,
    },
    /// A mapping of zero bytes, or one larger than this host can address.
    #[error("cannot map {len} bytes of {}", path.display())]
    BadLength {
        /// The file.
        path: PathBuf,
        /// The length asked for.
        len: u64,
    },
    /// A mapping may only grow: the new length is not above the current one.
    #[error("{} holds {len} bytes: cannot grow it to {asked}", path.display())]
    NotLarger {
        /// The file.
        path: PathBuf,
        /// Its current length.
        len: u64,
        /// The length asked for.
        asked: u64,
    },
    /// A copy outside the mapping.
    #[error("range {offset}+{len} is outside the {size}-byte mapping")]
    OutOfBounds {
        /// Where the copy starts.
        offset: usize,
        /// Its length.
        len: usize,
        /// The mapping's size.
        size: usize,
    },
}

/// A locked file of fixed size mapped shared (writes reach the file's pages). See the module
/// docs.
pub struct MappedFile {
    ptr: *mut u8,
    len: usize,
    map: MmapMut,
    path: PathBuf,
    /// Holds the `flock` for as long as the mapping lives.
    _file: File,
}

// SAFETY: `ptr` points into `map`, which this object owns and unmaps only when dropped; the
// bytes are only reached through bounds-checked copies (no references), so moving the owner to
// another thread cannot invalidate anything.
unsafe impl Send for MappedFile {}
// SAFETY: shared use is bounds-checked copies in and out through `ptr` and `msync` (`flush`);
// no Rust reference to the mapped bytes ever exists, so concurrent copies (and the HCA's DMA)
// cannot invalidate a borrow. Concurrent writes to one range race on the bytes, as concurrent
// RDMA WRITEs would; that is the callers' ordering to keep, never memory unsafety.
unsafe impl Sync for MappedFile {}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedFile({}, {} bytes)", self.path.display(), self.len)
    }
}

impl MappedFile {
    /// Opens `path`, creating it with `len` zero bytes if it does not exist, locks it and maps
    /// it. An existing file must hold exactly `len` bytes ([`MapError::SizeMismatch`]) and its
    /// contents are kept. Returns the mapping and whether the file was created.
    pub fn create_or_open(path: &Path, len: u64) -> Result<(MappedFile, bool), MapError> {
        let io_err = |op: &'static str| {
            let path = path.to_path_buf();
            move |source: io::Error| MapError::Io { op, path, source }
        };
        let map_len = usize::try_from(len)
            .ok()
            .filter(|l| *l > 0 && isize::try_from(*l).is_ok())
            .ok_or_else(|| MapError::BadLength {
                path: path.to_path_buf(),
                len,
            })?;
        let (file, created) = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(f) => (f, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io_err("opening"))?,
                false,
            ),
            Err(e) => return Err(io_err("creating")(e)),
        };
        lock(&file, path)?;
        if created {
            file.set_len(len).map_err(io_err("sizing"))?;
        }
        let found = file
            .metadata()
            .map_err(io_err("reading the size of"))?
            .len();
        if found != len {
            return Err(MapError::SizeMismatch {
                path: path.to_path_buf(),
                found,
                expected: len,
            });
        }
        // SAFETY: the file is open read-write and holds exactly `map_len` (> 0) bytes, checked
        // just above under the exclusive lock taken before; the lock is held (by `_file`) for as
        // long as the mapping lives, so no cooperating process can truncate the file under it
        // (see the module docs for the rest). The mapped bytes are never reached through a Rust
        // reference, only by copies through `ptr`.
        let mut map =
            unsafe { MmapOptions::new().len(map_len).map_mut(&file) }.map_err(io_err("mapping"))?;
        let ptr = map.as_mut_ptr();
        Ok((
            MappedFile {
                ptr,
                len: map_len,
                map,
                path: path.to_path_buf(),
                _file: file,
            },
            created,
        ))
    }

    /// Grows the file to `new_len` bytes (the new bytes are zero) and maps it anew: the
    /// returned mapping covers the whole file, and this one stays valid over the first
    /// `len()` bytes of the same pages (a memory region registered over it keeps working until
    /// it is deregistered; writes through either are in the file). The file's lock is shared by
    /// both (the new mapping holds a duplicate of the same open file), so it stays locked while
    /// either lives. Refused with [`MapError::NotLarger`] unless `new_len` is above `len()`.
    pub fn grow(&self, new_len: u64) -> Result<MappedFile, MapError> {
        let io_err = |op: &'static str| {
            let path = self.path.clone();
            move |source: io::Error| MapError::Io { op, path, source }
        };
        if new_len <= self.len as u64 {
            return Err(MapError::NotLarger {
                path: self.path.clone(),
                len: self.len as u64,
                asked: new_len,
            });
        }
        let map_len = usize::try_from(new_len)
            .ok()
            .filter(|l| isize::try_from(*l).is_ok())
            .ok_or_else(|| MapError::BadLength {
                path: self.path.clone(),
                len: new_len,
            })?;
        let file = self._file.try_clone().map_err(io_err("duplicating"))?;
        file.set_len(new_len).map_err(io_err("growing"))?;
        // SAFETY: `file` is a duplicate of the locked descriptor this mapping holds (the lock
        // belongs to the open file, shared by both), and the file was just sized to `map_len`
        // (> 0) bytes under that lock; the lock stays held as long as either mapping lives
        // (see the module docs). The bytes are only reached by copies through `ptr`.
        let mut map =
            unsafe { MmapOptions::new().len(map_len).map_mut(&file) }.map_err(io_err("mapping"))?;
        let ptr = map.as_mut_ptr();
        Ok(MappedFile {
            ptr,
            len: map_len,
            map,
            path: self.path.clone(),
            _file: file,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: a mapping holds at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the mapping starts in this process (what a memory region registered over it
    /// covers).
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    /// The first mapped byte, for registering a region over the mapping (`crate::real`).
    pub(crate) fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), MapError> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(MapError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), MapError> {
        self.check(offset, data.len())?;
        // SAFETY: `check` proved offset + len <= self.len, so the destination lies inside the
        // live mapping (unmapped only when `self` drops); the source is a Rust slice, which
        // cannot overlap mapped memory no Rust reference points into.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(offset), data.len()) };
        Ok(())
    }

    /// Copies `len` bytes out of the mapping at `offset`.
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, MapError> {
        self.check(offset, len)?;
        let mut out = vec![0u8; len];
        // SAFETY: `check` proved offset + len <= self.len, so the source lies inside the live
        // mapping; the destination is a fresh Vec of exactly `len` bytes, distinct from it.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), len) };
        Ok(out)
    }

    /// Writes the mapping's dirty pages to the file and waits for it (`msync`). Not needed for
    /// the bytes to survive this process (the page cache holds them), only a host crash.
    pub fn flush(&self) -> Result<(), MapError> {
        self.map.flush().map_err(|source| MapError::Io {
            op: "flushing",
            path: self.path.clone(),
            source,
        })
    }
}

/// Takes the file's exclusive lock without waiting.
fn lock(file: &File, path: &Path) -> Result<(), MapError> {
    // SAFETY: flock on a file descriptor this process owns (borrowed from a live `File`); it
    // touches no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(MapError::Locked {
            path: path.to_path_buf(),
        })
    } else {
        Err(MapError::Io {
            op: "locking",
            path: path.to_path_buf(),
            source: e,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn a_new_file_is_created_zeroed_at_the_size_asked() {
        let d = dir();
        let p = d.path().join("r");
        let (m, created) = MappedFile::create_or_open(&p, 8192).unwrap();
        assert!(created);
        assert_eq!(m.len(), 8192);
        assert_eq!(m.read(0, 8192).unwrap(), vec![0; 8192]);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);
    }

    #[test]
    fn a_write_is_in_the_file_after_flush_and_kept_on_reopen() {
        let d = dir();
        let p = d.path().join("r");
        let (m, _) = MappedFile::create_or_open(&p, 4096).unwrap();
        m.write(100, b"mirrored").unwrap();
        m.flush().unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(&on_disk[100..108], b"mirrored");
        drop(m);
        let (again, created) = MappedFile::create_or_open(&p, 4096).unwrap();
        assert!(!created);
        assert_eq!(again.read(100, 8).unwrap(), b"mirrored");
    }

    #[test]
    fn an_existing_file_of_another_size_is_refused() {
        let d = dir();
        let p = d.path().join("r");
        std::fs::write(&p, [1u8; 100]).unwrap();
        let e = MappedFile::create_or_open(&p, 4096).unwrap_err();
        assert!(
            matches!(
                e,
                MapError::SizeMismatch {
                    found: 100,
                    expected: 4096,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), vec![1u8; 100], "left untouched");
    }

    #[test]
    fn a_file_mapped_already_is_locked() {
        let d = dir();
        let p = d.path().join("r");
        let (_m, _) = MappedFile::create_or_open(&p, 4096).unwrap();
        let e = MappedFile::create_or_open(&p, 4096).unwrap_err();
        assert!(matches!(e, MapError::Locked { .. }), "{e}");
    }

    #[test]
    fn growing_keeps_the_bytes_and_the_lock_and_the_old_mapping_sees_the_same_pages() {
        let d = dir();
        let p = d.path().join("r");
        let (old, _) = MappedFile::create_or_open(&p, 4096).unwrap();
        old.write(10, b"kept").unwrap();
        let new = old.grow(12_288).unwrap();
        assert_eq!(new.len(), 12_288);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 12_288);
        assert_eq!(new.read(10, 4).unwrap(), b"kept");
        assert_eq!(
            new.read(4096, 8192).unwrap(),
            vec![0; 8192],
            "new bytes are zero"
        );
        // One file, one set of pages: a write through the old mapping is seen by the new one.
        old.write(20, b"late").unwrap();
        assert_eq!(new.read(20, 4).unwrap(), b"late");
        new.write(12_000, b"tail").unwrap();
        drop(old);
        assert!(matches!(
            MappedFile::create_or_open(&p, 12_288),
            Err(MapError::Locked { .. })
        ));
        drop(new);
        let (again, created) = MappedFile::create_or_open(&p, 12_288).unwrap();
        assert!(!created);
        assert_eq!(again.read(12_000, 4).unwrap(), b"tail");
    }

    #[test]
    fn growing_to_the_same_or_a_smaller_size_is_refused() {
        let d = dir();
        let p = d.path().join("r");
        let (m, _) = MappedFile::create_or_open(&p, 8192).unwrap();
        for asked in [8192, 4096] {
            let e = m.grow(asked).unwrap_err();
            assert!(
                matches!(e, MapError::NotLarger { len: 8192, asked: a, .. } if a == asked),
                "{e}"
            );
        }
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192, "untouched");
    }

    #[test]
    fn zero_bytes_are_refused() {
        let d = dir();
        let e = MappedFile::create_or_open(&d.path().join("r"), 0).unwrap_err();
        assert!(matches!(e, MapError::BadLength { len: 0, .. }), "{e}");
    }

    #[test]
    fn copies_outside_the_mapping_fail_and_touch_nothing() {
        let d = dir();
        let (m, _) = MappedFile::create_or_open(&d.path().join("r"), 4096).unwrap();
        let e = m.write(4090, b"too long").unwrap_err();
        assert!(matches!(
            e,
            MapError::OutOfBounds {
                offset: 4090,
                len: 8,
                size: 4096
            }
        ));
        assert!(m.write(usize::MAX, b"x").is_err(), "offset overflow");
        assert!(m.read(4096, 1).is_err());
        assert_eq!(m.read(4088, 8).unwrap(), vec![0; 8]);
    }

    #[test]
    fn io_errors_name_the_path() {
        let d = dir();
        let p = d.path().join("missing-dir").join("r");
        let e = MappedFile::create_or_open(&p, 4096).unwrap_err();
        assert!(matches!(e, MapError::Io { op: "creating", .. }), "{e}");
        assert!(e.to_string().contains("missing-dir"), "{e}");
    }
}

//! robosync-scanner: turns a local directory tree into a [`Snapshot`] the planner can trust.
//!
//! STUB: the public API below is the contract other crates code against; the
//! implementation is being written. Owns: walking, filtering, hashing (BLAKE3,
//! whole file + fixed blocks of [`BLOCK_SIZE`]), the stat cache. Must not: touch
//! the network, write anything but its own cache file.

use std::path::{Path, PathBuf};

/// Size of the fixed blocks whose hashes the delta planner compares.
pub const BLOCK_SIZE: u64 = 256 * 1024;

/// What a scanned entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link, not followed; the target is kept verbatim (bytes).
    Symlink { target: PathBuf },
}

/// BLAKE3 of a whole file and of each [`BLOCK_SIZE`] block (the last may be short).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub whole: [u8; 32],
    pub blocks: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the scan root; never empty (the root itself is not an entry).
    pub path: PathBuf,
    pub kind: EntryKind,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    /// Files only.
    pub digest: Option<Digest>,
}

/// A problem with one path; the scan went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    pub cache_hits: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Sorted by path bytes; a directory always precedes its children.
    pub entries: Vec<Entry>,
    pub errors: Vec<ScanError>,
    pub stats: ScanStats,
}

/// Include/exclude rules, rsync-like: first match wins.
#[derive(Debug, Clone, Default)]
pub struct Filter {}

#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub filter: Filter,
    /// Ignore the stat cache and rehash every file (`--checksum`).
    pub ignore_cache: bool,
}

/// Remembers (size, mtime, ctime, inode) → digest so unchanged files are not re-read.
#[derive(Debug, Clone, Default)]
pub struct StatCache {}

impl StatCache {
    pub fn load(_path: &Path) -> StatCache {
        StatCache::default()
    }
    pub fn save(&self, _path: &Path) -> std::io::Result<()> {
        Ok(())
    }
}

/// Scans `root`. Fails only if the root itself cannot be read.
pub fn scan(
    _root: &Path,
    _opts: &ScanOptions,
    _cache: &mut StatCache,
) -> std::io::Result<Snapshot> {
    unimplemented!()
}

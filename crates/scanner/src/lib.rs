//! robosync-scanner: turns a local directory tree into a [`Snapshot`] the planner can trust.
//!
//! # Brief overview
//!
//! [`scan`] walks a tree in parallel (one rayon task per directory), applies the
//! include/exclude [`Filter`] while walking (excluded directories are never opened),
//! and hashes every regular file with BLAKE3: the whole file plus one hash per
//! [`BLOCK_SIZE`] block (see [`Digest`]). Files whose (size, mtime, ctime, inode)
//! match the [`StatCache`] are not opened at all. Files larger than one block are
//! hashed block-parallel, so one huge file does not serialise the scan.
//!
//! The scanner owns walking, filtering, hashing and the stat cache. It never
//! touches the network and writes nothing but its own cache file
//! ([`StatCache::save`]).
//!
//! ```no_run
//! use robosync_scanner::{scan, Filter, Rule, ScanOptions, StatCache};
//! use std::path::Path;
//!
//! let filter = Filter::new(&[Rule::exclude("*.tmp"), Rule::exclude("/build/")])?;
//! let opts = ScanOptions { filter, ignore_cache: false, progress: None };
//! let cache_path = Path::new("/var/lib/robosync/data.statcache");
//! let mut cache = StatCache::load(cache_path);
//! let snapshot = scan(Path::new("/data"), &opts, &mut cache)?;
//! cache.save(cache_path)?;
//! for err in &snapshot.errors {
//!     eprintln!("{}: {}", err.path.display(), err.message);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Memory
//!
//! State is per entry, never per byte: file contents are read through one
//! [`BLOCK_SIZE`] buffer per worker thread. A small file costs one [`Entry`]
//! (128 bytes + its path) plus one cache record (80 bytes + its path's bytes,
//! in the cache's arena): about 300 bytes per entry at the peak.

#![deny(missing_docs)]

use std::cmp::Ordering;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

mod cache;
mod filter;
#[doc(hidden)]
pub mod fuzzing;
mod hash;
mod walk;

#[cfg(test)]
mod tests;

pub use cache::{StatCache, RACY_WINDOW_NS};
pub use filter::{FileList, Filter, FilterError, Filters, Rule, Rules, Side};
pub use hash::{hash_block, hash_bytes, whole_from_blocks};
pub use walk::scan;

/// Size of the fixed blocks whose hashes the delta planner compares.
///
/// Fixed-size blocks rather than content-defined chunks, because the consumer is
/// the SFTP `copy-data` extension: the delta planner rebuilds a changed remote
/// file by copying *ranges of the old remote file* and uploading only the rest.
/// With fixed blocks a matching hash names an exact `(offset, BLOCK_SIZE)` range
/// of the old file, and the common cases for large data files (appends, in-place
/// rewrites of regions) match every untouched block. Content-defined chunks
/// would also survive insertions, but their ranges are unaligned and
/// variable-sized, cost a rolling hash over every byte, and need a chunk list on
/// both sides; none of that pays off when the remote side can only copy ranges.
///
/// 256 KiB: a multiple of the BLAKE3 chunk (1 KiB) and a power of two, so every
/// block is a complete BLAKE3 subtree and the whole-file hash is assembled from
/// the blocks in the same single read (see [`Digest`]); large enough that the
/// per-block hash list is 1/8192 of the file (128 KiB per GiB), small enough that
/// a local change costs at most a quarter MiB of upload.
pub const BLOCK_SIZE: u64 = 256 * 1024;

/// What a scanned entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, not followed; the target is kept verbatim (bytes).
    Symlink {
        /// What it points at.
        target: PathBuf,
    },
}

/// BLAKE3 of a whole file and of each [`BLOCK_SIZE`] block (the last may be short).
///
/// Block `i` covers bytes `[i * BLOCK_SIZE, min((i + 1) * BLOCK_SIZE, size))`, and
/// its hash is the chaining value of that block's subtree in the file's BLAKE3
/// tree ([`hash_block`]): the whole-file hash is built from the block hashes, so
/// a file is hashed in one pass. Block hashes depend on the block's offset,
/// which costs nothing here: the delta planner only compares a block with the
/// old file's block at the same index (server-side copy-data at equal offsets).
///
/// **A file of at most one block (`size <= BLOCK_SIZE`, including the empty file)
/// stores no block list: `blocks` is empty and `whole` is its only block hash.**
/// This keeps small files at 32 bytes of hash each. Use [`Digest::block_hashes`]
/// to get the list uniformly. A file larger than one block has exactly
/// `size.div_ceil(BLOCK_SIZE)` entries in `blocks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// BLAKE3 of the whole file.
    pub whole: [u8; 32],
    /// BLAKE3 of each block (empty for a file of at most one block).
    pub blocks: Vec<[u8; 32]>,
}

impl Digest {
    /// The hash of every block in order: `blocks`, or `[whole]` for a file of at
    /// most one block (an empty file has one empty block).
    pub fn block_hashes(&self) -> &[[u8; 32]] {
        if self.blocks.is_empty() {
            std::slice::from_ref(&self.whole)
        } else {
            &self.blocks
        }
    }
}

/// One scanned file, directory or symlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the scan root; never empty (the root itself is not an entry).
    pub path: PathBuf,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Files: length in bytes. Symlinks: length of the target. Directories: 0.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    /// Files only.
    pub digest: Option<Digest>,
}

/// A problem with one path; the scan went on.
///
/// Produced for: a file or directory that cannot be opened or read (the message
/// carries the OS error), a file that changed while it was being hashed (its
/// entry is left out rather than recorded with a hash of mixed content), and a
/// file that vanished between listing and hashing. A directory that cannot be
/// listed is still an [`Entry`], but its children are unknown: a caller that
/// deletes remote files must not take their absence as deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    /// The path, relative to the scan root.
    pub path: PathBuf,
    /// What went wrong (the OS error, or what changed).
    pub message: String,
    /// Listed, then gone when opened or stat'ed (rsync's "file has
    /// vanished"): the source changed under the scan, nothing failed.
    pub vanished: bool,
}

/// What kind of non-regular file was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecialKind {
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A block device node.
    BlockDevice,
    /// A character device node.
    CharDevice,
}

/// A FIFO, socket or device node: reported, not scanned, not an error (rsync
/// also skips these with a warning and a zero exit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The path, relative to the scan root.
    pub path: PathBuf,
    /// What it is.
    pub kind: SpecialKind,
}

/// What a scan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Files opened and read in this scan.
    pub files_hashed: u64,
    /// Bytes those files held.
    pub bytes_hashed: u64,
    /// Files whose digest came from the [`StatCache`] without opening them.
    pub cache_hits: u64,
    /// The scan left the [`StatCache`] as it found it: saving it again
    /// would only rewrite (and sync) the same bytes.
    pub cache_unchanged: bool,
}

/// A scanned tree: its entries, what could not be read, what was skipped.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Sorted by path bytes ([`cmp_paths`]); a directory always precedes its children.
    pub entries: Vec<Entry>,
    /// Sorted by path bytes. Non-empty means the run should end non-zero.
    pub errors: Vec<ScanError>,
    /// Special files that were left out, sorted by path bytes.
    pub skipped: Vec<Skipped>,
    /// What the filter left out (a directory not descended), sorted by
    /// path bytes: a receiver protects these from `--delete`.
    pub excluded: Vec<PathBuf>,
    /// What the scan did.
    pub stats: ScanStats,
}

/// How to scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// What is scanned: an excluded directory is not descended.
    pub filter: Filter,
    /// Ignore the stat cache and rehash every file (`--checksum`).
    pub ignore_cache: bool,
    /// Counters a progress display reads while the scan runs.
    pub progress: Option<std::sync::Arc<ScanProgress>>,
}

/// How far a running scan has got: entries seen, bytes hashed so far.
#[derive(Debug, Default)]
pub struct ScanProgress {
    /// Entries seen so far.
    pub entries: std::sync::atomic::AtomicU64,
    /// Bytes hashed so far.
    pub bytes_hashed: std::sync::atomic::AtomicU64,
}

/// The order of [`Snapshot::entries`]: plain byte order of the paths.
///
/// This is *not* `Path`'s `Ord`, which compares component by component
/// (`a/b` < `a-b` there, but `a-b` < `a/b` here). Merge other listings against a
/// snapshot with this function. A directory sorts before its children because a
/// prefix sorts before its extensions.
pub fn cmp_paths(a: &Path, b: &Path) -> Ordering {
    a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes())
}

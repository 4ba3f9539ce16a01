//! The parallel walk: one rayon task per directory, files hashed in parallel.

use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use crate::cache::{CacheBuilder, RACY_WINDOW_NS};
use crate::hash::{hash_file, StatKey};
use crate::{
    cmp_paths, Entry, EntryKind, ScanError, ScanOptions, ScanStats, Skipped, Snapshot, SpecialKind,
    StatCache,
};

/// Scans `root`. Fails only if the root itself cannot be read.
///
/// Every problem below the root becomes a [`ScanError`] and the scan goes on.
/// On return `cache` holds exactly the (non-racy) files of this scan.
pub fn scan(root: &Path, opts: &ScanOptions, cache: &mut StatCache) -> io::Result<Snapshot> {
    if !fs::metadata(root)?.is_dir() {
        let message = format!("{} is not a directory", root.display());
        return Err(io::Error::new(io::ErrorKind::NotADirectory, message));
    }
    let root_dir = fs::read_dir(root)?;
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    let walk = Walk {
        root,
        opts,
        cache,
        racy_from_ns: now_ns - RACY_WINDOW_NS,
        items: Mutex::default(),
        errors: Mutex::default(),
        skipped: Mutex::default(),
        excluded: Mutex::default(),
        files_hashed: AtomicU64::new(0),
        bytes_hashed: AtomicU64::new(0),
        cache_hits: AtomicU64::new(0),
    };
    rayon::scope(|s| walk.walk_dir(s, PathBuf::new(), root_dir));

    let racy_from_ns = walk.racy_from_ns;
    let old_len = walk.cache.len();
    let mut stats = ScanStats {
        files_hashed: walk.files_hashed.into_inner(),
        bytes_hashed: walk.bytes_hashed.into_inner(),
        cache_hits: walk.cache_hits.into_inner(),
        cache_unchanged: false,
    };
    let mut items = walk
        .items
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let mut errors = walk
        .errors
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let mut skipped = walk
        .skipped
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let mut excluded = walk
        .excluded
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    excluded.sort_unstable_by(|a, b| cmp_paths(a, b));
    items.par_sort_unstable_by(|a, b| cmp_paths(&a.entry.path, &b.entry.path));
    errors.sort_unstable_by(|a, b| cmp_paths(&a.path, &b.path));
    skipped.sort_unstable_by(|a, b| cmp_paths(&a.path, &b.path));

    // Drop the old cache before building the new one: peak memory is one cache.
    *cache = StatCache::default();
    let cacheable = |i: &Item| i.entry.digest.is_some() && i.entry.mtime_ns < racy_from_ns;
    let mut cached = CacheBuilder::with_capacity(items.iter().filter(|i| cacheable(i)).count());
    for item in items.iter().filter(|i| cacheable(i)) {
        let digest = item
            .entry
            .digest
            .as_ref()
            .expect("cacheable files have digests");
        let key = StatKey {
            size: item.entry.size,
            mtime_ns: item.entry.mtime_ns,
            ctime_ns: item.ctime_ns,
            ino: item.ino,
        };
        let path = item.entry.path.as_os_str().as_bytes();
        cached.push(path, key, digest.whole, &digest.blocks);
    }
    *cache = cached.finish();
    // Nothing hashed means every cached record came from the old cache as it
    // was; the same count means none was dropped either.
    stats.cache_unchanged = stats.files_hashed == 0 && cache.len() == old_len;
    // In place: the items' buffer becomes the entries' (same allocation).
    let entries = items.into_iter().map(|item| item.entry).collect();
    Ok(Snapshot {
        entries,
        errors,
        skipped,
        excluded,
        stats,
    })
}

struct Item {
    entry: Entry,
    /// With `entry.size` and `entry.mtime_ns`, a file's stat cache key.
    ctime_ns: i64,
    ino: u64,
}

struct Walk<'a> {
    root: &'a Path,
    opts: &'a ScanOptions,
    cache: &'a StatCache,
    /// Files with an mtime at or after this are racy: not cached.
    racy_from_ns: i64,
    items: Mutex<Vec<Item>>,
    errors: Mutex<Vec<ScanError>>,
    skipped: Mutex<Vec<Skipped>>,
    excluded: Mutex<Vec<PathBuf>>,
    files_hashed: AtomicU64,
    bytes_hashed: AtomicU64,
    cache_hits: AtomicU64,
}

impl<'a> Walk<'a> {
    fn walk_dir<'s>(&'s self, scope: &rayon::Scope<'s>, rel: PathBuf, dir: fs::ReadDir) {
        let mut items = Vec::new();
        let mut to_hash = Vec::new();
        for child in dir {
            let child = match child {
                Ok(child) => child,
                Err(e) => {
                    let dir = if rel.as_os_str().is_empty() {
                        Path::new(".")
                    } else {
                        &rel
                    };
                    self.error(dir.to_owned(), format!("list directory: {e}"));
                    break;
                }
            };
            let path = rel.join(child.file_name());
            if let Some(p) = &self.opts.progress {
                p.entries.fetch_add(1, Relaxed);
            }
            // d_type, usually free: an excluded child is never stat'ed.
            let is_dir = child.file_type().is_ok_and(|t| t.is_dir());
            if !self.opts.filter.includes(&path, is_dir) {
                lock(&self.excluded).push(path);
                continue;
            }
            let meta = match child.metadata() {
                Ok(meta) => meta,
                Err(e) => {
                    self.io_error(path, "stat", e);
                    continue;
                }
            };
            let file_type = meta.file_type();
            if file_type.is_dir() {
                items.push(self.item(path.clone(), EntryKind::Dir, 0, &meta));
                scope.spawn(move |scope| match fs::read_dir(self.root.join(&path)) {
                    Ok(dir) => self.walk_dir(scope, path, dir),
                    Err(e) => self.io_error(path, "list directory", e),
                });
            } else if file_type.is_symlink() {
                match fs::read_link(self.root.join(&path)) {
                    Ok(target) => {
                        let kind = EntryKind::Symlink { target };
                        items.push(self.item(path, kind, meta.len(), &meta));
                    }
                    Err(e) => self.io_error(path, "read link", e),
                }
            } else if file_type.is_file() {
                let key = StatKey::of(&meta);
                let cached = (!self.opts.ignore_cache).then(|| self.cache.lookup(&path, key));
                match cached.flatten() {
                    Some(digest) => {
                        self.cache_hits.fetch_add(1, Relaxed);
                        let mut item = self.item(path, EntryKind::File, key.size, &meta);
                        item.entry.digest = Some(digest);
                        self.set_cache_key(&mut item, key);
                        items.push(item);
                    }
                    None => to_hash.push((path, meta)),
                }
            } else {
                let kind = if file_type.is_fifo() {
                    SpecialKind::Fifo
                } else if file_type.is_socket() {
                    SpecialKind::Socket
                } else if file_type.is_block_device() {
                    SpecialKind::BlockDevice
                } else {
                    SpecialKind::CharDevice
                };
                lock(&self.skipped).push(Skipped { path, kind });
            }
        }
        if to_hash.len() <= 1 {
            items.extend(
                to_hash
                    .into_iter()
                    .filter_map(|(path, meta)| self.hash_one(path, &meta)),
            );
        } else {
            let hashed: Vec<Item> = to_hash
                .into_par_iter()
                .filter_map(|(path, meta)| self.hash_one(path, &meta))
                .collect();
            items.extend(hashed);
        }
        lock(&self.items).append(&mut items);
    }

    /// Hashes one regular file, checking with fstat before and after that it
    /// did not change meanwhile (which would make the digest mixed content).
    fn hash_one(&self, path: PathBuf, listed: &Metadata) -> Option<Item> {
        let abs = self.root.join(&path);
        // O_NOFOLLOW and O_NONBLOCK: if the file was swapped for a symlink or a
        // FIFO since it was listed, fail or return at once instead of following or blocking.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&abs);
        let (file, before) = match file.and_then(|f| f.metadata().map(|m| (f, m))) {
            Ok(opened) => opened,
            Err(e) => {
                self.io_error(path, "open", e);
                return None;
            }
        };
        if !before.is_file() || before.ino() != listed.ino() || before.dev() != listed.dev() {
            self.error(path, "replaced while being scanned".into());
            return None;
        }
        let key = StatKey::of(&before);
        let digest = match hash_file(&file, key.size) {
            Ok(digest) => digest,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                self.error(path, "changed while being hashed (it shrank)".into());
                return None;
            }
            Err(e) => {
                self.io_error(path, "read", e);
                return None;
            }
        };
        #[cfg(test)]
        crate::tests::during_hash(&abs);
        if !unchanged(&file, key) {
            self.error(
                path,
                "changed while being hashed (size, mtime or ctime moved)".into(),
            );
            return None;
        }
        self.files_hashed.fetch_add(1, Relaxed);
        self.bytes_hashed.fetch_add(key.size, Relaxed);
        if let Some(p) = &self.opts.progress {
            p.bytes_hashed.fetch_add(key.size, Relaxed);
        }
        let mut item = self.item(path, EntryKind::File, key.size, &before);
        item.entry.digest = Some(digest);
        self.set_cache_key(&mut item, key);
        Some(item)
    }

    fn item(&self, path: PathBuf, kind: EntryKind, size: u64, meta: &Metadata) -> Item {
        let mtime_ns = StatKey::of(meta).mtime_ns;
        let mode = meta.mode() & 0o7777;
        let entry = Entry {
            path,
            kind,
            size,
            mtime_ns,
            mode,
            digest: None,
        };
        Item {
            entry,
            ctime_ns: 0,
            ino: 0,
        }
    }

    fn set_cache_key(&self, item: &mut Item, key: StatKey) {
        item.ctime_ns = key.ctime_ns;
        item.ino = key.ino;
    }

    fn io_error(&self, path: PathBuf, op: &str, e: io::Error) {
        let vanished = e.kind() == io::ErrorKind::NotFound;
        let message = if vanished {
            "vanished during the scan".to_owned()
        } else {
            format!("{op}: {e}")
        };
        lock(&self.errors).push(ScanError {
            path,
            message,
            vanished,
        });
    }

    fn error(&self, path: PathBuf, message: String) {
        lock(&self.errors).push(ScanError {
            path,
            message,
            vanished: false,
        });
    }
}

fn unchanged(file: &File, key: StatKey) -> bool {
    file.metadata()
        .is_ok_and(|after| StatKey::of(&after) == key)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

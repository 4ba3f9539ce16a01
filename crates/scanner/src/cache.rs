//! The stat cache and its on-disk format.
//!
//! The format is a small hand-written binary layout rather than serde + a codec:
//! it is one flat record type, it needs no dependency, and it lets the loader
//! bound every allocation by the file's length and verify a BLAKE3 checksum
//! before trusting anything:
//!
//! ```text
//! magic "RSSTATC1" | block_size u64 | count u64 | record* | blake3(everything before) [32]
//! record: path_len u32 | path bytes | size u64 | mtime_ns i64 | ctime_ns i64 | inode u64
//!         | whole [32] | block_count u32 | block [32]*
//! ```
//!
//! Integers are little-endian; records are sorted by path bytes, unique.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::hash::StatKey;
use crate::{Digest, BLOCK_SIZE};

const MAGIC: &[u8; 8] = b"RSSTATC1";
/// Smallest possible record: empty path, no blocks.
const MIN_RECORD: u64 = 4 + 32 + 32 + 4;

/// Remembers (size, mtime, ctime, inode) → digest so unchanged files are not re-read.
///
/// [`scan`](crate::scan) consults it for every regular file and then replaces its
/// contents with the files of that scan, except "racy" ones: like git, a file
/// whose mtime is too close to the scan's start (see [`RACY_WINDOW_NS`]) could
/// still change within the same timestamp tick without its stat changing, so it
/// is not remembered and is read again next time.
#[derive(Debug, Clone, Default)]
pub struct StatCache {
    /// Sorted by path bytes, unique.
    records: Vec<CachedFile>,
    /// Every record's path, back to back (one allocation, not one per file:
    /// this is most of the scanner's memory on a million-file tree).
    paths: Vec<u8>,
    /// Block hashes of files over one block, back to back.
    blocks: Vec<[u8; 32]>,
}

/// How close to the scan's start an mtime makes a file "racy" (not cached).
///
/// Two seconds covers filesystems with 1 s or 2 s (FAT) timestamps and the
/// kernel's coarse clock, which stamps files up to a tick behind the real time.
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// One file: its paths and blocks end where the next file's begin.
#[derive(Debug, Clone)]
struct CachedFile {
    key: StatKey,
    whole: [u8; 32],
    path_end: u64,
    blocks_end: u64,
}

/// Builds a [`StatCache`] from files given in path order.
#[derive(Debug, Default)]
pub(crate) struct CacheBuilder {
    cache: StatCache,
}

impl CacheBuilder {
    pub(crate) fn with_capacity(files: usize) -> CacheBuilder {
        CacheBuilder {
            cache: StatCache {
                records: Vec::with_capacity(files),
                ..StatCache::default()
            },
        }
    }

    /// Whether `path` sorts after every path pushed so far.
    pub(crate) fn is_next(&self, path: &[u8]) -> bool {
        let c = &self.cache;
        c.records.is_empty() || c.path(c.records.len() - 1) < path
    }

    /// `path` must sort after every path pushed before ([`Self::is_next`]).
    pub(crate) fn push(&mut self, path: &[u8], key: StatKey, whole: [u8; 32], blocks: &[[u8; 32]]) {
        debug_assert!(self.is_next(path));
        let c = &mut self.cache;
        c.paths.extend_from_slice(path);
        c.blocks.extend_from_slice(blocks);
        c.records.push(CachedFile {
            key,
            whole,
            path_end: c.paths.len() as u64,
            blocks_end: c.blocks.len() as u64,
        });
    }

    pub(crate) fn finish(mut self) -> StatCache {
        self.cache.paths.shrink_to_fit();
        self.cache.blocks.shrink_to_fit();
        self.cache
    }
}

impl StatCache {
    /// Loads a cache written by [`StatCache::save`]. A missing, unreadable,
    /// truncated, corrupt or foreign file yields an empty cache: the cost is a
    /// full rehash, never a wrong digest.
    pub fn load(path: &Path) -> StatCache {
        File::open(path)
            .and_then(|file| {
                let len = file.metadata()?.len();
                read_cache(HashingReader::new(BufReader::new(file)), len)
            })
            .unwrap_or_default()
    }

    /// Decodes the bytes of a cache file (as [`StatCache::load`] reads one).
    pub(crate) fn from_bytes(bytes: &[u8]) -> io::Result<StatCache> {
        read_cache(HashingReader::new(bytes), bytes.len() as u64)
    }

    /// The bytes [`StatCache::save`] writes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_records(&mut out);
        let hash = blake3::hash(&out);
        out.extend_from_slice(hash.as_bytes());
        out
    }

    /// Writes the cache atomically: to a temporary file beside `path`, synced,
    /// then renamed over `path`.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = Path::new(&tmp_name);
        // 0600 whatever the umask: the cache lists every source path.
        let created = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(tmp)
        };
        let result = created.and_then(|file| {
            use std::os::unix::fs::PermissionsExt;
            // A temp left by an earlier process with this pid keeps its mode.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            let mut out = BufWriter::new(HashingWriter {
                inner: file,
                hasher: blake3::Hasher::new(),
            });
            self.write_records(&mut out)?;
            let HashingWriter { mut inner, hasher } =
                out.into_inner().map_err(|e| e.into_error())?;
            inner.write_all(hasher.finalize().as_bytes())?;
            inner.sync_all()
        });
        match result.and_then(|()| std::fs::rename(tmp, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                Err(e)
            }
        }
    }

    /// Number of files remembered.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn path(&self, i: usize) -> &[u8] {
        let start = if i == 0 {
            0
        } else {
            self.records[i - 1].path_end
        };
        &self.paths[start as usize..self.records[i].path_end as usize]
    }

    fn blocks(&self, i: usize) -> &[[u8; 32]] {
        let start = if i == 0 {
            0
        } else {
            self.records[i - 1].blocks_end
        };
        &self.blocks[start as usize..self.records[i].blocks_end as usize]
    }

    pub(crate) fn lookup(&self, path: &Path, key: StatKey) -> Option<Digest> {
        let path = path.as_os_str().as_bytes();
        let mut lo = 0;
        let mut hi = self.records.len();
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.path(mid).cmp(path) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let file = &self.records[mid];
                    return (file.key == key).then(|| Digest {
                        whole: file.whole,
                        blocks: self.blocks(mid).to_vec(),
                    });
                }
            }
        }
        None
    }

    fn write_records(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(MAGIC)?;
        out.write_all(&BLOCK_SIZE.to_le_bytes())?;
        out.write_all(&(self.records.len() as u64).to_le_bytes())?;
        for (i, file) in self.records.iter().enumerate() {
            let path = self.path(i);
            out.write_all(&(path.len() as u32).to_le_bytes())?;
            out.write_all(path)?;
            out.write_all(&file.key.size.to_le_bytes())?;
            out.write_all(&file.key.mtime_ns.to_le_bytes())?;
            out.write_all(&file.key.ctime_ns.to_le_bytes())?;
            out.write_all(&file.key.ino.to_le_bytes())?;
            out.write_all(&file.whole)?;
            let blocks = self.blocks(i);
            out.write_all(&(blocks.len() as u32).to_le_bytes())?;
            for block in blocks {
                out.write_all(block)?;
            }
        }
        Ok(())
    }
}

fn corrupt() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "corrupt stat cache")
}

fn read_cache<R: Read>(mut input: HashingReader<R>, file_len: u64) -> io::Result<StatCache> {
    let mut magic = [0; 8];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC || input.u64()? != BLOCK_SIZE {
        return Err(corrupt());
    }
    let count = input.u64()?;
    if count > file_len / MIN_RECORD {
        return Err(corrupt());
    }
    let mut files = CacheBuilder::with_capacity(count as usize);
    let mut path = Vec::new();
    for _ in 0..count {
        let path_len = input.u32()? as u64;
        if path_len > file_len {
            return Err(corrupt());
        }
        path.resize(path_len as usize, 0);
        input.read_exact(&mut path)?;
        let key = StatKey {
            size: input.u64()?,
            mtime_ns: input.u64()? as i64,
            ctime_ns: input.u64()? as i64,
            ino: input.u64()?,
        };
        let whole = input.hash()?;
        let block_count = input.u32()? as u64;
        let expected = if key.size <= BLOCK_SIZE {
            0
        } else {
            key.size.div_ceil(BLOCK_SIZE)
        };
        if block_count != expected || block_count > file_len / 32 {
            return Err(corrupt());
        }
        let blocks = (0..block_count)
            .map(|_| input.hash())
            .collect::<io::Result<Vec<_>>>()?;
        if !files.is_next(&path) {
            return Err(corrupt());
        }
        files.push(&path, key, whole, &blocks);
    }
    let computed = input.hasher.finalize();
    let mut stored = [0; 32];
    input.inner.read_exact(&mut stored)?;
    let mut trailing = [0; 1];
    if computed != stored || input.inner.read(&mut trailing)? != 0 {
        return Err(corrupt());
    }
    Ok(files.finish())
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf)?;
        self.hasher.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn hash(&mut self) -> io::Result<[u8; 32]> {
        let mut b = [0; 32];
        self.read_exact(&mut b)?;
        Ok(b)
    }
}

struct HashingWriter {
    inner: File,
    hasher: blake3::Hasher,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

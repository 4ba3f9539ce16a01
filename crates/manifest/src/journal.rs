//! The journal: an append-only log of progress since the manifest was saved.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{ManifestError, StateFile};
use crate::manifest::{write_atomically, AppendTo, Manifest, Record, FORMAT_VERSION};

const MAGIC: [u8; 8] = *b"RBSJRNL\0";
/// magic (8) + version (u32).
const HEADER_LEN: usize = 8 + 4;
/// payload length (u32) + first 8 bytes of BLAKE3 of the payload.
pub(crate) const FRAME_HEADER_LEN: usize = 4 + 8;

/// Default for [`JournalPolicy::interval`].
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// Default for [`JournalPolicy::payload_bytes`]: 64 MiB.
pub const CHECKPOINT_BYTES: u64 = 64 << 20;

/// One step of progress. Paths are relative to the destination root, raw
/// bytes, as in [`Manifest::files`]; `temp` is the temp file's path, relative
/// to the destination root as well.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JournalRecord {
    /// A run began. `run_id` as in [`Manifest::run_id`], `unix` seconds.
    RunStarted {
        /// The run's identifier.
        run_id: u64,
        /// When it began (Unix seconds).
        unix: i64,
    },
    /// `path` now holds exactly `record` under its final name.
    FileLanded {
        /// The file, relative to the destination root.
        path: Vec<u8>,
        /// What it now holds.
        record: Record,
    },
    /// Block `index` of the in-progress transfer into `temp` is written and
    /// has BLAKE3 `hash`.
    BlockDone {
        /// The file being transferred.
        path: Vec<u8>,
        /// Its temp file.
        temp: Vec<u8>,
        /// Which block (of 256 KiB).
        index: u64,
        /// The block's BLAKE3.
        hash: [u8; 32],
    },
    /// Intent: `temp` is being built to become `path` with this size, source
    /// mtime and whole-file BLAKE3, so that a resume knows what it was for.
    TransferStarted {
        /// The file it will become.
        path: Vec<u8>,
        /// The temp file being built.
        temp: Vec<u8>,
        /// The source's size.
        size: u64,
        /// The source's mtime (nanoseconds since the epoch).
        mtime_ns: i64,
        /// The source's whole-file BLAKE3.
        whole: [u8; 32],
    },
    /// Intent: an in-place update is about to overwrite these blocks of
    /// `path`; until a `FileLanded` follows, the file must be redone.
    InplaceIntent {
        /// The file updated in place.
        path: Vec<u8>,
        /// The blocks about to be overwritten.
        blocks: Vec<u64>,
    },
    /// `path` was deleted (or moved to the backup dir) on the destination.
    Deleted {
        /// What was deleted, relative to the destination root.
        path: Vec<u8>,
    },
}

impl JournalRecord {
    /// The path the record is about (`None` for `RunStarted`).
    pub fn path(&self) -> Option<&[u8]> {
        match self {
            JournalRecord::RunStarted { .. } => None,
            JournalRecord::FileLanded { path, .. }
            | JournalRecord::BlockDone { path, .. }
            | JournalRecord::TransferStarted { path, .. }
            | JournalRecord::InplaceIntent { path, .. }
            | JournalRecord::Deleted { path } => Some(path),
        }
    }

    /// Payload bytes the record stands for, as [`Journal::append`] counts
    /// them toward [`JournalPolicy::payload_bytes`]: the file size for
    /// `FileLanded`, 0 otherwise. A `BlockDone` does not carry its block's
    /// length; callers that know it use [`Journal::append_for`].
    pub fn payload_bytes(&self) -> u64 {
        match self {
            JournalRecord::FileLanded { record, .. } => record.size,
            _ => 0,
        }
    }

    /// True for the records of a transfer that has not landed yet.
    fn is_in_progress(&self) -> bool {
        matches!(
            self,
            JournalRecord::BlockDone { .. }
                | JournalRecord::TransferStarted { .. }
                | JournalRecord::InplaceIntent { .. }
        )
    }
}

/// When [`Journal`] makes appended records durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalPolicy {
    /// Checkpoint (write + fdatasync) when this much time has passed since
    /// the last one. Checked on each append and by
    /// [`Journal::checkpoint_if_due`]; there is no background thread.
    pub interval: Duration,
    /// Checkpoint when records standing for this many payload bytes were
    /// appended since the last one.
    pub payload_bytes: u64,
    /// Hand each record to the kernel as it is appended (one `write(2)`
    /// each), so that killing the process loses nothing; only power loss or
    /// a kernel crash can lose records, those since the last checkpoint.
    /// When false, records wait in memory until the next checkpoint.
    pub write_through: bool,
}

impl Default for JournalPolicy {
    fn default() -> JournalPolicy {
        JournalPolicy {
            interval: CHECKPOINT_INTERVAL,
            payload_bytes: CHECKPOINT_BYTES,
            write_through: true,
        }
    }
}

/// An open journal, appending. Dropping it makes a best-effort checkpoint.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    policy: JournalPolicy,
    /// Encoded frames not yet written to the file.
    buf: Vec<u8>,
    /// Length of the file up to the end of the last completely written frame.
    len: u64,
    /// Frames were written since the last fdatasync.
    unsynced: bool,
    payload_since_sync: u64,
    last_sync: Instant,
}

impl Journal {
    /// Opens (creating if missing, with its directory) the journal at `path`
    /// for appending, with the default [`JournalPolicy`]. A torn tail left by
    /// a crash is cut off first, so new records follow the last complete one.
    ///
    /// Call [`compact`] before opening, so that the journal holds only
    /// records the manifest does not.
    pub fn open(path: &Path) -> Result<Journal, ManifestError> {
        Journal::open_with(path, JournalPolicy::default())
    }

    /// Like [`Journal::open`], with an explicit policy.
    pub fn open_with(path: &Path, policy: JournalPolicy) -> Result<Journal, ManifestError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        crate::state::private_dir(dir)
            .map_err(|e| ManifestError::io("create state directory", dir, e))?;
        let mut opts = OpenOptions::new();
        opts.read(true).append(true).create(true);
        let mut file = crate::state::open_private(&mut opts, path)
            .map_err(|e| ManifestError::io("open journal", path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| ManifestError::io("read journal", path, e))?;
        let scan = scan(&bytes).map_err(|e| e.with_path(path))?;
        let mut len = scan.valid_len as u64;
        if len < bytes.len() as u64 {
            file.set_len(len)
                .map_err(|e| ManifestError::io("cut torn tail of journal", path, e))?;
        }
        if len == 0 {
            file.write_all(&header())
                .map_err(|e| ManifestError::io("write journal", path, e))?;
            len = HEADER_LEN as u64;
        }
        file.sync_data()
            .map_err(|e| ManifestError::io("fsync journal", path, e))?;
        crate::manifest::sync_dir(dir)?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            policy,
            buf: Vec::new(),
            len,
            unsynced: false,
            payload_since_sync: 0,
            last_sync: Instant::now(),
        })
    }

    /// Appends a record, counting [`JournalRecord::payload_bytes`] toward the
    /// checkpoint policy, and checkpoints if one is due.
    pub fn append(&mut self, rec: &JournalRecord) -> Result<(), ManifestError> {
        self.append_for(rec, rec.payload_bytes())
    }

    /// Appends a record that stands for `payload_bytes` bytes of transferred
    /// data (for `BlockDone`: the block's length), and checkpoints if one is
    /// due.
    pub fn append_for(
        &mut self,
        rec: &JournalRecord,
        payload_bytes: u64,
    ) -> Result<(), ManifestError> {
        encode_frame(rec, &mut self.buf);
        self.payload_since_sync = self.payload_since_sync.saturating_add(payload_bytes);
        if self.policy.write_through {
            self.write_buffered()?;
        }
        self.checkpoint_if_due()
    }

    /// Checkpoints if the policy says one is due. Call it from a timer when
    /// appends may pause for long, so that records do not wait unsynced.
    pub fn checkpoint_if_due(&mut self) -> Result<(), ManifestError> {
        let pending = self.unsynced || !self.buf.is_empty();
        if pending
            && (self.payload_since_sync >= self.policy.payload_bytes
                || self.last_sync.elapsed() >= self.policy.interval)
        {
            self.checkpoint()?;
        }
        Ok(())
    }

    /// Writes all appended records and fdatasyncs: once this returns, they
    /// survive a crash of the process or the machine.
    pub fn checkpoint(&mut self) -> Result<(), ManifestError> {
        self.write_buffered()?;
        if self.unsynced {
            self.file
                .sync_data()
                .map_err(|e| ManifestError::io("fsync journal", &self.path, e))?;
            self.unsynced = false;
        }
        self.payload_since_sync = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// The journal's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_buffered(&mut self) -> Result<(), ManifestError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.buf.clear();
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                // Do not leave a partial frame that later appends would
                // follow: replay stops at the first bad frame.
                let _ = self.file.set_len(self.len);
                self.buf.clear();
                Err(ManifestError::io("write journal", &self.path, e))
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.checkpoint();
    }
}

/// The journal's header: magic and format version.
pub(crate) fn header() -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    out[..8].copy_from_slice(&MAGIC);
    out[8..].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out
}

pub(crate) fn encode_frame(rec: &JournalRecord, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    postcard::serialize_with_flavor(rec, AppendTo(out))
        .expect("postcard encoding into a Vec is infallible for JournalRecord");
    let payload_len = out.len() - start - FRAME_HEADER_LEN;
    let len = u32::try_from(payload_len).expect("journal record larger than 4 GiB");
    let check = blake3::hash(&out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME_HEADER_LEN].copy_from_slice(&check.as_bytes()[..8]);
}

/// What [`replay`] read from a journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replay {
    /// Every complete, intact record, in the order appended.
    pub records: Vec<JournalRecord>,
    /// The journal ended with an incomplete or damaged record (normal after
    /// a crash); it and everything after it were ignored.
    pub torn_tail: bool,
    /// How many bytes were ignored.
    pub dropped_bytes: u64,
}

pub(crate) struct Scan {
    pub(crate) records: Vec<JournalRecord>,
    /// Bytes up to the end of the last good frame (0 when even the header is
    /// incomplete).
    valid_len: usize,
}

/// Parses a journal image. Errors only for a wrong magic or a future
/// version; a damaged frame ends the scan, since the framing after it cannot
/// be trusted.
pub(crate) fn scan(bytes: &[u8]) -> Result<Scan, ManifestError> {
    let file = StateFile::Journal;
    let path = PathBuf::from(crate::error::IN_MEMORY);
    if bytes.len() < HEADER_LEN {
        let n = bytes.len().min(MAGIC.len());
        if bytes[..n] != MAGIC[..n] {
            return Err(ManifestError::BadMagic { file, path });
        }
        // A crash while the header was being written.
        return Ok(Scan {
            records: Vec::new(),
            valid_len: 0,
        });
    }
    if bytes[..8] != MAGIC {
        return Err(ManifestError::BadMagic { file, path });
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
    if version > FORMAT_VERSION {
        return Err(ManifestError::FutureVersion {
            file,
            path,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version != FORMAT_VERSION {
        return Err(ManifestError::Corrupt {
            file,
            path,
            detail: format!("format {version} was never written by robosync"),
        });
    }
    let mut records = Vec::new();
    let mut pos = HEADER_LEN;
    while let Some(head) = bytes.get(pos..pos + FRAME_HEADER_LEN) {
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        let start = pos + FRAME_HEADER_LEN;
        let Some(payload) = bytes.get(start..start.saturating_add(len)) else {
            break;
        };
        if blake3::hash(payload).as_bytes()[..8] != head[4..] {
            break;
        }
        match postcard::from_bytes::<JournalRecord>(payload) {
            Ok(rec) => records.push(rec),
            Err(_) => break,
        }
        pos = start + len;
    }
    Ok(Scan {
        records,
        valid_len: pos,
    })
}

/// Reads every complete record of the journal at `path` (an empty replay if
/// there is no file). A torn or damaged tail is never fatal: it is reported
/// in [`Replay::torn_tail`]. Errors for I/O, a file that is not a journal
/// ([`ManifestError::BadMagic`]) or one from a newer robosync
/// ([`ManifestError::FutureVersion`]).
pub fn replay(path: &Path) -> Result<Replay, ManifestError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replay::default()),
        Err(e) => return Err(ManifestError::io("read journal", path, e)),
    };
    let scan = scan(&bytes).map_err(|e| e.with_path(path))?;
    let dropped = bytes.len() - scan.valid_len;
    Ok(Replay {
        records: scan.records,
        torn_tail: dropped > 0,
        dropped_bytes: dropped as u64,
    })
}

/// What [`compact`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    /// The manifest with the journal folded in, as saved.
    pub manifest: Manifest,
    /// Records of transfers still in progress (`TransferStarted`,
    /// `BlockDone`, `InplaceIntent` of paths with no later `FileLanded` or
    /// `Deleted`), in journal order. They are also what the journal now
    /// holds: the planner resumes or redoes these transfers.
    pub pending: Vec<JournalRecord>,
    /// How many journal records were folded into the manifest.
    pub folded: usize,
    /// The journal had a torn tail (see [`Replay::torn_tail`]).
    pub torn_tail: bool,
    /// Bytes of torn tail dropped.
    pub dropped_bytes: u64,
}

/// Folds the journal into the manifest at the start of a run: replays the
/// journal, applies it to the manifest at `manifest_path` (an empty one if
/// missing), saves the manifest, then rewrites the journal to hold only
/// [`Compacted::pending`]. Call it before [`Journal::open`], with no journal
/// open on `journal_path`.
///
/// Crash-safe at any instant: the manifest is saved before the journal
/// shrinks, and replaying a journal into a manifest that already contains it
/// changes nothing. When the journal is empty, nothing is written.
///
/// Errors as [`Manifest::load`] and [`replay`]; on an untrusted manifest or
/// journal ([`ManifestError::is_untrusted_content`]) the caller should
/// remove both and fall back to a full compare.
pub fn compact(manifest_path: &Path, journal_path: &Path) -> Result<Compacted, ManifestError> {
    let mut manifest = Manifest::load(manifest_path)?.unwrap_or_default();
    let replay = replay(journal_path)?;

    // Index of the last record that settled each path.
    let mut settled: HashMap<&[u8], usize> = HashMap::new();
    for (i, rec) in replay.records.iter().enumerate() {
        if let JournalRecord::FileLanded { path, .. } | JournalRecord::Deleted { path } = rec {
            settled.insert(path, i);
        }
    }
    let mut pending = Vec::new();
    let mut folded = 0;
    for (i, rec) in replay.records.iter().enumerate() {
        if rec.is_in_progress() {
            let path = rec.path().unwrap_or_default();
            if settled.get(path).is_none_or(|&s| s < i) {
                pending.push(rec.clone());
            }
        } else {
            manifest.apply(rec);
            folded += 1;
        }
    }

    if folded > 0 {
        manifest.save(manifest_path)?;
    }
    let rewrite = folded > 0 || replay.torn_tail || pending.len() != replay.records.len();
    if rewrite {
        let mut image = header().to_vec();
        for rec in &pending {
            encode_frame(rec, &mut image);
        }
        write_atomically(journal_path, &image)?;
    }
    Ok(Compacted {
        manifest,
        pending,
        folded,
        torn_tail: replay.torn_tail,
        dropped_bytes: replay.dropped_bytes,
    })
}

//! Push: local tree → remote destination, executing a [`Plan`].
//!
//! Every file is written under a temp name in its target directory, its mode
//! and mtime set, then renamed into place (posix-rename), so no final name
//! ever holds a partial file. Each completed block is journaled; a rerun after
//! a crash or a dropped link resumes from what the journal confirms.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt, TryStreamExt};
use robosync_manifest::{JournalRecord, Manifest, Record};
use robosync_planner::{escape, Action};
use robosync_scanner::{Entry, BLOCK_SIZE};
use robosync_transport::proto::{self, Attrs};
use robosync_transport::{Error, Pool, Sftp};

use crate::failure::{EntryError, Operation};
use crate::join;
use crate::run::Run;

/// What the journal says about an interrupted transfer of one file.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    pub temp: Vec<u8>,
    pub whole: [u8; 32],
    pub size: u64,
    pub blocks: HashMap<u64, [u8; 32]>,
}

/// Collects interrupted transfers from pending journal records.
pub fn partials(pending: &[JournalRecord]) -> HashMap<Vec<u8>, Partial> {
    let mut out: HashMap<Vec<u8>, Partial> = HashMap::new();
    for r in pending {
        match r {
            JournalRecord::TransferStarted {
                path,
                temp,
                size,
                whole,
                ..
            } => {
                out.insert(
                    path.clone(),
                    Partial {
                        temp: temp.clone(),
                        whole: *whole,
                        size: *size,
                        blocks: HashMap::new(),
                    },
                );
            }
            JournalRecord::BlockDone {
                path,
                temp,
                index,
                hash,
            } => {
                if let Some(p) = out.get_mut(path) {
                    if &p.temp == temp {
                        p.blocks.insert(*index, *hash);
                    }
                }
            }
            JournalRecord::FileLanded { path, .. } => {
                out.remove(path);
            }
            _ => {}
        }
    }
    out
}

/// A new temp name for `rel`: in the same directory, hidden, and random for
/// every attempt. Nobody can plant anything at it beforehand, and the late
/// requests of an abandoned attempt (a connection given up on whose server
/// still runs them) can only ever touch that attempt's own file.
pub fn fresh_temp(rel: &[u8]) -> Vec<u8> {
    temp_name(rel, &format!("{:016x}", random_u64()))
}

/// A pull's local temp name for `rel`, tied to `tag` (what is being
/// fetched) so that a rerun finds and resumes what an interrupted run left.
pub fn temp_for(rel: &[u8], tag: &[u8; 32]) -> Vec<u8> {
    let hex: String = tag[..4].iter().map(|b| format!("{b:02x}")).collect();
    temp_name(rel, &hex)
}

/// `dir/.NAME.rbs-MARK.part` (see [`crate::remote::is_temp_name`]).
fn temp_name(rel: &[u8], mark: &str) -> Vec<u8> {
    let (dir, name) = match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i + 1], &rel[i + 1..]),
        None => (&b""[..], rel),
    };
    let mut t = dir.to_vec();
    t.push(b'.');
    // Keep temp names within NAME_MAX even for long file names.
    t.extend_from_slice(&name[..name.len().min(200)]);
    t.extend_from_slice(b".rbs-");
    t.extend_from_slice(mark.as_bytes());
    t.extend_from_slice(b".part");
    t
}

/// Unpredictable numbers: a keyed hash of a counter, keyed once per process
/// from the kernel's random source.
fn random_u64() -> u64 {
    use std::io::Read;
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut k));
        if read.is_err() {
            // Still unique per run: the clock and the process id.
            let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
            k = *blake3::hash(seed.as_bytes()).as_bytes();
        }
        k
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = blake3::keyed_hash(key, &n.to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// What the server shows must be what was sent: a regular file (not a link
/// someone planted) of the source's size (not a file emptied or cut by a
/// late request or a co-tenant). Anything else is an error for that file,
/// never a success: it is not recorded, and the next run sends it again.
fn check_landed(e: &Entry, stat: &Attrs, what: &str) -> Result<(), Error> {
    if stat.is_file() && stat.size == Some(e.size) {
        return Ok(());
    }
    let seen = if stat.is_symlink() {
        "a symlink".to_string()
    } else if !stat.is_file() {
        "not a regular file".to_string()
    } else {
        format!("{} bytes", stat.size.unwrap_or(0))
    };
    Err(Error::Connect(format!(
        "{what} on the destination holds {seen} where the source has {} bytes: \
         something else changed it during the transfer; not recorded, rerun to send it again",
        e.size
    )))
}

/// Blocks per run: the unit a lane reads, writes and journals at once (1 MiB).
const RUN_BLOCKS: u64 = 4;
/// Runs in flight per lane: 4 MiB, twice OpenSSH's 2 MiB channel window, so
/// a window update always finds data ready to go.
const LANE_DEPTH: usize = 4;

/// Files in flight per session (see [`Push::slot`]).
#[derive(Default)]
pub struct Slots {
    per_session: std::sync::atomic::AtomicUsize,
    load: Mutex<HashMap<usize, usize>>,
    freed: tokio::sync::Notify,
}

/// One file's place on a session; given back on drop.
struct Slot<'a> {
    slots: &'a Slots,
    key: usize,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.slots.load.lock().unwrap().get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
        self.slots.freed.notify_one();
    }
}

/// Groups block indices into runs of at most `max` consecutive blocks.
fn runs(blocks: &[u64], max: u64) -> VecDeque<Range<u64>> {
    let mut out: VecDeque<Range<u64>> = VecDeque::new();
    for &i in blocks {
        match out.back_mut() {
            Some(r) if r.end == i && r.end - r.start < max => r.end += 1,
            _ => out.push_back(i..i + 1),
        }
    }
    out
}

/// Bytes read from local files and not yet acknowledged by the server (a
/// pull: bytes asked of the server and not yet written locally). Bounded, so
/// many big files in flight at once cannot balloon memory.
pub struct ReadAhead {
    units: tokio::sync::Semaphore,
    total: u32,
}

impl ReadAhead {
    const UNIT: u64 = 64 << 10;

    /// The budget for a pool of `sessions`: 8 MiB each (two lanes' worth of
    /// runs in flight), 32 to 256 MiB in all.
    pub fn for_sessions(sessions: usize) -> ReadAhead {
        ReadAhead::new((sessions as u64 * (8 << 20)).clamp(32 << 20, 256 << 20))
    }

    fn new(bytes: u64) -> ReadAhead {
        let total = (bytes / Self::UNIT).clamp(1, u32::MAX as u64) as u32;
        ReadAhead {
            units: tokio::sync::Semaphore::new(total as usize),
            total,
        }
    }

    pub async fn acquire(&self, len: u64) -> tokio::sync::SemaphorePermit<'_> {
        let n = len.div_ceil(Self::UNIT).clamp(1, self.total as u64) as u32;
        self.units
            .acquire_many(n)
            .await
            .expect("the read-ahead semaphore is never closed")
    }
}

/// Files a push keeps in flight per session at most. A small file costs
/// three round trips (OPEN; WRITE+FSETSTAT+CLOSE; RENAME+LSTAT), so across
/// latency files in flight set the pace; OpenSSH's sftp-server allows its
/// fd limit less 5 handles (`limits@openssh.com`), and half of that is used
/// up to this. Measured (20,000 files of 64 B at 50 ms RTT, 2 shared cores):
/// 256 was slower than 64 (7.0 s against 5.6 s, client CPU 5.3 s against
/// 2.1 s): files waiting for a slot poll for one (see [`Push::slot`]), and
/// the run is bound by CPU here, not by round trips.
pub const PUSH_FILES_PER_SESSION: u64 = 64;

/// Files a pull keeps in flight per session at most: a small file costs two
/// round trips (OPEN; READ+FSTAT) and holds no local fd meanwhile, so more
/// are worth it (see `pull::Pull::files_in_flight`).
pub const PULL_FILES_PER_SESSION: u64 = 256;

/// Local files a run may hold open for files in flight: the soft fd limit
/// (raised to the hard one at start, see [`raise_fd_limit`]), less room for sockets,
/// the journal and listings.
pub fn fd_budget() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    (soft.saturating_sub(128).min(usize::MAX as u64) as usize).max(32)
}

/// Raises the soft limit on open files to the hard one (as Go's runtime
/// does), for a front-end to call once at start: a push holds one local
/// file open per file in flight, up to thousands across latency
/// ([`fd_budget`] bounds them by what is left).
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let want = now.maximum.unwrap_or(1 << 16).min(1 << 16);
    if now.current.is_some_and(|c| c < want) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: now.maximum,
            },
        );
    }
}

/// Reorders file actions round-robin across their directories. Creating a
/// file takes its directory's lock on the server, and a filesystem's inode
/// allocator works per directory group: files in flight together should land
/// in different directories, not queue on one (measured on ext4, 10,000 files
/// in 100 directories: sftp-servers spinning on the directory lock were 17%
/// of all CPU samples; interleaved, that vanished).
fn across_directories(files: Vec<Action>) -> Vec<Action> {
    let mut by_dir: Vec<(PathBuf, VecDeque<Action>)> = Vec::new();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    for a in files {
        let dir = a.path().parent().map(Path::to_path_buf).unwrap_or_default();
        let i = *index.entry(dir.clone()).or_insert_with(|| {
            by_dir.push((dir, VecDeque::new()));
            by_dir.len() - 1
        });
        by_dir[i].1.push_back(a);
    }
    let mut out = Vec::with_capacity(by_dir.iter().map(|(_, q)| q.len()).sum());
    // Each round takes one action from every directory that still has some.
    while !by_dir.is_empty() {
        for (_, q) in by_dir.iter_mut() {
            out.extend(q.pop_front());
        }
        by_dir.retain(|(_, q)| !q.is_empty());
    }
    out
}

fn block_len(size: u64, index: u64) -> u64 {
    (size - index * BLOCK_SIZE).min(BLOCK_SIZE)
}

fn mtime_secs(e: &Entry) -> u32 {
    e.mtime_ns
        .div_euclid(1_000_000_000)
        .clamp(0, u32::MAX as i64) as u32
}

fn final_attrs(e: &Entry) -> Attrs {
    let t = mtime_secs(e);
    Attrs {
        permissions: Some(e.mode & 0o7777),
        times: Some((t, t)),
        ..Default::default()
    }
}

pub struct Push {
    pub run: Arc<Run>,
    pub pool: Arc<Pool>,
    pub local_root: PathBuf,
    pub remote_root: Vec<u8>,
    pub entries: HashMap<PathBuf, Entry>,
    pub partials: Mutex<HashMap<Vec<u8>, Partial>>,
    pub manifest: Mutex<Manifest>,
    pub data: ReadAhead,
    pub slots: Slots,
    /// Directories the listing showed with the source's mode and mtime.
    pub dirs_in_place: std::collections::HashSet<PathBuf>,
    /// Temp files (absolute) this run created and has not renamed into place.
    pub temps: Mutex<std::collections::HashSet<Vec<u8>>>,
    /// The destination's real path (REALPATH), asked once by the first
    /// deletion: each checks that it removes inside what was listed.
    pub root_real: tokio::sync::OnceCell<Vec<u8>>,
    /// Entries whose local name differs (a single file to a new name):
    /// destination-relative path → local-relative path.
    pub local_names: HashMap<PathBuf, PathBuf>,
    /// `-H`: the second and later names of a local file are linked to the first.
    pub hard_links: bool,
}

impl Push {
    /// rsync -a's `.`: the remote root takes the source directory's mode
    /// and mtime (`meta`, read when the run started). Unless `touched`
    /// (something inside was made, renamed or removed), a root already
    /// right is left alone, as every directory in place.
    pub async fn set_root_attrs(
        &self,
        meta: Option<&std::fs::Metadata>,
        touched: bool,
    ) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let Some(meta) = meta else {
            return Ok(());
        };
        let t = meta.mtime().clamp(0, u32::MAX as i64) as u32;
        let mode = meta.mode() & 0o7777;
        let root = &self.remote_root;
        if !touched {
            let now = crate::remote::on_session(&self.pool, |s| async move { s.stat(root).await });
            if now.await.is_ok_and(|a| {
                a.permissions.map(|p| p & 0o7777) == Some(mode) && a.mtime() == Some(t)
            }) {
                return Ok(());
            }
        }
        let attrs = Attrs {
            permissions: Some(mode),
            times: Some((t, t)),
            ..Default::default()
        };
        crate::remote::on_session(&self.pool, |s| {
            let attrs = attrs.clone();
            async move { s.setstat(root, &attrs).await }
        })
        .await
        .map_err(|e| e.to_string())
    }

    fn abs(&self, rel: &[u8]) -> Vec<u8> {
        join(&self.remote_root, rel)
    }

    /// Where the entry `rel` of the destination is read from locally.
    fn local(&self, rel: &Path) -> PathBuf {
        self.local_root.join(
            self.local_names
                .get(rel)
                .map(PathBuf::as_path)
                .unwrap_or(rel),
        )
    }

    fn entry(&self, rel: &Path) -> &Entry {
        &self.entries[rel]
    }

    /// Runs the plan's actions in order: deletions of wrong kinds, directories,
    /// files and links (concurrently), then directory attributes.
    pub async fn execute(self: &Arc<Self>, actions: Vec<Action>) -> Vec<EntryError> {
        let mut errors = Vec::new();
        // Directories whose attributes this call may disturb: new ones, and
        // those where something is created, renamed or removed.
        let touched = crate::dirs::dirs_touched(&actions);
        // Deletions before any directory are wrong-kind removals; the plan's
        // trailing `--delete` removals arrive in their own call (all Deletes).
        let (mut pre, mut dirs, mut files) = (Vec::new(), Vec::new(), Vec::new());
        for a in actions {
            match a {
                Action::Delete { .. } if dirs.is_empty() && files.is_empty() => pre.push(a),
                Action::Mkdir { .. } => dirs.push(a),
                _ => files.push(a),
            }
        }
        let backup = self.run.opts.backup_dir.as_deref();
        for a in pre {
            let dir = matches!(a, Action::Delete { dir: true, .. });
            if let Err(e) = self.delete(a.path(), dir, backup).await {
                errors.push(EntryError::at(a.path(), Operation::Delete, e));
            }
        }
        // Directories: one depth level at a time, each level pipelined.
        let mut by_depth: Vec<Vec<PathBuf>> = Vec::new();
        for a in &dirs {
            let depth = a.path().components().count();
            if by_depth.len() < depth {
                by_depth.resize(depth, Vec::new());
            }
            by_depth[depth - 1].push(a.path().to_path_buf());
        }
        for level in by_depth {
            let results: Vec<Result<(), EntryError>> = stream::iter(level)
                .map(|p| async move {
                    let made = self.mkdir(&p).await;
                    made.map_err(|e| EntryError::at(&p, Operation::CreateDirectory, e))
                })
                .buffer_unordered(64)
                .collect()
                .await;
            errors.extend(results.into_iter().filter_map(Result::err));
        }
        let (files, links) = self.split_links(files);
        let files = across_directories(files);
        // Sized for the whole pool (sessions keep joining while work starts):
        // a small file costs three round trips, so across latency only many
        // files in flight keep the link busy. Bounded by the server's handle
        // limit; the bytes they hold are bounded by the read-ahead budget.
        let handles = self
            .pool
            .session()
            .await
            .map_or(0, |s| s.limits.max_open_handles);
        let per_session = if handles > 0 {
            (handles / 2).clamp(8, PUSH_FILES_PER_SESSION) as usize
        } else {
            16
        };
        self.slots.per_session.store(per_session, Ordering::Relaxed);
        // Each file in flight holds its local file open.
        let concurrency = (per_session * self.pool.capacity()).min(fd_budget());
        let results: Vec<Result<(), EntryError>> = stream::iter(files)
            .map(|a| async move {
                let (path, op) = (a.path().to_path_buf(), Operation::of(&a));
                let done = self.file_action(a).await;
                done.map_err(|e| EntryError::at(&path, op, e))
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        errors.extend(results.into_iter().filter_map(Result::err));
        // Hard links once the files they name have landed.
        let results: Vec<Result<(), EntryError>> = stream::iter(links)
            .map(|(a, leader)| async move {
                let path = a.path().to_path_buf();
                let done = self.link_or_send(a, &leader).await;
                done.map_err(|e| EntryError::at(&path, Operation::Transfer, e))
            })
            .buffer_unordered(64)
            .collect()
            .await;
        errors.extend(results.into_iter().filter_map(Result::err));
        // Directory mtimes last: writing files inside changed them. Those the
        // listing showed right and nothing touched are left alone (a rerun
        // of a big tree would otherwise re-set every directory).
        if errors.is_empty() {
            let dirs: Vec<PathBuf> = self
                .entries
                .values()
                .filter(|e| matches!(e.kind, robosync_scanner::EntryKind::Dir))
                .filter(|e| touched.contains(&e.path) || !self.dirs_in_place.contains(&e.path))
                .map(|e| e.path.clone())
                .collect();
            let results: Vec<Result<(), EntryError>> = stream::iter(dirs)
                .map(|p| async move {
                    let e = self.entry(&p);
                    let abs = self.abs(p.as_os_str().as_bytes());
                    self.with_session(|s| {
                        let abs = abs.clone();
                        async move {
                            // Not through a symlink a co-tenant put there.
                            if s.extensions.lsetstat {
                                s.lsetstat(&abs, &final_attrs(e)).await
                            } else {
                                s.setstat(&abs, &final_attrs(e)).await
                            }
                        }
                    })
                    .await
                    .map_err(|err| {
                        let msg = format!("cannot set attributes of {}: {err}", escape(&p));
                        EntryError::at(&p, Operation::SetAttributes, msg)
                    })
                })
                .buffer_unordered(64)
                .collect()
                .await;
            errors.extend(results.into_iter().filter_map(Result::err));
        }
        errors
    }

    /// A session for one file: the least loaded, once it has a free slot.
    /// The file stays on it: a session answers in order, so a file queued
    /// behind many others waits for all of them while sessions that joined
    /// later sit idle (measured: 512 small files dealt round-robin while only
    /// the first session was up stalled for five seconds).
    async fn slot(&self) -> Result<(Arc<Sftp>, Slot<'_>), Error> {
        loop {
            let live = self.pool.sessions();
            if live.is_empty() {
                self.pool.repair().await?;
                continue;
            }
            {
                let mut load = self.slots.load.lock().unwrap();
                let key = |s: &Arc<Sftp>| Arc::as_ptr(s) as usize;
                let best = live
                    .iter()
                    .min_by_key(|s| load.get(&key(s)).copied().unwrap_or(0))
                    .expect("sessions are not empty");
                let n = load.entry(key(best)).or_insert(0);
                if *n < self.slots.per_session.load(Ordering::Relaxed).max(1) {
                    *n += 1;
                    let slot = Slot {
                        slots: &self.slots,
                        key: key(best),
                    };
                    return Ok((best.clone(), slot));
                }
            }
            // All full: wait for a file to finish (or a session to join).
            let wait = self.slots.freed.notified();
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), wait).await;
        }
    }

    /// Runs `f` on a session, retrying on another (or a reconnected) one when the link drops.
    async fn with_session<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(Arc<Sftp>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        loop {
            let s = self.pool.session().await?;
            match f(s.clone()).await {
                Err(e) if e.is_connection() => {
                    self.pool.repair().await?;
                }
                r => return r,
            }
        }
    }

    async fn mkdir(&self, rel: &Path) -> Result<(), String> {
        let abs = self.abs(rel.as_os_str().as_bytes());
        let mode = self.entry(rel).mode & 0o7777;
        self.with_session(|s| {
            let abs = abs.clone();
            async move {
                let attrs = Attrs {
                    permissions: Some(mode | 0o700),
                    ..Default::default()
                };
                match s.mkdir(&abs, &attrs).await {
                    Ok(()) => Ok(()),
                    Err(e) => match s.lstat(&abs).await {
                        Ok(a) if a.is_dir() => Ok(()),
                        _ => Err(e),
                    },
                }
            }
        })
        .await
        .map_err(|e| format!("cannot create directory {}: {e}", escape(rel)))?;
        self.run.itemize(&format!("cd+++++++++ {}", escape(rel)));
        Ok(())
    }

    async fn file_action(&self, a: Action) -> Result<(), String> {
        let line = a.to_string();
        let path = a.path().to_path_buf();
        let sends = matches!(a, Action::Copy { .. } | Action::Delta { .. });
        let result = match a {
            Action::Copy { .. } => self.upload(&path, None).await,
            Action::Delta { send, reuse, .. } => self.upload(&path, Some((send, reuse))).await,
            Action::Symlink { target, .. } => self.symlink(&path, &target).await,
            Action::SetAttrs { .. } => self.set_attrs(&path).await,
            Action::Delete { dir, .. } => {
                return self
                    .delete(&path, dir, self.run.opts.backup_dir.as_deref())
                    .await
            }
            Action::Mkdir { .. } => Ok(()),
        };
        match result {
            Ok(()) => {
                self.run.itemize(&line);
                Ok(())
            }
            // Gone from the source since the scan: whatever failed, there
            // is nothing left to send.
            Err(_) if sends && self.vanished(&path) => Ok(()),
            Err(e) => Err(crate::space::send_failed(
                &escape(&path),
                &self.abs(path.as_os_str().as_bytes()),
                e,
            )),
        }
    }

    async fn symlink(&self, rel: &Path, target: &Path) -> Result<(), Error> {
        let abs = self.abs(rel.as_os_str().as_bytes());
        let t = mtime_secs(self.entry(rel));
        let times = Attrs {
            times: Some((t, t)),
            ..Default::default()
        };
        self.with_session(|s| {
            let (abs, times) = (abs.clone(), times.clone());
            async move {
                let target = target.as_os_str().as_bytes();
                if let Err(e) = s.symlink(target, &abs).await {
                    // Re-issued after a lost connection, it meets the link
                    // the first attempt made (only its reply was lost).
                    let made = e.is_status() && s.readlink(&abs).await.is_ok_and(|t| t == target);
                    if !made {
                        return Err(e);
                    }
                }
                // The link's own mtime, as rsync -a keeps it (lsetstat does
                // not follow the link; servers without it keep the time of
                // creation, as SFTP v3 has no other way).
                if s.extensions.lsetstat {
                    s.lsetstat(&abs, &times).await?;
                }
                Ok(())
            }
        })
        .await?;
        self.run.file_done();
        Ok(())
    }

    async fn set_attrs(&self, rel: &Path) -> Result<(), Error> {
        let e = self.entry(rel);
        let abs = self.abs(rel.as_os_str().as_bytes());
        let stat = self
            .with_session(|s| {
                let abs = abs.clone();
                async move {
                    s.setstat(&abs, &final_attrs(e)).await?;
                    s.lstat(&abs).await
                }
            })
            .await?;
        self.land(rel, e, &stat)
    }

    /// Records a landed file in the journal and the in-memory manifest.
    fn land(&self, rel: &Path, e: &Entry, stat: &Attrs) -> Result<(), Error> {
        let Some(d) = &e.digest else { return Ok(()) };
        let record = Record {
            size: e.size,
            mtime_ns: e.mtime_ns,
            mode: e.mode & 0o7777,
            whole: d.whole,
            blocks: d.blocks.clone(),
            remote_size: stat.size.unwrap_or(e.size),
            remote_mtime: stat.mtime().map(i64::from).unwrap_or(0),
        };
        let key = rel.as_os_str().as_bytes().to_vec();
        self.partials.lock().unwrap().remove(&key);
        self.run.journal(&JournalRecord::FileLanded {
            path: key.clone(),
            record: record.clone(),
        });
        self.manifest.lock().unwrap().files.insert(key, record);
        Ok(())
    }

    /// With `-H`: sets apart the sends of names whose local file has another
    /// name in the tree (the first of them by path, the leader, is sent);
    /// each comes back with its leader, to be linked once the leader landed.
    fn split_links(&self, files: Vec<Action>) -> (Vec<Action>, Vec<(Action, PathBuf)>) {
        use std::os::unix::fs::MetadataExt;
        if !self.hard_links {
            return (files, Vec::new());
        }
        // Every name of every multiply-linked file, also those with nothing
        // to send: an unchanged leader is already in place to link to.
        let mut leaders: HashMap<(u64, u64), PathBuf> = HashMap::new();
        let mut group_of: HashMap<PathBuf, (u64, u64)> = HashMap::new();
        for e in self.entries.values() {
            if !matches!(e.kind, robosync_scanner::EntryKind::File) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(self.local(&e.path)) else {
                continue;
            };
            if m.nlink() < 2 {
                continue;
            }
            let key = (m.dev(), m.ino());
            group_of.insert(e.path.clone(), key);
            let leader = leaders.entry(key).or_insert_with(|| e.path.clone());
            if e.path < *leader {
                *leader = e.path.clone();
            }
        }
        let (mut sends, mut links) = (Vec::new(), Vec::new());
        for a in files {
            let leader = match &a {
                Action::Copy { path, .. } | Action::Delta { path, .. } => group_of
                    .get(path)
                    .map(|k| &leaders[k])
                    .filter(|l| *l != path)
                    .cloned(),
                _ => None,
            };
            match leader {
                Some(l) => links.push((a, l)),
                None => sends.push(a),
            }
        }
        (sends, links)
    }

    /// Lands `a`'s file as a new name of its `leader`'s remote file: a link
    /// made under a temp name, then renamed into place, as every landing.
    /// When the leader did not land with the same content (it failed, or
    /// changed), or the server cannot link, the file is sent instead.
    async fn link_or_send(&self, a: Action, leader: &Path) -> Result<(), String> {
        let rel = a.path().to_path_buf();
        let e = self.entry(&rel);
        let key = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let in_place = {
            let m = self.manifest.lock().unwrap();
            match (m.files.get(&key(leader)), &e.digest) {
                (Some(r), Some(d)) => r.whole == d.whole && r.size == e.size,
                _ => false,
            }
        };
        let linkable = self
            .pool
            .session()
            .await
            .is_ok_and(|s| s.extensions.hardlink);
        if !in_place || !linkable {
            if !linkable {
                self.run.note_once(
                    "the server lacks hardlink@openssh.com: hard links are sent as copies".into(),
                );
            }
            return self.file_action(a).await;
        }
        let line = a.to_string();
        let target = self.abs(&key(leader));
        let abs = self.abs(&key(&rel));
        let linked = self
            .with_session(|s| {
                let (target, abs) = (target.clone(), abs.clone());
                let temp = self.abs(&fresh_temp(&key(&rel)));
                async move {
                    self.temps.lock().unwrap().insert(temp.clone());
                    s.hardlink(&target, &temp).await?;
                    let stat = s.rename_and_lstat(&temp, &abs).await?;
                    self.temps.lock().unwrap().remove(&temp);
                    Ok(stat)
                }
            })
            .await;
        match linked {
            Ok(stat) => {
                self.run.stats.files.fetch_add(1, Ordering::Relaxed);
                self.run.itemize(&line);
                self.land(&rel, e, &stat).map_err(|err| err.to_string())
            }
            Err(err) => Err(format!(
                "{}: cannot link to {}: {err}",
                escape(&rel),
                escape(leader)
            )),
        }
    }

    /// Whether a file the scan listed is gone now (rsync's "file has
    /// vanished", exit 24): then it is reported, and is not an error.
    fn vanished(&self, rel: &Path) -> bool {
        let gone = matches!(
            std::fs::symlink_metadata(self.local(rel)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        );
        if gone {
            self.run.vanished(&escape(rel));
        }
        gone
    }

    /// Sends one file (whole, or only `delta.0` blocks when the old copy holds the rest).
    async fn upload(&self, rel: &Path, delta: Option<(Vec<u64>, Vec<u64>)>) -> Result<(), Error> {
        let e = self.entry(rel);
        let Some(digest) = e.digest.clone() else {
            return Err(Error::Connect("file has no digest (scan error)".into()));
        };
        let key = rel.as_os_str().as_bytes().to_vec();
        let local = self.local(rel);
        let file = std::fs::File::open(&local)
            .map_err(|err| Error::Connect(format!("cannot open {}: {err}", local.display())))?;
        let mut delta = delta;
        let mut pipelined = true;
        loop {
            let (s, _slot) = self.slot().await?;
            let attempt = match &delta {
                Some((send, reuse)) if self.run.opts.inplace => {
                    self.send_inplace(&s, &key, e, &file, send).await
                }
                Some((send, reuse)) if s.extensions.copy_data => {
                    self.send_delta(&s, &key, e, &file, send, reuse).await
                }
                _ => {
                    self.send_whole(&s, &key, e, &digest, &file, pipelined)
                        .await
                }
            };
            match attempt {
                Ok(stat) => {
                    self.run.file_done();
                    return self.land(rel, e, &stat);
                }
                Err(err) if err.is_connection() => {
                    self.run
                        .note_once(format!("connection lost ({err}); reconnecting"));
                    self.pool.repair().await?;
                }
                Err(err) if pipelined && delta.is_none() && err.is_status() => {
                    // Seen once right after a reconnect: the pipelined small-file
                    // path got a FAILURE status from a handle request. Redo the
                    // file one request at a time before calling it an error.
                    pipelined = false;
                    self.run
                        .note(format!("{}: {err}; retrying step by step", escape(rel)));
                }
                Err(Error::Unsupported(_)) if delta.is_some() => {
                    // copy-data refused after all: fall back to a whole upload.
                    delta = None;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Refuses to land a file that changed since it was scanned: its bytes on
    /// the wire may mix two versions, and its recorded hashes would lie.
    /// (A stat check, not a rehash: hashing every block again cost a third
    /// BLAKE3 pass over the data, on the CPU the ciphers need.)
    fn unchanged_since_scan(&self, e: &Entry) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt;
        let path = self.local(&e.path);
        let m = std::fs::symlink_metadata(&path)
            .map_err(|err| Error::Connect(format!("cannot stat {}: {err}", path.display())))?;
        let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
        if m.len() != e.size || mtime_ns != e.mtime_ns {
            return Err(Error::Connect(format!(
                "{} changed while robosync was sending it; not landed, rerun to send the new content",
                escape(&e.path)
            )));
        }
        Ok(())
    }

    /// Writes `blocks` through one session, as one lane (see [`Push::drain`]).
    async fn write_blocks(
        &self,
        s: &Sftp,
        handle: &[u8],
        file: &std::fs::File,
        e: &Entry,
        blocks: Vec<u64>,
        journal: Option<(&[u8], &[u8])>,
    ) -> Result<(), Error> {
        let queue = Mutex::new(runs(&blocks, RUN_BLOCKS));
        self.drain(&queue, s, handle, file, e, journal).await
    }

    /// Reads a run of consecutive blocks in one go and writes it in the
    /// largest requests the server allows (not block by block: a 256 KiB
    /// block would cost two writes under OpenSSH's 255 KiB limit), then
    /// journals the run's blocks once all of its writes are acknowledged.
    async fn write_run(
        &self,
        s: &Sftp,
        handle: &[u8],
        file: &std::fs::File,
        e: &Entry,
        run: Range<u64>,
        journal: Option<(&[u8], &[u8])>,
    ) -> Result<(), Error> {
        let start = run.start * BLOCK_SIZE;
        let len = (run.end * BLOCK_SIZE).min(e.size) - start;
        // Bounded read-ahead: the bytes are held from the read until acked.
        let _held = self.data.acquire(len).await;
        self.run.throttle(len).await;
        let buf = read_at(file, start, len as usize)
            .map_err(|err| Error::Connect(format!("cannot read {}: {err}", escape(&e.path))))?;
        // One buffer, shared by the writes' slices: no copy until russh's.
        let buf = bytes::Bytes::from(buf);
        let chunk = (s.limits.max_write as usize).max(1);
        let writes = (0..buf.len()).step_by(chunk).map(|at| {
            let c = buf.slice(at..(at + chunk).min(buf.len()));
            s.write(handle, start + at as u64, c)
        });
        futures::future::try_join_all(writes).await?;
        self.run.add_bytes(len);
        if let Some((path, temp)) = journal {
            let hashes = e.digest.as_ref().unwrap().block_hashes();
            for i in run {
                let hash = hashes[i as usize];
                self.run.journal_for(
                    &JournalRecord::BlockDone {
                        path: path.to_vec(),
                        temp: temp.to_vec(),
                        index: i,
                        hash,
                    },
                    block_len(e.size, i),
                );
                // Also in memory, so a retry within this run resumes too.
                if let Some(p) = self.partials.lock().unwrap().get_mut(path) {
                    p.blocks.insert(i, hash);
                }
            }
        }
        Ok(())
    }

    /// One lane: keeps up to [`LANE_DEPTH`] runs in flight on session `s`,
    /// taking the next run from the shared queue as soon as one completes
    /// (no bubble between runs: across latency a lane must never wait for
    /// its last request before sending the next).
    #[allow(clippy::too_many_arguments)]
    async fn drain(
        &self,
        queue: &Mutex<VecDeque<Range<u64>>>,
        s: &Sftp,
        handle: &[u8],
        file: &std::fs::File,
        e: &Entry,
        journal: Option<(&[u8], &[u8])>,
    ) -> Result<(), Error> {
        let next = std::iter::from_fn(|| queue.lock().unwrap().pop_front());
        stream::iter(next)
            .map(|run| self.write_run(s, handle, file, e, run, journal))
            .buffer_unordered(LANE_DEPTH)
            .try_collect::<()>()
            .await
    }

    async fn send_whole(
        &self,
        s: &Sftp,
        key: &[u8],
        e: &Entry,
        digest: &robosync_scanner::Digest,
        file: &std::fs::File,
        pipelined: bool,
    ) -> Result<Attrs, Error> {
        let nblocks = e.size.div_ceil(BLOCK_SIZE);
        // Resume: keep the blocks the journal confirms, re-verifying the last one.
        let partial = self
            .partials
            .lock()
            .unwrap()
            .get(key)
            .filter(|p| p.whole == digest.whole && p.size == e.size)
            .cloned();
        let resumed = match partial {
            Some(p) => self.reopen(s, &p, e).await,
            None => None,
        };
        let (temp_rel, handle, done) = match resumed {
            Some(r) => r,
            None => {
                let (temp_rel, handle) = self.create_temp(s, key).await?;
                // A one-block file restarts from scratch anyway: journaling its
                // progress would only cost a write per record.
                if nblocks > 1 {
                    self.partials.lock().unwrap().insert(
                        key.to_vec(),
                        Partial {
                            temp: temp_rel.clone(),
                            whole: digest.whole,
                            size: e.size,
                            blocks: HashMap::new(),
                        },
                    );
                    self.run.journal(&JournalRecord::TransferStarted {
                        path: key.to_vec(),
                        temp: temp_rel.clone(),
                        size: e.size,
                        mtime_ns: e.mtime_ns,
                        whole: digest.whole,
                    });
                }
                (temp_rel, handle, BTreeSet::new())
            }
        };
        let temp = self.abs(&temp_rel);
        let kept: u64 = done
            .iter()
            .map(|i| (e.size - (i * BLOCK_SIZE).min(e.size)).min(BLOCK_SIZE))
            .sum();
        self.run.resumed(kept);
        if pipelined && e.size <= s.limits.max_write as u64 && !self.run.opts.fsync {
            return self.send_small(s, handle, file, e, &temp, key).await;
        }
        // -S: blocks that lie wholly in a hole read as zeros on the server
        // too (the temp is new, and its size is set when it is finished).
        let holes = match self.run.opts.sparse && done.is_empty() {
            true => hole_blocks(file, e.size),
            false => BTreeSet::new(),
        };
        let todo: Vec<u64> = (0..nblocks)
            .filter(|i| !done.contains(i) && !holes.contains(i))
            .collect();
        let written = self
            .write_striped(s, &handle, &temp, file, e, todo, (key, &temp_rel))
            .await;
        self.finish(s, handle, written, &temp, key, e, true).await
    }

    /// Creates a fresh temp file for `key` with EXCL (never opening what
    /// someone else put there, a symlink least of all), under a new random
    /// name if one is taken. Returns its relative name and handle.
    async fn create_temp(&self, s: &Sftp, key: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let create = Attrs {
            permissions: Some(0o600),
            ..Default::default()
        };
        let flags = proto::FXF_WRITE | proto::FXF_CREAT | proto::FXF_EXCL;
        let mut tries = 0;
        loop {
            let rel = fresh_temp(key);
            let abs = self.abs(&rel);
            // Noted before the OPEN leaves: if its reply is lost with the
            // connection, the server may still have made the file.
            self.temps.lock().unwrap().insert(abs.clone());
            let opened = s.open(&abs, flags, &create).await;
            if opened.as_ref().is_err_and(|err| !err.is_connection()) {
                // Refused: whatever holds the name is not ours to remove.
                self.temps.lock().unwrap().remove(&abs);
            }
            match opened {
                Ok(h) => return Ok((rel, h)),
                // SFTP v3 reports EEXIST as a plain failure: try another name
                // (a few times: a full disk fails the same way).
                Err(Error::Failure(_)) if tries < 3 => {
                    tries += 1;
                }
                Err(err) => return Err(err.with_path("open", &abs)),
            }
        }
    }

    /// Reopens an interrupted attempt's temp file to resume it, or `None` to
    /// start afresh (the old temp then goes). It must still be a regular file
    /// (not a link someone planted), writable (an attempt stopped between its
    /// final attributes and its rename left a read-only file's temp 0444),
    /// and hold the journaled blocks: a temp cut short keeps those within
    /// its size, and the last one kept is read back and checked.
    async fn reopen(
        &self,
        s: &Sftp,
        p: &Partial,
        e: &Entry,
    ) -> Option<(Vec<u8>, Vec<u8>, BTreeSet<u64>)> {
        let temp = self.abs(&p.temp);
        let fresh = || async {
            self.partials
                .lock()
                .unwrap()
                .remove(e.path.as_os_str().as_bytes());
            let _ = s.remove(&temp).await;
            None
        };
        let Ok(stat) = s.lstat(&temp).await else {
            return fresh().await;
        };
        let have = stat.size.unwrap_or(0);
        let hashes = e.digest.as_ref()?.block_hashes();
        let done: BTreeSet<u64> = p
            .blocks
            .iter()
            .filter(|(i, h)| hashes.get(**i as usize) == Some(*h))
            .filter(|(i, _)| **i * BLOCK_SIZE + block_len(e.size, **i) <= have)
            .map(|(i, _)| *i)
            .collect();
        if !stat.is_file() || done.is_empty() {
            return fresh().await;
        }
        let last = *done.iter().next_back()?;
        if !self.verify_remote_block(s, &temp, e, last).await {
            return fresh().await;
        }
        // The attempt that wrote this temp may still hold it open on a
        // connection given up on, and a stalled server may run its queued
        // writes late. With copy-data the confirmed blocks move, server-side,
        // into a new temp that only this attempt writes; the old one goes,
        // and late writes reach an unlinked file, never the landed one.
        if s.extensions.copy_data {
            return match self.copy_to_fresh_temp(s, e, &temp, &done).await {
                Ok(resumed) => Some(resumed),
                Err(_) => fresh().await,
            };
        }
        if stat.permissions.is_some_and(|m| m & 0o200 == 0) {
            let writable = Attrs {
                permissions: Some(0o600),
                ..Default::default()
            };
            if s.setstat(&temp, &writable).await.is_err() {
                return fresh().await;
            }
        }
        let Ok(handle) = s.open(&temp, proto::FXF_WRITE, &Attrs::default()).await else {
            return fresh().await;
        };
        self.temps.lock().unwrap().insert(temp.clone());
        self.run.note(format!(
            "resuming {}: {} of {} blocks already there",
            escape(&e.path),
            done.len(),
            e.size.div_ceil(BLOCK_SIZE)
        ));
        Some((p.temp.clone(), handle, done))
    }

    /// [`Push::reopen`] by copy-data: the `done` blocks of the temp `old`
    /// copied into a fresh temp, journaled there, and `old` removed.
    async fn copy_to_fresh_temp(
        &self,
        s: &Sftp,
        e: &Entry,
        old: &[u8],
        done: &BTreeSet<u64>,
    ) -> Result<(Vec<u8>, Vec<u8>, BTreeSet<u64>), Error> {
        let key = e.path.as_os_str().as_bytes();
        let from = s.open(old, proto::FXF_READ, &Attrs::default()).await?;
        let (rel, to) = match self.create_temp(s, key).await {
            Ok(t) => t,
            Err(err) => {
                s.close_detached(&from);
                return Err(err);
            }
        };
        let blocks: Vec<u64> = done.iter().copied().collect();
        let copies = runs(&blocks, u64::MAX).into_iter().map(|r| {
            let off = r.start * BLOCK_SIZE;
            let len = (r.end * BLOCK_SIZE).min(e.size) - off;
            s.copy_data(&from, off, len, &to, off)
        });
        let copied = futures::future::try_join_all(copies).await;
        s.close_detached(&from);
        if let Err(err) = copied {
            s.close_detached(&to);
            let _ = s.remove(&self.abs(&rel)).await;
            return Err(err);
        }
        // Forgotten only once gone: otherwise the run's end removes it.
        if s.remove(old).await.is_ok() {
            self.temps.lock().unwrap().remove(old);
        }
        let digest = e
            .digest
            .as_ref()
            .ok_or_else(|| Error::Connect("no digest".into()))?;
        let hashes = digest.block_hashes();
        self.run.journal(&JournalRecord::TransferStarted {
            path: key.to_vec(),
            temp: rel.clone(),
            size: e.size,
            mtime_ns: e.mtime_ns,
            whole: digest.whole,
        });
        let mut partial = Partial {
            temp: rel.clone(),
            whole: digest.whole,
            size: e.size,
            blocks: HashMap::new(),
        };
        for &i in done {
            let hash = hashes[i as usize];
            self.run.journal(&JournalRecord::BlockDone {
                path: key.to_vec(),
                temp: rel.clone(),
                index: i,
                hash,
            });
            partial.blocks.insert(i, hash);
        }
        self.partials.lock().unwrap().insert(key.to_vec(), partial);
        self.run.note(format!(
            "resuming {}: {} of {} blocks already there (copied into a new temp)",
            escape(&e.path),
            done.len(),
            e.size.div_ceil(BLOCK_SIZE)
        ));
        Ok((rel, to, done.clone()))
    }

    /// A file that fits in one WRITE: write, set attributes and close go out
    /// as one ordered batch, then rename and lstat as another, so a small file
    /// costs three round trips instead of six (what matters across a WAN).
    /// Batches, not concurrent futures: only a batch guarantees the order on
    /// the wire, and a CLOSE that overtakes its WRITE frees the handle for the
    /// server to give to another file (see `Sftp::batch`).
    async fn send_small(
        &self,
        s: &Sftp,
        handle: Vec<u8>,
        file: &std::fs::File,
        e: &Entry,
        temp: &[u8],
        key: &[u8],
    ) -> Result<Attrs, Error> {
        let held = self.data.acquire(e.size).await;
        self.run.throttle(e.size).await;
        let data = read_at(file, 0, e.size as usize)
            .map_err(|err| Error::Connect(format!("cannot read {}: {err}", escape(&e.path))))?;
        let attrs = final_attrs(e);
        let written = s
            .write_stat_close(&handle, 0, &data, Some(&attrs))
            .await
            .map_err(|x| x.at_path(temp))?;
        self.run.add_bytes(data.len() as u64);
        // The bytes are on the server: free the read-ahead before the rename's round trip.
        drop((data, held));
        check_landed(e, &written, "its temp file")?;
        self.unchanged_since_scan(e)?;
        let dest = self.abs(key);
        let stat = s
            .rename_and_lstat(temp, &dest)
            .await
            .map_err(|x| x.with_path("rename", &dest))?;
        self.temps.lock().unwrap().remove(temp);
        check_landed(e, &stat, "the landed file")?;
        if self.run.opts.verify {
            self.verify_remote_file(s, &dest, e).await?;
        }
        Ok(stat)
    }

    /// Writes a big file's blocks over several sessions at once: each SFTP
    /// channel has its own flow-control window (2 MiB on OpenSSH), which caps
    /// one channel's throughput across latency. Lanes pull runs of blocks from
    /// a shared queue (so the server still sees mostly sequential writes), and
    /// sessions that join the pool mid-transfer join as new lanes.
    #[allow(clippy::too_many_arguments)]
    async fn write_striped(
        &self,
        s: &Sftp,
        handle: &[u8],
        temp: &[u8],
        file: &std::fs::File,
        e: &Entry,
        todo: Vec<u64>,
        journal: (&[u8], &[u8]),
    ) -> Result<(), Error> {
        // Below this a second lane costs more (an OPEN and a CLOSE) than it saves.
        const STRIPE_MIN_BLOCKS: usize = 4 * RUN_BLOCKS as usize;
        let journal = (e.size > BLOCK_SIZE).then_some(journal);
        if todo.len() < STRIPE_MIN_BLOCKS {
            return self.write_blocks(s, handle, file, e, todo, journal).await;
        }
        let queue = Mutex::new(runs(&todo, RUN_BLOCKS));
        let queue = &queue;
        // Sessions already lanes, by address (an address, unlike a pointer, is Send).
        let mut used: Vec<usize> = vec![s as *const Sftp as usize];
        let mut lanes = futures::stream::FuturesUnordered::new();
        lanes.push(futures::future::Either::Left(
            self.drain(queue, s, handle, file, e, journal),
        ));
        // New sessions are looked for often at first (the pool is still
        // growing), and every one found becomes a lane at once.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(25));
        let mut result = Ok(());
        loop {
            tokio::select! {
                done = lanes.next() => match done {
                    None => break,
                    Some(Err(err)) => {
                        // Let the other lanes finish what they sent and
                        // close their handles; the caller retries or resumes.
                        queue.lock().unwrap().clear();
                        if result.is_ok() {
                            result = Err(err);
                        }
                    }
                    Some(Ok(())) => {}
                },
                _ = tick.tick(), if !queue.lock().unwrap().is_empty() => {
                    for o in self.pool.sessions() {
                        if used.contains(&(Arc::as_ptr(&o) as usize)) {
                            continue;
                        }
                        used.push(Arc::as_ptr(&o) as usize);
                        lanes.push(futures::future::Either::Right(async move {
                            // A lane that cannot open the file just leaves
                            // its share to the others.
                            let Ok(h) = o.open(temp, proto::FXF_WRITE, &Attrs::default()).await
                            else {
                                return Ok(());
                            };
                            let r = self.drain(queue, &o, &h, file, e, journal).await;
                            let _ = o.close(&h).await;
                            r
                        }));
                    }
                }
            }
        }
        result
    }

    /// Sets attributes, optionally fsyncs, closes, renames into place.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        s: &Sftp,
        handle: Vec<u8>,
        written: Result<(), Error>,
        temp: &[u8],
        key: &[u8],
        e: &Entry,
        rename: bool,
    ) -> Result<Attrs, Error> {
        let result = async {
            written?;
            self.unchanged_since_scan(e)?;
            // The size first and apart (sftp-server truncates before it
            // changes the mode): a temp longer than the source, left by an
            // earlier attempt, ends where the source does.
            let size = Attrs {
                size: Some(e.size),
                ..Default::default()
            };
            s.fsetstat(&handle, &size).await?;
            s.fsetstat(&handle, &final_attrs(e)).await?;
            if self.run.opts.fsync && s.extensions.fsync {
                s.fsync(&handle).await?;
            }
            check_landed(e, &s.fstat(&handle).await?, "its temp file")
        }
        .await;
        let closed = s.close(&handle).await;
        result?;
        closed?;
        let dest = self.abs(key);
        let stat = if rename {
            let stat = s
                .rename_and_lstat(temp, &dest)
                .await
                .map_err(|x| x.with_path("rename", &dest))?;
            self.temps.lock().unwrap().remove(temp);
            stat
        } else {
            s.lstat(&dest).await?
        };
        check_landed(e, &stat, "the landed file")?;
        if self.run.opts.verify {
            self.verify_remote_file(s, &dest, e).await?;
        }
        Ok(stat)
    }

    async fn verify_remote_block(&self, s: &Sftp, path: &[u8], e: &Entry, index: u64) -> bool {
        let want = e.digest.as_ref().unwrap().block_hashes()[index as usize];
        let len = block_len(e.size, index);
        match read_range(s, path, index * BLOCK_SIZE, len).await {
            // A block cut short is not the block (and an empty one is not
            // even a valid input to the block hash).
            Ok(buf) if buf.len() as u64 == len => {
                robosync_scanner::hash_block(&buf, index, e.size) == want
            }
            _ => false,
        }
    }

    /// `--verify`: read the landed file back over SFTP and compare BLAKE3.
    async fn verify_remote_file(&self, s: &Sftp, path: &[u8], e: &Entry) -> Result<(), Error> {
        let buf = read_range(s, path, 0, e.size).await?;
        if Some(*blake3::hash(&buf).as_bytes()) != e.digest.as_ref().map(|d| d.whole) {
            return Err(Error::Connect(format!(
                "verification failed: {} on the destination does not match the source (BLAKE3)",
                escape(&e.path)
            )));
        }
        self.run.stats.verified.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Builds the new version in a temp file from server-side copies of the
    /// unchanged blocks (copy-data) plus writes of the changed ones.
    async fn send_delta(
        &self,
        s: &Sftp,
        key: &[u8],
        e: &Entry,
        file: &std::fs::File,
        send: &[u64],
        reuse: &[u64],
    ) -> Result<Attrs, Error> {
        let dest = self.abs(key);
        let old = s.open(&dest, proto::FXF_READ, &Attrs::default()).await?;
        let (temp, handle) = match self.create_temp(s, key).await {
            Ok((rel, h)) => (self.abs(&rel), h),
            Err(err) => {
                let _ = s.close(&old).await;
                return Err(err);
            }
        };
        let copies = async {
            // Coalesce runs of reused blocks into single copy-data requests.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for &i in reuse {
                match runs.last_mut() {
                    Some((start, n)) if *start + *n == i => *n += 1,
                    _ => runs.push((i, 1)),
                }
            }
            let copies = runs.iter().map(|&(start, n)| {
                let off = start * BLOCK_SIZE;
                let len = (n * BLOCK_SIZE).min(e.size - off);
                s.copy_data(&old, off, len, &handle, off)
            });
            futures::future::try_join_all(copies).await?;
            Ok::<_, Error>(())
        };
        let written = async {
            copies.await?;
            self.write_blocks(s, &handle, file, e, send.to_vec(), None)
                .await
        }
        .await;
        let _ = s.close(&old).await;
        let r = self.finish(s, handle, written, &temp, key, e, true).await;
        if r.is_err() {
            let _ = s.remove(&temp).await;
        }
        r
    }

    /// `--inplace`: write only the changed blocks into the existing file, with
    /// the intent journaled so an interrupted update is redone next run.
    async fn send_inplace(
        &self,
        s: &Sftp,
        key: &[u8],
        e: &Entry,
        file: &std::fs::File,
        send: &[u64],
    ) -> Result<Attrs, Error> {
        self.run.journal(&JournalRecord::InplaceIntent {
            path: key.to_vec(),
            blocks: send.to_vec(),
        });
        self.run.checkpoint();
        // The manifest no longer describes this file until it lands again.
        self.manifest.lock().unwrap().files.remove(key);
        let dest = self.abs(key);
        let handle = s.open(&dest, proto::FXF_WRITE, &Attrs::default()).await?;
        let written = self
            .write_blocks(s, &handle, file, e, send.to_vec(), None)
            .await;
        self.finish(s, handle, written, &dest, key, e, false).await
    }

    async fn delete(&self, rel: &Path, dir: bool, backup: Option<&Path>) -> Result<(), String> {
        let key = rel.as_os_str().as_bytes();
        let abs = self.abs(key);
        let r = self
            .with_session(|s| {
                let abs = abs.clone();
                async move {
                    // Only inside the directory that was listed: a co-tenant
                    // may have swapped it, or a parent, for a symlink since.
                    self.confirm_listed_dir(&s, parent(key)).await?;
                    if let Some(b) = backup {
                        // A relative backup dir is inside the destination, as with rsync.
                        let base = if b.is_absolute() {
                            b.as_os_str().as_bytes().to_vec()
                        } else {
                            self.abs(b.as_os_str().as_bytes())
                        };
                        let dest = join(&base, key);
                        mkdir_p(&s, parent(&dest)).await?;
                        return s.rename(&abs, &dest).await.map(|()| 1);
                    }
                    if dir {
                        self.remove_tree(&s, key).await
                    } else {
                        s.remove(&abs).await.map(|()| 1)
                    }
                }
            })
            .await;
        match r {
            Ok(n) => {
                self.run
                    .journal(&JournalRecord::Deleted { path: key.to_vec() });
                self.manifest.lock().unwrap().files.remove(key);
                self.run.stats.deleted.fetch_add(n, Ordering::Relaxed);
                self.run.itemize(&format!("*deleting   {}", escape(rel)));
                Ok(())
            }
            Err(e) => Err(format!("did not delete {}: {e}", escape(rel))),
        }
    }

    /// Removes the directory `rel` and everything in it, never through a
    /// symlink: each directory is confirmed (lstat, then realpath against the
    /// destination's) before anything in it goes. Returns how many entries went.
    async fn remove_tree(&self, s: &Sftp, rel: &[u8]) -> Result<u64, Error> {
        let abs = self.abs(rel);
        if !s.lstat(&abs).await?.is_dir() {
            return Err(Error::Connect(format!(
                "{} is no longer a directory (someone replaced it, with a symlink or a file, \
                 after robosync listed it); nothing in it was deleted",
                escape(&crate::os(rel))
            )));
        }
        self.confirm_listed_dir(s, rel).await?;
        let mut removed = 0;
        for n in s.list_dir(&abs).await? {
            if !crate::remote::safe_name(&n.filename) {
                continue;
            }
            let child = join(rel, &n.filename);
            if n.attrs.is_dir() {
                removed += Box::pin(self.remove_tree(s, &child)).await?;
            } else {
                s.remove(&self.abs(&child)).await?;
                removed += 1;
            }
        }
        s.rmdir(&abs).await?;
        Ok(removed + 1)
    }

    /// Checks that the directory `rel` still resolves to where the listing
    /// found it under the destination: no component of it is now a symlink
    /// (REALPATH resolves them all) or was moved in from elsewhere.
    async fn confirm_listed_dir(&self, s: &Sftp, rel: &[u8]) -> Result<(), Error> {
        let root = self
            .root_real
            .get_or_try_init(|| s.realpath(&self.remote_root))
            .await?;
        let want = join(root, rel);
        let real = s.realpath(&self.abs(rel)).await?;
        if real != want {
            return Err(Error::Connect(format!(
                "{} now resolves to {} (someone replaced a directory with a symlink after \
                 robosync listed it); nothing was deleted through it",
                escape(&crate::os(&self.abs(rel))),
                escape(&crate::os(&real))
            )));
        }
        Ok(())
    }
}

/// The directory part of `p` (`""` for a name without one).
fn parent(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &p[..i],
        None => b"",
    }
}

/// Creates `dir` and its missing parents (see [`Sftp::mkdir_p`]).
pub async fn mkdir_p(s: &Sftp, dir: &[u8]) -> Result<(), Error> {
    s.mkdir_p(dir).await
}

/// Reads `len` bytes from `path` at `offset`, pipelined (see [`Sftp::read_range`]).
pub async fn read_range(s: &Sftp, path: &[u8], offset: u64, len: u64) -> Result<Vec<u8>, Error> {
    s.read_range(path, offset, len).await
}

/// The blocks of `file` (of `size` bytes) that lie wholly inside holes, as
/// SEEK_DATA/SEEK_HOLE report them; none where the filesystem cannot tell.
fn hole_blocks(file: &std::fs::File, size: u64) -> BTreeSet<u64> {
    use rustix::fs::{seek, SeekFrom};
    let mut holes = BTreeSet::new();
    let mut at = 0u64;
    while at < size {
        let Ok(hole) = seek(file, SeekFrom::Hole(at)) else {
            break;
        };
        let data = seek(file, SeekFrom::Data(hole)).unwrap_or(size).min(size);
        // Whole blocks within [hole, data).
        let first = hole.div_ceil(BLOCK_SIZE);
        let end = if data == size {
            size.div_ceil(BLOCK_SIZE)
        } else {
            data / BLOCK_SIZE
        };
        holes.extend(first..end);
        if data >= size {
            break;
        }
        at = data;
    }
    holes
}

/// Reads exactly `len` bytes at `offset` into a new buffer, without zeroing
/// it first: every pushed byte passes through one of these, and the memset
/// was 2% of a 1 GiB push's CPU. A file that ends early is an error.
pub fn read_at(file: &std::fs::File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = offset + buf.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf)
}

//! Pull: remote tree → local destination, executing a [`Plan`] the other way round.
//!
//! The server chooses names, sizes and contents, never where bytes land. Every
//! local create, open, rename, symlink, mkdir and unlink goes through
//! [`LocalRoot`], which resolves a relative path beneath an open directory
//! handle of the destination one component at a time with
//! `O_NOFOLLOW | O_DIRECTORY`: a hostile name, a symlink the server sent, or a
//! directory swapped for a symlink between listing and writing cannot lead
//! outside the root. Names were already checked by [`remote::safe_name`] while
//! listing; [`LocalRoot`] checks every component again.
//!
//! Downloads stream in order with a bounded window of READs in flight, are
//! hashed (BLAKE3, per block and whole) as the bytes arrive, written to a temp
//! file beside the target, and renamed into place. Completed blocks are
//! journaled, so a rerun re-hashes them locally and fetches only the rest.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};
use robosync_manifest::{JournalRecord, Manifest, Record};
use robosync_planner::{escape, Action, Kind, Node, Tree};
use robosync_scanner::{Filters, Snapshot, BLOCK_SIZE};
use robosync_transport::proto::{self, Attrs};
use robosync_transport::{Error, Pool, Sftp};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, CWD};

use crate::failure::{fail, redo, EntryError, Failure, Operation, Redo, EXIT_PARTIAL, EXIT_USAGE};
use crate::push::{temp_for, Partial};
use crate::remote::on_session;
use crate::remote::{self, is_temp_name, safe_name, STATE_DIR};
use crate::run::Run;
use crate::Options;
use crate::{join, os};

/// Blocks of one file in flight at once (each `BLOCK_SIZE`): 16 MiB, our
/// receive window per channel, so one file fills a channel across latency
/// (measured, 256 MiB at 50 ms: 4.45 s with 16 blocks, 2.52 s with 64). All
/// files together stay within the read-ahead budget ([`Pull::data`]).
const WINDOW_BLOCKS: usize = 64;
/// Files of at least this many blocks are striped over several sessions.
const STRIPE_MIN_BLOCKS: u64 = 32;
/// Sessions one striped file uses at most.
const STRIPES: usize = 4;
/// Permission bits a pull sets: never setuid/setgid from a server.
const MODE_MASK: u32 = 0o1777;

/// The leases of a pull's local destination: this machine's lock on its
/// identity, and (when it exists) its lease (see crate::lease). A dry run
/// takes none, and warns when a live one is held.
pub fn take_leases(
    args: &Options,
    run: &Run,
    local_root: &Path,
    abs_dest: &Path,
    state_dir: &Path,
    exists: bool,
) -> Result<LocalLeases, Failure> {
    let mut held = LocalLeases::default();
    if args.dry_run {
        if let Some(w) = crate::lease::peek_local(local_root) {
            run.warn(&w);
        }
        return Ok(held);
    }
    let shown = abs_dest.display().to_string();
    let key = abs_dest.to_string_lossy();
    held.identity = Some(crate::lease::hold_identity(state_dir, &key, &shown)?);
    if exists {
        held.lease = Some(crate::lease::take_local(local_root)?);
    }
    Ok(held)
}

/// What a pull holds of its destination until the run ends.
#[derive(Default)]
pub struct LocalLeases {
    identity: Option<File>,
    lease: Option<crate::lease::LocalLease>,
}

impl LocalLeases {
    /// Whether the destination's lease is held (it existed).
    pub fn has_lease(&self) -> bool {
        self.lease.is_some()
    }

    /// Lets go of the destination, and removes the state directory the
    /// lease made there (`made`): the run found no tree to sync into it.
    pub fn release(self, local_root: &Path, made: bool) {
        drop(self);
        if made {
            let _ = std::fs::remove_dir(local_root.join(".robosync"));
        }
    }
}

/// Why a pull's source root did not list: a file (refused as such), or missing.
pub async fn missing_source(
    pool: &Pool,
    remote_root: &[u8],
    label: &str,
    rename: Option<&crate::Rename>,
) -> Failure {
    let stat = on_session(pool, |s| async move { s.lstat(remote_root).await }).await;
    if rename.is_none() && stat.is_ok_and(|a| !a.is_dir()) {
        return redo(Redo::SourceIsFile, format!("source {label} is a file"));
    }
    no_source(label)
}

/// A pull's source is not on the server (exit 23).
pub fn no_source(label: &str) -> Failure {
    fail(
        EXIT_PARTIAL,
        format!(
            "source {label} does not exist on the server (no such file or directory); \
             nothing was copied: check the remote path"
        ),
    )
}

/// The destination's tree as the planner must see it: what the pruned scan
/// left out where the source has an entry is in the way (known, so it gets
/// replaced), excluded entries are protected from `--delete`, and robosync's
/// own state, a `--backup-dir` inside and temp files are not content.
/// Returns the tree and the temp files found.
pub fn destination_tree(
    mut dest: Tree,
    source: &Tree,
    snap: &Snapshot,
    filters: &Filters,
    local_root: &Path,
    args: &Options,
) -> (Tree, Vec<Vec<u8>>) {
    for p in snap
        .excluded
        .iter()
        .filter(|p| source.nodes.contains_key(*p))
    {
        if let Some(n) = in_the_way(&local_root.join(p)) {
            dest.nodes.insert(p.clone(), n);
        }
    }
    dest = remote::protected(dest, source, &filters.receiver, &snap.excluded);
    let mut stale_temps = Vec::new();
    let mut own: Vec<&Path> = vec![Path::new(std::ffi::OsStr::from_bytes(STATE_DIR))];
    if let Some(b) = args.backup_dir.as_deref().filter(|b| b.is_relative()) {
        own.push(b);
    }
    dest.nodes.retain(|p, _| {
        let b = p.as_os_str().as_bytes();
        if own.iter().any(|o| p.starts_with(o)) {
            return false;
        }
        if p.file_name().is_some_and(|n| is_temp_name(n.as_bytes())) {
            stale_temps.push(b.to_vec());
            return false;
        }
        true
    });
    (dest, stale_temps)
}

/// Makes a missing destination (taking its lease) and opens it; `None` on
/// a dry run into a destination that does not exist.
pub fn open_destination(
    args: &Options,
    local_root: &Path,
    exists: bool,
    creatable: usize,
    held: &mut LocalLeases,
) -> Result<Option<LocalRoot>, Failure> {
    if !exists && args.dry_run {
        return Ok(None);
    }
    if !exists {
        let root = local_root.as_os_str().as_bytes();
        if let Some(p) = crate::failure::required_parent(root, creatable) {
            if !os(&p).is_dir() {
                return Err(crate::failure::parent_missing(root, &p, creatable));
            }
        }
        std::fs::create_dir_all(local_root).map_err(|e| {
            fail(
                EXIT_USAGE,
                format!("cannot create destination {}: {e}", local_root.display()),
            )
        })?;
        held.lease = Some(crate::lease::take_local(local_root)?);
    }
    LocalRoot::open(local_root).map(Some).map_err(|e| {
        fail(
            EXIT_USAGE,
            format!("cannot open destination {}: {e}", local_root.display()),
        )
    })
}

/// A remote file whose stat still matches what robosync fetched last time
/// has the content recorded then.
pub fn recorded_content(source: &mut Tree, manifest: &Manifest) {
    for (p, n) in source.nodes.iter_mut() {
        if n.kind != Kind::File {
            continue;
        }
        if let Some(r) = manifest.files.get(p.as_os_str().as_bytes()) {
            if r.size == n.size && r.mtime_ns.div_euclid(1_000_000_000) == n.mtime {
                n.whole = Some(r.whole);
                n.blocks = r.blocks.clone();
            }
        }
    }
}

/// The `--backup-dir` of a pull, made and opened.
pub fn open_backup(args: &Options, root: &LocalRoot) -> Result<Option<Backup>, Failure> {
    let Some(b) = &args.backup_dir else {
        return Ok(None);
    };
    Backup::open(root, b).map(Some).map_err(|e| {
        fail(
            EXIT_USAGE,
            format!("cannot use backup dir {}: {e}", b.display()),
        )
    })
}

/// Why one entry failed.
#[derive(Debug)]
enum PullError {
    Remote(Error),
    Local(String),
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PullError::Remote(e) => write!(f, "{e}"),
            PullError::Local(m) => f.write_str(m),
        }
    }
}

impl From<Error> for PullError {
    fn from(e: Error) -> PullError {
        PullError::Remote(e)
    }
}

fn local(what: &str) -> impl Fn(io::Error) -> PullError + '_ {
    move |e| PullError::Local(crate::space::local_failed(what, &e))
}

pub struct Pull {
    pub run: Arc<Run>,
    pub pool: Arc<Pool>,
    pub root: Arc<LocalRoot>,
    /// Where whole small files are written, off the async workers.
    pub landing: Landing,
    pub backup: Option<Backup>,
    pub remote_root: Vec<u8>,
    pub source: Tree,
    pub partials: Mutex<HashMap<Vec<u8>, Partial>>,
    pub manifest: Mutex<Manifest>,
    /// Bytes asked of the server and not yet written locally, all files together.
    pub data: crate::push::ReadAhead,
    /// Files in flight on each session (see [`crate::push::Slots`]).
    pub slots: crate::push::Slots,
    /// Directories already right at the destination (see `sync::dirs_in_place`).
    pub dirs_in_place: HashSet<PathBuf>,
    /// Entries whose remote name differs (a single file to a new name):
    /// local-relative path → remote-relative path.
    pub remote_names: HashMap<std::path::PathBuf, std::path::PathBuf>,
}

/// Moves one entry of `tree` to another name.
pub fn rename_node(tree: &mut Tree, from: &Path, to: &Path) {
    if let Some(n) = tree.nodes.remove(from) {
        tree.nodes.insert(to.to_path_buf(), n);
    }
}

impl Pull {
    /// Runs actions in plan order: wrong-kind deletions, directories (parents
    /// first), then files and links concurrently, then directory attributes.
    /// `removals`: these are the `--delete` removals (`--backup-dir` applies).
    pub async fn execute(
        self: &Arc<Self>,
        actions: Vec<Action>,
        removals: bool,
    ) -> Vec<EntryError> {
        let touched = crate::dirs::dirs_touched(&actions);
        let mut errors = Vec::new();
        let mut files = Vec::new();
        for a in actions {
            match &a {
                Action::Delete { path, .. } if files.is_empty() => {
                    if let Err(e) = self.delete(path, removals) {
                        errors.push(EntryError::at(path, Operation::Delete, e));
                    }
                }
                Action::Mkdir { path, mode } => {
                    let key = path.as_os_str().as_bytes();
                    match self.root.mkdir(key, mode & MODE_MASK) {
                        Ok(()) => self.run.itemize(&a.to_string()),
                        Err(e) => errors.push(EntryError::at(
                            path,
                            Operation::CreateDirectory,
                            format!("cannot create directory {}: {e}", escape(path)),
                        )),
                    }
                }
                _ => files.push(a),
            }
        }
        let concurrency = self.files_in_flight().await;
        let results: Vec<Result<(), EntryError>> = stream::iter(files)
            .map(|a| async move {
                let (path, op) = (a.path().to_path_buf(), Operation::of(&a));
                let done = self.file_action(a, removals).await;
                done.map_err(|e| EntryError::at(&path, op, e))
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        errors.extend(results.into_iter().filter_map(Result::err));
        if errors.is_empty() {
            // Directory attributes last: writing inside changed their mtimes.
            errors.extend(self.set_dir_attrs(&touched));
        }
        errors
    }

    /// Files fetched at once: across latency a small file costs two round
    /// trips (OPEN; READ+FSTAT), so files in flight are what sets the pace
    /// (measured, 20,000 files of 64 B at 50 ms RTT, 16 sessions: 8 per
    /// session with local writes on the async workers took 19.6 s, up to 256
    /// with [`Landing`] threads 4.5 s). Bounded by the server's open-handle
    /// limit (half of it, as a push does, leaving room for striped big files
    /// and listings), by the read-ahead budget (each file holds at least
    /// 64 KiB of it), and by our fds: a small file holds none while in flight
    /// (see [`Pull::fetch_whole`]), a bigger one its temp file.
    async fn files_in_flight(&self) -> usize {
        let handles = self
            .pool
            .session()
            .await
            .map_or(0, |s| s.limits.max_open_handles);
        let per_session =
            crate::push::files_per_session(handles, crate::push::PULL_FILES_PER_SESSION);
        self.slots.set_per_session(per_session);
        (per_session * self.pool.capacity()).min(crate::push::fd_budget())
    }

    async fn file_action(&self, a: Action, removals: bool) -> Result<(), String> {
        let line = a.to_string();
        let path = a.path().to_path_buf();
        let result = match &a {
            Action::Copy { .. } | Action::Delta { .. } => self.fetch(&path).await,
            Action::Symlink { target, .. } => self.symlink(&path, target),
            Action::SetAttrs { .. } => self.set_attrs(&path),
            Action::Delete { .. } => return self.delete(&path, removals),
            Action::Mkdir { .. } => Ok(()),
        };
        match result {
            Ok(()) => {
                self.run.itemize(&line);
                Ok(())
            }
            // Listed, then "no such file" on the server: it vanished from
            // the source (rsync's exit 24), which is not an error.
            Err(PullError::Remote(e))
                if matches!(a, Action::Copy { .. } | Action::Delta { .. })
                    && matches!(e, Error::NoSuchFile(_)) =>
            {
                self.run.vanished(&escape(&path));
                Ok(())
            }
            Err(e) => Err(format!("{}: {e}", escape(&path))),
        }
    }

    fn node(&self, rel: &Path) -> Result<&Node, PullError> {
        self.source
            .nodes
            .get(rel)
            .ok_or_else(|| PullError::Local("not in the remote listing".into()))
    }

    fn symlink(&self, rel: &Path, target: &Path) -> Result<(), PullError> {
        let n = self.node(rel)?;
        self.root
            .symlink(
                rel.as_os_str().as_bytes(),
                target.as_os_str().as_bytes(),
                n.mtime,
            )
            .map_err(local("cannot create symlink"))?;
        self.run.file_done();
        Ok(())
    }

    fn set_attrs(&self, rel: &Path) -> Result<(), PullError> {
        let n = self.node(rel)?;
        let key = rel.as_os_str().as_bytes();
        let f = self.root.open_file(key).map_err(local("cannot open"))?;
        set_file_attrs(&f, n).map_err(local("cannot set attributes"))?;
        let st = rustix::fs::fstat(&f).map_err(|e| local("cannot stat")(e.into()))?;
        let mut m = self.manifest.lock().unwrap();
        if let Some(r) = m.files.get_mut(key) {
            r.mode = n.mode & MODE_MASK;
            r.mtime_ns = n.mtime * 1_000_000_000;
            r.remote_size = st.st_size as u64;
            r.remote_mtime = st.st_mtime;
            self.run.journal(&JournalRecord::FileLanded {
                path: key.to_vec(),
                record: r.clone(),
            });
        }
        Ok(())
    }

    /// A file is in place: journaled first (a crash after this resumes
    /// from the journal), then recorded in the run's manifest.
    fn landed(&self, key: &[u8], record: Record) {
        self.run.journal(&JournalRecord::FileLanded {
            path: key.to_vec(),
            record: record.clone(),
        });
        self.manifest
            .lock()
            .unwrap()
            .files
            .insert(key.to_vec(), record);
    }

    fn delete(&self, rel: &Path, removals: bool) -> Result<(), String> {
        let key = rel.as_os_str().as_bytes();
        let r = match (&self.backup, removals) {
            (Some(b), true) => b.keep(&self.root, key),
            _ => self.root.remove(key),
        };
        match r {
            Ok(()) => {
                self.run
                    .journal(&JournalRecord::Deleted { path: key.to_vec() });
                self.manifest.lock().unwrap().files.remove(key);
                self.run.stats.deleted.fetch_add(1, Ordering::Relaxed);
                self.run.itemize(&format!("*deleting   {}", escape(rel)));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot delete {}: {e}", escape(rel))),
        }
    }

    /// Sets the attributes of the directories `touched` by this step and of
    /// those not already right; the rest are left alone (as a push does: a
    /// rerun of a big tree would otherwise re-set every directory).
    /// rsync -a's `.`: the local root takes the remote root's mode and mtime.
    pub async fn set_root_attrs(&self) -> Result<(), String> {
        let root = &self.remote_root;
        let stat = on_session(&self.pool, |s| async move { s.stat(root).await }).await;
        let a = stat.map_err(|e| e.to_string())?;
        let n = Node {
            kind: Kind::Dir,
            size: 0,
            mtime: a.mtime().map(i64::from).unwrap_or(0),
            mode: a.permissions.unwrap_or(0o755),
            whole: None,
            blocks: Vec::new(),
        };
        let fd = rustix::fs::openat(&self.root.fd, ".", DIR_FLAGS, Mode::empty());
        let fd = fd.map_err(|e| e.to_string())?;
        // Already right: left alone, as every directory in place.
        let st = rustix::fs::fstat(&fd).map_err(|e| e.to_string())?;
        if st.st_mode & 0o7777 == n.mode & MODE_MASK && st.st_mtime as i64 == n.mtime {
            return Ok(());
        }
        set_file_attrs(&fd, &n).map_err(|e| e.to_string())
    }

    fn set_dir_attrs(&self, touched: &HashSet<PathBuf>) -> Vec<EntryError> {
        let mut errors = Vec::new();
        for (p, n) in self.source.nodes.iter().rev() {
            if n.kind != Kind::Dir || (self.dirs_in_place.contains(p) && !touched.contains(p)) {
                continue;
            }
            let r = self
                .root
                .dir(p.as_os_str().as_bytes())
                .and_then(|d| set_file_attrs(&d, n));
            if let Err(e) = r {
                let msg = format!("cannot set attributes of {}: {e}", escape(p));
                errors.push(EntryError::at(p, Operation::SetAttributes, msg));
            }
        }
        errors
    }

    /// Downloads one file, reconnecting and resuming when the link drops.
    async fn fetch(&self, rel: &Path) -> Result<(), PullError> {
        let node = self.node(rel)?;
        let key = rel.as_os_str().as_bytes();
        loop {
            let (s, _slot) = self.slots.take(&self.pool).await?;
            match self.fetch_once(&s, key, node).await {
                Ok(()) => {
                    self.run.file_done();
                    return Ok(());
                }
                Err(PullError::Remote(err)) if err.is_connection() => {
                    self.run
                        .note_once(format!("connection lost ({err}); reconnecting"));
                    self.pool.repair().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn fetch_once(&self, s: &Arc<Sftp>, key: &[u8], node: &Node) -> Result<(), PullError> {
        let size = node.size;
        let abs = match self.remote_names.get(os(key).as_path()) {
            Some(from) => join(&self.remote_root, from.as_os_str().as_bytes()),
            None => join(&self.remote_root, key),
        };
        if size > 0 && size <= read_chunk(s) && self.fetch_whole(s, key, node, &abs).await? {
            return Ok(());
        }
        let tag = transfer_tag(key, node);
        let temp_rel = temp_for(key, &tag);
        let (dir, name) = self.root.parent(key).map_err(local("cannot open parent"))?;
        let temp_name = last_component(&temp_rel).to_vec();
        let nblocks = size.div_ceil(BLOCK_SIZE);
        let confirmed: HashMap<u64, [u8; 32]> = self
            .partials
            .lock()
            .unwrap()
            .get(key)
            .filter(|p| p.temp == temp_rel && p.whole == tag && p.size == size)
            .map(|p| p.blocks.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|(i, _)| *i < nblocks)
            .collect();
        let file = create_temp(&dir, &temp_name, confirmed.is_empty())
            .map_err(local("cannot create temp file"))?;
        self.run.journal(&JournalRecord::TransferStarted {
            path: key.to_vec(),
            temp: temp_rel.clone(),
            size,
            mtime_ns: node.mtime * 1_000_000_000,
            whole: tag,
        });
        // Big files are striped: blocks go round robin over several sessions.
        let mut stripes: Vec<Arc<Sftp>> = vec![s.clone()];
        if nblocks >= STRIPE_MIN_BLOCKS {
            stripes.extend(
                self.pool
                    .sessions()
                    .into_iter()
                    .filter(|x| !Arc::ptr_eq(x, s))
                    .take(STRIPES - 1),
            );
        }
        let received = async {
            let opens = stripes.iter().map(|x| {
                let abs = &abs;
                async move {
                    x.open(abs, proto::FXF_READ, &Attrs::default())
                        .await
                        .map_err(|e| e.with_path("open", abs))
                }
            });
            let opened = futures::future::join_all(opens).await;
            let mut handles = Vec::new();
            let mut first_err = None;
            for (x, h) in stripes.iter().zip(opened) {
                match h {
                    Ok(h) => handles.push((x.clone(), h)),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            let r = async {
                if let Some(e) = first_err {
                    return Err(PullError::Remote(e));
                }
                let digest = self
                    .receive(&handles, &file, key, &temp_rel, size, &confirmed)
                    .await?;
                let now = s.fstat(&handles[0].1).await?;
                if now.size.unwrap_or(0) != size
                    || now.mtime().map(i64::from).unwrap_or(0) != node.mtime
                {
                    return Err(changed_on_server());
                }
                Ok(digest)
            }
            .await;
            // Every request on these handles has completed: the CLOSEs can
            // go without waiting a round trip for their answers.
            for (x, h) in &handles {
                x.close_detached(h);
            }
            r
        }
        .await;
        let (whole, blocks) = match received {
            Ok(d) => d,
            Err(e) => {
                if !matches!(&e, PullError::Remote(x) if x.is_connection()) {
                    // Not resumable: the temp file is of no further use.
                    let _ = rustix::fs::unlinkat(&dir, &temp_name[..], AtFlags::empty());
                    self.partials.lock().unwrap().remove(key);
                }
                return Err(e);
            }
        };
        file.set_len(size)
            .map_err(local("cannot truncate temp file"))?;
        set_file_attrs(&file, node).map_err(local("cannot set attributes"))?;
        if self.run.opts.fsync {
            file.sync_all().map_err(local("cannot fsync"))?;
        }
        rustix::fs::renameat(&dir, &temp_name[..], &dir, &name[..])
            .map_err(|e| local("cannot rename into place")(e.into()))?;
        if self.run.opts.fsync {
            let _ = rustix::fs::fsync(&dir);
        }
        if self.run.opts.verify {
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut off = 0u64;
            loop {
                let n = file
                    .read_at(&mut buf, off)
                    .map_err(local("cannot read back"))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                off += n as u64;
            }
            if *h.finalize().as_bytes() != whole {
                return Err(PullError::Local(
                    "verification failed: the landed file does not hash as received (BLAKE3)"
                        .into(),
                ));
            }
            self.run.stats.verified.fetch_add(1, Ordering::Relaxed);
        }
        let st = rustix::fs::fstat(&file).map_err(|e| local("cannot stat")(e.into()))?;
        let record = Record {
            size,
            mtime_ns: node.mtime * 1_000_000_000,
            mode: node.mode & MODE_MASK,
            whole,
            blocks: if nblocks > 1 { blocks } else { Vec::new() },
            remote_size: st.st_size as u64,
            remote_mtime: st.st_mtime,
        };
        self.landed(key, record);
        Ok(())
    }

    /// A file that one READ carries: OPEN, then READ and FSTAT in one flight
    /// (its bytes and the attributes it had right after), CLOSE without
    /// waiting; only then, on the [`Landing`] threads, its temp file is made,
    /// written, given its attributes and renamed into place. No local file
    /// exists while the requests are in flight, so files in flight are
    /// bounded by the server's handles, not by our fds, and the async
    /// workers never wait on the local disk. `false` when the server gave
    /// fewer bytes than listed: the general path reads it then.
    async fn fetch_whole(
        &self,
        s: &Sftp,
        key: &[u8],
        node: &Node,
        abs: &[u8],
    ) -> Result<bool, PullError> {
        let size = node.size;
        let _held = self.data.acquire(size).await;
        let handle = s
            .open(abs, proto::FXF_READ, &Attrs::default())
            .await
            .map_err(|e| e.with_path("open", abs))?;
        let got = s.read_and_fstat(&handle, 0, size as u32).await;
        s.close_detached(&handle);
        let (data, now) = got?;
        let Some(buf) = data.filter(|d| d.len() as u64 == size) else {
            return Ok(false);
        };
        if now.size != Some(size) || now.mtime().map(i64::from).unwrap_or(0) != node.mtime {
            return Err(changed_on_server());
        }
        let whole = robosync_scanner::hash_block(&buf, 0, size);
        let tag = transfer_tag(key, node);
        let temp_rel = temp_for(key, &tag);
        self.run.journal(&JournalRecord::TransferStarted {
            path: key.to_vec(),
            temp: temp_rel.clone(),
            size,
            mtime_ns: node.mtime * 1_000_000_000,
            whole: tag,
        });
        let landed = {
            let root = self.root.clone();
            let key = key.to_vec();
            let node = node.clone();
            let (fsync, verify) = (self.run.opts.fsync, self.run.opts.verify);
            self.landing
                .run(move || land_whole(&root, &key, &temp_rel, &buf, &node, fsync, verify))
                .await
        };
        let st = landed?;
        if self.run.opts.verify {
            self.run.stats.verified.fetch_add(1, Ordering::Relaxed);
        }
        self.run.throttle(size).await;
        self.run.add_bytes(size);
        let record = Record {
            size,
            mtime_ns: node.mtime * 1_000_000_000,
            mode: node.mode & MODE_MASK,
            whole,
            blocks: Vec::new(),
            remote_size: st.st_size as u64,
            remote_mtime: st.st_mtime,
        };
        self.landed(key, record);
        Ok(true)
    }

    /// Fills `file` with the remote file's `size` bytes, in order, keeping the
    /// blocks the journal confirmed if they still hash the same locally.
    /// Returns the whole-file and per-block BLAKE3.
    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &self,
        stripes: &[(Arc<Sftp>, Vec<u8>)],
        file: &File,
        key: &[u8],
        temp_rel: &[u8],
        size: u64,
        confirmed: &HashMap<u64, [u8; 32]>,
    ) -> Result<([u8; 32], Vec<[u8; 32]>), PullError> {
        let nblocks = size.div_ceil(BLOCK_SIZE);
        let jobs = (0..nblocks).map(|i| {
            let (s, handle) = &stripes[(i % stripes.len() as u64) as usize];
            let off = i * BLOCK_SIZE;
            let len = (size - off).min(BLOCK_SIZE);
            let kept = confirmed.get(&i).copied();
            async move {
                // Held until the block is written: blocks in flight and
                // blocks waiting for their turn both count.
                let held = self.data.acquire(len).await;
                if let Some(h) = kept {
                    if let Ok(buf) = crate::push::read_at(file, off, len as usize) {
                        if robosync_scanner::hash_block(&buf, i, size) == h {
                            return Ok::<_, PullError>((buf, false, held));
                        }
                    }
                }
                Ok((
                    fetch_block(s, handle, off, len, read_chunk(s), size).await?,
                    true,
                    held,
                ))
            }
        });
        let mut hashes = Vec::with_capacity(nblocks as usize);
        let mut kept = 0u64;
        let mut blocks = stream::iter(jobs).buffered(WINDOW_BLOCKS * stripes.len().min(2));
        while let Some(r) = blocks.next().await {
            let (buf, fetched, _held) = r?;
            let i = hashes.len() as u64;
            // One BLAKE3 pass: block hashes are subtree chaining values and
            // the whole-file hash is merged from them, as the scanner does.
            let h = robosync_scanner::hash_block(&buf, i, size);
            if fetched {
                file.write_all_at(&buf, i * BLOCK_SIZE)
                    .map_err(local("cannot write temp file"))?;
                self.run.throttle(buf.len() as u64).await;
                self.run.add_bytes(buf.len() as u64);
            } else {
                kept += 1;
                self.run.resumed(buf.len() as u64);
            }
            self.run.journal_for(
                &JournalRecord::BlockDone {
                    path: key.to_vec(),
                    temp: temp_rel.to_vec(),
                    index: i,
                    hash: h,
                },
                buf.len() as u64,
            );
            hashes.push(h);
        }
        if kept > 0 {
            self.run.note(format!(
                "resumed {}: {kept} of {nblocks} blocks were already here",
                escape(&os(key))
            ));
        }
        let whole = if nblocks <= 1 {
            // The one block's hash is the plain hash (an empty file has none).
            hashes
                .first()
                .copied()
                .unwrap_or(*blake3::hash(b"").as_bytes())
        } else {
            robosync_scanner::whole_from_blocks(&hashes)
        };
        Ok((whole, hashes))
    }
}

fn changed_on_server() -> PullError {
    PullError::Local(
        "changed on the server while robosync was reading it; rerun to fetch the new content"
            .into(),
    )
}

/// Threads that write whole small files ([`land_whole`]), so that creating,
/// writing and renaming thousands of local files never holds up the async
/// workers that keep requests flowing. A few are enough: each file's work
/// is a handful of system calls.
pub const LANDING_THREADS: usize = 2;

type LandingJob = Box<dyn FnOnce() + Send>;

/// A small pool of threads running local file work (see [`LANDING_THREADS`]).
/// The threads end when the pool is dropped.
pub struct Landing {
    jobs: std::sync::mpsc::Sender<LandingJob>,
}

impl Landing {
    /// Starts `threads` landing threads.
    pub fn new(threads: usize) -> Landing {
        let (jobs, queue) = std::sync::mpsc::channel::<LandingJob>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::spawn(move || loop {
                let job = queue.lock().unwrap().recv();
                match job {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            });
        }
        Landing { jobs }
    }

    /// Runs `f` on a landing thread and waits for its result.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("landing threads live as long as the pool");
        rx.await.expect("a landing job panicked")
    }
}

/// Lands a whole small file received in memory: a fresh temp file beside
/// `key` (EXCL, never through a symlink, resolved beneath the root), its
/// bytes, its size, mode and mtime, then the rename into place (and with
/// `verify`, the landed bytes read back and hashed). On failure the temp
/// file is removed. Returns the landed file's stat.
fn land_whole(
    root: &LocalRoot,
    key: &[u8],
    temp_rel: &[u8],
    data: &[u8],
    node: &Node,
    fsync: bool,
    verify: bool,
) -> Result<rustix::fs::Stat, PullError> {
    let (dir, name) = root.parent(key).map_err(local("cannot open parent"))?;
    let temp_name = last_component(temp_rel);
    let file = create_temp(&dir, temp_name, true).map_err(local("cannot create temp file"))?;
    let landed = (|| {
        file.write_all_at(data, 0)
            .map_err(local("cannot write temp file"))?;
        file.set_len(data.len() as u64)
            .map_err(local("cannot truncate temp file"))?;
        set_file_attrs(&file, node).map_err(local("cannot set attributes"))?;
        if fsync {
            file.sync_all().map_err(local("cannot fsync"))?;
        }
        rustix::fs::renameat(&dir, temp_name, &dir, &name[..])
            .map_err(|e| local("cannot rename into place")(e.into()))?;
        Ok(())
    })();
    if let Err(e) = landed {
        let _ = rustix::fs::unlinkat(&dir, temp_name, AtFlags::empty());
        return Err(e);
    }
    if fsync {
        let _ = rustix::fs::fsync(&dir);
    }
    if verify {
        let back = crate::push::read_at(&file, 0, data.len()).map_err(local("cannot read back"))?;
        if back != data {
            return Err(PullError::Local(
                "verification failed: the landed file does not hold the bytes received".into(),
            ));
        }
    }
    rustix::fs::fstat(&file).map_err(|e| local("cannot stat")(e.into()))
}

/// Names one download attempt: the same remote path, size and mtime give the
/// same temp name, so a rerun finds what an interrupted run left.
fn transfer_tag(key: &[u8], n: &Node) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(b"robosync pull\0");
    h.update(&n.size.to_le_bytes());
    h.update(&n.mtime.to_le_bytes());
    h.update(key);
    *h.finalize().as_bytes()
}

fn last_component(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[i + 1..],
        None => p,
    }
}

/// Largest READ size that divides a block, within the server's limit.
fn read_chunk(s: &Sftp) -> u64 {
    let max = u64::from(s.limits.max_read).max(1);
    let mut c = BLOCK_SIZE;
    while c > max {
        c /= 2;
    }
    c
}

/// One block, its READs in flight together; short READs are continued.
async fn fetch_block(
    s: &Sftp,
    handle: &[u8],
    off: u64,
    len: u64,
    chunk: u64,
    size: u64,
) -> Result<Vec<u8>, PullError> {
    let reads = (0..len.div_ceil(chunk)).map(|k| {
        let o = off + k * chunk;
        read_exact(s, handle, o, chunk.min(off + len - o), size)
    });
    let mut parts = futures::future::try_join_all(reads).await?;
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    Ok(parts.concat())
}

async fn read_exact(
    s: &Sftp,
    handle: &[u8],
    off: u64,
    want: u64,
    size: u64,
) -> Result<Vec<u8>, PullError> {
    let mut buf = Vec::new();
    while (buf.len() as u64) < want {
        let at = off + buf.len() as u64;
        match s.read(handle, at, (want - buf.len() as u64) as u32).await? {
            // The usual whole answer is kept as it came, not copied.
            Some(d) if buf.is_empty() && d.len() as u64 == want => return Ok(d),
            Some(d) if !d.is_empty() => {
                buf.reserve_exact(want as usize - buf.len());
                buf.extend_from_slice(&d)
            }
            _ => {
                return Err(PullError::Local(format!(
                    "the server's file ended at byte {at} of the {size} it announced"
                )))
            }
        }
    }
    Ok(buf)
}

fn timestamps(secs: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn set_file_attrs(fd: impl std::os::fd::AsFd, n: &Node) -> io::Result<()> {
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(n.mode & MODE_MASK))?;
    rustix::fs::futimens(&fd, &timestamps(n.mtime))?;
    Ok(())
}

/// Opens (creating) a temp file in `dir`, never through a symlink.
fn create_temp(dir: &OwnedFd, name: &[u8], truncate: bool) -> io::Result<File> {
    let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if truncate {
        // A fresh attempt: whatever holds the name goes, and the new file is
        // ours alone (EXCL: never a link someone planted at a name they
        // could predict).
        match rustix::fs::unlinkat(dir, name, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        flags |= OFlags::EXCL;
    }
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))?;
    let st = rustix::fs::fstat(&fd)?;
    // Resuming: a hard link to someone's file is not our temp file.
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
        || st.st_nlink != 1
        || st.st_uid != rustix::process::geteuid().as_raw()
    {
        return Err(io::Error::other(
            "temp name is taken by something else (a link or another user's file)",
        ));
    }
    Ok(File::from(fd))
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The destination directory, as an open handle that every local operation
/// resolves beneath.
pub struct LocalRoot {
    fd: OwnedFd,
}

impl LocalRoot {
    fn open(path: &Path) -> io::Result<LocalRoot> {
        // The root itself is the user's choice and may be reached through a symlink.
        let fd = rustix::fs::openat(
            CWD,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(LocalRoot { fd })
    }

    /// The directory holding `rel` (opened without following any symlink) and
    /// `rel`'s last component.
    fn parent(&self, rel: &[u8]) -> io::Result<(OwnedFd, Vec<u8>)> {
        let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        if let Some(bad) = comps.iter().find(|c| !safe_name(c)) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsafe path component {:?}", escape(&os(bad))),
            ));
        }
        let (last, dirs) = comps.split_last().expect("split yields one part");
        let mut fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty())?;
        for c in dirs {
            fd = rustix::fs::openat(&fd, *c, DIR_FLAGS, Mode::empty())?;
        }
        Ok((fd, last.to_vec()))
    }

    fn dir(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        let (p, n) = self.parent(rel)?;
        Ok(rustix::fs::openat(&p, &n[..], DIR_FLAGS, Mode::empty())?)
    }

    /// A regular file, opened without following a symlink.
    fn open_file(&self, rel: &[u8]) -> io::Result<File> {
        let (p, n) = self.parent(rel)?;
        let fd = rustix::fs::openat(
            &p,
            &n[..],
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(File::from(fd))
    }

    fn mkdir(&self, rel: &[u8], mode: u32) -> io::Result<()> {
        let (p, n) = self.parent(rel)?;
        match rustix::fs::mkdirat(&p, &n[..], Mode::from_raw_mode(mode | 0o700)) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                let st = rustix::fs::statat(&p, &n[..], AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    Ok(())
                } else {
                    Err(io::Error::other("exists and is not a directory"))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates `rel` and missing parents (already existing directories are fine).
    fn mkdir_p(&self, rel: &[u8]) -> io::Result<()> {
        for (i, _) in rel.iter().enumerate().filter(|(_, &b)| b == b'/') {
            self.mkdir(&rel[..i], 0o700)?;
        }
        self.mkdir(rel, 0o700)
    }

    /// A symlink holding `target` verbatim, replacing a non-directory of that name.
    fn symlink(&self, rel: &[u8], target: &[u8], mtime: i64) -> io::Result<()> {
        let (p, n) = self.parent(rel)?;
        match rustix::fs::symlinkat(target, &p, &n[..]) {
            Err(rustix::io::Errno::EXIST) => {
                rustix::fs::unlinkat(&p, &n[..], AtFlags::empty())?;
                rustix::fs::symlinkat(target, &p, &n[..])?;
            }
            r => r?,
        }
        let _ = rustix::fs::utimensat(&p, &n[..], &timestamps(mtime), AtFlags::SYMLINK_NOFOLLOW);
        Ok(())
    }

    /// Removes `rel`, a directory with everything in it; links are removed, not followed.
    pub fn remove(&self, rel: &[u8]) -> io::Result<()> {
        let (p, n) = self.parent(rel)?;
        remove_at(&p, &n)
    }

    pub fn read_small(&self, rel: &[u8]) -> Option<Vec<u8>> {
        let (p, n) = self.parent(rel).ok()?;
        let fd = rustix::fs::openat(
            &p,
            &n[..],
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut out = Vec::new();
        File::from(fd).take(4 << 30).read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// Writes `dir/name` atomically (temp + rename), creating `dir`.
    pub fn write_small(&self, dir: &[u8], name: &[u8], data: &[u8]) -> io::Result<()> {
        self.mkdir(dir, 0o700)?;
        let d = self.dir(dir)?;
        let tmp = [name, b".tmp"].concat();
        let f = create_temp(&d, &tmp, true)?;
        f.write_all_at(data, 0)?;
        f.sync_all()?;
        rustix::fs::renameat(&d, &tmp[..], &d, name)?;
        Ok(())
    }
}

fn remove_at(dir: &OwnedFd, name: &[u8]) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::ISDIR | rustix::io::Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    let d = rustix::fs::openat(dir, name, DIR_FLAGS, Mode::empty())?;
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(&d)? {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        remove_at(&d, &n)?;
    }
    Ok(rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?)
}

/// `--backup-dir` for a pull: a relative path is inside the destination, an
/// absolute one is wherever the user said.
pub struct Backup {
    root: LocalRoot,
    prefix: Vec<u8>,
}

impl Backup {
    fn open(dest: &LocalRoot, dir: &Path) -> io::Result<Backup> {
        if dir.is_absolute() {
            std::fs::create_dir_all(dir)?;
            return Ok(Backup {
                root: LocalRoot::open(dir)?,
                prefix: Vec::new(),
            });
        }
        let prefix = dir.as_os_str().as_bytes().to_vec();
        dest.mkdir_p(&prefix)?;
        Ok(Backup {
            root: LocalRoot {
                fd: rustix::fs::openat(&dest.fd, ".", DIR_FLAGS, Mode::empty())?,
            },
            prefix,
        })
    }

    /// Moves `rel` of the destination into the backup dir, keeping its relative path.
    fn keep(&self, dest: &LocalRoot, rel: &[u8]) -> io::Result<()> {
        let to = join(&self.prefix, rel);
        if let Some(i) = to.iter().rposition(|&b| b == b'/') {
            self.root.mkdir_p(&to[..i])?;
        }
        let (fp, fname) = dest.parent(rel)?;
        let (tp, tname) = self.root.parent(&to)?;
        Ok(rustix::fs::renameat(&fp, &fname[..], &tp, &tname[..])?)
    }
}

/// A local entry's kind, for the planner to replace it (its data is not needed).
fn in_the_way(path: &Path) -> Option<Node> {
    let m = std::fs::symlink_metadata(path).ok()?;
    let kind = if m.is_dir() {
        Kind::Dir
    } else if m.file_type().is_symlink() {
        Kind::Symlink(std::fs::read_link(path).ok()?)
    } else {
        Kind::File
    };
    Some(Node {
        kind,
        size: m.len(),
        mtime: 0,
        mode: 0,
        whole: None,
        blocks: Vec::new(),
    })
}

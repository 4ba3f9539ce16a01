//! One sync of a (local, remote) pair over SFTP, for both directions.
//!
//! # Brief overview
//!
//! A front-end (the `robosync` binary, a Slurm shard runner, a test) builds
//! a [`Job`]: which way ([`Direction`]), the local root, the remote root, the
//! filter rules, how to reach the host (a [`Dialer`]: for a real host an
//! `SshDialer` of the SSH `Target`; in tests an in-memory one) and the
//! [`Options`]. [`run`] then does
//! the whole sync once, the same steps for a push and a pull:
//!
//! 1. state paths and this pair's lock, the destination's lease;
//! 2. the local scan (push: the source, with the stat cache; pull: the
//!    destination), while the pool connects;
//! 3. the remote listing, the manifest (local or the destination's copy);
//! 4. the plan (`robosync_planner`), guarded (`--delete`), or its preview
//!    (`--dry-run`);
//! 5. the journal, the executor of the direction (push: `push.rs`, temp +
//!    posix-rename uploads, copy-data deltas; pull: `pull.rs`, the
//!    untrusted-sender boundary and `openat`/`O_NOFOLLOW` containment), with
//!    checkpoints on a timer, deletions only after everything else landed;
//! 6. the manifest recorded locally and at the destination, stale temp files
//!    removed, the pool closed.
//!
//! What happens along the way goes to an [`Observer`] (phases, itemised
//! actions, notes, warnings, progress, each connection as a [`PoolEvent`]);
//! the engine never prints. The outcome
//! is a [`Report`]: counters, the entries that failed (each an
//! [`EntryError`]: path, [`Operation`], message), and, when the run stopped,
//! a [`Failure`] whose `code` is the documented exit code.
//!
//! A command line's `SRC... DEST` is a [`Command`]: [`run_command`] reads
//! the paths as rsync does (`paths.rs`: a source's own name or its
//! contents, a single file to a new name, several sources, what only the
//! server can tell re-run as a [`Redo`]), asks the front-end's
//! [`Connector`] for each host's `Target`, runs one [`Job`] per source
//! and adds their reports up.
//!
//! [`json`] is the `--json` report every front-end prints the same way.
//!
//! Modules, each depending only on those listed before it (and this root's
//! types): `failure` (exit codes, typed errors), `json`, `endpoint`,
//! `dirs`, `run` (a run's shared state), `remote` (the walker, session
//! retries, small state files), `confirm` (a push's destination confirmed
//! against the record of its last clean run instead of listed), `space`,
//! `lease`, `push` and `pull` (the data planes), `sync` (the run), `paths`
//! (the command), `ssh` (the usual [`Connector`], [`SshConnector`]);
//! `state` (the state directory's pairs, for `robosync state list|clean`)
//! and `progress` (`--json-progress` lines, an observer) beside them.
//!
//! ```no_run
//! # async fn f(job: robosync_sync::Job, observer: std::sync::Arc<dyn robosync_sync::Observer>) {
//! let report = robosync_sync::run(job, observer).await;
//! std::process::exit(report.exit_code());
//! # }
//! ```

#![deny(missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use robosync_scanner::Filters;
pub use robosync_transport::{Dialer, PoolEvent};

mod confirm;
mod dirs;
mod endpoint;
mod failure;
pub mod json;
mod lease;
#[cfg(test)]
mod memory_tests;
mod paths;
pub mod progress;
mod pull;
mod push;
mod remote;
mod run;
mod space;
mod ssh;
pub mod state;
mod sync;

pub use endpoint::Endpoint;
pub use failure::{
    exit_code, fail, redo, EntryError, Failure, Operation, Redo, EXIT_BUSY, EXIT_CONNECT,
    EXIT_DENIED, EXIT_FILE_IO, EXIT_GUARD, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_LOST,
    EXIT_NO_SFTP, EXIT_PARTIAL, EXIT_PROTOCOL, EXIT_SELECTION, EXIT_USAGE, EXIT_VANISHED,
};
pub use paths::{run_command, Command, Connector};
pub use push::raise_fd_limit;
pub use robosync_scanner::ScanProgress;
pub use run::parse_rate;
pub use ssh::SshConnector;
pub use sync::default_state_dir;

/// Which way the bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local tree → remote destination.
    Push,
    /// Remote tree → local destination.
    Pull,
}

/// How a run behaves: the command line's options, without clap.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Plan and show, change nothing.
    pub dry_run: bool,
    /// Remove destination entries the source does not have.
    pub delete: bool,
    /// Refuse `--delete` beyond this many removals (default: half the destination).
    pub max_delete: Option<u64>,
    /// Move removed entries here (a destination path, or an absolute local one on a pull).
    pub backup_dir: Option<PathBuf>,
    /// Rehash every local file, and compare remote content for same-size files.
    pub checksum: bool,
    /// A push lists its whole destination, never confirming it against
    /// the record of the last run (see the `confirm` module).
    pub full_listing: bool,
    /// Read landed files back and compare BLAKE3.
    pub verify: bool,
    /// Update changed files in place (push without copy-data).
    pub inplace: bool,
    /// Holes in a pushed file are not sent.
    pub sparse: bool,
    /// fsync each file before renaming it into place.
    pub fsync: bool,
    /// SSH connections (default 2).
    pub connections: Option<usize>,
    /// SFTP channels per connection (default 8, fewer to a near host).
    pub channels: Option<usize>,
    /// How long to keep reconnecting once no connection works.
    pub retry_for: Duration,
    /// Where the manifests, journals and stat caches live (default [`default_state_dir`]).
    pub state_dir: Option<PathBuf>,
    /// How much the observer shows: at 1 and above the run waits for the
    /// pool's late notes before closing (nobody reads them otherwise).
    pub verbose: u8,
    /// `--files-from`: the listed paths the source lacks are errors (exit 23).
    pub files_list: Option<robosync_scanner::FileList>,
    /// `-H` (push only): later names of a multiply-linked local file are
    /// made as hard links of the first once it landed.
    pub hard_links: bool,
    /// `--bwlimit`: bytes per second across all connections.
    pub bwlimit: Option<u64>,
}

/// A single file copied under another name (or the same): its sync root
/// holds it as `from` on the sending side and as `to` on the receiving side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rename {
    /// Its name in the source's directory.
    pub from: PathBuf,
    /// Its name in the destination's directory.
    pub to: PathBuf,
    /// DEST was spelled as a name (no `/`): should `to` be a directory
    /// there, the file goes into it instead, as rsync reads DEST (the run
    /// then fails with [`Redo::DestIsDir`]).
    pub or_into: bool,
}

/// One sync to run.
pub struct Job {
    /// Push or pull.
    pub direction: Direction,
    /// The local root: a push's source, a pull's destination.
    pub local: PathBuf,
    /// The remote root as given (`~` is the login directory).
    pub remote: Vec<u8>,
    /// The filter rules, as the sender and the receiver apply them.
    pub filters: Filters,
    /// The remote side as the user named it (`[user@]host:path`): part of
    /// this pair's state identity and of messages.
    pub label: String,
    /// Where and how to connect (a `robosync_transport::SshDialer` for a
    /// real host).
    pub dialer: Arc<dyn Dialer>,
    /// How to behave.
    pub options: Options,
    /// A single file's run: its names on each side (the roots are its
    /// directories, the filters select it alone).
    pub rename: Option<Rename>,
    /// How many trailing components of the destination root this run may
    /// create: as rsync, DEST itself and the source's own name, never
    /// DEST's parents (`usize::MAX` with `--mkpath`).
    pub creatable: usize,
}

/// What the run is doing: shown on a progress line, timed with `-vv`.
/// Push and pull go through the same phases in the same order; the remote
/// listing starts with the connection and overlaps the scan, so
/// `Listing` is the wait for what remains of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Logging in (the local scan runs meanwhile).
    Connecting,
    /// Connected; the local scan goes on.
    Scanning,
    /// Scanned; the remote listing goes on.
    Listing,
    /// Comparing the two sides.
    Planning,
    /// Moving bytes (and deleting).
    Transferring,
    /// Recording the manifest, locally and at the destination.
    Recording,
    /// Removing stale temp files, saving the stat cache, closing connections.
    Closing,
}

impl Phase {
    /// How a person reads it.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Scanning => "scanning",
            Phase::Listing => "listing the destination",
            Phase::Planning => "planning",
            Phase::Transferring => "transferring",
            Phase::Recording => "recording",
            Phase::Closing => "closing",
        }
    }

    /// Its stable name for machines (`--json-progress`): one word, never
    /// reworded.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Scanning => "scanning",
            Phase::Listing => "listing",
            Phase::Planning => "planning",
            Phase::Transferring => "transferring",
            Phase::Recording => "recording",
            Phase::Closing => "closing",
        }
    }
}

/// What a run sees happen. Called from the run's tasks, concurrently.
pub trait Observer: Send + Sync {
    /// A phase begins, `elapsed` after the run started.
    fn phase(&self, phase: Phase, elapsed: Duration);
    /// The local scan's counters, which move while it runs (read them on a timer).
    fn scanning(&self, progress: Arc<ScanProgress>);
    /// One action done (rsync `-i` style).
    fn itemize(&self, line: &str);
    /// One action a real run would take: a dry run's output.
    fn planned(&self, line: &str);
    /// A detail worth a `-v` reader's time.
    fn note(&self, msg: &str);
    /// Something the user should see unless quiet (e.g. reconnecting).
    fn notice(&self, msg: &str);
    /// Something probably wrong that did not stop the run.
    fn warn(&self, msg: &str);
    /// Something happened to the connections: one logged in, channels
    /// opened, one was lost or replaced, or connecting said something
    /// ([`PoolEvent::Note`], [`PoolEvent::Warning`]).
    fn connection(&self, event: &PoolEvent);
    /// What the transfer will move: bytes and files.
    fn total(&self, bytes: u64, files: u64);
    /// `n` more bytes moved.
    fn bytes(&self, n: u64);
    /// `n` bytes an earlier run landed, kept (not sent again).
    fn resumed(&self, n: u64);
    /// A file (or link) landed.
    fn file_done(&self);
    /// A source entry listed, then gone when read (rsync's "file has
    /// vanished"): not an error, but the run exits 24 if nothing else failed.
    fn vanished(&self, path: &str);
}

/// The run's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Files and links landed.
    pub files: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Entries already right.
    pub skipped: u64,
    /// Entries removed by `--delete`.
    pub deleted: u64,
    /// Files read back and matched (`--verify`).
    pub verified: u64,
    /// Bytes an interrupted transfer had landed before, not sent again.
    pub resumed: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.files += o.files;
        self.bytes += o.bytes;
        self.skipped += o.skipped;
        self.deleted += o.deleted;
        self.verified += o.verified;
        self.resumed += o.resumed;
    }
}

/// How a run ended.
#[derive(Debug)]
pub struct Report {
    /// The counters at the end.
    pub stats: Stats,
    /// How long the run took.
    pub elapsed: Duration,
    /// The entries that failed (the rest landed), or, with `failure`, what
    /// had failed before the run stopped.
    pub errors: Vec<EntryError>,
    /// What stopped the run, if something did.
    pub failure: Option<Failure>,
    /// Source entries that vanished during the run.
    pub vanished: Vec<String>,
}

impl Report {
    /// The report of a command that failed before any run began.
    pub fn failed(failure: Failure) -> Report {
        Report {
            stats: Stats::default(),
            elapsed: Duration::ZERO,
            errors: Vec::new(),
            failure: Some(failure),
            vanished: Vec::new(),
        }
    }

    /// The report of a command a signal stopped (exit 20, "rerun to
    /// resume"), with what was seen to land by then.
    pub fn interrupted(stats: Stats, elapsed: Duration) -> Report {
        Report {
            stats,
            elapsed,
            errors: Vec::new(),
            failure: Some(fail(EXIT_INTERRUPTED, "interrupted: rerun to resume")),
            vanished: Vec::new(),
        }
    }

    /// The process exit code (see the binary's documentation): 0, 23 for
    /// failed entries, 24 when only vanished entries are missing, or the
    /// failure's own code.
    pub fn exit_code(&self) -> i32 {
        match &self.failure {
            Some(f) => f.code,
            None if !self.errors.is_empty() => EXIT_PARTIAL,
            None if !self.vanished.is_empty() => EXIT_VANISHED,
            None => 0,
        }
    }
}

/// Runs `job` to its end.
pub async fn run(job: Job, observer: Arc<dyn Observer>) -> Report {
    let run = Arc::new(run::Run::new(job.options.clone(), observer));
    run.phase(Phase::Connecting);
    let result = sync::run(job, &run).await;
    // The destination's lease ends here, whatever the run's outcome.
    lease::HELD.release().await;
    let (errors, failure) = match result {
        Ok(errors) => (errors, None),
        Err(f) => (run.kept_errors(), Some(f)),
    };
    Report {
        stats: run.stats.snapshot(),
        elapsed: run.started.elapsed(),
        errors,
        failure,
        vanished: run.vanished_list(),
    }
}

/// Gives up the remote destination's lease of the run in progress, if any:
/// for a front-end that stops the run (Ctrl-C, SIGTERM). Everything landed
/// so far is in place and journaled; the next run resumes.
pub async fn release_lease() {
    lease::HELD.release().await;
}

/// `a` joined with relative `b` as remote path bytes.
pub fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    if b.is_empty() {
        return a.to_vec();
    }
    if a.is_empty() {
        return b.to_vec();
    }
    let mut v = a.to_vec();
    if !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(b);
    v
}

/// The directory part of a slash-trimmed path: "" (the login or current
/// directory) when it has none, `/` for a top-level name.
pub fn parent_of(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/".to_vec(),
        Some(i) => path[..i].to_vec(),
        None => Vec::new(),
    }
}

/// `path` without trailing slashes (`/` stays `/`).
pub fn trim_slashes(path: &[u8]) -> &[u8] {
    let mut end = path.len();
    while end > 1 && path[end - 1] == b'/' {
        end -= 1;
    }
    &path[..end]
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Path bytes as a path.
pub fn os(b: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(b))
}

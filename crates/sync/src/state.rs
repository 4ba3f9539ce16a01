//! The local state directory as a whole: which (source, destination) pairs
//! it holds state for ([`list`]), and removing the state of old or named
//! pairs ([`clean`]); `robosync state list` and `robosync state clean`.
//!
//! A pair's directory is named by a hash (see `robosync_manifest::state_paths`),
//! so every run also writes a small `pair` file there naming its direction,
//! local root and remote side ([`record_pair`]); a directory written by an
//! older robosync has none and is shown by its name's readable suffix.
//! A pair is *locked* while a run holds its `lock` (`flock`, released however
//! the run ends): [`clean`] takes that lock itself before removing anything,
//! so it never removes the state of a running robosync, and a run that
//! starts meanwhile waits for nothing: it finds the pair busy (exit 75) or
//! starts afresh.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use robosync_manifest::{open_private, replay, StatePaths};

use crate::Direction;

/// The file in a pair's directory that names the pair.
const PAIR_FILE: &str = "pair";
/// First line of a pair file, with its format version.
const PAIR_MAGIC: &str = "robosync-pair 1";
/// Hex digits that start every pair directory's name.
const KEY_HEX_LEN: usize = 32;
/// `state clean`'s age limit when neither an age nor a pair is given.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(90 * 86_400);

/// What a pair's `pair` file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Which way the pair's runs go.
    pub direction: Direction,
    /// The local root: a push's source, a pull's destination (absolute).
    pub local: String,
    /// The remote side as the user named it (`[user@]host:path`).
    pub remote: String,
}

impl Pair {
    /// `SOURCE -> DESTINATION`, in the direction the bytes go.
    pub fn route(&self) -> String {
        match self.direction {
            Direction::Push => format!("{} -> {}", self.local, self.remote),
            Direction::Pull => format!("{} -> {}", self.remote, self.local),
        }
    }
}

/// Writes `paths.dir/pair` (0600), naming the pair for [`list`]; its mtime
/// is the time of the pair's last run. Called with the pair's lock held.
pub fn record_pair(
    paths: &StatePaths,
    direction: Direction,
    local: &str,
    remote: &str,
) -> io::Result<()> {
    let dir = match direction {
        Direction::Push => "push",
        Direction::Pull => "pull",
    };
    let text = format!(
        "{PAIR_MAGIC}\ndirection {dir}\nlocal {}\nremote {}\n",
        escape(local),
        escape(remote)
    );
    let path = paths.dir.join(PAIR_FILE);
    let tmp = paths.dir.join(".pair.tmp");
    let mut opts = fs::OpenOptions::new();
    opts.create(true).truncate(true).write(true);
    io::Write::write_all(&mut open_private(&mut opts, &tmp)?, text.as_bytes())?;
    fs::rename(&tmp, &path)
}

/// One line per value: newlines and backslashes escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some(o) => out.push(o),
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// Reads a pair file; `None` when it is missing or not one.
fn read_pair(dir: &Path) -> Option<Pair> {
    let text = fs::read_to_string(dir.join(PAIR_FILE)).ok()?;
    let mut lines = text.lines();
    if lines.next()? != PAIR_MAGIC {
        return None;
    }
    let (mut direction, mut local, mut remote) = (None, None, None);
    for line in lines {
        let (k, v) = line.split_once(' ')?;
        match k {
            "direction" => {
                direction = Some(match v {
                    "push" => Direction::Push,
                    "pull" => Direction::Pull,
                    _ => return None,
                })
            }
            "local" => local = Some(unescape(v)),
            "remote" => remote = Some(unescape(v)),
            _ => {}
        }
    }
    Some(Pair {
        direction: direction?,
        local: local?,
        remote: remote?,
    })
}

/// One pair's state, as [`list`] found it.
#[derive(Debug, Clone)]
pub struct StateEntry {
    /// The directory's name (hash, then a readable form of the pair).
    pub key: String,
    /// The directory.
    pub dir: PathBuf,
    /// What its `pair` file says; `None` for state written by a robosync
    /// older than the file (the key's suffix still names the pair).
    pub pair: Option<Pair>,
    /// When a run last wrote there (its newest file's mtime).
    pub last_run: Option<SystemTime>,
    /// Bytes on disk (allocated blocks) of everything in the directory.
    pub size: u64,
    /// The journal holds records no run folded in: a run stopped before its
    /// end (killed, a lost link, a crash), or left a big file part-sent;
    /// the next run resumes it.
    pub interrupted: bool,
    /// A live robosync holds the pair's lock now.
    pub locked: bool,
}

impl StateEntry {
    /// The key's first 12 hex digits: enough to name it to [`clean`].
    pub fn short_key(&self) -> &str {
        &self.key[..12.min(self.key.len())]
    }

    /// The pair as `SOURCE -> DESTINATION`, or the key's readable suffix.
    pub fn route(&self) -> String {
        match &self.pair {
            Some(p) => p.route(),
            None => self
                .key
                .get(KEY_HEX_LEN + 1..)
                .map(|s| format!("({s})"))
                .unwrap_or_else(|| "(unknown)".into()),
        }
    }
}

/// Whether `name` is a pair directory's: 32 hex digits, then nothing or `-`.
fn is_pair_key(name: &str) -> bool {
    name.len() >= KEY_HEX_LEN
        && name.as_bytes()[..KEY_HEX_LEN]
            .iter()
            .all(u8::is_ascii_hexdigit)
        && matches!(name.as_bytes().get(KEY_HEX_LEN), None | Some(b'-'))
}

/// The pairs under `state_dir`, oldest last run first; an absent directory
/// holds none. Reads only: locks are probed and released at once.
pub fn list(state_dir: &Path) -> io::Result<Vec<StateEntry>> {
    let read = match fs::read_dir(state_dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for item in read {
        let item = item?;
        let Ok(key) = item.file_name().into_string() else {
            continue;
        };
        if !is_pair_key(&key) || !item.file_type()?.is_dir() {
            continue;
        }
        out.push(inspect(key, item.path()));
    }
    out.sort_by(|a, b| (a.last_run, &a.key).cmp(&(b.last_run, &b.key)));
    Ok(out)
}

fn inspect(key: String, dir: PathBuf) -> StateEntry {
    let (size, last_run) = usage(&dir);
    let journal = dir.join("journal");
    let interrupted = replay(&journal).is_ok_and(|r| !r.records.is_empty() || r.torn_tail);
    let locked = matches!(try_lock(&dir), Ok(None));
    StateEntry {
        pair: read_pair(&dir),
        key,
        dir,
        last_run,
        size,
        interrupted,
        locked,
    }
}

/// Bytes allocated below `dir`, and the newest mtime of a file there.
fn usage(dir: &Path) -> (u64, Option<SystemTime>) {
    let (mut size, mut newest) = (0u64, None::<SystemTime>);
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(read) = fs::read_dir(&d) else { continue };
        for item in read.flatten() {
            let Ok(meta) = item.path().symlink_metadata() else {
                continue;
            };
            size += meta.blocks() * 512;
            if meta.is_dir() {
                todo.push(item.path());
            } else if let Ok(m) = meta.modified() {
                newest = Some(newest.map_or(m, |n| n.max(m)));
            }
        }
    }
    (size, newest)
}

/// Takes the pair's lock if no one holds it: `Ok(Some(file))` holds it
/// until dropped, `Ok(None)` means a live run has it. A directory without
/// a lock file has never been run on, so is not locked (and gets none).
fn try_lock(dir: &Path) -> io::Result<Option<Option<File>>> {
    let file = match File::open(dir.join("lock")) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(None)),
        Err(e) => return Err(e),
    };
    // SAFETY: flock on a descriptor `file` owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(Some(file)));
    }
    match io::Error::last_os_error() {
        e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        e => Err(e),
    }
}

/// What [`clean`] removes.
#[derive(Debug, Clone, Default)]
pub struct CleanOptions {
    /// Pairs whose last run is older than this. With no `pairs`, `None`
    /// means [`DEFAULT_MAX_AGE`]; with `pairs`, `None` means any age.
    pub older_than: Option<Duration>,
    /// Only these pairs: each a key or the start of one (at least 6 hex
    /// digits, as `state list` shows them), or a local root or remote side
    /// exactly as `state list` shows it (every pair with that root).
    pub pairs: Vec<String>,
    /// Say what would go, remove nothing.
    pub dry_run: bool,
}

/// What became of one selected pair.
#[derive(Debug)]
pub enum Outcome {
    /// Its directory is gone.
    Removed,
    /// It would be removed (a dry run).
    WouldRemove,
    /// Kept: a live robosync holds its lock.
    Locked,
    /// Removing it failed part-way; the message says why.
    Failed(String),
}

/// What [`clean`] did.
#[derive(Debug, Default)]
pub struct CleanReport {
    /// Each selected pair and its outcome.
    pub pairs: Vec<(StateEntry, Outcome)>,
    /// The `pairs` selectors that matched nothing.
    pub unmatched: Vec<String>,
    /// Nothing was removed: a preview.
    pub dry_run: bool,
}

impl CleanReport {
    /// The exit code: 1 when a named pair matched nothing, 23 when a pair
    /// could not be removed, else 0.
    pub fn exit_code(&self) -> i32 {
        if !self.unmatched.is_empty() {
            crate::EXIT_USAGE
        } else if self
            .pairs
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Failed(_)))
        {
            crate::EXIT_PARTIAL
        } else {
            0
        }
    }

    /// Bytes removed (or that would be, in a dry run).
    pub fn freed(&self) -> u64 {
        self.pairs
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Removed | Outcome::WouldRemove))
            .map(|(e, _)| e.size)
            .sum()
    }
}

fn selects(sel: &str, e: &StateEntry) -> bool {
    let hex = sel.len() >= 6 && sel.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && e.key.starts_with(&sel.to_ascii_lowercase()))
        || e.key == sel
        || e.pair
            .as_ref()
            .is_some_and(|p| p.local == sel || p.remote == sel)
}

/// Removes the state of the pairs `opts` selects, never one a live run
/// holds (its lock is taken first and held while the files go). `now`
/// judges ages.
pub fn clean(state_dir: &Path, opts: &CleanOptions, now: SystemTime) -> io::Result<CleanReport> {
    let all = list(state_dir)?;
    let max_age = match (&opts.older_than, opts.pairs.is_empty()) {
        (Some(d), _) => Some(*d),
        (None, true) => Some(DEFAULT_MAX_AGE),
        (None, false) => None,
    };
    let old = |e: &StateEntry| match max_age {
        None => true,
        // No file to date it: nothing a run needs is there.
        Some(age) => e
            .last_run
            .is_none_or(|t| now.duration_since(t).unwrap_or_default() > age),
    };
    let mut report = CleanReport {
        unmatched: opts
            .pairs
            .iter()
            .filter(|s| !all.iter().any(|e| selects(s, e)))
            .cloned()
            .collect(),
        dry_run: opts.dry_run,
        ..Default::default()
    };
    for e in all {
        let named = opts.pairs.is_empty() || opts.pairs.iter().any(|s| selects(s, &e));
        if !named || !old(&e) {
            continue;
        }
        let outcome = match try_lock(&e.dir) {
            Ok(None) => Outcome::Locked,
            Ok(Some(_)) if opts.dry_run => Outcome::WouldRemove,
            Ok(Some(held)) => match remove_held(&e.dir, held) {
                Ok(()) => Outcome::Removed,
                Err(err) => Outcome::Failed(err.to_string()),
            },
            Err(err) => Outcome::Failed(format!("cannot lock: {err}")),
        };
        report.pairs.push((e, outcome));
    }
    Ok(report)
}

/// Removes a pair's directory while holding its lock: everything but the
/// lock, then the lock, then the directory itself (which fails, harmlessly,
/// if a run that started meanwhile made a new lock there).
fn remove_held(dir: &Path, held: Option<File>) -> io::Result<()> {
    for item in fs::read_dir(dir)? {
        let item = item?;
        if item.file_name() == "lock" {
            continue;
        }
        if item.file_type()?.is_dir() {
            fs::remove_dir_all(item.path())?;
        } else {
            fs::remove_file(item.path())?;
        }
    }
    if held.is_some() {
        fs::remove_file(dir.join("lock"))?;
    }
    drop(held);
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `1.5 MiB`: binary units, one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{n} B"),
        _ => format!("{v:.1} {}", UNITS[u]),
    }
}

/// `state list`'s table: one line per pair under a header, `now` for ages.
pub fn render_list(entries: &[StateEntry], now: SystemTime) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        return out;
    }
    out += &format!(
        "{:<12}  {:<4}  {:<26}  {:>9}  {:<18}  SOURCE -> DESTINATION\n",
        "KEY", "DIR", "LAST RUN (UTC)", "SIZE", "STATUS"
    );
    for e in entries {
        let dir = match e.pair.as_ref().map(|p| p.direction) {
            Some(Direction::Push) => "push",
            Some(Direction::Pull) => "pull",
            None => "?",
        };
        let last = match e.last_run {
            Some(t) => {
                let unix = t
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let utc = robosync_transport::connect::unix_to_utc(unix);
                let when = utc.trim_end_matches(" UTC");
                let when = when.get(..16).unwrap_or(when);
                format!(
                    "{when} ({} ago)",
                    robosync_transport::connect::human_duration(
                        now.duration_since(t).unwrap_or_default().as_secs()
                    )
                )
            }
            None => "-".into(),
        };
        let mut status = Vec::new();
        if e.interrupted {
            status.push("interrupted");
        }
        if e.locked {
            status.push("locked");
        }
        let status = if status.is_empty() {
            "ok".to_string()
        } else {
            status.join(",")
        };
        out += &format!(
            "{:<12}  {dir:<4}  {last:<26}  {:>9}  {status:<18}  {}\n",
            e.short_key(),
            human_bytes(e.size),
            e.route()
        );
    }
    out
}

/// `state clean`'s lines: one per selected pair, then the total.
pub fn render_clean(report: &CleanReport) -> String {
    let mut out = String::new();
    for (e, o) in &report.pairs {
        let what = match o {
            Outcome::Removed => "removed".to_string(),
            Outcome::WouldRemove => "would remove".to_string(),
            Outcome::Locked => "kept (a running robosync holds it)".to_string(),
            Outcome::Failed(m) => format!("failed: {m}"),
        };
        out += &format!(
            "{what}: {} {} ({})\n",
            e.short_key(),
            e.route(),
            human_bytes(e.size)
        );
    }
    let dry = report.dry_run;
    let n = report
        .pairs
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Removed | Outcome::WouldRemove))
        .count();
    out += &format!(
        "{} {n} pair{} ({})\n",
        if dry { "would free" } else { "freed" },
        if n == 1 { "" } else { "s" },
        human_bytes(report.freed())
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_dir(state: &Path, src: &str, dst: &str) -> StatePaths {
        let p = robosync_manifest::state_paths(state, src, dst);
        robosync_manifest::private_dir(&p.dir).unwrap();
        p
    }

    #[test]
    fn a_pair_file_reads_back_with_odd_names() {
        let t = tempfile::tempdir().unwrap();
        let p = pair_dir(t.path(), "/a\nb\\c", "h:/x y");
        record_pair(&p, Direction::Push, "/a\nb\\c", "h:/x y").unwrap();
        let got = read_pair(&p.dir).unwrap();
        assert_eq!(got.local, "/a\nb\\c");
        assert_eq!(got.remote, "h:/x y");
        assert_eq!(got.route(), "/a\nb\\c -> h:/x y");
        assert!(!p.dir.join(".pair.tmp").exists());
    }

    #[test]
    fn list_skips_what_is_not_a_pair_and_sees_a_lock() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("locks")).unwrap();
        fs::write(t.path().join("stray"), b"x").unwrap();
        let p = pair_dir(t.path(), "/src", "h:/dst");
        record_pair(&p, Direction::Pull, "/src", "h:/dst").unwrap();
        let held = crate::sync::hold_state(&p).unwrap();
        let l = list(t.path()).unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].locked);
        assert!(!l[0].interrupted);
        assert_eq!(l[0].route(), "h:/dst -> /src");
        drop(held);
        assert!(!list(t.path()).unwrap()[0].locked);
        assert!(list(&t.path().join("absent")).unwrap().is_empty());
    }

    #[test]
    fn clean_keeps_young_and_locked_pairs_and_says_what_matched_nothing() {
        let t = tempfile::tempdir().unwrap();
        let a = pair_dir(t.path(), "/a", "h:/a");
        let b = pair_dir(t.path(), "/b", "h:/b");
        record_pair(&a, Direction::Push, "/a", "h:/a").unwrap();
        record_pair(&b, Direction::Push, "/b", "h:/b").unwrap();
        let later = SystemTime::now() + Duration::from_secs(100 * 86_400);
        // Young by the default age: nothing goes.
        let none = clean(t.path(), &CleanOptions::default(), SystemTime::now()).unwrap();
        assert!(none.pairs.is_empty());
        let _held = crate::sync::hold_state(&b).unwrap();
        let dry = CleanOptions {
            dry_run: true,
            ..Default::default()
        };
        let r = clean(t.path(), &dry, later).unwrap();
        assert_eq!(r.pairs.len(), 2);
        assert!(a.dir.exists() && b.dir.exists());
        let r = clean(t.path(), &CleanOptions::default(), later).unwrap();
        let outcomes: Vec<_> = r.pairs.iter().map(|(e, o)| (e.dir.clone(), o)).collect();
        assert!(outcomes
            .iter()
            .any(|(d, o)| *d == a.dir && matches!(o, Outcome::Removed)));
        assert!(outcomes
            .iter()
            .any(|(d, o)| *d == b.dir && matches!(o, Outcome::Locked)));
        assert!(!a.dir.exists());
        assert!(b.dir.join("pair").exists());
        let named = CleanOptions {
            pairs: vec!["h:/b".into(), "deadbeef00".into()],
            ..Default::default()
        };
        let r = clean(t.path(), &named, SystemTime::now()).unwrap();
        assert_eq!(r.unmatched, vec!["deadbeef00".to_string()]);
        assert!(matches!(r.pairs[..], [(_, Outcome::Locked)]));
    }

    #[test]
    fn sizes_read_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}

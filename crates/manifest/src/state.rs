//! Where state lives, and which of two manifests to trust.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::manifest::Manifest;

/// The local state files of one (source, destination) pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StatePaths {
    /// The pair's directory, `STATE_DIR/<key>`; created on first save or
    /// journal open.
    pub dir: PathBuf,
    /// `dir/manifest`
    pub manifest: PathBuf,
    /// `dir/journal`
    pub journal: PathBuf,
    /// `dir/listing`: the destination's tree after the last clean push
    /// ([`crate::ListingRecord`]).
    pub listing: PathBuf,
    /// `dir/stat-cache` (owned by the scanner; this crate only names it).
    pub stat_cache: PathBuf,
}

/// Creates `dir` (and missing parents) private to this user, 0700 whatever
/// the umask, and tightens it to 0700 if it already exists: it holds every
/// path, size and hash of a destination. Parents that exist are left as
/// they are (a user-chosen `--state-dir` may be shared on purpose).
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens (creating 0600 if missing) a state file for writing, and tightens
/// an existing one to 0600: state files are this user's alone, whatever
/// the umask.
pub fn open_private(
    opts: &mut std::fs::OpenOptions,
    path: &Path,
) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = opts.mode(0o600).open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Length, in hex digits, of the hash part of a pair's key (128 bits).
const KEY_HEX_LEN: usize = 32;
/// Longest human-readable suffix of a pair's key.
const SUFFIX_MAX: usize = 48;

/// Where the (source, destination) pair keeps its local state under
/// `state_dir`. The key is the hex of BLAKE3(`source` NUL `destination`),
/// truncated to 128 bits, followed by a readable, sanitized form of the pair
/// for people browsing the state dir (e.g.
/// `3f1c…9a-data_run42--robot01_srv_mirror`). Pure: same input, same paths;
/// the hash alone keeps different pairs apart. Callers should pass the
/// source and destination as the user spelled them after normalisation
/// (absolute source path, `host:path` destination).
pub fn state_paths(state_dir: &Path, source: &str, destination: &str) -> StatePaths {
    let mut hasher = blake3::Hasher::new();
    hasher.update(source.as_bytes());
    hasher.update(&[0]);
    hasher.update(destination.as_bytes());
    let hex = hasher.finalize().to_hex();
    let mut key = String::with_capacity(KEY_HEX_LEN + 2 + SUFFIX_MAX);
    key.push_str(&hex[..KEY_HEX_LEN]);
    let suffix = readable(source, destination);
    if !suffix.is_empty() {
        key.push('-');
        key.push_str(&suffix);
    }
    let dir = state_dir.join(key);
    StatePaths {
        manifest: dir.join("manifest"),
        journal: dir.join("journal"),
        listing: dir.join("listing"),
        stat_cache: dir.join("stat-cache"),
        dir,
    }
}

/// `source--destination` with everything but `[A-Za-z0-9._-]` turned into
/// single `_`, trimmed of `_`, keeping the tail (the most specific part) of
/// each side within [`SUFFIX_MAX`].
fn readable(source: &str, destination: &str) -> String {
    fn clean(s: &str, max: usize) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                out.push(c);
            } else if !out.ends_with('_') {
                out.push('_');
            }
        }
        let out = out.trim_matches('_');
        // ASCII only, so byte slicing is on char boundaries.
        let out = &out[out.len().saturating_sub(max)..];
        out.trim_start_matches(['_', '.']).to_string()
    }
    let half = (SUFFIX_MAX - 2) / 2;
    let (s, d) = (clean(source, half), clean(destination, half));
    match (s.is_empty(), d.is_empty()) {
        (true, true) => String::new(),
        _ => format!("{s}--{d}"),
    }
}

/// Which manifest [`pick_newer`] chose, and why; `Display` gives a line for
/// `-v` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Neither copy exists (or could be read): full compare.
    Neither,
    /// Only the local copy exists.
    OnlyLocal,
    /// Only the destination's copy exists.
    OnlyRemote,
    /// Both exist and are identical; local is used.
    Identical,
    /// Both exist and differ; local is newer.
    LocalNewer,
    /// Both exist and differ; the destination's copy is newer.
    RemoteNewer,
    /// Both exist, differ, and carry the same time and run id; local is used
    /// because it has this machine's journal folded in.
    Tie,
}

impl Choice {
    /// True when the destination's copy was chosen.
    pub fn is_remote(self) -> bool {
        matches!(self, Choice::OnlyRemote | Choice::RemoteNewer)
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Choice::Neither => "no manifest found: full compare against the destination",
            Choice::OnlyLocal => "using the local manifest (none on the destination)",
            Choice::OnlyRemote => "using the destination's manifest (no local one)",
            Choice::Identical => "local and destination manifests agree",
            Choice::LocalNewer => {
                "local and destination manifests differ: using the newer, local one"
            }
            Choice::RemoteNewer => {
                "local and destination manifests differ: using the newer, the destination's"
            }
            Choice::Tie => {
                "local and destination manifests differ but are equally recent: using the local one"
            }
        })
    }
}

/// Chooses between the local manifest and the destination's copy: the newer
/// by `written_at_unix`, then by `run_id`. Pass `None` for a copy that is
/// missing or failed to load (decoding checks consistency), and report the
/// [`Choice`] with `-v`.
pub fn pick_newer(local: Option<Manifest>, remote: Option<Manifest>) -> (Option<Manifest>, Choice) {
    match (local, remote) {
        (None, None) => (None, Choice::Neither),
        (Some(l), None) => (Some(l), Choice::OnlyLocal),
        (None, Some(r)) => (Some(r), Choice::OnlyRemote),
        (Some(l), Some(r)) => {
            if l == r {
                return (Some(l), Choice::Identical);
            }
            let (lk, rk) = ((l.written_at_unix, l.run_id), (r.written_at_unix, r.run_id));
            match lk.cmp(&rk) {
                std::cmp::Ordering::Greater => (Some(l), Choice::LocalNewer),
                std::cmp::Ordering::Less => (Some(r), Choice::RemoteNewer),
                std::cmp::Ordering::Equal => (Some(l), Choice::Tie),
            }
        }
    }
}

//! One run per destination, wherever it comes from.
//!
//! Two runs writing one destination (a cron job on two hosts, two `Host`
//! aliases for one server, `./d` and `/abs/d/`) race on temp files, renames
//! and the manifest. Each run therefore holds:
//!
//! - a **lease on the destination itself**: `DEST/.robosync/lock`, naming
//!   the holder (host, pid, start time, run id). On a remote destination it
//!   is created with SFTP `EXCL`, its mtime refreshed every [`REFRESH`], and
//!   taken over only when stale: not refreshed for [`STALE_AFTER`], or held
//!   by a process of this host that no longer exists. It is removed at the
//!   end; read back first (is it still ours?) only when the server last
//!   confirmed it more than half of [`STALE_AFTER`] ago. The holder's clock
//!   stamps the mtime and the taker's judges it, so hosts whose clocks
//!   differ by more than a few minutes could misjudge; NTP keeps them far
//!   closer. On a local destination (a pull) it is the same file under
//!   `flock`, which ends with the process however it ends.
//! - a **local lock on the destination's canonical identity** (resolved
//!   user, host and port and the remote path after REALPATH; or the
//!   canonical local path) in the state directory, so runs of this machine
//!   are told apart quickly and exactly even before the lease.
//!
//! A dry run changes nothing, so it takes no lease; it warns when a live one
//! is held (its listing may be mid-change) and still exits 0.
//!
//! A refused run exits [`EXIT_BUSY`] (75), having changed nothing, and says
//! who holds the destination and what to do.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use robosync_transport::proto::{self, Attrs};
use robosync_transport::Error;
use robosync_transport::{Pool, Sftp};

use crate::endpoint::join;
use crate::sync::{fail, now_unix, Failure, EXIT_BUSY, EXIT_LOST, EXIT_PARTIAL};

/// How often a held remote lease's mtime is refreshed.
pub const REFRESH: Duration = Duration::from_secs(30);
/// A remote lease not refreshed for this long is stale: ten refreshes
/// missed, far beyond a slow request or a reconnect.
pub const STALE_AFTER: Duration = Duration::from_secs(300);

const LEASE: &[u8] = b".robosync/lock";

/// Who holds a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Unix seconds when the holding run started.
    pub since: i64,
    pub run: u64,
}

impl Holder {
    /// This run, the same for every call in one process: a retry after a
    /// lost connection must recognise the lease its first attempt made.
    fn me() -> Holder {
        static ME: std::sync::OnceLock<Holder> = std::sync::OnceLock::new();
        ME.get_or_init(|| {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.write_i64(now_unix());
            Holder {
                host: hostname(),
                pid: std::process::id(),
                since: now_unix(),
                run: h.finish(),
            }
        })
        .clone()
    }

    fn encode(&self) -> Vec<u8> {
        format!(
            "robosync lease\nhost {}\npid {}\nsince {}\nrun {:016x}\n",
            self.host, self.pid, self.since, self.run
        )
        .into_bytes()
    }

    fn decode(b: &[u8]) -> Option<Holder> {
        let text = std::str::from_utf8(b).ok()?;
        let mut lines = text.lines();
        if lines.next()? != "robosync lease" {
            return None;
        }
        let mut h = Holder {
            host: String::new(),
            pid: 0,
            since: 0,
            run: 0,
        };
        for line in lines {
            let (k, v) = line.split_once(' ')?;
            match k {
                "host" => h.host = v.to_string(),
                "pid" => h.pid = v.parse().ok()?,
                "since" => h.since = v.parse().ok()?,
                "run" => h.run = u64::from_str_radix(v, 16).ok()?,
                _ => {}
            }
        }
        Some(h)
    }

    /// A process of this host that no longer exists.
    fn is_dead_here(&self) -> bool {
        if self.host != hostname() || self.pid == 0 || self.pid > i32::MAX as u32 {
            return false;
        }
        // SAFETY: signal 0 only checks that the pid exists.
        let r = unsafe { libc::kill(self.pid as i32, 0) };
        r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The refusal: who holds `what`, since when, and what to do.
fn busy(what: &str, holder: Option<&Holder>, refreshed_ago: Option<i64>, file: &str) -> Failure {
    let who = match holder {
        Some(h) => format!(
            "host {}, pid {}, running since {} ({} ago)",
            h.host,
            h.pid,
            utc(h.since),
            ago(now_unix() - h.since)
        ),
        None => "an unnamed holder (the lease file is empty or unreadable)".into(),
    };
    let fresh = refreshed_ago
        .map(|s| format!("; last refreshed {} ago", ago(s)))
        .unwrap_or_default();
    fail(
        EXIT_BUSY,
        format!(
            "another robosync run holds {what} ({who}{fresh}); this run changed nothing. \
             Try again when it has finished. A lease not refreshed for {} min is taken over \
             by the next run; if that run is surely gone, remove {file}",
            STALE_AFTER.as_secs() / 60
        ),
    )
}

fn ago(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s => format!("{} h", s / 3600),
    }
}

/// When the holder took the lease, for people.
fn utc(unix: i64) -> String {
    robosync_transport::connect::unix_to_utc(unix)
}

/// A held lease on a remote destination; [`RemoteLease::release`] ends it.
pub struct RemoteLease {
    pool: Arc<Pool>,
    path: Vec<u8>,
    mine: Vec<u8>,
    refresher: tokio::task::JoinHandle<()>,
    /// Unix seconds when the server last confirmed the lease (created or
    /// refreshed).
    confirmed: Arc<AtomicI64>,
}

/// Where a push keeps its lease until the run ends, however it ends: the
/// caller of the run releases whatever is left (see [`Slot::release`]).
pub struct Slot(Mutex<Option<RemoteLease>>);

/// The process's one run's remote lease: a static, so that every early
/// return of a push still leaves it for `sync::go` to release.
pub static HELD: Slot = Slot(Mutex::new(None));

impl Slot {
    pub fn hold(&self, lease: RemoteLease) {
        *self.0.lock().unwrap() = Some(lease);
    }

    /// Releases the lease if one is held (bounded: a dead link leaves it to
    /// go stale).
    pub async fn release(&self) {
        let lease = self.0.lock().unwrap().take();
        if let Some(l) = lease {
            let _ = tokio::time::timeout(Duration::from_secs(10), l.release()).await;
        }
    }
}

/// Opens `root`'s lease file with EXCL: the first step of
/// [`take_remote`], to send in the same flight as the MKDIR of `.robosync`
/// (sftp-server answers one channel's requests in order).
pub async fn open_excl(s: &Sftp, root: &[u8]) -> Result<Vec<u8>, robosync_transport::Error> {
    let flags = proto::FXF_WRITE | proto::FXF_CREAT | proto::FXF_EXCL;
    let attrs = Attrs {
        permissions: Some(0o600),
        ..Default::default()
    };
    s.open(&join(root, LEASE), flags, &attrs).await
}

/// Takes the lease on the remote destination `root` (whose `.robosync`
/// directory exists), taking over a stale one. `opened` is [`open_excl`]'s
/// answer on `s` if it was already sent. `label` names the destination in
/// messages.
pub async fn take_remote(
    pool: &Arc<Pool>,
    s: &Sftp,
    root: &[u8],
    opened: Option<Result<Vec<u8>, robosync_transport::Error>>,
    label: &str,
) -> Result<RemoteLease, Failure> {
    let mut opened = opened;
    let path = join(root, LEASE);
    let shown = String::from_utf8_lossy(&path).into_owned();
    let me = Holder::me();
    let mine = me.encode();
    // A lost connection is the caller's to retry on a new session.
    let cannot = |e: robosync_transport::Error| {
        fail(
            if e.is_connection() {
                EXIT_LOST
            } else {
                EXIT_PARTIAL
            },
            format!("cannot take the lease {shown} on {label}: {e}"),
        )
    };
    let mut waited_on_empty = false;
    for _ in 0..4 {
        let handle = match opened.take() {
            Some(Ok(h)) => Ok(h),
            // Sent before `.robosync` existed: again, now that it does.
            Some(Err(e)) if !matches!(e, Error::NoSuchFile(_)) => Err(e),
            _ => open_excl(s, root).await,
        };
        let created = match handle {
            Ok(h) => s.write_and_close(&h, 0, &mine, None).await,
            Err(e) => Err(e),
        };
        match created {
            Ok(()) => {
                let confirmed = Arc::new(AtomicI64::new(now_unix()));
                let refresher =
                    tokio::spawn(refresh(pool.clone(), path.clone(), confirmed.clone()));
                return Ok(RemoteLease {
                    pool: pool.clone(),
                    path,
                    mine,
                    refresher,
                    confirmed,
                });
            }
            // EEXIST reaches SFTP v3 as FAILURE.
            Err(Error::Failure(_)) => {}
            Err(e) => return Err(cannot(e)),
        }
        let (attrs, content) = futures::join!(s.lstat(&path), crate::sync::read_small(s, &path));
        let attrs = match attrs {
            Ok(a) => a,
            // Released meanwhile: try again.
            Err(Error::NoSuchFile(_)) => continue,
            Err(e) => return Err(cannot(e)),
        };
        // Ours already: an attempt on a connection that dropped made it,
        // and only its reply was lost.
        if content.as_deref() == Some(&mine[..]) {
            let _ = s.remove(&path).await;
            continue;
        }
        // Empty: made and not yet written, by a run that may be writing it
        // now, or by our own attempt whose connection dropped in between.
        // Stale if it stays so.
        if content.as_deref().is_some_and(<[u8]>::is_empty) && !waited_on_empty {
            waited_on_empty = true;
            tokio::time::sleep(EMPTY_GRACE).await;
            continue;
        }
        let empty = content.as_deref().is_some_and(<[u8]>::is_empty);
        let holder = content.as_deref().and_then(Holder::decode);
        let refreshed = attrs.times.map(|(_, m)| now_unix() - i64::from(m));
        let stale = refreshed.is_some_and(|s| s > STALE_AFTER.as_secs() as i64)
            || holder.as_ref().is_some_and(Holder::is_dead_here)
            || empty;
        if !stale {
            return Err(busy(label, holder.as_ref(), refreshed, &shown));
        }
        // Take over by moving the stale lease aside under a name of our own;
        // if what moved is not what was judged stale (another run took over
        // first), put it back and report that run.
        let aside = [&path[..], format!(".stale-{:016x}", me.run).as_bytes()].concat();
        match s.rename(&path, &aside).await {
            Ok(()) => {}
            Err(Error::NoSuchFile(_)) => continue,
            Err(e) => return Err(cannot(e)),
        }
        let moved = crate::sync::read_small(s, &aside).await;
        if moved != content {
            let _ = s.rename(&aside, &path).await;
            let holder = moved.as_deref().and_then(Holder::decode);
            return Err(busy(label, holder.as_ref(), Some(0), &shown));
        }
        let _ = s.remove(&aside).await;
    }
    Err(fail(
        EXIT_BUSY,
        format!("the lease {shown} on {label} keeps changing hands; try again later"),
    ))
}

/// How long an empty lease may stay empty before it counts as abandoned: a
/// run writes its lease one round trip after creating it.
const EMPTY_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Touches the lease every [`REFRESH`] while the run goes.
async fn refresh(pool: Arc<Pool>, path: Vec<u8>, confirmed: Arc<AtomicI64>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let now = now_unix().clamp(0, u32::MAX as i64) as u32;
        let attrs = Attrs {
            times: Some((now, now)),
            ..Default::default()
        };
        if let Ok(s) = pool.session().await {
            if s.setstat(&path, &attrs).await.is_ok() {
                confirmed.store(i64::from(now), Ordering::Relaxed);
            }
        }
    }
}

impl RemoteLease {
    /// Stops refreshing and removes the lease if it is still ours.
    pub async fn release(self) {
        self.refresher.abort();
        let Ok(s) = self.pool.session().await else {
            return;
        };
        // Confirmed well within STALE_AFTER, no other run can have taken it
        // over: one REMOVE (measured: reading it back first cost 3 round
        // trips, +150 ms a run at 50 ms). Otherwise, only if it is still ours.
        let fresh =
            now_unix() - self.confirmed.load(Ordering::Relaxed) < STALE_AFTER.as_secs() as i64 / 2;
        if fresh || crate::sync::read_small(&s, &self.path).await.as_deref() == Some(&self.mine[..])
        {
            let _ = s.remove(&self.path).await;
        }
    }
}

/// For a dry run: a warning naming the holder when the remote destination's
/// lease is live (a dry run takes none).
pub async fn peek_remote(s: &Sftp, root: &[u8]) -> Option<String> {
    let path = join(root, LEASE);
    let (attrs, content) = futures::join!(s.lstat(&path), crate::sync::read_small(s, &path));
    let refreshed = now_unix() - i64::from(attrs.ok()?.times?.1);
    let holder = content.as_deref().and_then(Holder::decode);
    if refreshed > STALE_AFTER.as_secs() as i64 || holder.as_ref().is_some_and(Holder::is_dead_here)
    {
        return None;
    }
    Some(dry_run_note(holder.as_ref()))
}

fn dry_run_note(holder: Option<&Holder>) -> String {
    let who = holder
        .map(|h| format!("host {}, pid {}, since {}", h.host, h.pid, utc(h.since)))
        .unwrap_or_else(|| "an unnamed holder".into());
    format!(
        "another robosync run holds this destination ({who}): what is shown may change as it goes"
    )
}

/// A held lease on a local destination: `flock` on `DEST/.robosync/lock`,
/// removed when dropped.
pub struct LocalLease {
    file: File,
    path: PathBuf,
}

/// Takes the lease on the local destination `root` (an existing directory).
pub fn take_local(root: &Path) -> Result<LocalLease, Failure> {
    let dir = root.join(".robosync");
    let path = dir.join("lock");
    let cannot = |e: std::io::Error| {
        fail(
            EXIT_PARTIAL,
            format!("cannot take the lease {}: {e}", path.display()),
        )
    };
    make_private_dir(&dir).map_err(cannot)?;
    for _ in 0..3 {
        let mut file = open_lock(&path).map_err(cannot)?;
        if !try_flock(&file).map_err(cannot)? {
            let mut text = Vec::new();
            let _ = file.read_to_end(&mut text);
            let label = root.display().to_string();
            return Err(busy(
                &label,
                Holder::decode(&text).as_ref(),
                None,
                &path.display().to_string(),
            ));
        }
        // The holder before us may have removed the file between our open
        // and our flock: then we lock a name no one else sees. Again.
        let same = std::fs::symlink_metadata(&path)
            .ok()
            .zip(file.metadata().ok())
            .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
        if !same {
            continue;
        }
        let me = Holder::me().encode();
        file.set_len(0)
            .and_then(|()| file.write_all(&me))
            .map_err(cannot)?;
        return Ok(LocalLease { file, path });
    }
    Err(fail(
        EXIT_BUSY,
        format!(
            "the lease {} keeps changing hands; try again later",
            path.display()
        ),
    ))
}

/// For a dry run: a warning naming the holder when the local destination's
/// lease is held.
pub fn peek_local(root: &Path) -> Option<String> {
    let path = root.join(".robosync/lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    if try_flock(&file).ok()? {
        return None;
    }
    let mut text = Vec::new();
    let _ = file.read_to_end(&mut text);
    Some(dry_run_note(Holder::decode(&text).as_ref()))
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        // Removed while still locked, so no one locks the name meanwhile.
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .zip(self.file.metadata().ok())
            .is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        r => r?,
    }
    if !std::fs::symlink_metadata(dir)?.is_dir() {
        return Err(std::io::Error::other("not a directory (a symlink?)"));
    }
    Ok(())
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW);
    robosync_manifest::open_private(&mut opts, path)
}

/// `flock(LOCK_EX | LOCK_NB)`: false when another process holds it.
fn try_flock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor `file` owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
        e => Err(e),
    }
}

/// Holds this machine's lock on a destination's canonical `identity`
/// (`STATE_DIR/locks/<hash>`), for the run; `label` names it in messages.
pub fn hold_identity(state_dir: &Path, identity: &str, label: &str) -> Result<File, Failure> {
    let dir = state_dir.join("locks");
    let key = blake3::hash(identity.as_bytes()).to_hex();
    let path = dir.join(&key[..32]);
    let cannot = |e: std::io::Error| {
        fail(
            crate::sync::EXIT_USAGE,
            format!("cannot lock {}: {e}", path.display()),
        )
    };
    robosync_manifest::private_dir(&dir).map_err(cannot)?;
    let mut file = open_lock(&path).map_err(cannot)?;
    if try_flock(&file).map_err(cannot)? {
        let me = Holder::me().encode();
        let _ = file.set_len(0).and_then(|()| file.write_all(&me));
        return Ok(file);
    }
    let mut text = Vec::new();
    let _ = file.read_to_end(&mut text);
    Err(busy(
        &format!("{label} ({identity})"),
        Holder::decode(&text).as_ref(),
        None,
        &path.display().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_survives_its_file_and_garbage_is_no_holder() {
        let h = Holder::me();
        assert_eq!(Holder::decode(&h.encode()), Some(h));
        assert_eq!(Holder::decode(b""), None);
        assert_eq!(Holder::decode(b"robosync lease\npid x\n"), None);
        assert_eq!(Holder::decode(&[0xff, 0xfe]), None);
    }

    #[test]
    fn times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }
}

//! One run from start to end: resolve endpoints, scan, connect, list, plan,
//! execute, record, report.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use robosync_manifest::{
    compact, pick_newer, state_paths, Compacted, Journal, JournalRecord, Manifest, ManifestError,
};
use robosync_planner::{plan, Action, PlanOptions, Tree};
use robosync_scanner::{Filters, Rule, ScanOptions, StatCache};
use robosync_transport::ssh_config::{self, AddressFamily, ConfigRequest};
use robosync_transport::{Error, Pool, PoolOptions, SessionOptions, Target};

use crate::endpoint::{join, Endpoint, Rename};
use crate::run::{Phase, Run, RunOptions};
use crate::{push, remote, Args};

// The exit codes (documented in main.rs and the README): rsync's numbers
// where the meaning matches, so cron wrappers written for rsync keep working.
/// Usage or configuration error (as rsync 1).
pub const EXIT_USAGE: i32 = 1;
/// File selection error: a rules or list file that cannot be read (rsync 3).
pub const EXIT_SELECTION: i32 = 3;
/// The server would not start SFTP (rsync 5: error starting client-server protocol).
pub const EXIT_NO_SFTP: i32 = 5;
/// Could not connect: resolution, TCP, proxy (rsync 10: error in socket I/O).
pub const EXIT_CONNECT: i32 = 10;
/// The destination cannot be made: its parent is missing (rsync 11: error in file I/O).
pub const EXIT_FILE_IO: i32 = 11;
/// The server broke the SFTP protocol (rsync 12: error in protocol data stream).
pub const EXIT_PROTOCOL: i32 = 12;
/// Some entries failed, the rest landed (rsync 23).
pub const EXIT_PARTIAL: i32 = 23;
/// Some source files vanished during the run, and nothing else failed (rsync 24).
pub const EXIT_VANISHED: i32 = 24;
/// A `--delete` guard stopped the deletions (rsync 25: --max-delete limit).
pub const EXIT_GUARD: i32 = 25;
/// Connection lost and not re-established within `--retry-for` (rsync 30: timeout).
pub const EXIT_LOST: i32 = 30;
/// Another run holds this destination: sysexits' EX_TEMPFAIL ("try again
/// later"); rsync has no such code, and its 35 means a daemon timeout.
pub const EXIT_BUSY: i32 = 75;
/// Authentication refused or host key not accepted (as ssh's 255).
pub const EXIT_DENIED: i32 = 255;

/// The most entries a remote listing may hold before we call the server absurd.
pub const MAX_REMOTE_ENTRIES: usize = 50_000_000;

pub struct Failure {
    pub code: i32,
    pub message: String,
    /// Set when the run found the other side is not what the spelling
    /// assumed; `go()` runs it again in the right form.
    pub redo: Option<Redo>,
}

/// What a single-file run learns only from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redo {
    /// `a.txt host:x/NAME`: NAME is a directory, so the file goes into it.
    DestIsDir,
    /// `host:x/a.txt DEST`: the source is a file, not a tree.
    SourceIsFile,
}

pub fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
        redo: None,
    }
}

/// A failure that `go()` answers by running again as `redo` says.
pub fn redo(redo: Redo, message: impl Into<String>) -> Failure {
    Failure {
        redo: Some(redo),
        ..fail(EXIT_USAGE, message)
    }
}

/// The exit code for a transport error, decided by its variant, never its text.
pub fn exit_code(e: &Error) -> i32 {
    match e {
        Error::ConnectionLost { .. } | Error::Timeout { .. } => EXIT_LOST,
        Error::Unreachable(_) | Error::Connect(_) => EXIT_CONNECT,
        Error::Denied(_) => EXIT_DENIED,
        Error::Refused { .. } | Error::ChannelRefused { .. } => EXIT_NO_SFTP,
        Error::Protocol { .. } => EXIT_PROTOCOL,
        // A refusal about one path (e.g. the destination cannot be made).
        Error::NoSuchFile(_)
        | Error::PermissionDenied(_)
        | Error::Failure(_)
        | Error::Unsupported(_)
        | Error::BadMessage(_)
        | Error::Status(_) => EXIT_PARTIAL,
    }
}

/// Debug builds only: runs `$ROBOSYNC_TEST_BEFORE_TRANSFER` (a shell
/// command) between planning and sending, so a test can change the source
/// at exactly that point (a file vanishing, exit 24) without a race.
pub fn before_transfer() {
    #[cfg(debug_assertions)]
    if let Some(cmd) = std::env::var_os("ROBOSYNC_TEST_BEFORE_TRANSFER") {
        let _ = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd)
            .status();
    }
}

/// The `--files-from` paths the source lacks: errors (exit 23), as rsync's
/// `link_stat … failed`, so a typo in a list never passes silently.
pub fn unlisted(args: &Args, exists: impl Fn(&Path) -> bool) -> Vec<String> {
    let Some(list) = &args.files_list else {
        return Vec::new();
    };
    list.paths()
        .into_iter()
        .filter(|p| !exists(p))
        .map(|p| {
            format!(
                "{}: listed in --files-from but not in the source",
                robosync_planner::escape(p)
            )
        })
        .collect()
}

/// A run-ending transport error, with its [`exit_code`].
pub fn transport_failure(e: Error) -> Failure {
    fail(exit_code(&e), e.to_string())
}

pub async fn main(args: Args, rules: Vec<Rule>) -> i32 {
    let run = Arc::new(Run::new(RunOptions {
        verbose: args.verbose,
        quiet: args.quiet,
        fsync: args.fsync,
        inplace: args.inplace,
        verify: args.verify,
        backup_dir: args.backup_dir.clone(),
        progress: !args.no_progress && !args.json,
        sparse: args.sparse,
        json: args.json,
        itemize: args.itemize_changes,
        stats: args.stats,
        bwlimit: args.bwlimit,
    }));
    let result = match open_log(&args, &run) {
        Ok(()) => {
            // The phase line's counters (the scan's) move on their own.
            let ticker = {
                let run = run.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        run.refresh();
                    }
                })
            };
            let r = go(&args, rules, &run).await;
            ticker.abort();
            r
        }
        Err(f) => Err(f),
    };
    let vanished = run.vanished_list();
    let (code, errors) = match result {
        Ok(errors) if errors.is_empty() && !vanished.is_empty() => (EXIT_VANISHED, errors),
        Ok(errors) if errors.is_empty() => (0, errors),
        Ok(errors) => {
            for e in &errors {
                run.error(e);
            }
            (EXIT_PARTIAL, errors)
        }
        Err(f) => {
            run.error(&f.message);
            (f.code, vec![f.message])
        }
    };
    run.summary(code, args.dry_run, &errors, &vanished);
    code
}

/// `--log-file FILE`: appended to, so a cron job's runs accumulate.
fn open_log(args: &Args, run: &Run) -> Result<(), Failure> {
    let Some(path) = &args.log_file else {
        return Ok(());
    };
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            fail(
                EXIT_USAGE,
                format!("cannot open the log file {}: {e}", path.display()),
            )
        })?;
    run.set_log(f);
    Ok(())
}

pub(crate) fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("robosync");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/robosync"),
        None => PathBuf::from(".robosync-state"),
    }
}

/// `SRC... DEST`: every source checked first (one side local, the other
/// one host), then one run per source in order, as rsync copies them. A
/// source that could not be copied (23) does not stop the next; anything
/// worse (connection, guard, busy) stops there.
async fn go(args: &Args, rules: Vec<Rule>, run: &Arc<Run>) -> Result<Vec<String>, Failure> {
    let (sources, dest) = args.paths();
    let dst = Endpoint::parse(dest).map_err(|e| fail(EXIT_USAGE, format!("destination: {e}")))?;
    let srcs = sources
        .iter()
        .map(|s| Endpoint::parse(s).map_err(|e| fail(EXIT_USAGE, format!("source: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if srcs.len() == 1 {
        return go_one(args, &rules, run, &srcs[0], &dst).await;
    }
    let host = |e: &Endpoint| match e {
        Endpoint::Local(_) => None,
        Endpoint::Remote { user, host, .. } => Some((user.clone(), host.clone())),
    };
    if srcs.iter().any(|s| host(s) != host(&srcs[0])) {
        return Err(fail(
            EXIT_USAGE,
            "several sources must all be local or all on one remote [user@]host (as rsync): run robosync once per host",
        ));
    }
    // Several sources go into DEST as a directory (rsync makes it if missing).
    let dst = match dst {
        Endpoint::Local(l) => {
            if std::fs::metadata(&l).is_ok_and(|m| !m.is_dir()) {
                return Err(fail(
                    EXIT_SELECTION,
                    format!(
                        "destination {} is not a directory: several sources need one (as rsync)",
                        l.display()
                    ),
                ));
            }
            let mut d = l.into_os_string();
            d.push("/");
            Endpoint::Local(d.into())
        }
        Endpoint::Remote { user, host, path } => {
            let path = if crate::endpoint::means_contents(&path) {
                path
            } else {
                [&path[..], b"/"].concat()
            };
            Endpoint::Remote { user, host, path }
        }
    };
    // Only a contents source's run has DEST itself as its root.
    let contents = srcs.iter().filter(|s| is_contents(s)).count();
    let tops = match args.delete && contents > 0 {
        true => srcs
            .iter()
            .map(|s| top_names(s, contents > 1))
            .collect::<Result<Vec<_>, _>>()?,
        false => vec![Vec::new(); srcs.len()],
    };
    let mut errors = Vec::new();
    for (i, src) in srcs.iter().enumerate() {
        // rsync deletes inside each source's root, never what another
        // source brings: those names are protected in this run.
        let others = tops
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i && is_contents(src));
        let mut mine: Vec<Rule> = others
            .flat_map(|(_, names)| names)
            .filter_map(|n| std::str::from_utf8(n).ok())
            .map(|n| Rule {
                include: false,
                pattern: anchored(n),
                side: robosync_scanner::Side::Receiver,
            })
            .collect();
        mine.extend_from_slice(&rules);
        match go_one(args, &mine, run, src, &dst).await {
            Ok(e) => errors.extend(e),
            Err(f) if f.code == EXIT_PARTIAL => errors.push(f.message),
            Err(mut f) => {
                let rest: Vec<String> = srcs[i + 1..].iter().map(Endpoint::label).collect();
                if !rest.is_empty() {
                    f.message = format!("{}; not copied: {}", f.message, rest.join(", "));
                }
                if !errors.is_empty() {
                    f.message = format!("{}; earlier: {}", f.message, errors.join("; "));
                }
                return Err(f);
            }
        }
    }
    Ok(errors)
}

/// The names a source makes at the top of DEST: its own (`data`, `a.txt`),
/// or its entries (`data/`, local only: a remote one is listed by its run).
/// `needed`: another contents source's run could delete them.
fn top_names(src: &Endpoint, needed: bool) -> Result<Vec<Vec<u8>>, Failure> {
    if !is_contents(src) {
        return Ok(vec![crate::endpoint::last_component(path_of(src)).to_vec()]);
    }
    match src {
        _ if !needed => Ok(Vec::new()),
        Endpoint::Local(l) => Ok(std::fs::read_dir(l)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default()),
        Endpoint::Remote { .. } => Err(fail(
            EXIT_USAGE,
            format!(
                "--delete with several sources cannot yet take a remote contents source ({}): \
                 write it without the trailing / or run it on its own",
                src.label()
            ),
        )),
    }
}

fn path_of(e: &Endpoint) -> &[u8] {
    match e {
        Endpoint::Local(l) => l.as_os_str().as_bytes(),
        Endpoint::Remote { path, .. } => path,
    }
}

fn is_contents(e: &Endpoint) -> bool {
    crate::endpoint::means_contents(path_of(e))
}

/// One source to DEST.
async fn go_one(
    args: &Args,
    rules: &[Rule],
    run: &Arc<Run>,
    src: &Endpoint,
    dst: &Endpoint,
) -> Result<Vec<String>, Failure> {
    let rules = rules.to_vec();
    let filters = Filters::new(&rules, args.delete_excluded)
        .map_err(|e| fail(EXIT_USAGE, e.to_string()))?
        .with_list(args.files_list.clone());
    if args.hard_links && matches!(src, Endpoint::Remote { .. }) {
        return Err(fail(
            EXIT_USAGE,
            "-H works on a push only: an SFTP listing carries no inode numbers, so a \
             server's hard links cannot be told from copies (run without -H)",
        ));
    }
    match (src, dst) {
        (Endpoint::Local(l), Endpoint::Remote { user, host, path }) => {
            if let Err(e) = std::fs::symlink_metadata(l) {
                if e.kind() == std::io::ErrorKind::NotFound {
                    // rsync's "link_stat failed" (23), before any login.
                    return Err(fail(
                        EXIT_PARTIAL,
                        format!(
                            "source {} does not exist (no such file or directory); nothing was copied from it: check the local path",
                            l.display()
                        ),
                    ));
                }
            }
            let target = target(args, user, host).await?;
            let mut into = false;
            loop {
                let roots = match single_file(l, path, &rules, args, into)? {
                    Some(mut r) => {
                        // Its own state (not the parent's whole-tree pair).
                        let name = r.rename.as_ref().map(|n| n.to.display().to_string());
                        let at = remote_label(user, host, &r.remote);
                        r.label = format!("{at} [{}]", name.unwrap_or_default());
                        r
                    }
                    None => {
                        let remote = push_root(l, path)?;
                        Roots {
                            local: l.to_path_buf(),
                            label: remote_label(user, host, &remote),
                            remote,
                            filters: filters.clone(),
                            rename: None,
                            creatable: creatable(args, if is_contents(src) { 1 } else { 2 }),
                        }
                    }
                };
                let r = push_run(args, run, target.clone(), roots).await;
                // The destination's lease ends here, whatever the run's outcome.
                crate::lease::HELD.release().await;
                match r {
                    Err(f) if f.redo == Some(Redo::DestIsDir) && !into => into = true,
                    r => return r,
                }
            }
        }
        (Endpoint::Remote { user, host, path }, Endpoint::Local(l)) => {
            let target = target(args, user, host).await?;
            // Where a file already is (DEST, or DEST/NAME from a previous
            // run), only a file can land: no tree run first.
            let is_file = |p: &Path| std::fs::metadata(p).is_ok_and(|m| !m.is_dir());
            let root = pull_root(path, l);
            let file_there = match &root {
                Ok(r) => is_file(r),
                Err(_) => is_file(l) && !crate::endpoint::means_contents(path),
            };
            if !file_there {
                let roots = Roots {
                    local: root?,
                    remote: path.clone(),
                    filters,
                    label: src.label(),
                    rename: None,
                    creatable: creatable(args, if is_contents(src) { 1 } else { 2 }),
                };
                match crate::pull::pull_run(args, run, target.clone(), roots).await {
                    Err(f) if f.redo == Some(Redo::SourceIsFile) => {}
                    r => return r,
                }
            }
            let mut roots = pulled_file(path, l, &rules, args)?;
            let name = roots.rename.as_ref().map(|n| n.to.display().to_string());
            roots.label = format!("{} [{}]", src.label(), name.unwrap_or_default());
            crate::pull::pull_run(args, run, target, roots).await
        }
        (Endpoint::Local(_), Endpoint::Local(_)) => Err(fail(
            EXIT_USAGE,
            "both source and destination are local; one must be [user@]host:path (use a ./ prefix for local paths containing ':')",
        )),
        _ => Err(fail(
            EXIT_USAGE,
            "both source and destination are remote; robosync copies between this machine and one remote host",
        )),
    }
}

fn remote_label(user: &Option<String>, host: &str, path: &[u8]) -> String {
    Endpoint::Remote {
        user: user.clone(),
        host: host.to_string(),
        path: path.to_vec(),
    }
    .label()
}

/// What one run syncs: a local directory with a remote one, the rules,
/// the label its state is kept under, and for a single file the names it
/// has on each side.
pub struct Roots {
    pub local: PathBuf,
    /// As typed (before `~` expansion).
    pub remote: Vec<u8>,
    pub filters: Filters,
    pub label: String,
    pub rename: Option<Rename>,
    /// How many trailing components of the root this run may create: as
    /// rsync, DEST itself and the source's own name, never DEST's parents
    /// (`--mkpath` lifts this).
    pub creatable: usize,
}

/// A single-file push, as rsync: `a.txt host:x/` (or `into`, once the
/// server said x/NAME is a directory) copies into that directory;
/// `a.txt host:x/NAME` copies it as NAME. Either way the file's parent is
/// synced with rules that select that one name on each side, so the engine
/// stays tree-based and `--delete` (even `--delete-excluded`) touches
/// nothing else. `None` when the source is not a file.
fn single_file(
    local: &Path,
    dest: &[u8],
    rules: &[Rule],
    args: &Args,
    into: bool,
) -> Result<Option<Roots>, Failure> {
    let src = local.as_os_str().as_bytes();
    // A symlink without a trailing slash is copied as the link, as rsync.
    let is_file =
        std::fs::symlink_metadata(local).is_ok_and(|m| m.is_file() || m.file_type().is_symlink());
    if !is_file || crate::endpoint::means_contents(src) {
        return Ok(None);
    }
    let name = crate::endpoint::last_component(src);
    let parent = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (root, to, or_into) = file_target(dest, name, into);
    // Into DEST (which may be made), or as DEST's own name in its parent.
    let made = usize::from(root == crate::endpoint::trim_slashes(dest));
    let filters = one_name(
        name,
        &to,
        rules,
        args,
        &format!("source {}", local.display()),
    )?;
    Ok(Some(Roots {
        local: parent,
        remote: root,
        filters,
        label: String::new(),
        rename: Some(Rename {
            from: crate::endpoint::os(name),
            to: crate::endpoint::os(&to),
            or_into,
        }),
        creatable: creatable(args, made),
    }))
}

/// A single file pulled (the server said `src` is one), as rsync: into DEST
/// when it ends in `/` or is a directory, else as DEST's own name.
fn pulled_file(src: &[u8], dest: &Path, rules: &[Rule], args: &Args) -> Result<Roots, Failure> {
    let root = parent_of(crate::endpoint::trim_slashes(src));
    let name = crate::endpoint::last_component(src);
    let d = dest.as_os_str().as_bytes();
    let into = std::fs::metadata(dest).is_ok_and(|m| m.is_dir());
    // (A local DEST is known to be a directory or not already.)
    let (local, to, _) = file_target(d, name, into);
    let made = usize::from(local == crate::endpoint::trim_slashes(d));
    let local = if local.is_empty() {
        PathBuf::from(".")
    } else {
        crate::endpoint::os(&local).to_path_buf()
    };
    let filters = one_name(
        name,
        &to,
        rules,
        args,
        &format!("source {}", String::from_utf8_lossy(src)),
    )?;
    Ok(Roots {
        local,
        remote: root,
        filters,
        label: String::new(),
        rename: Some(Rename {
            from: crate::endpoint::os(name),
            to: crate::endpoint::os(&to),
            or_into: false,
        }),
        creatable: creatable(args, made),
    })
}

/// [`Roots::creatable`]: `n`, or any number with `--mkpath`.
fn creatable(args: &Args, n: usize) -> usize {
    if args.mkpath {
        usize::MAX
    } else {
        n
    }
}

/// The ancestor of `root` that must exist when the run may create only its
/// last `creatable` components; `None` when that is the login directory or
/// `/` (which always exist) or nothing is required.
pub fn required_parent(root: &[u8], creatable: usize) -> Option<Vec<u8>> {
    let mut p = crate::endpoint::trim_slashes(root).to_vec();
    for _ in 0..creatable {
        if p.is_empty() || p == b"/" || p == b"." {
            return None;
        }
        p = parent_of(&p);
    }
    let p = crate::endpoint::trim_slashes(&p).to_vec();
    (!p.is_empty() && p != b"/" && p != b".").then_some(p)
}

/// The failure for a destination whose `parent` is missing, as rsync's:
/// 11 when a directory could not be made, 3 when a file's directory is
/// missing (rsync's change_dir failure).
pub fn parent_missing(root: &[u8], parent: &[u8], creatable: usize) -> Failure {
    let (root, parent) = (
        String::from_utf8_lossy(root),
        String::from_utf8_lossy(parent),
    );
    fail(
        if creatable == 0 {
            EXIT_SELECTION
        } else {
            EXIT_FILE_IO
        },
        format!(
            "cannot create destination {root}: {parent} does not exist (robosync, like rsync, \
             makes only the destination itself, not its parents): create {parent} first, or \
             pass --mkpath"
        ),
    )
}

/// Where a file named `name` lands for destination `dest`: (directory, name
/// there, whether that name is DEST's own). Into `dest` when it ends in `/`
/// (or `.`), names a home (`~`), or is known to be a directory; otherwise
/// as `dest`'s last component.
fn file_target(dest: &[u8], name: &[u8], into: bool) -> (Vec<u8>, Vec<u8>, bool) {
    let last = crate::endpoint::last_component(dest);
    if into || crate::endpoint::means_contents(dest) || last.starts_with(b"~") {
        let dir = crate::endpoint::trim_slashes(dest).to_vec();
        return (dir, name.to_vec(), false);
    }
    let dir = parent_of(crate::endpoint::trim_slashes(dest));
    (dir, last.to_vec(), true)
}

/// The directory part of a slash-trimmed path: "" (the login or current
/// directory) when it has none, `/` for a top-level name.
fn parent_of(path: &[u8]) -> Vec<u8> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/".to_vec(),
        Some(i) => path[..i].to_vec(),
        None => Vec::new(),
    }
}

/// A rule pattern matching exactly `name` at the sync root.
fn anchored(name: &str) -> String {
    let mut escaped = String::from("/");
    for c in name.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '{' | '}') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Rules selecting `from` on the sending side and `to` on the receiving
/// side, ahead of the user's.
fn one_name(
    from: &[u8],
    to: &[u8],
    rules: &[Rule],
    args: &Args,
    what: &str,
) -> Result<Filters, Failure> {
    let utf8 = |b: &[u8]| {
        std::str::from_utf8(b).map(str::to_string).map_err(|_| {
            fail(
                EXIT_USAGE,
                format!("{what}: a single file's name must be UTF-8 here; copy its directory with a filter instead"),
            )
        })
    };
    let (from, to) = (utf8(from)?, utf8(to)?);
    let rule = |include: bool, pattern: String, side| Rule {
        include,
        pattern,
        side,
    };
    use robosync_scanner::Side;
    let mut mine = vec![
        rule(true, anchored(&from), Side::Sender),
        rule(false, "*".into(), Side::Sender),
        rule(true, anchored(&to), Side::Receiver),
        // A directory in the way is seen whole (rsync replaces it only when
        // empty, or with --delete).
        rule(true, format!("{}/**", anchored(&to)), Side::Receiver),
        rule(false, "*".into(), Side::Receiver),
    ];
    mine.extend_from_slice(rules);
    Filters::new(&mine, args.delete_excluded).map_err(|e| fail(EXIT_USAGE, e.to_string()))
}

/// The remote sync root of a push, as rsync decides it: `data/` (contents)
/// syncs into DEST itself, `data` into DEST/data.
fn push_root(local: &Path, dest: &[u8]) -> Result<Vec<u8>, Failure> {
    let src = local.as_os_str().as_bytes();
    let dest = crate::endpoint::trim_slashes(dest).to_vec();
    if crate::endpoint::means_contents(src) {
        return Ok(dest);
    }
    Ok(join(&dest, crate::endpoint::last_component(src)))
}

/// The local sync root of a pull: `host:/p/results/` (contents) syncs into
/// DEST itself, `host:/p/results` into DEST/results.
fn pull_root(src: &[u8], dest: &Path) -> Result<PathBuf, Failure> {
    if crate::endpoint::means_contents(src) {
        return Ok(dest.to_path_buf());
    }
    if std::fs::metadata(dest).is_ok_and(|m| !m.is_dir()) {
        return Err(fail(
            EXIT_SELECTION,
            format!("destination {} is not a directory", dest.display()),
        ));
    }
    let name = crate::endpoint::last_component(src);
    if name.starts_with(b"~") {
        // Its name is only known once expanded; rsync would use it.
        return Err(fail(
            EXIT_USAGE,
            format!(
                "{} names a home directory: write {}/ to copy its contents into {}",
                String::from_utf8_lossy(src),
                String::from_utf8_lossy(src),
                dest.display()
            ),
        ));
    }
    Ok(dest.join(crate::endpoint::os(name)))
}

async fn target(args: &Args, user: &Option<String>, host: &str) -> Result<Target, Failure> {
    let request = ConfigRequest {
        host: host.to_string(),
        config_file: args.config_file.clone(),
        options: args.options.clone(),
        user: user.clone(),
        port: args.port,
        identity_files: args.identity.clone(),
        family: if args.ipv4 {
            Some(AddressFamily::Inet)
        } else if args.ipv6 {
            Some(AddressFamily::Inet6)
        } else {
            None
        },
    };
    let req = request.clone();
    let config = tokio::task::spawn_blocking(move || ssh_config::resolve(&req))
        .await
        .expect("config task panicked")
        .map_err(|e| fail(EXIT_USAGE, e.to_string()))?;
    crate::auth_hook::before_connect(args, host, &config).await?;
    Ok(Target {
        request,
        config: Arc::new(config),
        ssh_program: args.ssh_program.clone(),
        session: SessionOptions {
            request_timeout: args.timeout,
            ..SessionOptions::default()
        },
    })
}

/// Opens the pool; `work` says (once the scan knows) whether the run will
/// likely have enough to do for more connections (see [`Pool::open_expecting`]).
pub async fn open_pool(
    args: &Args,
    run: &Run,
    target: Target,
    work: impl std::future::Future<Output = bool> + Send + 'static,
) -> Result<Arc<Pool>, Failure> {
    // MFA hosts: one login, all channels on it (see connect::needs_interactive_auth).
    let interactive_auth = target.ssh_program.is_none()
        && robosync_transport::connect::needs_interactive_auth(&target.config);
    let connections = if interactive_auth {
        1
    } else {
        args.connections.unwrap_or(2).max(1)
    };
    let pool = Pool::open_expecting(
        target,
        PoolOptions {
            connections,
            channels: args.channels.unwrap_or(8).max(1),
            retry_for: args.retry_for,
            // Measured (README, Benchmarks): across 50 ms, 2 × 8 channels
            // moved 256 MiB 1.2× faster than 2 × 4. Near, the CPU is the
            // limit, and each connection's sshd decrypts on one core: a 1 GiB
            // push took 1.53 s on 2 × 2 against 1.61 s on 1 × 4 (medians of
            // 6, interleaved), with less spread; small files and pulls tied.
            // Hosts needing interactive auth keep one login: 1 × 4.
            when_near: (args.connections.is_none() || args.channels.is_none()).then(|| {
                let near_connections = match args.connections {
                    Some(_) => connections,
                    None => connections.min(2),
                };
                (
                    near_connections,
                    args.channels.unwrap_or((4 / near_connections).max(1)),
                )
            }),
        },
        work,
    )
    .await
    .map_err(|e| match exit_code(&e) {
        // Never connected, so nothing was lost: the login kept failing
        // (e.g. a ProxyJump host that is down) within --retry-for.
        EXIT_LOST => fail(EXIT_CONNECT, e.to_string()),
        _ => transport_failure(e),
    })?;
    for n in pool.notes.lock().unwrap().drain(..) {
        if n.starts_with("warning") {
            run.warn(n.trim_start_matches("warning: "));
        } else {
            run.note(n);
        }
    }
    Ok(pool)
}

/// Loads the best manifest: local (with its journal folded in) or the destination's copy.
/// `local` is [`compact`]'s result on this pair's state files.
pub fn choose_manifest(
    run: &Run,
    local: Result<Compacted, ManifestError>,
    paths: &robosync_manifest::StatePaths,
    remote_copy: Option<&[u8]>,
) -> (Manifest, Vec<JournalRecord>) {
    let (manifest_path, journal_path) = (&paths.manifest, &paths.journal);
    let (local, pending) = match local {
        Ok(c) => {
            if c.torn_tail {
                run.note(format!(
                    "journal {} ended in a torn record ({} bytes ignored)",
                    journal_path.display(),
                    c.dropped_bytes
                ));
            }
            (
                Some(c.manifest).filter(|m| !m.files.is_empty() || m.run_id > 0),
                c.pending,
            )
        }
        Err(e) => {
            run.warn(&format!(
                "{e}; ignoring robosync's records and comparing the whole destination"
            ));
            let _ = std::fs::remove_file(manifest_path);
            let _ = std::fs::remove_file(journal_path);
            (None, Vec::new())
        }
    };
    let remote = remote_copy.and_then(|b| match Manifest::decode(b) {
        Ok(m) => Some(m),
        Err(e) => {
            run.warn(&format!(
                "the destination's manifest copy is unusable ({e}); comparing the whole destination"
            ));
            None
        }
    });
    let (m, choice) = pick_newer(local, remote);
    run.note(choice.to_string());
    (m.unwrap_or_default(), pending)
}

async fn push_run(
    args: &Args,
    run: &Arc<Run>,
    target: Target,
    roots: Roots,
) -> Result<Vec<String>, Failure> {
    let Roots {
        local: ref local_root,
        remote: ref remote_path,
        filters,
        label: ref dest_label,
        ref rename,
        creatable,
    } = roots;
    let rename = rename.as_ref();
    let meta = std::fs::metadata(local_root)
        .map_err(|e| fail(EXIT_USAGE, format!("source {}: {e}", local_root.display())))?;
    if !meta.is_dir() {
        return Err(fail(
            EXIT_USAGE,
            format!(
                "source {} is not a directory (robosync copies trees)",
                local_root.display()
            ),
        ));
    }
    let abs_src = std::fs::canonicalize(local_root).unwrap_or_else(|_| local_root.to_path_buf());
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let paths = state_paths(&state_dir, &abs_src.to_string_lossy(), dest_label);
    let _held = hold_state(&paths)?;

    // Scan while we connect.
    let scan_root = local_root.to_path_buf();
    let cache_path = paths.stat_cache.clone();
    let (filter, receiving) = (filters.sender, filters.receiver);
    let checksum = args.checksum;
    let (predict, work) = tokio::sync::oneshot::channel();
    let state = paths.clone();
    let progress = Arc::new(robosync_scanner::ScanProgress::default());
    run.scanning(progress.clone());
    let scan = tokio::task::spawn_blocking(move || {
        let mut cache = if checksum {
            StatCache::default()
        } else {
            StatCache::load(&cache_path)
        };
        let opts = ScanOptions {
            filter,
            ignore_cache: checksum,
            progress: Some(progress),
        };
        let snap = robosync_scanner::scan(&scan_root, &opts, &mut cache);
        // Last run's journal folded in now, off the critical path.
        let local = compact(&state.manifest, &state.journal);
        if let Ok(snap) = &snap {
            let known = local.as_ref().ok().map(|c| &c.manifest);
            let _ = predict.send(likely_work(snap, known));
        }
        (snap, cache, local)
    });
    // A dry run transfers nothing: no logins ahead of need.
    let dry_run = args.dry_run;
    let work = async move { !dry_run && work.await.unwrap_or(false) };
    let pool = open_pool(args, run, target, work).await?;
    run.phase(Phase::Scanning);
    let (snap, cache, local) = scan.await.expect("scan task panicked");
    run.phase(Phase::Listing);
    if let Ok(snap) = &snap {
        // The destination will hold about as many entries as the source.
        pool.widen_for_listing(snap.entries.len());
    }
    let mut snap = snap.map_err(|e| {
        fail(
            EXIT_USAGE,
            format!("cannot scan {}: {e}", local_root.display()),
        )
    })?;
    if let Some(r) = rename {
        // The file is known by its destination name from here on.
        for e in snap.entries.iter_mut().filter(|e| e.path == r.from) {
            e.path = r.to.clone();
        }
    }
    let mut errors = unlisted(args, |p| local_root.join(p).symlink_metadata().is_ok());
    for e in &snap.errors {
        let path = robosync_planner::escape(&e.path);
        if e.vanished {
            run.vanished(&path);
        } else {
            errors.push(format!("{path}: {}", e.message));
        }
    }
    for s in &snap.skipped {
        run.warn(&format!(
            "skipping {:?} {} (not a regular file, directory or symlink)",
            s.kind,
            robosync_planner::escape(&s.path)
        ));
    }
    run.note(format!(
        "scanned {} entries ({} hashed, {} from cache)",
        snap.entries.len(),
        snap.stats.files_hashed,
        snap.stats.cache_hits
    ));
    let cache_unchanged = snap.stats.cache_unchanged;
    // The source's tree and entry index need nothing from the server: they
    // are built while it lists the destination.
    let source = tokio::task::spawn_blocking(move || {
        let tree = Tree::from_snapshot(&snap);
        let entries: HashMap<PathBuf, _> = snap
            .entries
            .into_iter()
            .map(|e| (e.path.clone(), e))
            .collect();
        (tree, entries)
    });

    let remote_root = on_session(&pool, |s| async move {
        remote::expand_home(&s, remote_path).await
    })
    .await
    .map_err(transport_failure)?;
    let session = pool.session().await.map_err(transport_failure)?;
    let manifest_remote = join(&remote_root, b".robosync/manifest");
    // Destination, listing and manifest copy at once: each is a few round
    // trips, and a missing destination just lists empty.
    let (made, listing, remote_copy) = futures::join!(
        async {
            if args.dry_run {
                // A dry run changes nothing: no lease, a warning if one is live.
                if let Some(w) = crate::lease::peek_remote(&session, &remote_root).await {
                    run.warn(&w);
                }
                return Ok::<_, Failure>(None);
            }
            // Again on a new session when the link drops meanwhile: the
            // MKDIRs are idempotent, and the lease knows its own.
            let mut s = session.clone();
            loop {
                match prepare_destination(
                    &pool,
                    &s,
                    &remote_root,
                    &state_dir,
                    dest_label,
                    creatable,
                )
                .await
                {
                    Err(f) if f.code == EXIT_LOST => {
                        pool.repair().await.map_err(transport_failure)?;
                        s = pool.session().await.map_err(transport_failure)?;
                    }
                    r => return r.map(Some),
                }
            }
        },
        // A single file's: its name alone (a directory in the way whole).
        list_remote(
            &pool,
            &remote_root,
            rename.map(|r| r.to.as_os_str().as_bytes())
        ),
        read_small(&session, &manifest_remote)
    );
    let _identity = made?;
    let listing = listing.map_err(transport_failure)?;
    if let Some(r) = rename.filter(|r| r.or_into) {
        if listing
            .tree
            .nodes
            .get(&r.to)
            .is_some_and(|n| n.kind == robosync_planner::Kind::Dir)
        {
            return Err(redo(
                Redo::DestIsDir,
                format!("{} is a directory", r.to.display()),
            ));
        }
    }
    run.phase(Phase::Planning);
    errors.extend(listing.errors.iter().cloned());
    let mut listing = listing;
    if let Some(b) = args.backup_dir.as_ref().filter(|b| b.is_relative()) {
        // A backup dir inside the destination is not part of the mirror.
        listing.tree.nodes.retain(|p, _| !p.starts_with(b));
    }
    let (mut manifest, pending) = choose_manifest(run, local, &paths, remote_copy.as_deref());
    // Records of files no longer at the destination mean nothing.
    listing.tree.forget_missing(&mut manifest);

    let (source, entries) = source.await.expect("indexing the source panicked");
    // Excluded entries at the destination are protected from --delete, as rsync does.
    listing.tree = remote::protected(listing.tree, &source, &receiving, &[]);
    if args.checksum {
        // rsync -c: the destination's content too, for every file whose
        // size would let it pass as unchanged.
        let same_size = |p: &Path, n: &robosync_planner::Node| {
            source.nodes.get(p).is_some_and(|s| s.size == n.size)
        };
        errors.extend(remote::hash_files(&pool, &remote_root, &mut listing.tree, same_size).await);
    }
    let opts = PlanOptions {
        delete: args.delete,
        max_delete: args.max_delete,
        delta: session.extensions.copy_data || args.inplace,
        ..Default::default()
    };
    let (plan, guard) = plan_guarded(
        &source,
        &listing.tree,
        &manifest,
        &local_root.display().to_string(),
        &opts,
        args.dry_run,
    )?;
    errors.extend(plan.refused.iter().cloned());
    for w in &plan.warnings {
        run.warn(w);
    }
    run.stats.skipped.store(plan.unchanged, Ordering::Relaxed);
    if args.dry_run {
        pool.close().await;
        return preview(run, &plan, guard, errors);
    }
    if worth_more_sessions(&plan) {
        pool.expand();
    }
    if !errors.is_empty() && args.delete {
        // Scan errors mean the source view is incomplete: never delete on it.
        run.warn("not deleting anything: the source could not be read completely");
    }

    start_journal(run, &paths, &mut manifest, &plan)?;

    let dirs_in_place = push::dirs_in_place(&entries, &listing.tree);
    let job = Arc::new(push::Push {
        run: run.clone(),
        pool: pool.clone(),
        local_root: local_root.to_path_buf(),
        remote_root: remote_root.clone(),
        entries,
        partials: Mutex::new(push::partials(&pending)),
        manifest: Mutex::new(manifest),
        data: push::ReadAhead::for_sessions(pool.capacity()),
        slots: Default::default(),
        dirs_in_place,
        temps: Default::default(),
        root_real: Default::default(),
        local_names: rename
            .map(|r| HashMap::from([(r.to.clone(), r.from.clone())]))
            .unwrap_or_default(),
        hard_links: args.hard_links,
    });
    push::adopt_unchanged(&job, &listing.tree);

    // Timer checkpoints keep the journal durable while appends pause.
    let ticker = {
        let run = run.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                run.checkpoint();
            }
        })
    };
    let (content, deletes): (Vec<Action>, Vec<Action>) = split_deletes(plan.actions);
    // The manifest copy's temp file opens while the files go: storing the
    // copy afterwards then takes two round trips, not three.
    let records_change = content.iter().any(|a| {
        matches!(
            a,
            Action::Copy { .. } | Action::Delta { .. } | Action::SetAttrs { .. }
        )
    });
    let copy_opened = records_change.then(|| {
        let (pool, path) = (pool.clone(), manifest_remote.clone());
        tokio::spawn(async move {
            let s = pool.session().await?;
            let h = open_small(&s, &path).await?;
            Ok::<_, Error>((s, h))
        })
    });
    before_transfer();
    let mut run_errors = job.execute(content).await;
    if run_errors.is_empty() && errors.is_empty() {
        run_errors.extend(job.execute(deletes).await);
    } else if !deletes.is_empty() {
        run.warn(&format!(
            "skipped {} deletion(s) because of errors above",
            deletes.len()
        ));
    }
    ticker.abort();
    run.phase(Phase::Recording);
    errors.extend(run_errors);
    if rename.is_none() && errors.is_empty() {
        // rsync -a's `.`: the sync root takes the source directory's mode
        // and mtime, after its contents changed it.
        use std::os::unix::fs::MetadataExt;
        let t = meta.mtime().clamp(0, u32::MAX as i64) as u32;
        let attrs = robosync_transport::proto::Attrs {
            permissions: Some(meta.mode() & 0o7777),
            times: Some((t, t)),
            ..Default::default()
        };
        let root = &remote_root;
        let set = on_session(&pool, |s| {
            let attrs = attrs.clone();
            async move { s.setstat(root, &attrs).await }
        });
        if let Err(e) = set.await {
            errors.push(format!("cannot set attributes of {dest_label}: {e}"));
        }
    }
    if errors.iter().any(|e| e.contains(crate::space::REMOTE_HINT)) {
        if let Some((bytes, files)) = crate::space::remote_temps(&pool, &remote_root).await {
            errors.push(crate::space::temps_held(bytes, files));
        }
    }
    // Record what the destination now holds, locally and on the destination
    // at once: both record the same state, so whichever lands first, the
    // next run starts from what is there.
    let manifest = Arc::new(job.manifest.lock().unwrap().clone());
    let recorded = {
        let (run, manifest, paths) = (run.clone(), manifest.clone(), paths.clone());
        tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            record_locally(&run, &manifest, &paths, &mut errors);
            errors
        })
    };
    let opened = match copy_opened {
        Some(task) => task.await.ok().and_then(Result::ok),
        None => None,
    };
    if copy_is_current(&manifest, remote_copy.as_deref()) {
        run.note("the destination's manifest copy is current".into());
        if let Some((s, h)) = opened {
            // Opened for nothing: the copy stays as it is, its temp file goes.
            s.close_detached(&h);
            let _ = s.remove(&small_tmp(&manifest_remote)).await;
        }
    } else {
        let data = manifest.encode();
        let early = match opened {
            Some((s, h)) => finish_small(&s, &h, &manifest_remote, &data).await.is_ok(),
            None => false,
        };
        // Not opened, a session lost meanwhile, or a refusal: the whole way, afresh.
        let stored = if early {
            Ok(())
        } else {
            let session = pool.session().await.map_err(transport_failure)?;
            write_small(&session, &manifest_remote, &data).await
        };
        if let Err(e) = stored {
            run.warn(&format!(
                "could not store the manifest copy on the destination: {e}"
            ));
        }
    }
    errors.extend(recorded.await.expect("recording the manifest panicked"));
    // Temp files no attempt will resume: leftovers of earlier runs (late
    // requests of an abandoned connection may even have made some after
    // they were listed) and this run's attempts that did not land.
    let resumable: std::collections::HashSet<Vec<u8>> = job
        .partials
        .lock()
        .unwrap()
        .values()
        .map(|p| join(&remote_root, &p.temp))
        .collect();
    let stale: Vec<Vec<u8>> = listing
        .temps
        .iter()
        .map(|t| join(&remote_root, t))
        .chain(job.temps.lock().unwrap().drain())
        .filter(|t| !resumable.contains(t))
        .collect();
    // Again on a new session if the link drops meanwhile (removing twice is harmless).
    let cleaned = on_session(&pool, |s| {
        let stale = &stale;
        async move {
            let removed = futures::future::join_all(stale.iter().map(|t| s.remove(t))).await;
            match removed
                .into_iter()
                .find_map(|r| r.err().filter(Error::is_connection))
            {
                Some(lost) => Err(lost),
                None => Ok(()),
            }
        }
    })
    .await;
    if let Err(e) = cleaned {
        run.warn(&format!(
            "could not remove {} temp file(s) at the destination ({e}); the next run will",
            stale.len()
        ));
    }
    crate::lease::HELD.release().await;
    let cache = (!cache_unchanged).then_some(&cache);
    close_run(run, &pool, cache, &paths, args.verbose > 0).await;
    unless_lost(run, &pool, errors)
}

/// Makes the destination and robosync's state directory in it, takes the
/// destination's lease and this machine's lock on its canonical identity.
/// A lost connection is `EXIT_LOST`, for the caller to retry on a new session.
async fn prepare_destination(
    pool: &Arc<Pool>,
    s: &robosync_transport::Sftp,
    remote_root: &[u8],
    state_dir: &Path,
    dest_label: &str,
    creatable: usize,
) -> Result<std::fs::File, Failure> {
    let lost_or = |code: i32, what: &str, e: Error| {
        let code = if e.is_connection() { EXIT_LOST } else { code };
        fail(code, format!("{what}: {e}"))
    };
    // One flight: the destination, robosync's state directory in it
    // (where the manifest copy goes), and a check of what is there.
    // MKDIRs fail harmlessly when the directories exist.
    let state = join(remote_root, remote::STATE_DIR);
    let plain = Default::default();
    // robosync's state there lists every path, size and hash: 0700,
    // and an existing directory tightened (in the same flight).
    let private = private_attrs(0o700);
    // The lease's EXCL open and the REALPATH go in the same flight,
    // after the MKDIRs (one channel's requests are answered in order).
    let (_, _, _, there, opened, real) = futures::join!(
        async {
            // A file's own directory is never made (rsync: change_dir fails).
            match creatable {
                0 => Ok(()),
                _ => s.mkdir(remote_root, &plain).await,
            }
        },
        s.mkdir(&state, &private),
        s.setstat(&state, &private),
        s.lstat(remote_root),
        crate::lease::open_excl(s, remote_root),
        s.realpath(remote_root)
    );
    let mut real = real;
    if !there.as_ref().is_ok_and(|a| a.is_dir()) {
        // A file there: what rsync calls "destination must be a directory".
        let file = there.is_ok_and(|a| !a.is_symlink());
        // Missing parents, or not a directory: the careful way, with its errors.
        let parent = required_parent(remote_root, creatable);
        let missing = match &parent {
            Some(p) if !file => match s.stat(p).await {
                Ok(a) => !a.is_dir(),
                // A cut is retried on a new session (the lease knows its own).
                Err(e) if e.is_connection() => {
                    return Err(lost_or(EXIT_PARTIAL, "cannot check the destination", e))
                }
                Err(_) => true,
            },
            _ => false,
        };
        let made = match file || missing {
            true => Ok(()),
            false => push::mkdir_p(s, remote_root).await,
        };
        if file || missing || made.is_err() {
            if let Ok(h) = &opened {
                // An empty lease of ours must not stay behind.
                s.close_detached(h);
                let _ = s.remove(&join(remote_root, b".robosync/lock")).await;
            }
        }
        if file {
            return Err(fail(
                EXIT_SELECTION,
                format!(
                    "destination {} is not a directory: a directory or several sources need one (as rsync)",
                    String::from_utf8_lossy(remote_root)
                ),
            ));
        }
        if let (true, Some(p)) = (missing, &parent) {
            return Err(parent_missing(remote_root, p, creatable));
        }
        if let Err(e) = made {
            return Err(lost_or(EXIT_PARTIAL, "cannot create destination", e));
        }
        let _ = s.mkdir(&state, &private).await;
        real = s.realpath(remote_root).await;
    }
    // One run per destination: its lease, and this machine's lock on
    // its canonical identity (user, host, port, REALPATH).
    let taken = crate::lease::take_remote(pool, s, remote_root, Some(opened), dest_label).await;
    crate::lease::HELD.hold(taken?);
    let real = real.map_err(|e| lost_or(EXIT_PARTIAL, "cannot resolve destination", e))?;
    let c = &pool.target().config;
    let identity = format!(
        "{}@{}:{}:{}",
        c.user,
        c.hostname,
        c.port,
        String::from_utf8_lossy(&real)
    );
    crate::lease::hold_identity(state_dir, &identity, dest_label)
}

/// Lists the remote tree; when the link drops meanwhile, lists it again
/// from the start once the pool has reconnected (a listing changes nothing,
/// so starting over is safe).
/// `only`: see [`remote::list`].
pub async fn list_remote(
    pool: &Arc<Pool>,
    root: &[u8],
    only: Option<&[u8]>,
) -> Result<remote::Listing, Error> {
    on_session(pool, |_| remote::list(pool, root, MAX_REMOTE_ENTRIES, only)).await
}

/// Runs `op`, which must be safe to repeat (it reads, or its changes are
/// idempotent), on a live session; when the link drops meanwhile, runs it
/// again once the pool has reconnected.
/// Gives up when reconnecting does (see [`Pool::repair`]) or after
/// [`RESTARTS`] drops in one operation.
pub async fn on_session<T, F, Fut>(pool: &Pool, op: F) -> Result<T, Error>
where
    F: Fn(Arc<robosync_transport::Sftp>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut restarts = 0;
    loop {
        match op(pool.session().await?).await {
            Err(e) if e.is_connection() && restarts < RESTARTS => {
                restarts += 1;
                pool.repair().await?;
            }
            r => return r,
        }
    }
}

/// A link that drops this often during one operation will not let it finish.
const RESTARTS: usize = 10;

/// The run's result: its entry errors (exit 23), unless the pool gave up on
/// the connection, which ends the run as "connection lost" (exit 30) with
/// those errors shown first.
pub fn unless_lost(run: &Run, pool: &Pool, errors: Vec<String>) -> Result<Vec<String>, Failure> {
    match pool.gave_up() {
        Some(e) => {
            for err in &errors {
                run.error(err);
            }
            Err(transport_failure(e))
        }
        None => Ok(errors),
    }
}

/// The plan, or the `--delete` guard that refuses it (exit 25). A dry run
/// gets the whole plan, deletions included, and the guard a real run would
/// stop at.
pub fn plan_guarded(
    source: &Tree,
    dest: &Tree,
    manifest: &Manifest,
    label: &str,
    opts: &PlanOptions,
    dry_run: bool,
) -> Result<(robosync_planner::Plan, Option<String>), Failure> {
    match plan(source, dest, Some(manifest), label, opts) {
        Ok(p) => Ok((p, None)),
        Err(guard) if dry_run => {
            let open = PlanOptions {
                guards: false,
                ..opts.clone()
            };
            let p = plan(source, dest, Some(manifest), label, &open)
                .map_err(|e| fail(EXIT_GUARD, e.to_string()))?;
            Ok((p, Some(guard.to_string())))
        }
        Err(guard) => Err(fail(EXIT_GUARD, guard.to_string())),
    }
}

/// A dry run's output: every action a real run would take, then the guard
/// that would stop it, if any (with the code the real run would exit with).
pub fn preview(
    run: &Run,
    plan: &robosync_planner::Plan,
    guard: Option<String>,
    errors: Vec<String>,
) -> Result<Vec<String>, Failure> {
    for a in &plan.actions {
        run.planned(a.to_string());
    }
    match guard {
        Some(g) => Err(fail(
            EXIT_GUARD,
            format!("a real run would stop before changing anything: {g}"),
        )),
        None => Ok(errors),
    }
}

/// Opens the run's journal (creating the state directory), numbers the run
/// in `manifest` and records its start; the progress total comes from `plan`.
pub fn start_journal(
    run: &Run,
    paths: &robosync_manifest::StatePaths,
    manifest: &mut Manifest,
    plan: &robosync_planner::Plan,
) -> Result<(), Failure> {
    robosync_manifest::private_dir(&paths.dir).map_err(|e| {
        fail(
            EXIT_USAGE,
            format!("cannot create state dir {}: {e}", paths.dir.display()),
        )
    })?;
    let journal = Journal::open(&paths.journal).map_err(|e| fail(EXIT_USAGE, e.to_string()))?;
    run.set_journal(journal);
    manifest.run_id += 1;
    manifest.written_at_unix = now_unix();
    manifest.block_size = robosync_scanner::BLOCK_SIZE;
    run.journal(&JournalRecord::RunStarted {
        run_id: manifest.run_id,
        unix: manifest.written_at_unix,
    });
    let files = plan
        .actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::Copy { .. } | Action::Delta { .. } | Action::Symlink { .. }
            )
        })
        .count();
    run.set_total(
        plan.bytes_to_send(robosync_scanner::BLOCK_SIZE),
        files as u64,
    );
    run.phase(Phase::Transferring);
    Ok(())
}

/// Whether a plan has enough work to repay opening the pool's other
/// channels and connections (see [`Pool::expand`]): a few files go at once
/// over the first session.
pub fn worth_more_sessions(plan: &robosync_planner::Plan) -> bool {
    let files = plan
        .actions
        .iter()
        .filter(|a| !matches!(a, Action::Mkdir { .. }))
        .count();
    enough_work(files, plan.bytes_to_send(robosync_scanner::BLOCK_SIZE))
}

fn enough_work(files: usize, bytes: u64) -> bool {
    files >= 16 || bytes >= 8 << 20
}

/// A guess, before anything is listed, at whether a push will have enough to
/// do for [`worth_more_sessions`]: the files the local manifest does not
/// record as already at the destination with this size and mtime. No
/// manifest (a first push) means everything.
fn likely_work(snap: &robosync_scanner::Snapshot, known: Option<&Manifest>) -> bool {
    let (mut files, mut bytes) = (0, 0);
    for e in &snap.entries {
        if !matches!(e.kind, robosync_scanner::EntryKind::File) {
            continue;
        }
        let same = known
            .and_then(|m| m.files.get(e.path.as_os_str().as_bytes()))
            .is_some_and(|r| r.size == e.size && r.mtime_ns == e.mtime_ns);
        if !same {
            files += 1;
            bytes += e.size;
        }
    }
    enough_work(files, bytes)
}

/// The end of every run: keep the stat cache, report the pool's notes
/// (waiting for its growth only when someone reads them), log out.
pub async fn close_run(
    run: &Run,
    pool: &Pool,
    cache: Option<&StatCache>,
    paths: &robosync_manifest::StatePaths,
    verbose: bool,
) {
    run.phase(Phase::Closing);
    // None: the scan left it as loaded, and rewriting it would only cost a sync.
    if let Some(Err(e)) = cache.map(|c| c.save(&paths.stat_cache)) {
        run.warn(&format!(
            "cannot save the stat cache {}: {e}",
            paths.stat_cache.display()
        ));
    }
    pool.settle(verbose).await;
    for n in pool.notes.lock().unwrap().drain(..) {
        run.note(n);
    }
    pool.close().await;
}

/// Ends the run's journal and records locally what the destination now
/// holds: the manifest saved, the journal compacted to what is still pending.
pub fn record_locally(
    run: &Run,
    manifest: &Manifest,
    paths: &robosync_manifest::StatePaths,
    errors: &mut Vec<String>,
) {
    if let Some(e) = run.journal_error() {
        errors.push(format!("journal: {e}"));
    }
    drop(run.take_journal());
    if let Err(e) = manifest.save(&paths.manifest) {
        errors.push(e.to_string());
    } else if let Err(e) = compact(&paths.manifest, &paths.journal) {
        errors.push(e.to_string());
    }
}

/// The plan's trailing `--delete` removals, apart from everything else.
pub fn split_deletes(actions: Vec<Action>) -> (Vec<Action>, Vec<Action>) {
    let tail = actions
        .iter()
        .rposition(|a| !matches!(a, Action::Delete { .. }))
        .map(|i| i + 1)
        .unwrap_or(0);
    let mut content = actions;
    let deletes = content.split_off(tail);
    // A plan of only deletions: leading wrong-kind deletions can't exist without content.
    (content, deletes)
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reads a small remote file, or `None` if it cannot be read. Two round
/// trips: OPEN, then FSTAT and reads of the first 4 MiB in one flight
/// (reads past the end just answer EOF); a bigger file costs one more pass.
pub async fn read_small(s: &robosync_transport::Sftp, path: &[u8]) -> Option<Vec<u8>> {
    const AHEAD: u64 = 4 << 20;
    let h = s
        .open(
            path,
            robosync_transport::proto::FXF_READ,
            &Default::default(),
        )
        .await
        .ok()?;
    let chunk = s.limits.max_read.max(1) as u64;
    let reads = (0..AHEAD.div_ceil(chunk)).map(|k| s.read(&h, k * chunk, chunk as u32));
    let (attrs, parts) = futures::join!(s.fstat(&h), futures::future::join_all(reads));
    s.close_detached(&h);
    let size = attrs.ok()?.size?;
    if size > (4u64 << 30) {
        return None;
    }
    let mut out = Vec::with_capacity(size as usize);
    for p in parts {
        // A short read ends what the speculative reads can be trusted for.
        match p.ok()? {
            Some(bytes) if bytes.len() as u64 == chunk => out.extend_from_slice(&bytes),
            Some(bytes) => {
                out.extend_from_slice(&bytes);
                break;
            }
            None => break,
        }
    }
    if (out.len() as u64) < size {
        let rest = push::read_range(s, path, out.len() as u64, size - out.len() as u64)
            .await
            .ok()?;
        out.extend_from_slice(&rest);
    }
    (out.len() as u64 == size).then_some(out)
}

/// Holds this source and destination's state directory for the run: two
/// runs of one pair (an overlapping cron job, a manual run) would interleave
/// one journal and race on one manifest. `flock`, so the lock ends with the
/// process however it ends; there is never a stale lock to clear.
pub fn hold_state(paths: &robosync_manifest::StatePaths) -> Result<std::fs::File, Failure> {
    let cannot = |what: &str, p: &Path, e: std::io::Error| {
        fail(EXIT_USAGE, format!("cannot {what} {}: {e}", p.display()))
    };
    robosync_manifest::private_dir(&paths.dir)
        .map_err(|e| cannot("create state dir", &paths.dir, e))?;
    let path = paths.dir.join("lock");
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).truncate(false).write(true);
    let file =
        robosync_manifest::open_private(&mut opts, &path).map_err(|e| cannot("open", &path, e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    match std::io::Error::last_os_error() {
        e if e.kind() == std::io::ErrorKind::WouldBlock => Err(fail(
            EXIT_BUSY,
            format!(
                "another robosync run is syncing this source and destination (it holds {}); \
                 this run did nothing: try again when that one has finished",
                path.display()
            ),
        )),
        e => Err(cannot("lock", &path, e)),
    }
}

/// Whether the destination's manifest copy, as read at the start of the run,
/// already holds exactly `manifest`'s records (a no-change rerun): storing it
/// again would cost three round trips and change nothing but its date.
fn copy_is_current(manifest: &Manifest, copy: Option<&[u8]>) -> bool {
    copy.and_then(|b| Manifest::decode(b).ok())
        .is_some_and(|old| old.block_size == manifest.block_size && old.files == manifest.files)
}

/// Writes a small remote file atomically (temp + rename) in three round
/// trips: OPEN (creating the directory only if that fails), WRITEs and CLOSE
/// as one ordered batch, RENAME.
pub async fn write_small(
    s: &robosync_transport::Sftp,
    path: &[u8],
    data: &[u8],
) -> Result<(), Error> {
    let h = open_small(s, path).await?;
    finish_small(s, &h, path, data).await
}

/// [`write_small`]'s first step: opens (empties) `path`'s temp file, making
/// its directory if missing. Returns the handle.
pub async fn open_small(s: &robosync_transport::Sftp, path: &[u8]) -> Result<Vec<u8>, Error> {
    use robosync_transport::proto::{FXF_CREAT, FXF_TRUNC, FXF_WRITE};
    let dir = &path[..path.iter().rposition(|&b| b == b'/').unwrap_or(0)];
    let flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC;
    let tmp = small_tmp(path);
    let private = private_attrs(0o600);
    match s.open(&tmp, flags, &private).await {
        Ok(h) => Ok(h),
        Err(Error::NoSuchFile(_)) => {
            push::mkdir_p(s, dir).await?;
            s.open(&tmp, flags, &private).await
        }
        Err(e) => Err(e),
    }
}

/// [`write_small`]'s rest: `data` into the temp file opened as `h` on `s`,
/// then the temp file renamed over `path`.
pub async fn finish_small(
    s: &robosync_transport::Sftp,
    h: &[u8],
    path: &[u8],
    data: &[u8],
) -> Result<(), Error> {
    // FSETSTAT too: a temp left by an older run keeps its mode through OPEN.
    s.write_and_close(h, 0, data, Some(&private_attrs(0o600)))
        .await
        .map_err(|e| e.at_path(&small_tmp(path)))?;
    s.rename(&small_tmp(path), path).await
}

/// Attributes that set only the permission bits.
fn private_attrs(mode: u32) -> robosync_transport::proto::Attrs {
    robosync_transport::proto::Attrs {
        permissions: Some(mode),
        ..Default::default()
    }
}

fn small_tmp(path: &[u8]) -> Vec<u8> {
    [path, b".tmp"].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use robosync_manifest::Record;

    #[test]
    fn where_a_single_file_lands() {
        let t = |dest: &str, into| {
            let (dir, name, named) = file_target(dest.as_bytes(), b"a.txt", into);
            (
                String::from_utf8(dir).unwrap(),
                String::from_utf8(name).unwrap(),
                named,
            )
        };
        let s = |d: &str, n: &str, named| (d.to_string(), n.to_string(), named);
        assert_eq!(t("x/", false), s("x", "a.txt", false));
        assert_eq!(t("x/b.txt", false), s("x", "b.txt", true));
        assert_eq!(t("x/b.txt", true), s("x/b.txt", "a.txt", false));
        assert_eq!(t("b.txt", false), s("", "b.txt", true));
        assert_eq!(t("/b.txt", false), s("/", "b.txt", true));
        assert_eq!(t("", false), s("", "a.txt", false));
        assert_eq!(t("~", false), s("~", "a.txt", false));
        assert_eq!(t("x/.", false), s("x/.", "a.txt", false));
        assert_eq!(parent_of(b"/p/x"), b"/p");
    }

    fn manifest(size: u64, run_id: u64) -> Manifest {
        let mut m = Manifest {
            block_size: 256 << 10,
            written_at_unix: 1_700_000_000 + run_id as i64,
            run_id,
            ..Default::default()
        };
        let record = Record {
            size,
            mtime_ns: 1,
            mode: 0o644,
            whole: [7; 32],
            blocks: vec![[7; 32]],
            remote_size: size,
            remote_mtime: 1,
        };
        m.files.insert(b"a/b".to_vec(), record);
        m
    }

    #[test]
    fn a_copy_with_the_same_records_is_current_whatever_its_date() {
        let copy = manifest(10, 1).encode();
        assert!(copy_is_current(&manifest(10, 2), Some(&copy)));
        assert!(!copy_is_current(&manifest(11, 2), Some(&copy)));
        assert!(!copy_is_current(&Manifest::default(), Some(&copy)));
        assert!(!copy_is_current(&manifest(10, 2), None));
        assert!(!copy_is_current(&manifest(10, 2), Some(b"not a manifest")));
    }
}

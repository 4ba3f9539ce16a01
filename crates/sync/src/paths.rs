//! Paths as rsync reads them: `SRC... DEST` turned into one [`Job`] per
//! source, each run in order.
//!
//! A source without a trailing slash lands inside DEST under its own name,
//! one with it (or `.`) fills DEST itself; a single file goes into DEST or
//! takes DEST's name, its parent synced with rules that select that one
//! name on each side; several sources all go into DEST as a directory,
//! `--delete` never touching what another source brings. What only the
//! server can tell (DEST/NAME is a directory, the source is a file) comes
//! back as a [`Redo`], and the run goes again in the right form.
//!
//! The front-end says how to reach a host ([`Connector`]: ssh_config, an
//! auth hook); [`run_command`] does the rest and adds the runs' reports up.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::BoxFuture;
use robosync_scanner::{Filters, Rule};
use robosync_transport::Target;

use crate::endpoint::Endpoint;
use crate::failure::{fail, EntryError, Failure, Redo, EXIT_PARTIAL, EXIT_SELECTION, EXIT_USAGE};
use crate::{join, parent_of, Direction, Job, Observer, Options, Rename, Report, Stats};

/// One command line's transfer: every source to one destination.
pub struct Command {
    /// The sources, in order: all local, or all on one `[user@]host`.
    pub sources: Vec<Endpoint>,
    /// Where they go.
    pub dest: Endpoint,
    /// The user's filter rules.
    pub rules: Vec<Rule>,
    /// `--delete-excluded`: excluded entries at the destination are deleted too.
    pub delete_excluded: bool,
    /// `--mkpath`: DEST's missing parents are made (else, as rsync, an error).
    pub mkpath: bool,
    /// How each run behaves.
    pub options: Options,
}

/// How the front-end reaches a host: `[user@]host` as `ssh` would resolve
/// it (ssh_config, an auth hook first), or why not.
pub trait Connector: Send + Sync {
    /// The target for `user@host`.
    fn target<'a>(
        &'a self,
        user: &'a Option<String>,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Target, Failure>>;
}

/// Runs `command`: one sync per source, in order. A source that could not
/// be copied (23) does not stop the next; anything worse (connection,
/// guard, busy) stops there. The report adds the runs up.
pub async fn run_command(
    command: &Command,
    connector: &dyn Connector,
    observer: Arc<dyn Observer>,
) -> Report {
    let runs = Runs {
        cmd: command,
        connector,
        observer,
        started: Instant::now(),
        total: Mutex::default(),
    };
    let result = go(&runs).await;
    let total = runs.total.into_inner().unwrap();
    let (errors, failure) = match result {
        Ok(errors) => (errors, None),
        Err(f) => (total.kept, Some(f)),
    };
    Report {
        stats: total.stats,
        elapsed: runs.started.elapsed(),
        errors,
        failure,
        vanished: total.vanished,
    }
}

/// The runs of one command and what they added up to.
struct Runs<'a> {
    cmd: &'a Command,
    connector: &'a dyn Connector,
    observer: Arc<dyn Observer>,
    started: Instant,
    total: Mutex<Totals>,
}

#[derive(Default)]
struct Totals {
    stats: Stats,
    vanished: Vec<String>,
    /// Entry errors of a run that then stopped.
    kept: Vec<EntryError>,
}

impl Runs<'_> {
    /// One run: its entry errors, or what stopped it.
    async fn sync_one(
        &self,
        direction: Direction,
        target: Target,
        roots: Roots,
    ) -> Result<Vec<EntryError>, Failure> {
        let job = Job {
            direction,
            local: roots.local,
            remote: roots.remote,
            filters: roots.filters,
            label: roots.label,
            dialer: Arc::new(robosync_transport::SshDialer::new(target)),
            options: self.cmd.options.clone(),
            rename: roots.rename,
            creatable: roots.creatable,
        };
        let report = crate::run(job, self.observer.clone()).await;
        let mut total = self.total.lock().unwrap();
        total.stats += report.stats;
        total.vanished.extend(report.vanished);
        match report.failure {
            None => Ok(report.errors),
            Some(f) => {
                total.kept.extend(report.errors);
                Err(f)
            }
        }
    }
}

/// `SRC... DEST`: every source checked first (one side local, the other
/// one host), then one run per source in order, as rsync copies them. A
/// source that could not be copied (23) does not stop the next; anything
/// worse (connection, guard, busy) stops there.
async fn go(args: &Runs<'_>) -> Result<Vec<EntryError>, Failure> {
    let (srcs, dst, rules) = (&args.cmd.sources, args.cmd.dest.clone(), &args.cmd.rules);
    match srcs.len() {
        0 => return Err(fail(EXIT_USAGE, "no source given")),
        1 => return go_one(args, rules, &srcs[0], &dst).await,
        _ => {}
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
    let tops = match args.cmd.options.delete && contents > 0 {
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
        mine.extend_from_slice(rules);
        match go_one(args, &mine, src, &dst).await {
            Ok(e) => errors.extend(e),
            Err(f) if f.code == EXIT_PARTIAL => {
                // The next source goes on: what failed before this one
                // stopped is this command's too.
                errors.append(&mut args.total.lock().unwrap().kept);
                errors.push(f.message.into());
            }
            Err(mut f) => {
                let rest: Vec<String> = srcs[i + 1..].iter().map(Endpoint::label).collect();
                if !rest.is_empty() {
                    f.message = format!("{}; not copied: {}", f.message, rest.join(", "));
                }
                if !errors.is_empty() {
                    let earlier: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
                    f.message = format!("{}; earlier: {}", f.message, earlier.join("; "));
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
    args: &Runs<'_>,
    rules: &[Rule],
    src: &Endpoint,
    dst: &Endpoint,
) -> Result<Vec<EntryError>, Failure> {
    let rules = rules.to_vec();
    let filters = Filters::new(&rules, args.cmd.delete_excluded)
        .map_err(|e| fail(EXIT_USAGE, e.to_string()))?
        .with_list(args.cmd.options.files_list.clone());
    if args.cmd.options.hard_links && matches!(src, Endpoint::Remote { .. }) {
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
            let target = args.connector.target(user, host).await?;
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
                let r = args.sync_one(Direction::Push, target.clone(), roots).await;
                match r {
                    Err(f) if f.redo == Some(Redo::DestIsDir) && !into => into = true,
                    r => return r,
                }
            }
        }
        (Endpoint::Remote { user, host, path }, Endpoint::Local(l)) => {
            let target = args.connector.target(user, host).await?;
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
                match args.sync_one(Direction::Pull, target.clone(), roots).await {
                    Err(f) if f.redo == Some(Redo::SourceIsFile) => {}
                    r => return r,
                }
            }
            let mut roots = pulled_file(path, l, &rules, args)?;
            let name = roots.rename.as_ref().map(|n| n.to.display().to_string());
            roots.label = format!("{} [{}]", src.label(), name.unwrap_or_default());
            args.sync_one(Direction::Pull, target, roots).await
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
struct Roots {
    local: PathBuf,
    /// As typed (before `~` expansion).
    remote: Vec<u8>,
    filters: Filters,
    label: String,
    rename: Option<Rename>,
    /// See [`Job::creatable`].
    creatable: usize,
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
    args: &Runs<'_>,
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
            from: crate::os(name),
            to: crate::os(&to),
            or_into,
        }),
        creatable: creatable(args, made),
    }))
}

/// A single file pulled (the server said `src` is one), as rsync: into DEST
/// when it ends in `/` or is a directory, else as DEST's own name.
fn pulled_file(src: &[u8], dest: &Path, rules: &[Rule], args: &Runs<'_>) -> Result<Roots, Failure> {
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
        crate::os(&local).to_path_buf()
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
            from: crate::os(name),
            to: crate::os(&to),
            or_into: false,
        }),
        creatable: creatable(args, made),
    })
}

/// [`Roots::creatable`]: `n`, or any number with `--mkpath`.
fn creatable(args: &Runs<'_>, n: usize) -> usize {
    if args.cmd.mkpath {
        usize::MAX
    } else {
        n
    }
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
    args: &Runs<'_>,
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
    Filters::new(&mine, args.cmd.delete_excluded).map_err(|e| fail(EXIT_USAGE, e.to_string()))
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
    Ok(dest.join(crate::os(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

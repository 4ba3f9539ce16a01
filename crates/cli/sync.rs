//! The command line turned into a [`Job`]: endpoints parsed, the sync root
//! chosen as rsync would, the host resolved as `ssh HOST` would (with the
//! auth hook), then one [`robosync_sync::run`] and its report shown.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use robosync_scanner::{Filters, Rule};
use robosync_sync::{fail, Direction, Failure, Job, Options, EXIT_USAGE};
use robosync_transport::ssh_config::{self, AddressFamily, ConfigRequest};
use robosync_transport::{SessionOptions, Target};

use crate::endpoint::{join, Endpoint};
use crate::run::{Run, RunOptions};
use crate::Args;

pub async fn main(args: Args, rules: Vec<Rule>) -> i32 {
    let run = Arc::new(Run::new(RunOptions {
        verbose: args.verbose,
        quiet: args.quiet,
        progress: !args.no_progress && !args.json,
    }));
    let report = match go(&args, rules).await {
        Ok(job) => robosync_sync::run(job, run.clone()).await,
        Err(f) => robosync_sync::Report {
            stats: Default::default(),
            elapsed: run.started.elapsed(),
            errors: Vec::new(),
            failure: Some(f),
        },
    };
    run.finish_progress();
    let code = report.exit_code();
    for e in &report.errors {
        run.error(e);
    }
    let errors = match report.failure {
        Some(f) => {
            run.error(&f.message);
            vec![f.message]
        }
        None => report.errors,
    };
    let s = &report.stats;
    let elapsed = report.elapsed.as_secs_f64();
    if args.json {
        let summary = serde_json::json!({
            "files_transferred": s.files,
            "bytes_transferred": s.bytes,
            "files_skipped": s.skipped,
            "deleted": s.deleted,
            "verified": s.verified,
            "errors": errors,
            "dry_run": args.dry_run,
            "elapsed_seconds": elapsed,
            "exit_code": code,
        });
        println!("{summary}");
    } else if args.verbose > 0 {
        eprintln!(
            "robosync: {} files ({} bytes) transferred, {} unchanged, {} deleted in {:.2} s",
            s.files, s.bytes, s.skipped, s.deleted, elapsed
        );
    }
    code
}

/// The run's options from the command line.
fn options(args: &Args) -> Options {
    Options {
        dry_run: args.dry_run,
        delete: args.delete,
        max_delete: args.max_delete,
        backup_dir: args.backup_dir.clone(),
        checksum: args.checksum,
        verify: args.verify,
        inplace: args.inplace,
        sparse: args.sparse,
        fsync: args.fsync,
        connections: args.connections,
        channels: args.channels,
        retry_for: args.retry_for,
        state_dir: args.state_dir.clone(),
        verbose: args.verbose,
    }
}

async fn go(args: &Args, rules: Vec<Rule>) -> Result<Job, Failure> {
    let src = Endpoint::parse(&args.src).map_err(|e| fail(EXIT_USAGE, format!("source: {e}")))?;
    let dst =
        Endpoint::parse(&args.dest).map_err(|e| fail(EXIT_USAGE, format!("destination: {e}")))?;
    let filters =
        Filters::new(&rules, args.delete_excluded).map_err(|e| fail(EXIT_USAGE, e.to_string()))?;
    match (&src, &dst) {
        (Endpoint::Local(l), Endpoint::Remote { user, host, path }) => {
            let (local, root, filters, label) = match single_file(l, path, &rules, args)? {
                Some((parent, filters, name)) => {
                    let root = crate::endpoint::trim_slashes(path).to_vec();
                    // Its own state (not the parent's whole-tree pair).
                    let label = format!("{} [{name}]", remote_label(user, host, &root));
                    (parent, root, filters, label)
                }
                None => {
                    let root = push_root(l, path)?;
                    let label = remote_label(user, host, &root);
                    (l.to_path_buf(), root, filters, label)
                }
            };
            Ok(Job {
                direction: Direction::Push,
                local,
                remote: root,
                filters,
                label,
                target: target(args, user, host).await?,
                options: options(args),
            })
        }
        (Endpoint::Remote { user, host, path }, Endpoint::Local(l)) => {
            let root = pull_root(path, l)?;
            Ok(Job {
                direction: Direction::Pull,
                local: root,
                remote: path.clone(),
                filters,
                label: src.label(),
                target: target(args, user, host).await?,
                options: options(args),
            })
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

/// A single-file push (`a.txt host:x/`): the file's parent synced with
/// rules that select that one name on both sides, so the engine stays
/// tree-based and `--delete` (even `--delete-excluded`) touches nothing else.
/// `None` when the source is not a file.
fn single_file(
    local: &Path,
    dest: &[u8],
    rules: &[Rule],
    args: &Args,
) -> Result<Option<(PathBuf, Filters, String)>, Failure> {
    let src = local.as_os_str().as_bytes();
    let is_file = std::fs::symlink_metadata(local).is_ok_and(|m| m.is_file());
    if !is_file || crate::endpoint::means_contents(src) {
        return Ok(None);
    }
    let shown = local.display();
    let name = std::str::from_utf8(crate::endpoint::last_component(src)).map_err(|_| {
        fail(
            EXIT_USAGE,
            format!("source {shown}: a single file's name must be UTF-8 here; copy its directory with a filter instead"),
        )
    })?;
    if !crate::endpoint::means_contents(dest) {
        return Err(fail(
            EXIT_USAGE,
            format!(
                "source {shown} is a file: end the destination with / to copy it into that directory (a new name is not supported yet)"
            ),
        ));
    }
    let parent = match local.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut escaped = String::from("/");
    for c in name.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '{' | '}') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    let both = robosync_scanner::Side::SenderAndReceiver;
    let mut mine = vec![
        Rule {
            include: true,
            pattern: escaped,
            side: both,
        },
        Rule {
            include: false,
            pattern: "*".into(),
            side: both,
        },
    ];
    mine.extend_from_slice(rules);
    let filters =
        Filters::new(&mine, args.delete_excluded).map_err(|e| fail(EXIT_USAGE, e.to_string()))?;
    Ok(Some((parent, filters, name.to_string())))
}

/// The remote sync root of a push, as rsync decides it: `data/` (contents)
/// syncs into DEST itself, `data` into DEST/data.
fn push_root(local: &Path, dest: &[u8]) -> Result<Vec<u8>, Failure> {
    let src = local.as_os_str().as_bytes();
    let dest = crate::endpoint::trim_slashes(dest).to_vec();
    if crate::endpoint::means_contents(src) {
        return Ok(dest);
    }
    if std::fs::symlink_metadata(local).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(fail(
            EXIT_USAGE,
            format!(
                "source {} is a symlink, which robosync copies only inside a tree: give {}/ for the contents of the directory it points to",
                local.display(),
                local.display()
            ),
        ));
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
            EXIT_USAGE,
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

//! The command line turned into a [`Command`] (endpoints parsed, the
//! engine's options), hosts reached as `ssh HOST` would (with the auth
//! hook), [`robosync_sync::run_command`] run with the observer that shows
//! it, and its report turned into the exit code and the summary.

use std::sync::Arc;
use std::time::Duration;

use robosync_scanner::Rule;
use robosync_sync::progress::{JsonProgress, Tee};
use robosync_sync::{fail, Command, Endpoint, Failure, Options, Report, SshConnector, EXIT_USAGE};
use robosync_transport::auth_hook;
use robosync_transport::ssh_config::{AddressFamily, ConfigRequest};
use robosync_transport::SessionOptions;

use crate::run::{Run, RunOptions};
use crate::Args;

pub async fn main(args: Args, rules: Vec<Rule>) -> i32 {
    let run = Arc::new(Run::new(RunOptions {
        verbose: args.verbose,
        quiet: args.quiet,
        progress: !args.no_progress && !args.json && !args.json_progress,
        json: args.json,
        itemize: args.itemize_changes,
        stats: args.stats,
    }));
    let report = match open_log(&args, &run).and_then(|()| command(&args, rules)) {
        Ok(command) => {
            let lines = args
                .json_progress
                .then(|| Arc::new(JsonProgress::new(Box::new(std::io::stderr()))));
            // The phase line's counters (the scan's) move on their own.
            let ticker = {
                let (run, lines) = (run.clone(), lines.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        run.refresh();
                        if let Some(l) = &lines {
                            l.tick();
                        }
                    }
                })
            };
            let observer: Arc<dyn robosync_sync::Observer> = match &lines {
                Some(l) => Arc::new(Tee(run.clone(), l.clone())),
                None => run.clone(),
            };
            let ssh = connector(&args);
            let report = tokio::select! {
                r = robosync_sync::run_command(&command, &ssh, observer) => r,
                () = interrupted() => {
                    // Everything landed so far is in place and journaled;
                    // the destination's lease goes now (bounded: the link
                    // may hang).
                    let release = robosync_sync::release_lease();
                    let _ = tokio::time::timeout(Duration::from_secs(3), release).await;
                    run.interrupted()
                }
            };
            ticker.abort();
            if let Some(l) = &lines {
                l.finish();
            }
            report
        }
        Err(f) => Report::failed(f),
    };
    // The exit code, from the runs' typed outcomes (README "Exit codes").
    for e in &report.errors {
        run.error(&e.message);
    }
    if let Some(f) = &report.failure {
        run.error(&f.message);
    }
    run.summary(&report, args.dry_run);
    report.exit_code()
}

/// The command line as the engine takes it.
fn command(args: &Args, rules: Vec<Rule>) -> Result<Command, Failure> {
    let (sources, dest) = args.paths();
    let dest = Endpoint::parse(dest).map_err(|e| fail(EXIT_USAGE, format!("destination: {e}")))?;
    let sources = sources
        .iter()
        .map(|s| Endpoint::parse(s).map_err(|e| fail(EXIT_USAGE, format!("source: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Command {
        sources,
        dest,
        rules,
        delete_excluded: args.delete_excluded,
        mkpath: args.mkpath,
        options: options(args),
    })
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

/// The engine's options from the command line.
fn options(args: &Args) -> Options {
    Options {
        dry_run: args.dry_run,
        delete: args.delete,
        max_delete: args.max_delete,
        backup_dir: args.backup_dir.clone(),
        checksum: args.checksum,
        full_listing: args.full_listing,
        verify: args.verify,
        inplace: args.inplace,
        sparse: args.sparse,
        fsync: args.fsync,
        connections: args.connections,
        channels: args.channels,
        retry_for: args.retry_for,
        state_dir: args.state_dir.clone(),
        verbose: args.verbose,
        files_list: args.files_list.clone(),
        hard_links: args.hard_links,
        bwlimit: args.bwlimit,
    }
}

/// Hosts reached as `ssh HOST` would (ssh_config, `-o`, `-p`, …), the
/// auth hook run first.
fn connector(args: &Args) -> SshConnector {
    SshConnector {
        request: ConfigRequest {
            host: String::new(),
            config_file: args.ssh.config_file.clone(),
            options: args.ssh.options.clone(),
            user: None,
            port: args.ssh.port,
            identity_files: args.ssh.identity.clone(),
            family: if args.ssh.ipv4 {
                Some(AddressFamily::Inet)
            } else if args.ssh.ipv6 {
                Some(AddressFamily::Inet6)
            } else {
                None
            },
        },
        hook: auth_hook::Settings {
            command: args.auth_command.clone(),
            margin: args.auth_margin,
            timeout: args.auth_timeout,
            state_dir: args
                .state_dir
                .clone()
                .unwrap_or_else(robosync_sync::default_state_dir),
        },
        ssh_program: args.ssh_program.clone(),
        session: SessionOptions {
            request_timeout: args.timeout,
            ..SessionOptions::default()
        },
    }
}

/// Ctrl-C, or a SIGTERM from a scheduler.
async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

//! robosync: resumable, parallel bulk transfers over SFTP alone, for HPC
//! automation ("robot") nodes that allow nothing but sftp-server.
//!
//! The binary only: it turns arguments into a `robosync_sync::Command`
//! (`sync.rs`: endpoints, the engine's options, the host as `ssh HOST`
//! resolves it, the auth hook's settings), runs it with an observer that
//! draws progress, itemises and prints the summary or the `--json` report
//! (`run.rs`), and exits with the report's code. The sync is written once,
//! in robosync-sync, and so are the exit-code table
//! (`robosync_sync::EXIT_*`, rsync's numbers where the meaning matches) and
//! the JSON report (`robosync_sync::json`). A first argument naming a
//! subcommand (`doctor`, `robot-key`, `state`, `completions`, `man`) runs
//! that instead (`subcommands.rs`, `packaging.rs`); any other first word is
//! a path, as rsync reads it.

mod packaging;
mod run;
mod subcommands;
mod sync;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use robosync_transport::auth_hook::parse_duration;

#[derive(Parser, Debug)]
#[command(
    name = "robosync",
    version = env!("ROBOSYNC_LONG_VERSION"),
    about = "Resumable, parallel bulk file transfer over SFTP alone (robot/automation nodes)",
    override_usage = "robosync [OPTIONS] SRC... DEST",
    after_help = "Examples:\n  robosync ./data rorqual:/project/x        push: makes /project/x/data\n  robosync ./data/ rorqual:/project/x       push the contents of data into /project/x\n  robosync rorqual:/project/x ./            pull: makes ./x\n  robosync a.txt rorqual:/project/b.txt     one file to a new name\n  robosync a b/ c.txt rorqual:/project/x/   several sources, in order\n  robosync -n --delete ./data/ robot:/scratch/data   show what a mirror would do\nAs rsync: a source ending in / means its contents; without, the directory itself lands inside DEST.\nExit codes (rsync's where they match): 0 ok, 1 usage, 3 file selection, 5 server would not start SFTP,\n  10 cannot connect, 11 destination's parent missing, 12 protocol error, 20 interrupted, 23 partial, 24 source files vanished,\n  25 delete guard, 30 connection lost, 70 internal, 75 destination busy, 255 auth or host key refused.\n\
Subcommands (the first word; a local path of that name is written ./doctor):\n\
\x20 robosync doctor HOST[:PATH]         check each step to a server and say how to fix what fails\n\
\x20 robosync robot-key --from PATTERN   make a robot-node key; print the line to register and the config\n\
\x20 robosync state list|clean           the local state of each (source, destination) pair; clean old state
\x20 robosync completions SHELL          shell completions (bash, zsh, fish, elvish, powershell)\n\
\x20 robosync man                        the man page (roff)"
)]
pub struct Args {
    /// Source: a local path or [user@]host:path (host may be a Host alias from ssh_config).
    pub src: OsString,
    /// Destination: a local path or [user@]host:path.
    pub dest: OsString,
    /// Further paths (`SRC... DEST`): the last is the destination.
    #[arg(hide = true)]
    pub more: Vec<OsString>,

    #[command(flatten)]
    pub ssh: SshArgs,
    /// Use this OpenSSH client for the connection (e.g. to share a ControlMaster login).
    #[arg(long, value_name = "PROGRAM")]
    pub ssh_program: Option<PathBuf>,

    /// Show what would be done, one line per action, and change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Delete destination entries that the source does not have (after every transfer succeeded).
    #[arg(long)]
    pub delete: bool,
    /// Refuse --delete if it would remove more than N entries (default: half the destination).
    #[arg(long, value_name = "N")]
    pub max_delete: Option<u64>,
    /// With --delete, move entries into DIR (a destination path) instead of deleting them.
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Ignore the stat cache: rehash every local file (a push's source, a
    /// pull's destination) instead of trusting unchanged size and times.
    #[arg(short = 'c', long)]
    pub checksum: bool,
    /// List the whole destination of a push, instead of confirming the
    /// last run's record of it with a stat per directory (also implied by
    /// --checksum, and done every 10th run or after 7 days).
    #[arg(long)]
    pub full_listing: bool,
    /// After landing, read files back and compare BLAKE3.
    #[arg(long)]
    pub verify: bool,
    /// Update changed files in place, writing only changed blocks (when copy-data is missing).
    #[arg(long)]
    pub inplace: bool,
    /// Handle sparse files efficiently: holes in a pushed file are not sent
    /// (the destination file gets holes where the source has them).
    #[arg(short = 'S', long)]
    pub sparse: bool,
    /// Create the destination's missing parent directories (as rsync
    /// --mkpath); without it, as rsync, only the destination itself is made.
    #[arg(long)]
    pub mkpath: bool,
    /// Keep hard links (push): names of one local file arrive as links to
    /// one remote file (hardlink@openssh.com), not as copies.
    #[arg(short = 'H', long)]
    pub hard_links: bool,
    /// fsync each file on the destination before renaming it into place.
    #[arg(long)]
    pub fsync: bool,
    /// Exclude paths matching PATTERN (rsync rules: first match wins; `+ PATTERN` includes).
    #[arg(long, value_name = "PATTERN", action = ArgAction::Append, allow_hyphen_values = true)]
    pub exclude: Vec<String>,
    /// Include paths matching PATTERN (rsync rules: first match wins; `- PATTERN` excludes).
    #[arg(long, value_name = "PATTERN", action = ArgAction::Append, allow_hyphen_values = true)]
    pub include: Vec<String>,
    /// Read exclude patterns from FILE (a `+ ` line is an include).
    #[arg(long, value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Read include patterns from FILE (a `- ` line is an exclude).
    #[arg(long, value_name = "FILE")]
    pub include_from: Vec<PathBuf>,
    /// An rsync filter rule: + - P R H S (include, exclude, protect, risk,
    /// hide, show), `merge FILE`, `!` (clear); e.g. -f '- *.tmp' -f 'P /keep/'.
    #[arg(short = 'f', long, value_name = "RULE", allow_hyphen_values = true)]
    pub filter: Vec<String>,
    /// Transfer only the paths listed in FILE (`-` for standard input), one a
    /// line, relative to the source; `#`/`;` lines are comments. As rsync:
    /// the directories leading to them come too, a listed directory's
    /// contents only with -r.
    #[arg(long, value_name = "FILE")]
    pub files_from: Option<PathBuf>,
    /// With --files-from, also everything below a listed directory (robosync
    /// always recurses otherwise).
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// The paths read from --files-from.
    #[arg(skip)]
    pub files_list: Option<robosync_scanner::FileList>,
    /// Also delete destination entries the rules exclude (implies --delete;
    /// protect/risk rules and `-sr` rules still protect).
    #[arg(long)]
    pub delete_excluded: bool,

    /// SSH connections to open [default: 2].
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// SFTP channels per connection [default: 8; 2 to a host under 2 ms away].
    #[arg(long, value_name = "M")]
    pub channels: Option<usize>,
    /// Keep reconnecting this long once no connection works, then exit 30 (e.g. 30s, 10m, 1h).
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_duration)]
    pub retry_for: Duration,
    /// Give up on a request the server has not answered in this long (e.g. 60s, 5m).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Command to run before connecting when the certificate is missing or about to expire.
    #[arg(long, value_name = "CMD")]
    pub auth_command: Option<String>,
    /// Run the --auth-command when the certificate expires within this margin [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub auth_margin: Option<Duration>,
    /// Stop a hung --auth-command (and stop waiting for another run's) after this long.
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// Where robosync keeps its own state (manifests, journals, stat caches).
    #[arg(long, env = "ROBOSYNC_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print one JSON object on stdout (and nothing else there): the report
    /// of the run, schema in README "JSON report"; -v lines go to stderr.
    #[arg(long)]
    pub json: bool,
    /// JSON lines on stderr for pipeline tools: each phase as it begins,
    /// progress (bytes and files done/total, rate) at most twice a second,
    /// and an end line; schema in README "JSON progress". Stdout is untouched.
    #[arg(long)]
    pub json_progress: bool,
    /// One line per action in rsync's -i format (as -v, without the notes).
    #[arg(long)]
    pub itemize_changes: bool,
    /// Print counters at the end (files, bytes, resumed, unchanged, deleted, rate).
    #[arg(long)]
    pub stats: bool,
    /// Limit the transfer to RATE in total over all connections: bytes per
    /// second with a K, M or G suffix (binary units; a bare number is KiB, as rsync).
    #[arg(long, value_name = "RATE", value_parser = robosync_sync::parse_rate)]
    pub bwlimit: Option<u64>,
    /// Append itemised actions, warnings and errors, with UTC timestamps, to FILE.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// More output: -v itemises actions (on stdout) and adds notes on the
    /// connection choices (on stderr); -vv also times each phase.
    #[arg(short = 'v', long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Never show progress bars (they only appear when stderr is a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// How to reach a host, as ssh's own options say it (the sync's and
/// doctor's alike).
#[derive(clap::Args, Debug, Clone)]
pub struct SshArgs {
    /// ssh_config file to use instead of ~/.ssh/config (as ssh -F).
    #[arg(short = 'F', value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Identity (private key) file, as ssh -i; may be repeated.
    #[arg(short = 'i', value_name = "IDENTITY")]
    pub identity: Vec<PathBuf>,
    /// Port on the remote host, as scp -P (not rsync's -P: progress shows by
    /// itself on a terminal, and every run resumes partial files).
    #[arg(short = 'P', value_name = "PORT")]
    pub port: Option<u16>,
    /// An ssh_config option, as ssh -o "Key=value"; may be repeated.
    #[arg(short = 'o', value_name = "OPTION")]
    pub options: Vec<String>,
    /// Use IPv4 addresses only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// Use IPv6 addresses only.
    #[arg(short = '6')]
    pub ipv6: bool,
}

impl Args {
    /// The sources and the destination, as typed (`SRC... DEST`).
    pub fn paths(&self) -> (Vec<&OsString>, &OsString) {
        let mut all: Vec<&OsString> = [&self.src, &self.dest]
            .into_iter()
            .chain(&self.more)
            .collect();
        let dest = all.pop().expect("clap requires two paths");
        (all, dest)
    }
}

/// Values that parse but cannot work: refused before anything connects,
/// with the option's name and what would.
fn check_values(args: &Args) -> Result<(), String> {
    const DAY: Duration = Duration::from_secs(86_400);
    let within = |name: &str, v: Duration, lo: Duration, hi: Duration| {
        if v < lo || v > hi {
            Err(format!(
                "{name} {v:?} cannot work: use a value from {lo:?} to {hi:?}"
            ))
        } else {
            Ok(())
        }
    };
    within("--timeout", args.timeout, Duration::from_secs(1), DAY)?;
    within("--retry-for", args.retry_for, Duration::ZERO, 30 * DAY)?;
    if let Some(m) = args.auth_margin {
        within("--auth-margin", m, Duration::ZERO, 30 * DAY)?;
    }
    // OpenSSH allows 10 sessions per connection by default (MaxSessions)
    // and 10 unauthenticated connections at once (MaxStartups).
    for (name, v) in [
        ("--connections", args.connections),
        ("--channels", args.channels),
    ] {
        if let Some(n) = v.filter(|n| !(1..=64).contains(n)) {
            return Err(format!(
                "{name} {n} cannot work: use 1 to 64 (servers allow about 10 by default)"
            ));
        }
    }
    let (sources, dest) = args.paths();
    let named = sources.iter().map(|p| ("source", *p));
    for (what, p) in named.chain([("destination", dest)]) {
        if p.as_encoded_bytes().contains(&b'\n') {
            return Err(format!(
                "the {what} {p:?} contains a newline (a quoting mistake?); refusing to use it"
            ));
        }
    }
    Ok(())
}

/// Filter rules in command-line order (first match wins), read as rsync
/// reads its options: `+ `/`- ` prefixes in include/exclude values and files.
fn filter_rules(
    matches: &clap::ArgMatches,
) -> Result<Vec<robosync_scanner::Rule>, robosync_scanner::FilterError> {
    let mut opts = Vec::new();
    for id in [
        "exclude",
        "include",
        "exclude_from",
        "include_from",
        "filter",
    ] {
        if let (Some(at), Some(values)) = (matches.indices_of(id), matches.get_raw(id)) {
            opts.extend(at.zip(values).map(|(i, v)| (i, id, v)));
        }
    }
    opts.sort_by_key(|(i, _, _)| *i);
    let mut rules = robosync_scanner::Rules::default();
    for (_, id, v) in opts {
        // Patterns and rules were checked to be UTF-8 by clap; files are paths.
        let text = v.to_string_lossy();
        match id {
            "exclude" | "include" => rules.pattern(&text, id == "include"),
            "exclude_from" | "include_from" => {
                rules.pattern_file(std::path::Path::new(v), id == "include_from")
            }
            _ => rules.filter(&text),
        }?;
    }
    Ok(rules.into_vec())
}

fn main() {
    // clap's errors would exit 2 (rsync's "protocol incompatibility"): a
    // wrapper would not know a typo from a fault. Usage is 1.
    let usage = |e: clap::Error| -> ! {
        if e.use_stderr() {
            let _ = e.print();
            std::process::exit(1);
        }
        e.exit()
    };
    // Subcommands come first, by their exact name: `robosync SRC DEST`
    // keeps its meaning for every other word (a local path named like a
    // subcommand is reachable as ./doctor).
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(code) = subcommand(&argv) {
        std::process::exit(code);
    }
    let matches = Args::command()
        .try_get_matches_from(argv)
        .unwrap_or_else(|e| usage(e));
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| usage(e));
    // As rsync: --delete-excluded implies --delete.
    args.delete |= args.delete_excluded;
    if let Err(e) = check_values(&args) {
        eprintln!("robosync: error: {e}");
        std::process::exit(1);
    }
    if let Some(f) = &args.files_from {
        match robosync_scanner::FileList::read(f, args.recursive) {
            Ok(list) => args.files_list = Some(list),
            Err(e) => {
                eprintln!("robosync: error: {e}");
                std::process::exit(match e {
                    robosync_scanner::FilterError::Read { .. } => robosync_sync::EXIT_SELECTION,
                    _ => robosync_sync::EXIT_USAGE,
                });
            }
        }
    }
    let rules = match filter_rules(&matches) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("robosync: error: {e}");
            // As rsync: a rules file that cannot be read is a file-selection
            // error (3); a rule that makes no sense is a usage error.
            let code = match e {
                robosync_scanner::FilterError::Read { .. } => robosync_sync::EXIT_SELECTION,
                _ => robosync_sync::EXIT_USAGE,
            };
            std::process::exit(code);
        }
    };
    robosync_sync::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    // On a worker, not this thread: replies then wake the run's futures on
    // the worker that read them, instead of across threads to this one.
    let run = rt.spawn(sync::main(args, rules));
    let code = rt.block_on(run).unwrap_or_else(|e| {
        eprintln!("robosync: error: internal failure ({e}); please report it");
        robosync_sync::EXIT_INTERNAL
    });
    // Don't wait for lingering tasks (e.g. a proxy child) on the way out.
    rt.shutdown_timeout(Duration::from_millis(200));
    std::process::exit(code);
}

/// Runs `robosync doctor …` (and the other subcommands) when the first
/// argument names one; the exit code.
fn subcommand(argv: &[OsString]) -> Option<i32> {
    let rest = || {
        let mut v = vec![OsString::from(format!(
            "robosync {}",
            argv[1].to_string_lossy()
        ))];
        v.extend(argv[2..].iter().cloned());
        v
    };
    match argv.get(1)?.to_str()? {
        "doctor" => Some(subcommands::doctor(rest())),
        "robot-key" => Some(subcommands::robot_key(rest())),
        "state" => Some(subcommands::state(rest())),
        "completions" | "man" => Some(packaging::main(rest())),
        _ => None,
    }
}

//! The `doctor`, `robot-key` and `state` subcommands' arguments (clap),
//! handed to robosync-doctor and robosync-sync's `state` module as plain
//! options.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use robosync_doctor::{doctor, robot_key, DoctorOptions, RobotKeyOptions};
use robosync_sync::EXIT_USAGE;
use robosync_transport::auth_hook::parse_duration;

#[derive(Parser, Debug)]
#[command(
    name = "robosync doctor",
    about = "Check, step by step, whether robosync can work with HOST (and PATH there), and say how to fix what fails",
    after_help = "Nothing changes on the server except, with a PATH, one probe file that is written and removed.\n\
                  Exit code: 0 when every check passes, else the code a sync would end with at the first failure\n\
                  (1 config, 10 cannot connect, 255 host key or authentication, 5 SFTP refused)."
)]
pub struct DoctorArgs {
    /// [user@]host or [user@]host:PATH (host may be a Host alias from ssh_config).
    pub target: String,
    #[command(flatten)]
    pub ssh: crate::SshArgs,
    /// Give up on a step the server has not answered in this long.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Size of the write probe (with a PATH).
    #[arg(long, default_value = "8M", value_name = "SIZE", value_parser = robosync_sync::parse_rate)]
    pub probe_size: u64,
    /// Print the checks as one JSON document on stdout (name, status
    /// ok/failed/skipped, detail, fix, notes); schema in README "doctor --json".
    #[arg(long)]
    pub json: bool,
}

#[derive(Parser, Debug)]
#[command(
    name = "robosync robot-key",
    about = "Create a dedicated ed25519 key for a robot node and print the line to register, the ssh config stanza and the doctor command",
    after_help = "The from= pattern lists the addresses the key may be used from, comma-separated: at least the first three\n\
                  octets fixed (216.18.209.* or 216.18.209.0/24, not 216.18.*.*) and public. A client that connects over IPv6\n\
                  arrives from its IPv6 address: list that too (e.g. 2620:123:7002:4::/64), or keep AddressFamily inet."
)]
pub struct RobotKeyArgs {
    /// Addresses the key may be used from (the from= pattern list), e.g. 216.18.209.*
    #[arg(long, value_name = "PATTERN")]
    pub from: Option<String>,
    /// The key file to create [default: ~/.ssh/robosync_robot_ed25519].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Print the lines for an existing key instead of refusing.
    #[arg(long)]
    pub reuse: bool,
    /// The forced command (the site's transfer wrapper).
    #[arg(long, value_name = "WRAPPER", default_value = robot_key::ALLIANCE_TRANSFER_WRAPPER)]
    pub command: String,
    /// The Host alias for ~/.ssh/config.
    #[arg(long, value_name = "ALIAS", default_value = "robot")]
    pub host: String,
    /// The robot node's host name (e.g. robot.rorqual.alliancecan.ca).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Port of the robot node's sshd, if not 22.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Your account name on the cluster [default: $USER].
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Accept private and loopback addresses in the pattern (a site other
    /// than the Alliance, a lab network, a test).
    #[arg(long)]
    pub any_address: bool,
}

/// clap's parse of a subcommand's arguments; on an error, the exit code.
fn parse<T: Parser>(argv: Vec<OsString>) -> Result<T, i32> {
    match T::try_parse_from(argv) {
        Ok(a) => Ok(a),
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            Err(EXIT_USAGE)
        }
        Err(e) => e.exit(),
    }
}

/// Runs `robosync doctor` with the arguments after `doctor`; the exit code.
pub fn doctor(argv: Vec<OsString>) -> i32 {
    let a: DoctorArgs = match parse(argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    doctor::main(DoctorOptions {
        target: a.target,
        config_file: a.ssh.config_file,
        identity: a.ssh.identity,
        port: a.ssh.port,
        options: a.ssh.options,
        ipv4: a.ssh.ipv4,
        ipv6: a.ssh.ipv6,
        timeout: a.timeout,
        probe_size: a.probe_size,
        json: a.json,
    })
}

/// Runs `robosync robot-key` with the arguments after `robot-key`; the exit code.
pub fn robot_key(argv: Vec<OsString>) -> i32 {
    let a: RobotKeyArgs = match parse(argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let opts = RobotKeyOptions {
        from: a.from,
        key: a.key,
        reuse: a.reuse,
        command: a.command,
        host: a.host,
        hostname: a.hostname,
        port: a.port,
        user: a.user,
        any_address: a.any_address,
    };
    match robot_key::run(&opts) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("robosync robot-key: error: {e}");
            EXIT_USAGE
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "robosync state",
    about = "List or clean robosync's local state: one directory per (source, destination) pair"
)]
pub struct StateArgs {
    /// The state directory [default: $XDG_STATE_HOME/robosync, else ~/.local/state/robosync].
    #[arg(long, env = "ROBOSYNC_STATE_DIR", value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub action: StateAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum StateAction {
    /// Each pair: key, direction, last run, size on disk, interrupted, locked by a live run.
    List,
    /// Remove the state of pairs not run for a while (or of the pairs named),
    /// never one a running robosync holds. The next run of a removed pair
    /// compares everything again (and a part-sent big file starts over).
    Clean {
        /// Pairs whose last run is older than this (e.g. 30d, 12h) [default: 90d, unless PAIRs are named].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        older_than: Option<Duration>,
        /// Show what would be removed, remove nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Only these pairs: a KEY (or its first 6+ hex digits) as `state list`
        /// shows it, or a local root or remote side exactly as listed.
        #[arg(value_name = "PAIR")]
        pairs: Vec<String>,
    },
}

/// Runs `robosync state …` with the arguments after `state`; the exit code.
pub fn state(argv: Vec<OsString>) -> i32 {
    use robosync_sync::state;
    let a: StateArgs = match parse(argv) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let dir = a.state_dir.unwrap_or_else(robosync_sync::default_state_dir);
    let now = std::time::SystemTime::now();
    let fail = |e: std::io::Error| {
        eprintln!("robosync state: error: {}: {e}", dir.display());
        EXIT_USAGE
    };
    match a.action {
        StateAction::List => match state::list(&dir) {
            Ok(entries) if entries.is_empty() => {
                eprintln!("robosync state: no pairs in {}", dir.display());
                0
            }
            Ok(entries) => {
                print!("{}", state::render_list(&entries, now));
                0
            }
            Err(e) => fail(e),
        },
        StateAction::Clean {
            older_than,
            dry_run,
            pairs,
        } => {
            let opts = state::CleanOptions {
                older_than,
                pairs,
                dry_run,
            };
            match state::clean(&dir, &opts, now) {
                Ok(report) => {
                    print!("{}", state::render_clean(&report));
                    for u in &report.unmatched {
                        eprintln!("robosync state: error: no pair matches {u:?} (see robosync state list)");
                    }
                    report.exit_code()
                }
                Err(e) => fail(e),
            }
        }
    }
}

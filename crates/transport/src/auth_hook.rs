//! The pre-connect hook: refresh a short-lived certificate before logging in.
//!
//! `--auth-command CMD` (or `AuthCommand` for the host in robosync's config
//! file) runs through `/bin/sh -c` before the first connection when a
//! certificate of the host's identities is missing or expires within the
//! margin (`--auth-margin`, `AuthMargin`, default 1 h). With no certificate
//! at all it runs every time. Concurrent runs serialise on an exclusive
//! `flock` and re-check the certificate once they hold it, so one refreshes
//! and the others use its result (the AiiDA pattern). A failing hook stops the
//! run and shows its stderr.
//!
//! The config file is `$ROBOSYNC_CONFIG`, else `$XDG_CONFIG_HOME/robosync/config`
//! (`~/.config/robosync/config`): `Host PATTERN...` stanzas (`*`, `?`, `!`
//! negation, matched against the host as typed and its HostName) holding
//! `AuthCommand CMD` and `AuthMargin DURATION`; the first value obtained wins,
//! and the command line beats the file.

use std::fs::{self, File};
use std::io::{IsTerminal, Read};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::connect::{certificate_paths, certificate_time_left, human_duration};
use crate::ssh_config::{wildcard_match, HostConfig};

const DEFAULT_MARGIN: Duration = Duration::from_secs(3600);

/// The command line's say in the hook (`--auth-command`, `--auth-margin`,
/// `--auth-timeout`, `--state-dir`); the config file fills what is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--auth-command`: what refreshes the certificate.
    pub command: Option<String>,
    /// `--auth-margin`: refresh when the certificate expires sooner than this.
    pub margin: Option<Duration>,
    /// How long the command may run, and how long to wait for another run's.
    pub timeout: Duration,
    /// Where the lock goes when no certificate is configured.
    pub state_dir: PathBuf,
}

/// Why the hook stopped the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookError {
    /// robosync's config file cannot be read or has a mistake (a usage error).
    Config(String),
    /// The hook failed, timed out, or could not take the lock (authentication).
    Failed(String),
}

/// What to run for one host, and when.
struct Hook {
    command: String,
    margin: Duration,
    timeout: Duration,
}

/// Runs the host's hook if it has one and the certificate calls for it.
pub async fn before_connect(
    settings: &Settings,
    host: &str,
    cfg: &HostConfig,
) -> Result<(), HookError> {
    let file = config_path();
    let from_file = match &file {
        Some(p) if p.exists() => {
            let text = fs::read_to_string(p).map_err(|e| {
                HookError::Config(format!("cannot read robosync config {}: {e}", p.display()))
            })?;
            settings_for(&text, &[host, &cfg.hostname])
                .map_err(|e| HookError::Config(format!("{}:{e}", p.display())))?
        }
        _ => (None, None),
    };
    let Some(command) = settings.command.clone().or(from_file.0) else {
        return Ok(());
    };
    let hook = Hook {
        command,
        margin: settings.margin.or(from_file.1).unwrap_or(DEFAULT_MARGIN),
        timeout: settings.timeout,
    };
    let state_dir = settings.state_dir.clone();
    let cfg = cfg.clone();
    let host = host.to_string();
    tokio::task::spawn_blocking(move || run_if_needed(&hook, &host, &cfg, &state_dir))
        .await
        .expect("auth hook task panicked")
        .map_err(HookError::Failed)
}

/// A duration as `--auth-margin` and `AuthMargin` take it (and robosync's
/// other duration options): `30s`, `10m`, `2h`, `1d`, `500ms`; bare is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 30s, 10m, 2h)"))?;
    let mult = match unit {
        "ms" => 0.001,
        "s" | "" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?} (use s, m, h or d)")),
    };
    Duration::try_from_secs_f64(n * mult).map_err(|_| format!("{s:?} is not a usable duration"))
}

fn config_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROBOSYNC_CONFIG") {
        return Some(p.into());
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("robosync/config"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/robosync/config"))
}

/// `(AuthCommand, AuthMargin)` for a host whose names are `names`; errors are `LINE: message`.
fn settings_for(text: &str, names: &[&str]) -> Result<(Option<String>, Option<Duration>), String> {
    let (mut command, mut margin) = (None, None);
    let mut active = true;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once(|c: char| c.is_whitespace() || c == '=')
            .map(|(k, v)| (k, v.trim_start_matches([' ', '\t', '=']).trim()))
            .unwrap_or((line, ""));
        let err = |m: String| format!("{}: {m}", i + 1);
        match key.to_ascii_lowercase().as_str() {
            "host" => {
                let patterns: Vec<&str> = value.split_whitespace().collect();
                if patterns.is_empty() {
                    return Err(err("Host needs at least one pattern".into()));
                }
                active = host_matches(&patterns, names);
            }
            "authcommand" if value.is_empty() => {
                return Err(err("AuthCommand needs a command".into()))
            }
            "authcommand" => {
                if active && command.is_none() {
                    command = Some(value.to_string());
                }
            }
            "authmargin" => {
                let d = parse_duration(value).map_err(err)?;
                if active && margin.is_none() {
                    margin = Some(d);
                }
            }
            _ => {
                return Err(err(format!(
                "unknown setting {key:?} (robosync's config knows Host, AuthCommand, AuthMargin)"
            )))
            }
        }
    }
    Ok((command, margin))
}

/// ssh_config `Host` semantics: some positive pattern matches and no negated one does.
fn host_matches(patterns: &[&str], names: &[&str]) -> bool {
    // One matcher for all of robosync (linear time, whatever the pattern).
    let hit = |p: &str| {
        let p = p.to_ascii_lowercase();
        names
            .iter()
            .any(|n| wildcard_match(&n.to_ascii_lowercase(), &p))
    };
    !patterns
        .iter()
        .any(|p| p.strip_prefix('!').is_some_and(hit))
        && patterns.iter().any(|p| !p.starts_with('!') && hit(p))
}

/// Whether the certificate is missing or expires within the margin.
fn needs_refresh(cfg: &HostConfig, margin: Duration) -> bool {
    certificate_time_left(cfg).is_none_or(|left| left < margin.as_secs() as i64)
}

fn run_if_needed(
    hook: &Hook,
    host: &str,
    cfg: &HostConfig,
    state_dir: &Path,
) -> Result<(), String> {
    if !needs_refresh(cfg, hook.margin) {
        return Ok(());
    }
    let _lock = lock(cfg, state_dir, hook.timeout)?;
    // Another run may have refreshed the certificate while we waited.
    if !needs_refresh(cfg, hook.margin) {
        return Ok(());
    }
    run(hook, host, cfg)
}

/// An exclusive lock, held until dropped: beside the certificate when there is
/// one (so runs with different state dirs still agree), else in the state dir.
fn lock(cfg: &HostConfig, state_dir: &Path, timeout: Duration) -> Result<File, String> {
    let beside_cert = certificate_paths(cfg)
        .first()
        .and_then(|c| c.parent().map(|d| d.join(".robosync-auth.lock")));
    let in_state = state_dir.join("auth-hook.lock");
    let open = |p: &Path| {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p)
    };
    let file = match beside_cert.as_deref().map(open) {
        Some(Ok(f)) => f,
        _ => fs::create_dir_all(state_dir)
            .and_then(|()| open(&in_state))
            .map_err(|e| {
                format!(
                    "cannot create the auth-hook lock {}: {e}",
                    in_state.display()
                )
            })?,
    };
    // Polled, not blocking: a waiting run says so once and gives up in time.
    let deadline = Instant::now() + timeout;
    let mut said = false;
    loop {
        // SAFETY: flock on a file we own, non-blocking.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
            _ => return Err(format!("cannot lock the auth-hook lock file: {e}")),
        }
        if !said {
            eprintln!(
                "robosync: waiting for another robosync run's --auth-command to refresh the \
                 certificate (up to {}, --auth-timeout)",
                human_duration(timeout.as_secs())
            );
            said = true;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "another robosync run's --auth-command held the lock for more than {} \
                 (--auth-timeout); check for a hung run or raise --auth-timeout",
                human_duration(timeout.as_secs())
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run(hook: &Hook, host: &str, cfg: &HostConfig) -> Result<(), String> {
    // On a terminal the hook may prompt (MFA for the signing service): let it
    // talk to the user. Otherwise keep its stderr for the error message.
    let tty = std::io::stdin().is_terminal();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&hook.command)
        .env("ROBOSYNC_HOST", host)
        .env("ROBOSYNC_HOSTNAME", &cfg.hostname)
        .stdin(if tty { Stdio::inherit() } else { Stdio::null() })
        // robosync's stdout is for results (--json): the hook's goes to stderr.
        .stdout(std::io::stderr())
        .stderr(if tty {
            Stdio::inherit()
        } else {
            Stdio::piped()
        });
    if let Some(c) = certificate_paths(cfg).first() {
        cmd.env("ROBOSYNC_CERTIFICATE", c);
    }
    if !tty {
        // Its own process group, so a timeout stops whatever it started too.
        // (On a terminal it stays in ours: a prompt needs the foreground.)
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run --auth-command {:?}: {e}", hook.command))?;
    let reader = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = e.read_to_string(&mut s);
            s
        })
    });
    let deadline = Instant::now() + hook.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => {
                let pid = child.id() as i32;
                // SAFETY: signalling the hook's own group (or the hook alone on a terminal).
                unsafe { libc::kill(if tty { pid } else { -pid }, libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "--auth-command {:?} did not finish within {} (--auth-timeout) and was stopped; \
                     check what it waits for, or raise --auth-timeout",
                    hook.command,
                    human_duration(hook.timeout.as_secs())
                ));
            }
            Err(e) => return Err(format!("--auth-command {:?}: {e}", hook.command)),
        }
    };
    let stderr = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let detail = stderr.trim();
    Err(format!(
        "--auth-command {:?} failed ({status}){}",
        hook.command,
        if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("3 weeks").is_err());
    }

    #[test]
    fn config_file_first_value_wins_and_patterns_match() {
        let text = "# site hooks\nHost cscs-* !cscs-old\n  AuthCommand cscs-keygen --refresh\n  AuthMargin 2h\n\
                    Host *\n  AuthCommand other\n  AuthMargin=10m\n";
        assert_eq!(
            settings_for(text, &["cscs-daint", "daint.cscs.ch"]).unwrap(),
            (
                Some("cscs-keygen --refresh".into()),
                Some(Duration::from_secs(7200))
            )
        );
        assert_eq!(
            settings_for(text, &["cscs-old", "x"]).unwrap(),
            (Some("other".into()), Some(Duration::from_secs(600)))
        );
        assert!(settings_for("Host a\n  Frobnicate yes\n", &["a"])
            .unwrap_err()
            .starts_with("2: unknown setting"));
        assert!(settings_for("AuthMargin soon\n", &["a"]).is_err());
    }

    #[test]
    fn pathological_pattern_is_matched_without_backtracking() {
        // 16 stars against 32 'a's and a mismatch: ~C(32,16) = 6e8 paths
        // for the backtracking matcher this replaced, ~500 steps for ours.
        let pattern = "*a".repeat(16) + "b";
        let name = "a".repeat(32);
        assert!(!host_matches(&[&pattern], &[&name]));
        assert!(host_matches(&["*A*a?"], &[&name]));
    }
}

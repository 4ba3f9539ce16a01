//! `robosync doctor HOST[:PATH]`: why a robot node refuses, in one command.
//!
//! Checks in the order a connection meets them, each printed as ✓ or ✗
//! (with the fix) on stdout: the resolved ssh config, the key files, DNS
//! and the address family, TCP, the host key, authentication, the SFTP
//! handshake, the server's extensions, the PATH, how many channels the
//! server grants, the round trip, and (with a PATH) a short write probe. A
//! check that cannot run because an earlier one failed is shown as skipped.
//!
//! Nothing changes remotely except the probe file, which is created with a
//! fresh name (EXCL) and removed. The exit code is the one a sync would
//! have ended with at the first failed check (see robosync_sync::exit_code), 0 when all pass.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use robosync_transport::connect::{certificate_paths, certificate_time_left, human_duration};
use robosync_transport::known_hosts::Verdict;
use robosync_transport::ssh_config::{self, AddressFamily, ConfigRequest, StrictHostKeyChecking};
use robosync_transport::{proto, Connection, Error, SessionOptions, Sftp, Target};
use serde::Serialize;

use robosync_sync::{exit_code, EXIT_CONNECT, EXIT_DENIED, EXIT_USAGE};

/// What `robosync doctor` checks: the binary parses them (see its
/// `--help`) and passes them here.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// [user@]host or [user@]host:PATH (host may be a Host alias from ssh_config).
    pub target: String,
    /// ssh_config file to use instead of ~/.ssh/config (as ssh -F).
    pub config_file: Option<PathBuf>,
    /// Identity (private key) files, as ssh -i.
    pub identity: Vec<PathBuf>,
    /// Port on the remote host, as scp -P.
    pub port: Option<u16>,
    /// ssh_config options, as ssh -o "Key=value".
    pub options: Vec<String>,
    /// IPv4 addresses only.
    pub ipv4: bool,
    /// IPv6 addresses only.
    pub ipv6: bool,
    /// Give up on a step the server has not answered in this long.
    pub timeout: Duration,
    /// Size of the write probe (with a PATH).
    pub probe_size: u64,
    /// Print one JSON document ([`DoctorReport`]) instead of the lines.
    pub json: bool,
}

/// `robosync doctor --json`'s document: every check in order (README
/// "doctor --json").
#[derive(Debug, Clone, Default, Serialize)]
pub struct DoctorReport {
    /// [`DOCTOR_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The target as given.
    pub target: String,
    /// The process's exit code: 0, or the code a sync would have ended
    /// with at the first failed check.
    pub exit_code: i32,
    /// The checks in the order they ran.
    pub checks: Vec<CheckResult>,
}

/// The [`DoctorReport`] shape: raised when a field changes meaning or goes
/// away (new fields may be added without raising it).
pub const DOCTOR_SCHEMA_VERSION: u32 = 1;

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The check, as printed before the colon (`TCP`, `host key`, `SFTP`, …).
    pub name: String,
    /// How it went.
    pub status: Status,
    /// What it found, or why it was skipped.
    pub detail: String,
    /// How to fix a failure (lines joined by newlines); null otherwise.
    pub fix: Option<String>,
    /// Further facts the check found (e.g. each agent key).
    pub notes: Vec<String>,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Ok,
    /// It failed; `fix` says what to do.
    Failed,
    /// It could not run because an earlier check failed (or, like the write
    /// probe without a PATH, was not asked for).
    Skipped,
}

/// The checks' verdicts as they are printed (or, with `--json`, kept for
/// the document); the first failure's exit code.
#[derive(Default)]
struct Checks {
    failed: Option<i32>,
    /// `Some` with `--json`: nothing printed, everything kept.
    kept: Option<Vec<CheckResult>>,
}

impl Checks {
    fn keep(&mut self, name: &str, status: Status, detail: &str, fix: Option<&str>) -> bool {
        let Some(kept) = self.kept.as_mut() else {
            return false;
        };
        kept.push(CheckResult {
            name: name.to_string(),
            status,
            detail: detail.to_string(),
            fix: fix.map(str::to_string),
            notes: Vec::new(),
        });
        true
    }
    fn pass(&mut self, name: &str, detail: impl AsRef<str>) {
        if !self.keep(name, Status::Ok, detail.as_ref(), None) {
            println!("✓ {name}: {}", detail.as_ref());
        }
    }
    fn fail(&mut self, name: &str, detail: impl AsRef<str>, fix: impl AsRef<str>, code: i32) {
        self.failed.get_or_insert(code);
        if self.keep(name, Status::Failed, detail.as_ref(), Some(fix.as_ref())) {
            return;
        }
        println!("✗ {name}: {}", detail.as_ref());
        for line in fix.as_ref().lines() {
            println!("    fix: {line}");
        }
    }
    fn skip(&mut self, name: &str, why: &str) {
        if !self.keep(name, Status::Skipped, why, None) {
            println!("- {name}: skipped ({why})");
        }
    }
    fn note(&mut self, text: impl AsRef<str>) {
        match self.kept.as_mut().map(|k| k.last_mut()) {
            Some(Some(last)) => last.notes.push(text.as_ref().to_string()),
            // Every note follows the check it belongs to.
            Some(None) => {}
            None => println!("    note: {}", text.as_ref()),
        }
    }
}

/// Runs `robosync doctor` (printing each check on stdout, or with `json`
/// one [`DoctorReport`]); the exit code.
pub fn main(args: DoctorOptions) -> i32 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the async runtime");
    let mut c = Checks {
        failed: None,
        kept: args.json.then(Vec::new),
    };
    let target = args.target.clone();
    let code = rt.block_on(run(args, &mut c));
    rt.shutdown_timeout(Duration::from_millis(200));
    if let Some(checks) = c.kept {
        let report = DoctorReport {
            schema_version: DOCTOR_SCHEMA_VERSION,
            target,
            exit_code: code,
            checks,
        };
        println!(
            "{}",
            serde_json::to_string(&report).expect("the report serializes")
        );
    }
    code
}

/// `[user@]host[:path]`, as the sync's remote endpoints are written.
fn split_target(s: &str) -> (Option<String>, String, Option<String>) {
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) if !u.is_empty() && !u.contains(':') => (Some(u.to_string()), r),
        _ => (None, s),
    };
    let (host, path) = if let Some(inner) = rest.strip_prefix('[') {
        // [v6-literal]:path
        match inner.split_once(']') {
            Some((h, tail)) => (h.to_string(), tail.strip_prefix(':').map(str::to_string)),
            None => (rest.to_string(), None),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (rest.to_string(), None),
        }
    };
    (user, host, path.filter(|p| !p.is_empty()))
}

async fn run(args: DoctorOptions, c: &mut Checks) -> i32 {
    let (user, host, path) = split_target(&args.target);
    if host.is_empty() {
        eprintln!("robosync doctor: error: no host in {:?}", args.target);
        return EXIT_USAGE;
    }
    if c.kept.is_none() {
        println!("robosync doctor {}", args.target);
    }

    // 1. The configuration `ssh HOST` would use.
    let request = ConfigRequest {
        host: host.clone(),
        config_file: args.config_file.clone(),
        options: args.options.clone(),
        user,
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
    let cfg = match tokio::task::spawn_blocking(move || ssh_config::resolve(&req))
        .await
        .expect("config task panicked")
    {
        Ok(cfg) => cfg,
        Err(e) => {
            c.fail(
                "config",
                e.to_string(),
                format!("correct the ssh configuration it names (`ssh -G {host}` shows the same)"),
                EXIT_USAGE,
            );
            return c.failed.unwrap_or(EXIT_USAGE);
        }
    };
    let keys: Vec<&PathBuf> = cfg.identity_files.iter().filter(|p| p.exists()).collect();
    let agent_keys = robosync_transport::probe::agent_identities(&cfg).await;
    let agent_at = match cfg.identity_agent.as_deref() {
        Some("none") => None,
        Some("SSH_AUTH_SOCK") | None => {
            std::env::var_os("SSH_AUTH_SOCK").map(|s| s.to_string_lossy().into_owned())
        }
        Some(p) => Some(p.to_string()),
    };
    let agent = match (&agent_at, &agent_keys) {
        (None, _) => "no agent".to_string(),
        (Some(at), None) => format!("no agent answers at {at}"),
        (Some(at), Some(keys)) => format!(
            "agent at {at} holding {} key{}",
            keys.len(),
            if keys.len() == 1 { "" } else { "s" }
        ),
    };
    let via = if !cfg.proxy_jump.is_empty() {
        let hops: Vec<&str> = cfg.proxy_jump.iter().map(|j| j.host.as_str()).collect();
        format!(", via ProxyJump {}", hops.join(" → "))
    } else if let Some(cmd) = &cfg.proxy_command {
        format!(", via ProxyCommand {cmd}")
    } else {
        String::new()
    };
    let key_list = if keys.is_empty() {
        "no key file".to_string()
    } else {
        let names: Vec<String> = keys.iter().map(|p| p.display().to_string()).collect();
        format!("key {}", names.join(", "))
    };
    c.pass(
        "config",
        format!(
            "{}@{}:{}, {key_list}{}, {agent}{via}",
            cfg.user,
            cfg.hostname,
            cfg.port,
            if cfg.identities_only {
                " (IdentitiesOnly)"
            } else {
                ""
            }
        ),
    );
    for w in &cfg.warnings {
        c.note(w);
    }
    for k in agent_keys.iter().flatten() {
        c.note(format!("agent key {k}"));
    }

    // 2. Key files: private keys others can read (OpenSSH refuses them),
    // certificates that expired, no key at all.
    let mut key_problems = Vec::new();
    for k in &keys {
        if k.extension().is_some_and(|e| e == "pub") {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(k) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                key_problems.push((
                    format!(
                        "{} is readable by others (mode {mode:03o}); OpenSSH refuses such keys",
                        k.display()
                    ),
                    format!("chmod 600 {}", k.display()),
                ));
            }
        }
    }
    let certs: Vec<PathBuf> = certificate_paths(&cfg)
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    let mut cert_note = String::new();
    if let Some(left) = certificate_time_left(&cfg) {
        if left <= 0 {
            key_problems.push((
                format!(
                    "certificate {} expired {} ago",
                    certs
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    human_duration(left.unsigned_abs())
                ),
                "renew it with your site's key-signing tool (robosync's --auth-command can run it before each sync)".into(),
            ));
        } else {
            cert_note = format!(
                ", certificate valid for {}",
                human_duration(left.unsigned_abs())
            );
        }
    }
    let agent_usable = agent_keys.as_ref().is_some_and(|k| !k.is_empty());
    if keys.is_empty() && !agent_usable {
        key_problems.push((
            "no identity file exists and no agent holds a key".into(),
            format!(
                "create a dedicated key: robosync robot-key --from PATTERN (or name one with -i / IdentityFile in the Host {host} stanza)"
            ),
        ));
    }
    if key_problems.is_empty() {
        c.pass(
            "key files",
            format!(
                "{}{cert_note}",
                if keys.is_empty() {
                    "keys from the agent".to_string()
                } else {
                    "private keys readable by their owner only".to_string()
                }
            ),
        );
    } else {
        for (what, fix) in key_problems {
            c.fail("key files", what, fix, EXIT_DENIED);
        }
    }

    let target = Target {
        request,
        config: Arc::new(cfg.clone()),
        ssh_program: None,
        session: SessionOptions {
            request_timeout: args.timeout,
            ..SessionOptions::default()
        },
    };
    let proxied = !cfg.proxy_jump.is_empty() || cfg.proxy_command.is_some();

    // 3. DNS and the address family; 4. TCP from which local address.
    if proxied {
        c.skip("DNS", "the proxy hop resolves the name");
        c.skip("TCP", "the proxy hop connects");
    } else if !dns_and_tcp(c, &cfg, args.timeout).await {
        c.skip("host key", "no connection");
        c.skip("authentication", "no connection");
        return c.failed.unwrap_or(0);
    }

    // 5. The host key, judged without recording or asking.
    let mut may_log_in = true;
    match robosync_transport::probe::host_key(&target).await {
        Ok(probe) => {
            let host_name = cfg.host_key_alias.as_deref().unwrap_or(&cfg.hostname);
            let kind = if probe.certificate {
                "host certificate"
            } else {
                "key"
            };
            let said = probe.verdict.explain(host_name, cfg.port);
            let lenient = matches!(
                cfg.strict_host_key_checking,
                StrictHostKeyChecking::AcceptNew | StrictHostKeyChecking::No
            );
            match &probe.verdict {
                v if v.is_trusted() => c.pass(
                    "host key",
                    format!("{} {kind} {}: {said}", probe.algorithm, probe.fingerprint),
                ),
                Verdict::Unknown | Verdict::OtherTypesKnown { .. } if lenient => {
                    c.pass(
                        "host key",
                        format!(
                            "{} {} is not known yet; StrictHostKeyChecking lets the first connection record it",
                            probe.algorithm, probe.fingerprint
                        ),
                    );
                    c.note("the login below records it, as ssh would: compare the fingerprint with the one your site publishes");
                }
                Verdict::Unknown | Verdict::OtherTypesKnown { .. } => {
                    let port = if cfg.port == 22 {
                        String::new()
                    } else {
                        format!("-p {} ", cfg.port)
                    };
                    let file = cfg
                        .user_known_hosts_files
                        .first()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "~/.ssh/known_hosts".into());
                    c.fail(
                        "host key",
                        format!(
                            "{} {} of {host_name} is in no known_hosts file ({said})",
                            probe.algorithm, probe.fingerprint
                        ),
                        format!(
                            "compare {} with the fingerprint your site publishes, then add it:\n\
                             ssh-keyscan {port}{} >> {file}   (or connect once with `ssh {host}` and answer yes)",
                            probe.fingerprint, cfg.hostname
                        ),
                        EXIT_DENIED,
                    );
                    may_log_in = false;
                }
                Verdict::Changed { .. } => {
                    c.fail(
                        "host key",
                        said,
                        format!(
                            "only if your site announced a new host key: ssh-keygen -R '{}' and add the new one; otherwise stop and ask",
                            if cfg.port == 22 { cfg.hostname.clone() } else { format!("[{}]:{}", cfg.hostname, cfg.port) }
                        ),
                        EXIT_DENIED,
                    );
                    may_log_in = false;
                }
                _ => {
                    c.fail(
                        "host key",
                        said,
                        "ask the site's administrators; do not connect until it is explained",
                        EXIT_DENIED,
                    );
                    may_log_in = false;
                }
            }
        }
        Err(e) => {
            let code = exit_code(&e);
            c.fail(
                "host key",
                e.to_string(),
                "the server did not complete an SSH handshake: is it an SSH server on this port?",
                code,
            );
            may_log_in = false;
        }
    }
    if !may_log_in {
        c.skip("authentication", "the host key is not accepted");
        return c.failed.unwrap_or(0);
    }

    // 6. Authentication.
    let conn = match Connection::open(&target, None).await {
        Ok(conn) => {
            c.pass("authentication", format!("logged in as {}", cfg.user));
            for n in &conn.notes {
                c.note(n);
            }
            conn
        }
        Err(e) => {
            let code = exit_code(&e);
            let fix = match &e {
                Error::Denied(_) => format!(
                    "the key must be registered for this account (CCDB or authorized_keys) with a from= pattern \
                     that matches the address shown under TCP, and a certificate, if any, must be valid;\n\
                     `robosync robot-key` prints the line to register; `ssh -v {host}` shows what the server says"
                ),
                _ => "see the message; `ssh -v HOST` shows the same exchange".into(),
            };
            c.fail("authentication", e.to_string(), fix, code);
            c.skip("SFTP", "not logged in");
            return c.failed.unwrap_or(0);
        }
    };

    // 7. The SFTP handshake (a forced command may refuse it).
    let sftp = match conn.open_sftp(target.session.clone()).await {
        Ok(s) => {
            c.pass("SFTP", "the server started an SFTP v3 session");
            s
        }
        Err(e) => {
            let code = exit_code(&e);
            let fix = match &e {
                Error::Refused { .. } => {
                    "the key's forced command (command=… in authorized_keys or the site's wrapper) \
                     did not start the SFTP server: register the key for transfers, or ask the site \
                     to allow the sftp subsystem for it"
                }
                _ => "see the message; `sftp HOST` shows the same refusal",
            };
            c.fail("SFTP", e.to_string(), fix, code);
            conn.close().await;
            return c.failed.unwrap_or(0);
        }
    };

    // 8. Extensions and limits.
    let x = &sftp.extensions;
    let mark = |b: bool| if b { "✓" } else { "✗" };
    c.pass(
        "extensions",
        format!(
            "posix-rename {} copy-data {} hardlink {} lsetstat {} expand-path {} fsync {} limits {}; \
             reads {} KiB, writes {} KiB per request{}",
            mark(x.posix_rename),
            mark(x.copy_data),
            mark(x.hardlink),
            mark(x.lsetstat),
            mark(x.expand_path),
            mark(x.fsync),
            mark(x.limits),
            sftp.limits.max_read / 1024,
            sftp.limits.max_write / 1024,
            match sftp.limits.max_open_handles {
                0 => String::new(),
                n => format!(", {n} open files"),
            }
        ),
    );
    if !x.posix_rename {
        c.note("without posix-rename a file replacing another is removed first, then renamed (a short window without it)");
    }
    if !x.copy_data {
        c.note("without copy-data (OpenSSH < 9.0) a changed big file is sent whole, or in place with --inplace");
    }

    // 9. The PATH.
    let probe_dir = match &path {
        Some(p) => check_path(c, &sftp, p).await,
        None => None,
    };

    // 10. Channels granted on one connection (a sync opens up to 8 each).
    let mut extra = Vec::new();
    let mut refused = None;
    while extra.len() < 7 {
        match conn.open_sftp(target.session.clone()).await {
            Ok(s) => extra.push(s),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let granted = extra.len() + 1;
    match refused {
        None => c.pass(
            "sessions",
            format!("{granted} SFTP channels on one connection"),
        ),
        Some(e) => {
            c.pass(
                "sessions",
                format!("{granted} SFTP channels on one connection, then: {e}"),
            );
            c.note(format!(
                "use --channels {granted} (or fewer) to stay within the server's MaxSessions"
            ));
        }
    }
    drop(extra);

    // 11. Round trip.
    let mut rtts = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        if sftp.realpath(b".").await.is_err() {
            break;
        }
        rtts.push(t.elapsed());
    }
    rtts.sort();
    if let Some(median) = rtts.get(rtts.len() / 2) {
        let channels = if *median < Duration::from_millis(2) {
            2
        } else {
            8
        };
        c.pass(
            "round trip",
            format!(
                "{:.1} ms (median of {}); robosync would use 2 connections × {channels} channels",
                median.as_secs_f64() * 1e3,
                rtts.len()
            ),
        );
    }

    // 12. Throughput, with a probe file that is removed again.
    match probe_dir {
        Some(dir) => throughput(c, &sftp, &dir, args.probe_size).await,
        None if path.is_none() => c.skip(
            "throughput",
            "name a PATH (HOST:PATH) to write and remove one probe file there",
        ),
        None => c.skip("throughput", "PATH is not a usable directory"),
    }
    drop(sftp);
    conn.close().await;
    c.failed.unwrap_or(0)
}

/// DNS (A and AAAA, the family used, the from= trap) and TCP from which
/// local address; false when no address answers.
async fn dns_and_tcp(c: &mut Checks, cfg: &ssh_config::HostConfig, timeout: Duration) -> bool {
    let all: Vec<SocketAddr> =
        match tokio::net::lookup_host((cfg.hostname.as_str(), cfg.port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                c.fail(
                    "DNS",
                    format!("cannot resolve {}: {e}", cfg.hostname),
                    "check HostName in your ssh config and this machine's DNS",
                    EXIT_CONNECT,
                );
                c.skip("TCP", "no address");
                return false;
            }
        };
    let v4: Vec<String> = all
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| a.ip().to_string())
        .collect();
    let v6: Vec<String> = all
        .iter()
        .filter(|a| a.is_ipv6())
        .map(|a| a.ip().to_string())
        .collect();
    let usable: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| match cfg.address_family {
            AddressFamily::Any => true,
            AddressFamily::Inet => a.is_ipv4(),
            AddressFamily::Inet6 => a.is_ipv6(),
        })
        .collect();
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(" ")
        }
    };
    let Some(first) = usable.first() else {
        c.fail(
            "DNS",
            format!(
                "{} has no address of the family asked for (A {}, AAAA {})",
                cfg.hostname,
                list(&v4),
                list(&v6)
            ),
            "drop -4/-6 or AddressFamily from the configuration, or use the other family",
            EXIT_CONNECT,
        );
        c.skip("TCP", "no address");
        return false;
    };
    c.pass(
        "DNS",
        format!(
            "{}: A {}, AAAA {}; connecting over {}",
            cfg.hostname,
            list(&v4),
            list(&v6),
            if first.is_ipv6() { "IPv6" } else { "IPv4" }
        ),
    );
    if first.is_ipv6() && !v4.is_empty() {
        c.note(
            "the connection goes over IPv6: a from= pattern listing only IPv4 addresses (the usual case) \
             refuses it; use -4 or `AddressFamily inet` in the Host stanza if authentication fails",
        );
    }

    let mut errors = Vec::new();
    for addr in &usable {
        let t = Instant::now();
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let local = s
                    .local_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_else(|_| "?".into());
                c.pass(
                    "TCP",
                    format!(
                        "{addr} answered in {:.1} ms; this machine's address on that path is {local}",
                        t.elapsed().as_secs_f64() * 1e3
                    ),
                );
                c.note(format!(
                    "a from= pattern on the robot key must match the address the server sees: {local}, \
                     unless NAT is in between (then the public address)"
                ));
                for e in errors {
                    c.note(format!("before that: {e}"));
                }
                return true;
            }
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: no answer within {timeout:?}")),
        }
    }
    c.fail(
        "TCP",
        errors.join("; "),
        format!(
            "check the port ({}), a firewall, or a VPN your site requires; robot nodes may accept \
             connections only from registered networks",
            cfg.port
        ),
        EXIT_CONNECT,
    );
    false
}

/// The PATH on the server: an existing directory (where the probe goes), a
/// name a sync would create, or something else.
async fn check_path(c: &mut Checks, sftp: &Sftp, path: &str) -> Option<Vec<u8>> {
    let raw = path.as_bytes();
    let expanded = if raw == b"~" || raw.starts_with(b"~/") {
        if sftp.extensions.expand_path {
            sftp.expand_path(raw).await.ok()
        } else {
            let home = sftp.realpath(b".").await.ok();
            home.map(|mut h| {
                h.extend_from_slice(&raw[1..]);
                h
            })
        }
    } else {
        Some(raw.to_vec())
    };
    let Some(p) = expanded else {
        c.fail(
            "PATH",
            format!("cannot expand {path}"),
            "name the directory in full",
            EXIT_USAGE,
        );
        return None;
    };
    let shown = String::from_utf8_lossy(&p).into_owned();
    match sftp.stat(&p).await {
        Ok(a) if a.is_dir() => {
            c.pass("PATH", format!("{shown} is a directory"));
            Some(p)
        }
        Ok(_) => {
            c.pass(
                "PATH",
                format!("{shown} is a file (a sync of one file may replace it)"),
            );
            None
        }
        Err(Error::NoSuchFile(_)) => {
            c.pass(
                "PATH",
                format!("{shown} does not exist yet; a push creates it"),
            );
            None
        }
        Err(e) => {
            let code = exit_code(&e);
            c.fail(
                "PATH",
                format!("{shown}: {e}"),
                "check the path and its permissions (`sftp HOST` then `ls PATH`)",
                code,
            );
            None
        }
    }
}

/// Writes `size` bytes to a fresh probe file in `dir` over one channel,
/// many requests in flight, then removes it.
async fn throughput(c: &mut Checks, sftp: &Sftp, dir: &[u8], size: u64) {
    let mut name = dir.to_vec();
    if !name.ends_with(b"/") {
        name.push(b'/');
    }
    name.extend_from_slice(format!(".robosync-doctor-{:016x}.probe", random()).as_bytes());
    let shown = String::from_utf8_lossy(&name).into_owned();
    let attrs = proto::Attrs {
        permissions: Some(0o600),
        ..Default::default()
    };
    let flags = proto::FXF_WRITE | proto::FXF_CREAT | proto::FXF_EXCL;
    let handle = match sftp.open(&name, flags, &attrs).await {
        Ok(h) => h,
        Err(e) => {
            let code = exit_code(&e);
            c.fail(
                "throughput",
                format!("cannot create a probe file in the PATH: {e}"),
                "a push needs write permission there",
                code,
            );
            return;
        }
    };
    let chunk = u64::from(sftp.limits.max_write.max(4096));
    let data = bytes::Bytes::from(vec![0x5a; chunk as usize]);
    let t = Instant::now();
    let offsets: Vec<u64> = (0..size.div_ceil(chunk)).map(|i| i * chunk).collect();
    let written = futures::stream::iter(offsets)
        .map(|off| {
            let len = chunk.min(size - off) as usize;
            sftp.write(&handle, off, data.slice(..len))
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let closed = sftp.close(&handle).await;
    let took = t.elapsed();
    let removed = sftp.remove(&name).await;
    let failed = written.into_iter().find_map(Result::err).or(closed.err());
    match (failed, removed) {
        (_, Err(e)) => c.fail(
            "throughput",
            format!("the probe file {shown} could not be removed: {e}"),
            format!("remove it by hand: sftp HOST, then rm {shown}"),
            exit_code(&e),
        ),
        (Some(e), Ok(())) => c.fail(
            "throughput",
            format!("writing the probe file failed: {e}"),
            "check the quota and free space of the PATH",
            exit_code(&e),
        ),
        (None, Ok(())) => c.pass(
            "throughput",
            format!(
                "{} MiB written in {:.2} s over one channel: {:.1} MiB/s (a sync uses several); probe file removed",
                size as f64 / 1048576.0,
                took.as_secs_f64(),
                size as f64 / 1048576.0 / took.as_secs_f64().max(1e-6)
            ),
        ),
    }
}

/// 64 bits that differ between runs and processes, for the probe's name.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::split_target;

    #[test]
    fn targets_split_as_remote_endpoints() {
        assert_eq!(split_target("robot"), (None, "robot".to_string(), None));
        assert_eq!(
            split_target("me@robot:/scratch/x"),
            (Some("me".into()), "robot".into(), Some("/scratch/x".into()))
        );
        assert_eq!(
            split_target("[::1]:~/x"),
            (None, "::1".into(), Some("~/x".into()))
        );
        assert_eq!(split_target("robot:"), (None, "robot".into(), None));
    }
}

//! SSH connections: how robosync reaches an SFTP server.
//!
//! Two carriers feed the same [`Sftp`] engine: russh (the default; many
//! channels over a few connections of our own) and the system `ssh` binary
//! (`--ssh-program`), which reuses whatever the user's OpenSSH does
//! (ControlMaster, GSSAPI, hardware keys). Neither ever requests a PTY or
//! sends `exec`: only the `sftp` subsystem.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use russh::client::{self, AuthResult, Handle};
use russh::keys::ssh_key::{Certificate, PublicKey};
use russh::keys::{load_openssh_certificate, load_secret_key, PrivateKeyWithHashAlg};
use russh::ChannelMsg;
use tokio::process::Command;

use crate::algorithms;
use crate::channel_io::{ChannelReader, Outbound};
use crate::client::{SessionOptions, Sftp};
use crate::error::{russh_lost, Error};
use crate::known_hosts::{self, HostKeyQuery, Verdict};
use crate::passphrase;
use crate::quickack::QuickAck;
use crate::ssh_config::{AddressFamily, ConfigRequest, HostConfig, StrictHostKeyChecking};

/// Host-key decisions, made during key exchange and reported afterwards.
struct HostKeyCheck {
    cfg: Arc<HostConfig>,
    ip: Option<std::net::IpAddr>,
    /// Why the key was refused, for the error message.
    refusal: Arc<Mutex<Option<String>>>,
    notes: Arc<Mutex<Vec<String>>>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let cfg = &self.cfg;
        let host = cfg.host_key_alias.as_deref().unwrap_or(&cfg.hostname);
        let q = HostKeyQuery {
            host,
            port: cfg.port,
            ip: if cfg.check_host_ip { self.ip } else { None },
        };
        let files: Vec<PathBuf> = cfg
            .user_known_hosts_files
            .iter()
            .chain(cfg.global_known_hosts_files.iter())
            .cloned()
            .collect();
        let (verdict, plain) = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                (known_hosts::check(&files, &q, key), Some(key.clone()))
            }
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => {
                let sig = cert.signature().algorithm();
                if !algorithms::ca_signature_allowed(cfg, &sig) {
                    *self.refusal.lock().unwrap() = Some(format!(
                        "the host certificate of {host} is signed with {}, which CASignatureAlgorithms ({}) does not allow",
                        sig.as_str(),
                        cfg.ca_signature_algorithms.join(",")
                    ));
                    return Ok(false);
                }
                let plain = PublicKey::new(cert.public_key().clone(), "");
                (
                    known_hosts::check_certificate(&files, &q, cert),
                    Some(plain),
                )
            }
        };
        let accept = match &verdict {
            Verdict::Trusted { .. } | Verdict::TrustedByCa { .. } => true,
            Verdict::Unknown | Verdict::OtherTypesKnown { .. } => {
                match cfg.strict_host_key_checking {
                    // Both record the key as ssh does; a certificate from a CA
                    // nobody trusts counts as its plain key (OpenSSH's fallback).
                    StrictHostKeyChecking::No | StrictHostKeyChecking::AcceptNew => {
                        if let (Some(k), Some(file)) = (plain, cfg.user_known_hosts_files.first()) {
                            match known_hosts::append(file, &q, &k, cfg.hash_known_hosts) {
                                Ok(()) => self.notes.lock().unwrap().push(format!(
                                    "added the host key of {host} ({}) to {}",
                                    known_hosts::fingerprint(&k),
                                    file.display()
                                )),
                                Err(e) => self.notes.lock().unwrap().push(format!(
                                    "could not record the host key in {}: {e}",
                                    file.display()
                                )),
                            }
                        }
                        true
                    }
                    StrictHostKeyChecking::Ask if std::io::stdin().is_terminal() => {
                        ask_user(&verdict.explain(host, cfg.port))
                    }
                    _ => false,
                }
            }
            Verdict::Changed { .. }
            | Verdict::Revoked { .. }
            | Verdict::InvalidCertificate { .. } => false,
        };
        if !accept {
            *self.refusal.lock().unwrap() = Some(verdict.explain(host, cfg.port));
        }
        Ok(accept)
    }
}

fn ask_user(question: &str) -> bool {
    use std::io::Write;
    let mut err = std::io::stderr();
    let _ = write!(
        err,
        "{question}\nAre you sure you want to continue connecting (yes/no)? "
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && line.trim() == "yes"
}

/// Whether any known_hosts file has a `@cert-authority` line.
fn trusts_a_host_ca(cfg: &HostConfig) -> bool {
    cfg.user_known_hosts_files
        .iter()
        .chain(cfg.global_known_hosts_files.iter())
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .any(|text| {
            text.lines()
                .any(|l| l.trim_start().starts_with("@cert-authority"))
        })
}

/// One authenticated SSH connection (russh carrier).
pub struct Connection {
    handle: Handle<HostKeyCheck>,
    /// `user@host:port`, for messages.
    pub peer: String,
    /// What connecting found worth saying (warnings start `warning: `).
    pub notes: Vec<String>,
    /// Switches off the socket's quick ACKs once a session runs (see `quickack`).
    quick_ack: QuickAckSwitch,
    /// Declared dead (a request on it went unanswered) though russh may not know yet.
    abandoned: AtomicBool,
    /// Logged in with keyboard-interactive answers (counted in
    /// [`LIVE_INTERACTIVE_LOGINS`] while it lives).
    interactive_login: bool,
}

/// Keyboard-interactive logins alive in this run.
static LIVE_INTERACTIVE_LOGINS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);
/// Held while a keyboard-interactive prompt is being answered.
static INTERACTIVE_PROMPT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Drop for Connection {
    fn drop(&mut self) {
        if self.interactive_login {
            // A reconnection after this login died may ask again.
            LIVE_INTERACTIVE_LOGINS.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A russh error from a step of logging in or opening a channel: the link
/// dropping is a lost connection (worth a reconnect), anything else is what
/// `refusal` makes of it.
fn classify(
    peer: &str,
    step: &str,
    e: russh::Error,
    refusal: impl FnOnce(String) -> Error,
) -> Error {
    if russh_lost(&e) {
        Error::ConnectionLost {
            peer: peer.to_string(),
            detail: format!("{step}: {e}"),
        }
    } else {
        refusal(e.to_string())
    }
}

/// How to reach a host: the resolved config plus the user's original request.
#[derive(Clone)]
pub struct Target {
    /// What the user asked for (`[user@]host`, `-o`, `-F`).
    pub request: ConfigRequest,
    /// The effective configuration for it.
    pub config: Arc<HostConfig>,
    /// Use this OpenSSH client binary instead of russh (`--ssh-program`).
    pub ssh_program: Option<PathBuf>,
    /// Tunables of each SFTP session.
    pub session: SessionOptions,
}

impl Target {
    /// `user@host:port`, for messages.
    pub fn peer(&self) -> String {
        format!(
            "{}@{}:{}",
            self.config.user, self.config.hostname, self.config.port
        )
    }
}

/// russh's configuration for this host. The algorithm lists are the user's
/// policy; host certificates are asked for, as OpenSSH does, when a
/// known_hosts file trusts a host CA (a certificate whose CA is not trusted
/// still falls back to its plain key).
pub(crate) fn ssh_config(cfg: &HostConfig) -> Result<client::Config, Error> {
    Ok(client::Config {
        preferred: algorithms::preferred(cfg, trusts_a_host_ca(cfg))?,
        nodelay: true,
        window_size: 16 << 20,
        maximum_packet_size: 65535,
        keepalive_interval: Some(cfg.server_alive_interval.unwrap_or(Duration::from_secs(15))),
        keepalive_max: cfg.server_alive_count_max.max(1) as usize,
        ..Default::default()
    })
}

/// Checks certificates for expiry before we try them; expired ones are an error.
fn load_certificate(
    path: &std::path::Path,
    notes: &mut Vec<String>,
) -> Result<Option<Certificate>, Error> {
    if !path.exists() {
        return Ok(None);
    }
    let cert = load_openssh_certificate(path)
        .map_err(|e| Error::Denied(format!("cannot read certificate {}: {e}", path.display())))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let before = cert.valid_before();
    if now >= before {
        return Err(Error::Denied(format!(
            "certificate {} expired {} ago (valid until {}): renew it (e.g. run your site's key-signing tool) and try again",
            path.display(),
            human_duration(now - before),
            unix_to_utc(i64::try_from(before).unwrap_or(i64::MAX))
        )));
    }
    if now < cert.valid_after() {
        return Err(Error::Denied(format!(
            "certificate {} is not valid yet (valid from {}): check the clock",
            path.display(),
            unix_to_utc(i64::try_from(cert.valid_after()).unwrap_or(i64::MAX))
        )));
    }
    if before - now < 3600 {
        notes.push(format!(
            "warning: certificate {} expires in {} ({})",
            path.display(),
            human_duration(before - now),
            unix_to_utc(i64::try_from(before).unwrap_or(i64::MAX))
        ));
    }
    Ok(Some(cert))
}

/// Seconds until the first certificate among the identities expires (None if no certificate).
///
/// The earliest expiry counts, not the latest: [`Connection::open`] refuses to
/// start while any of these certificates has expired.
pub fn certificate_time_left(cfg: &HostConfig) -> Option<i64> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    certificate_paths(cfg)
        .iter()
        .filter_map(|p| load_openssh_certificate(p).ok())
        .map(|c| c.valid_before() as i64 - now)
        .min()
}

/// Where the identities' certificates are or would be: `CertificateFile`s, then
/// `<IdentityFile>-cert.pub` for every identity (whether or not it exists).
pub fn certificate_paths(cfg: &HostConfig) -> Vec<PathBuf> {
    let mut v = cfg.certificate_files.clone();
    for id in &cfg.identity_files {
        let mut s = id.clone().into_os_string();
        s.push("-cert.pub");
        v.push(PathBuf::from(s));
    }
    v
}

/// `secs` as a person reads it: seconds, minutes, hours or days.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time (civil-from-days, Howard
/// Hinnant's algorithm): certificate validity and lease holders in messages.
pub fn unix_to_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Whether logging in to this host will need a human (keyboard-interactive,
/// e.g. MFA): stdin is a terminal, BatchMode is off, no configured identity
/// file exists and no agent is reachable. Such hosts get one connection with
/// many channels, so the user answers the prompts once.
pub fn needs_interactive_auth(cfg: &HostConfig) -> bool {
    let agent = match cfg.identity_agent.as_deref() {
        Some("none") => false,
        Some("SSH_AUTH_SOCK") | None => std::env::var_os("SSH_AUTH_SOCK").is_some(),
        Some(p) if p.starts_with('$') => std::env::var_os(&p[1..]).is_some(),
        Some(_) => true,
    };
    std::io::stdin().is_terminal()
        && !cfg.batch_mode
        && !agent
        && !cfg.identity_files.iter().any(|p| p.exists())
}

type Stream = Box<dyn AsyncStream>;
type QuickAckSwitch = Option<Arc<AtomicBool>>;
/// A byte stream a connection can run over.
pub trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncStream for T {}

/// Runs a ProxyCommand (or an `ssh -W` for ProxyJump) and returns its stdio as a stream.
fn proxy_stream(command: &str) -> Result<Stream, Error> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Connect(format!("cannot run proxy command {command:?}: {e}")))?;
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    // The child lives as long as the stream; reaping happens on drop.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(Box::new(tokio::io::join(stdout, stdin)))
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_[]".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// ProxyJump is carried by OpenSSH's own `ssh -W` (as OpenSSH does itself):
/// it measured faster than a russh direct-tcpip channel, and it honours the
/// jump hosts' own config stanzas.
fn jump_command(target: &Target) -> String {
    let cfg = &target.config;
    let mut cmd = String::from("ssh");
    if let Some(f) = &target.request.config_file {
        cmd += &format!(" -F {}", shell_quote(&f.to_string_lossy()));
    }
    let hops: Vec<String> = cfg
        .proxy_jump
        .iter()
        .map(|j| {
            let mut s = String::new();
            if let Some(u) = &j.user {
                s += &format!("{u}@");
            }
            s += &j.host;
            if let Some(p) = j.port {
                s += &format!(":{p}");
            }
            s
        })
        .collect();
    let (last, rest) = hops.split_last().expect("proxy_jump is not empty");
    if !rest.is_empty() {
        cmd += &format!(" -J {}", shell_quote(&rest.join(",")));
    }
    cmd += &format!(
        " -o BatchMode=yes -W {}:{} {}",
        shell_quote(&format_host(&cfg.hostname)),
        cfg.port,
        shell_quote(last)
    );
    cmd
}

fn format_host(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

async fn resolve_addrs(cfg: &HostConfig) -> Result<Vec<SocketAddr>, Error> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((cfg.hostname.as_str(), cfg.port))
        .await
        .map_err(|e| {
            Error::Connect(format!(
                "cannot resolve {}: {e} (check HostName in your ssh config)",
                cfg.hostname
            ))
        })?
        .filter(|a| match cfg.address_family {
            AddressFamily::Any => true,
            AddressFamily::Inet => a.is_ipv4(),
            AddressFamily::Inet6 => a.is_ipv6(),
        })
        .collect();
    if addrs.is_empty() {
        return Err(Error::Connect(format!(
            "{} has no address of the requested family ({:?})",
            cfg.hostname, cfg.address_family
        )));
    }
    Ok(addrs)
}

/// One `IdentityFile`: its private key file and public key, whichever exist
/// (an agent-held key needs only its `.pub` on disk), and its certificate.
struct Identity {
    /// As configured.
    path: PathBuf,
    private: Option<PathBuf>,
    public: Option<PublicKey>,
    cert: Option<Certificate>,
}

struct Identities {
    list: Vec<Identity>,
    /// `CertificateFile`s that do not exist, named when login fails.
    missing_certificates: Vec<PathBuf>,
}

fn read_public(path: &std::path::Path) -> Option<PublicKey> {
    let text = std::fs::read_to_string(path).ok()?;
    PublicKey::from_openssh(text.trim()).ok()
}

/// The identities in OpenSSH order, certificates attached and checked.
fn identities(cfg: &HostConfig, notes: &mut Vec<String>) -> Result<Identities, Error> {
    let mut list = Vec::new();
    for id in &cfg.identity_files {
        // `IdentityFile key.pub` names the key by its public half, as ssh allows.
        let (private, public) = match id.to_str().and_then(|s| s.strip_suffix(".pub")) {
            Some(stem) => (PathBuf::from(stem), id.clone()),
            None => {
                let mut p = id.clone().into_os_string();
                p.push(".pub");
                (id.clone(), PathBuf::from(p))
            }
        };
        let mut cert_file = private.clone().into_os_string();
        let private = private.exists().then_some(private);
        let public = read_public(&public);
        if private.is_none() && public.is_none() {
            continue;
        }
        cert_file.push("-cert.pub");
        let cert = load_certificate(std::path::Path::new(&cert_file), notes)?;
        list.push(Identity {
            path: id.clone(),
            private,
            public,
            cert,
        });
    }
    let mut missing_certificates = Vec::new();
    for c in &cfg.certificate_files {
        match load_certificate(c, notes)? {
            Some(cert) => {
                if let Some(slot) = list.iter_mut().find(|i| i.cert.is_none()) {
                    slot.cert = Some(cert);
                }
            }
            None => missing_certificates.push(c.clone()),
        }
    }
    Ok(Identities {
        list,
        missing_certificates,
    })
}

/// Whether an OpenSSH master listens on this ControlPath.
fn master_is_live(sock: &std::path::Path) -> bool {
    std::os::unix::net::UnixStream::connect(sock).is_ok()
}

/// Whether the host also has an IPv6 address (a from= pattern listing only
/// IPv4 addresses could then be what refused us).
async fn has_ipv6(cfg: &HostConfig) -> bool {
    tokio::net::lookup_host((cfg.hostname.as_str(), cfg.port))
        .await
        .is_ok_and(|mut a| a.any(|a| a.is_ipv6()))
}

impl Connection {
    /// Connects and authenticates as `ssh host` would. `handshake` learns,
    /// as soon as authentication succeeds, how long connecting and the key
    /// exchange took: a hint of the server's distance (see `Pool::open_expecting`).
    pub async fn open(
        target: &Target,
        mut handshake: Option<tokio::sync::oneshot::Sender<Duration>>,
    ) -> Result<Connection, Error> {
        let cfg = target.config.clone();
        let peer = target.peer();
        let mut notes = cfg.warnings.clone();
        if let Some(sock) = cfg.control_path.as_ref().filter(|p| master_is_live(p)) {
            notes.retain(|n| !n.contains("ControlMaster/ControlPath"));
            notes.push(format!(
                "warning: an OpenSSH ControlMaster for {} is live at {}: robosync's built-in client \
                 cannot share it and logs in anew (any MFA prompt again); add --ssh-program ssh to \
                 run every session through that master",
                cfg.alias,
                sock.display()
            ));
        }
        let interactive = std::io::stdin().is_terminal() && !cfg.batch_mode;

        let identities = identities(&cfg, &mut notes)?;
        let russh_config = Arc::new(ssh_config(&cfg)?);
        let attempts = cfg.connection_attempts.max(1);
        let mut last_err = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let started = std::time::Instant::now();
            match Self::dial(target, &cfg).await {
                Ok((stream, addr, quick_ack)) => {
                    let refusal = Arc::new(Mutex::new(None));
                    let key_notes = Arc::new(Mutex::new(Vec::new()));
                    let handler = HostKeyCheck {
                        cfg: cfg.clone(),
                        ip: addr.map(|a| a.ip()),
                        refusal: refusal.clone(),
                        notes: key_notes.clone(),
                    };
                    let handle =
                        match client::connect_stream(russh_config.clone(), stream, handler).await {
                            Ok(h) => h,
                            Err(e) => {
                                if let Some(why) = refusal.lock().unwrap().take() {
                                    return Err(Error::Denied(why));
                                }
                                if let Some(why) = algorithms::no_common_algorithm(&peer, &e) {
                                    return Err(Error::Connect(why));
                                }
                                last_err = Some(classify(&peer, "SSH handshake", e, |e| {
                                    Error::Connect(format!("SSH handshake with {peer} failed: {e}"))
                                }));
                                continue;
                            }
                        };
                    let took = started.elapsed();
                    notes.extend(key_notes.lock().unwrap().drain(..));
                    let mut conn = Connection {
                        handle,
                        peer: peer.clone(),
                        notes,
                        quick_ack,
                        abandoned: AtomicBool::new(false),
                        interactive_login: false,
                    };
                    conn.authenticate(&cfg, &identities, interactive, addr)
                        .await?;
                    if let Some(tx) = handshake.take() {
                        let _ = tx.send(took);
                    }
                    return Ok(conn);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap())
    }

    pub(crate) async fn dial(
        target: &Target,
        cfg: &HostConfig,
    ) -> Result<(Stream, Option<SocketAddr>, QuickAckSwitch), Error> {
        if let Some(cmd) = &cfg.proxy_command {
            return Ok((proxy_stream(cmd)?, None, None));
        }
        if !cfg.proxy_jump.is_empty() {
            return Ok((proxy_stream(&jump_command(target))?, None, None));
        }
        let timeout = cfg.connect_timeout.unwrap_or(Duration::from_secs(30));
        let mut errors = Vec::new();
        for addr in resolve_addrs(cfg).await? {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    let (s, switch) = QuickAck::new(s);
                    return Ok((Box::new(s), Some(addr), Some(switch)));
                }
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!("{addr}: timed out after {timeout:?}")),
            }
        }
        Err(Error::Unreachable(format!(
            "cannot connect to {}:{}: {}",
            cfg.hostname,
            cfg.port,
            errors.join("; ")
        )))
    }

    async fn authenticate(
        &mut self,
        cfg: &HostConfig,
        ids: &Identities,
        interactive: bool,
        addr: Option<SocketAddr>,
    ) -> Result<(), Error> {
        let user = cfg.user.clone();
        // What was tried, for the error; whether the server refused a key
        // (only then can a from= pattern explain the failure).
        let mut tried = Vec::new();
        let mut refused_a_key = false;
        let peer = self.peer.clone();
        let auth_err = |e: russh::Error| {
            classify(&peer, "during authentication", e, |e| {
                Error::Denied(format!("authentication with {} failed: {e}", cfg.hostname))
            })
        };
        let server_rsa = |h: Result<Option<Option<russh::keys::HashAlg>>, russh::Error>| {
            h.ok().flatten().flatten()
        };

        // Agent identities first, as OpenSSH does (restricted by IdentitiesOnly).
        let mut agent = connect_agent(cfg).await;
        let mut in_agent: Vec<PublicKey> = Vec::new();
        if let Some(agent) = agent.as_mut() {
            if let Ok(agent_ids) = agent.request_identities().await {
                for id in agent_ids {
                    let key = match &id {
                        russh::keys::agent::AgentIdentity::PublicKey { key, .. } => key.clone(),
                        _ => continue,
                    };
                    in_agent.push(key.clone());
                    let configured = ids.list.iter().any(|i| {
                        i.public
                            .as_ref()
                            .is_some_and(|k| k.key_data() == key.key_data())
                    });
                    if cfg.identities_only && !configured {
                        continue;
                    }
                    if !algorithms::accepts_key(cfg, &key.algorithm(), false) {
                        tried.push(format!(
                            "agent key {} (type not in PubkeyAcceptedAlgorithms)",
                            known_hosts::fingerprint(&key)
                        ));
                        continue;
                    }
                    tried.push(format!("agent key {}", known_hosts::fingerprint(&key)));
                    let hash = algorithms::rsa_hash(
                        cfg,
                        server_rsa(self.handle.best_supported_rsa_hash().await),
                    );
                    if let Ok(AuthResult::Success) = self
                        .handle
                        .authenticate_publickey_with(&user, key, hash, agent)
                        .await
                    {
                        return Ok(());
                    }
                    refused_a_key = true;
                }
            }
        }
        let have_agent = agent.is_some();
        let load_hint = |path: &std::path::Path| {
            if have_agent {
                format!("ssh-add {}", path.display())
            } else {
                format!(
                    "start an agent (eval $(ssh-agent)) and ssh-add {}",
                    path.display()
                )
            }
        };

        for id in &ids.list {
            let agent_had_it = id
                .public
                .as_ref()
                .is_some_and(|k| in_agent.iter().any(|a| a.key_data() == k.key_data()));
            let Some(private) = &id.private else {
                if !agent_had_it {
                    tried.push(format!(
                        "{} (public key only, and {}: load its private key with ssh-add)",
                        id.path.display(),
                        if have_agent {
                            "the agent does not hold it"
                        } else {
                            "no agent is reachable"
                        }
                    ));
                }
                continue;
            };
            if agent_had_it {
                continue;
            }
            let key = match load_secret_key(private, None) {
                Ok(k) => Arc::new(k),
                Err(russh::keys::Error::KeyIsEncrypted) if !interactive => {
                    tried.push(format!(
                        "{} (encrypted, and no terminal to ask its passphrase: {})",
                        private.display(),
                        load_hint(private)
                    ));
                    continue;
                }
                Err(russh::keys::Error::KeyIsEncrypted) => {
                    match passphrase::unlock(private).await {
                        Ok(k) => k,
                        Err(why) => {
                            tried.push(format!("{} ({why})", private.display()));
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tried.push(format!("{} (unreadable: {e})", private.display()));
                    continue;
                }
            };
            let result = if let Some(cert) = &id.cert {
                if !algorithms::accepts_key(cfg, &cert.algorithm(), true) {
                    tried.push(format!(
                        "{} (certificate type not in PubkeyAcceptedAlgorithms)",
                        private.display()
                    ));
                    continue;
                }
                tried.push(format!("{} with certificate", private.display()));
                self.handle
                    .authenticate_openssh_cert(&user, key.clone(), cert.clone())
                    .await
                    .map_err(auth_err)?
            } else {
                if !algorithms::accepts_key(cfg, &key.algorithm(), false) {
                    tried.push(format!(
                        "{} (type not in PubkeyAcceptedAlgorithms)",
                        private.display()
                    ));
                    continue;
                }
                tried.push(private.display().to_string());
                let hash = algorithms::rsa_hash(
                    cfg,
                    server_rsa(self.handle.best_supported_rsa_hash().await),
                );
                self.handle
                    .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(key, hash))
                    .await
                    .map_err(auth_err)?
            };
            if let AuthResult::Success = result {
                return Ok(());
            }
            refused_a_key = true;
        }

        if interactive {
            // One human answer per run: connections wait for the first
            // prompt, and while its login lives no other one asks again (an
            // MFA code is one-time; that login carries the channels).
            let _prompt = INTERACTIVE_PROMPT.lock().await;
            if LIVE_INTERACTIVE_LOGINS.load(Ordering::SeqCst) > 0 {
                return Err(Error::Connect(format!(
                    "{} asks for keyboard-interactive (MFA) answers on every login: robosync keeps \
                     to the one it has (use --ssh-program ssh with a ControlMaster to share it)",
                    cfg.hostname
                )));
            }
            if let Ok(()) = self.keyboard_interactive(&user).await {
                LIVE_INTERACTIVE_LOGINS.fetch_add(1, Ordering::SeqCst);
                self.interactive_login = true;
                return Ok(());
            }
        }
        // Keys tried through an agent fail quietly: a link that dropped
        // meanwhile is not a refusal.
        if self.handle.is_closed() {
            return Err(Error::ConnectionLost {
                peer: self.peer.clone(),
                detail: "closed during authentication".into(),
            });
        }

        let mut msg = format!(
            "permission denied for {user}@{}:{} (tried: {})",
            cfg.hostname,
            cfg.port,
            if tried.is_empty() {
                "no usable identity: pass -i KEY or set IdentityFile".to_string()
            } else {
                tried.join(", ")
            }
        );
        for c in &ids.missing_certificates {
            msg += &format!(
                "; CertificateFile {} does not exist (renew or fetch the certificate)",
                c.display()
            );
        }
        if let Some(a) = addr.filter(|_| refused_a_key) {
            if a.is_ipv6() || has_ipv6(cfg).await {
                let fam = if a.is_ipv6() { "IPv6" } else { "IPv4" };
                msg += &format!(
                    ". Connected via {fam} {}; a robot key's from= pattern only matches the addresses it lists: if it lists {} addresses, try {}",
                    a.ip(),
                    if a.is_ipv6() { "IPv4" } else { "IPv6" },
                    if a.is_ipv6() { "-4" } else { "-6" }
                );
            }
        }
        Err(Error::Denied(msg))
    }

    async fn keyboard_interactive(&mut self, user: &str) -> Result<(), Error> {
        use russh::client::KeyboardInteractiveAuthResponse as R;
        let mut reply = self
            .handle
            .authenticate_keyboard_interactive_start(user, None)
            .await
            .map_err(|e| Error::Denied(e.to_string()))?;
        loop {
            match reply {
                R::Success => return Ok(()),
                R::Failure { .. } => {
                    return Err(Error::Denied("keyboard-interactive failed".into()))
                }
                R::InfoRequest {
                    name,
                    instructions,
                    prompts,
                } => {
                    if !name.is_empty() {
                        eprintln!("{name}");
                    }
                    if !instructions.is_empty() {
                        eprintln!("{instructions}");
                    }
                    let answers = prompts
                        .iter()
                        .map(|p| {
                            if p.echo {
                                eprint!("{}", p.prompt);
                                let mut s = String::new();
                                let _ = std::io::stdin().read_line(&mut s);
                                s.trim_end().to_string()
                            } else {
                                passphrase::read_secret(&p.prompt).unwrap_or_default()
                            }
                        })
                        .collect();
                    reply = self
                        .handle
                        .authenticate_keyboard_interactive_respond(answers)
                        .await
                        .map_err(|e| Error::Denied(e.to_string()))?;
                }
            }
        }
    }

    /// Opens one SFTP session on a new channel of this connection, within
    /// the request timeout. Russh leaves a channel opening on a connection
    /// that died waiting forever (seen: a cut while channels opened held
    /// the pool's growth for good), so the connection is watched meanwhile.
    pub async fn open_sftp(&self, opts: SessionOptions) -> Result<Sftp, Error> {
        let limit = opts.request_timeout;
        let closed = async {
            while !self.is_closed() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            opened = tokio::time::timeout(limit, self.open_sftp_now(opts)) => {
                opened.unwrap_or_else(|_| Err(Error::Timeout { peer: self.peer.clone(), after: limit }))
            }
            _ = closed => Err(Error::ConnectionLost {
                peer: self.peer.clone(),
                detail: "closed while opening a channel".into(),
            }),
        }
    }

    async fn open_sftp_now(&self, opts: SessionOptions) -> Result<Sftp, Error> {
        // Only the server's answer is a refusal; a connection that died
        // under the request is a lost connection (worth a reconnect).
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| match e {
                russh::Error::ChannelOpenFailure(_) => Error::ChannelRefused {
                    peer: self.peer.clone(),
                    detail: e.to_string(),
                },
                e => classify(&self.peer, "opening a channel", e, |e| {
                    Error::ConnectionLost {
                        peer: self.peer.clone(),
                        detail: format!("opening a channel: {e}"),
                    }
                }),
            })?;
        channel.request_subsystem(true, "sftp").await.map_err(|e| {
            classify(&self.peer, "subsystem request", e, |e| Error::Refused {
                peer: self.peer.clone(),
                text: format!("subsystem request failed: {e}"),
            })
        })?;
        // INIT is queued at once, but it cannot leave before the server's
        // answer: sshd opens a session channel's window only once the
        // subsystem has started (measured across 50 ms: the INIT went out
        // with the reply, one round trip after the request).
        channel.data_bytes(Sftp::init()).await.map_err(|e| {
            classify(&self.peer, "starting SFTP", e, |e| Error::Refused {
                peer: self.peer.clone(),
                text: format!("cannot start SFTP: {e}"),
            })
        })?;
        // The reply to want_reply comes as a message; a refusal is Failure.
        // Output that overtakes it (a wrapper's message) is kept for the handshake.
        let mut early = Vec::new();
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Data { data }) => early.extend_from_slice(&data),
                Some(ChannelMsg::Failure) => {
                    return Err(Error::Refused {
                        peer: self.peer.clone(),
                        text: "subsystem request refused".into(),
                    })
                }
                Some(ChannelMsg::WindowAdjusted { .. }) => continue,
                Some(_) => continue,
                None => {
                    return Err(Error::ConnectionLost {
                        peer: self.peer.clone(),
                        detail: "channel closed during subsystem request".into(),
                    })
                }
            }
        }
        let (read_half, write_half) = channel.split();
        let sftp = match Sftp::after_init(
            ChannelReader::new(read_half),
            Outbound::Channel(write_half),
            early,
            &self.peer,
            opts,
        )
        .await
        {
            Ok(s) => s,
            // A channel that closed without a word looks the same whether the
            // wrapper refused or the link dropped: a ping tells them apart.
            Err(Error::Refused { .. }) if !self.answers().await => {
                return Err(Error::ConnectionLost {
                    peer: self.peer.clone(),
                    detail: "closed while starting SFTP".into(),
                })
            }
            Err(e) => return Err(e),
        };
        if let Some(switch) = &self.quick_ack {
            switch.store(false, Ordering::Relaxed);
        }
        Ok(sftp)
    }

    /// Whether the connection is gone, or was declared dead ([`Connection::abandon`]).
    pub fn is_closed(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed) || self.handle.is_closed()
    }

    /// Declares the connection dead (a request on it went unanswered): it
    /// counts as closed from now on and is disconnected in the background.
    pub fn abandon(self: &Arc<Self>) {
        if self.abandoned.swap(true, Ordering::Relaxed) {
            return;
        }
        let conn = self.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
        });
    }

    /// Whether the server still answers on this connection (a ping, bounded).
    async fn answers(&self) -> bool {
        let pinged = tokio::time::timeout(Duration::from_secs(5), self.handle.send_ping()).await;
        matches!(pinged, Ok(Ok(()))) && !self.handle.is_closed()
    }

    /// Disconnects (as an application would).
    pub async fn close(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

pub(crate) async fn connect_agent(
    cfg: &HostConfig,
) -> Option<russh::keys::agent::client::AgentClient<tokio::net::UnixStream>> {
    let sock = match cfg.identity_agent.as_deref() {
        Some("none") => return None,
        Some("SSH_AUTH_SOCK") | None => std::env::var_os("SSH_AUTH_SOCK")?,
        Some(p) if p.starts_with('$') => std::env::var_os(&p[1..])?,
        Some(p) => p.into(),
    };
    russh::keys::agent::client::AgentClient::connect_uds(sock)
        .await
        .ok()
}

/// Starts one SFTP session through the system `ssh` binary (`ssh -s host sftp`).
pub async fn open_sftp_via_ssh(target: &Target) -> Result<Sftp, Error> {
    let program = target.ssh_program.clone().unwrap_or_else(|| "ssh".into());
    let r = &target.request;
    let mut cmd = Command::new(&program);
    if let Some(f) = &r.config_file {
        cmd.arg("-F").arg(f);
    }
    for o in &r.options {
        cmd.arg("-o").arg(o);
    }
    for i in &r.identity_files {
        cmd.arg("-i").arg(i);
    }
    if let Some(p) = r.port {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(u) = &r.user {
        cmd.arg("-l").arg(u);
    }
    match r.family {
        Some(AddressFamily::Inet) => {
            cmd.arg("-4");
        }
        Some(AddressFamily::Inet6) => {
            cmd.arg("-6");
        }
        _ => {}
    }
    if !std::io::stdin().is_terminal() {
        cmd.arg("-o").arg("BatchMode=yes");
    }
    cmd.arg("-T").arg("-s").arg(&r.host).arg("sftp");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Connect(format!("cannot run {}: {e}", program.display())))?;
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Sftp::start(
        tokio::io::join(stdout, stdin),
        &target.peer(),
        target.session.clone(),
    )
    .await
}

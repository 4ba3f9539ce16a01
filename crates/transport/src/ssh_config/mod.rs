//! The effective OpenSSH client configuration for one destination.
//!
//! This module owns the answer to "how would `ssh HOST` connect?": which host name,
//! port and user, which identities and certificates, which jump hosts or proxy
//! command, which known_hosts files and host key policy, which algorithms. It never
//! connects; the connection code consumes the [`HostConfig`] it returns.
//!
//! Files: this one holds the types, the shared translation of a dump into
//! a [`HostConfig`], tokens and local context; `ssh_g` runs `ssh -G`;
//! `native` is the ssh_config parser; `algorithms` has OpenSSH's algorithm
//! lists and their `+ - ^` assembly.
//!
//! Two resolvers produce the same [`HostConfig`]:
//!
//! - [`resolve_with_ssh_g`] runs `ssh -G` and parses OpenSSH's own answer. It is
//!   exact by construction and is what [`resolve`] uses whenever an `ssh` binary is
//!   on `PATH`.
//! - [`resolve_native`] is a parser of `ssh_config(5)` with OpenSSH 9.x semantics,
//!   for machines without an `ssh` binary. It emulates `ssh -G`: it produces the
//!   same `key value` dump, and both resolvers share one translation into
//!   [`HostConfig`], so they can only disagree on what the dump contains (the tests
//!   check they agree on a set of configurations).
//!
//! # What the native resolver honours
//!
//! - Files: `-F file` (or `none`), else `~/.ssh/config` then `/etc/ssh/ssh_config`;
//!   `Include` with globs (relative paths are taken from `~/.ssh` in user files and
//!   from `/etc/ssh` in the system file), nested up to 16 levels.
//! - Syntax: case-insensitive keywords, `Key value` and `Key=value`, double and single
//!   quotes, `#` comments, `IgnoreUnknown`. Every keyword OpenSSH 9.x accepts is
//!   recognised; an unknown keyword is an error, as it is for `ssh`.
//! - Blocks: `Host` (wildcards `*` `?`, negation `!`, several patterns) and `Match`
//!   with `all`, `host`, `originalhost`, `user`, `localuser`, `exec` (run with
//!   `/bin/sh -c` after token expansion), `canonical` and `final` (a second pass over
//!   the files with the final host name, as OpenSSH does), `!` negation and the
//!   `criterion=pattern` form. `Match localnetwork` and `Match tagged` never match
//!   and add a warning.
//! - First obtained value wins, except `IdentityFile`, `CertificateFile` and the
//!   forwarding directives, which accumulate. `ProxyJump` and `ProxyCommand` share
//!   one slot: whichever comes first wins. Command-line options (`-o`, `-l`, `-p`,
//!   `-i`, `-4`/`-6`) come before any file.
//! - Tokens `%% %C %d %h %i %k %L %l %n %p %r %u` and `${ENV}` in the directives
//!   where OpenSSH expands them (`%h` only in `HostName`), `~` and `~user`.
//! - Algorithm lists (`Ciphers`, `KexAlgorithms`, `MACs`, `HostKeyAlgorithms`,
//!   `PubkeyAcceptedAlgorithms`, `CASignatureAlgorithms`) with `+`, `-` and `^` against OpenSSH 9.2's
//!   default and supported lists, wildcards included.
//! - Not done natively: `CanonicalizeHostname` (no DNS lookups; a warning says so).
//!
//! Directives that change how `ssh` itself would connect but that robosync's
//! built-in client does not implement (connection sharing, GSSAPI, forwarding,
//! PKCS#11, `KnownHostsCommand`, ...) end up in [`HostConfig::warnings`], whichever
//! resolver ran. `AddKeysToAgent`, `RequestTTY` and the like are ignored silently.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod algorithms;
mod native;
mod ssh_g;

pub(crate) use algorithms::DEFAULT_CIPHERS;
pub use native::wildcard_match;
use native::*;
use ssh_g::*;

/// What the user asked for: the destination and the `ssh` command-line options
/// that influence configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigRequest {
    /// The destination as typed (`rorqual`, `bob@rorqual`).
    pub host: String,
    /// `-F file`; `None` reads `~/.ssh/config` and `/etc/ssh/ssh_config`.
    pub config_file: Option<PathBuf>,
    /// `-o` options, `Key=value` or `Key value`, in command-line order.
    pub options: Vec<String>,
    /// `-l user`.
    pub user: Option<String>,
    /// `-p port`.
    pub port: Option<u16>,
    /// `-i file`, in command-line order.
    pub identity_files: Vec<PathBuf>,
    /// `-4` (`Inet`) or `-6` (`Inet6`).
    pub family: Option<AddressFamily>,
}

/// `AddressFamily`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressFamily {
    /// `any`: IPv4 or IPv6.
    #[default]
    Any,
    /// `inet`: IPv4 only.
    Inet,
    /// `inet6`: IPv6 only.
    Inet6,
}

/// `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StrictHostKeyChecking {
    /// `yes`: only known keys.
    Yes,
    /// `accept-new`: an unknown host's key is recorded; a changed one refused.
    AcceptNew,
    /// `no`: an unknown host's key is recorded as with `accept-new` (a
    /// changed one is still refused).
    No,
    /// `ask` (the default): a person confirms an unknown key; unattended, refused.
    #[default]
    Ask,
}

/// One hop of a `ProxyJump` chain, in connection order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpHost {
    /// `user@`, when given.
    pub user: Option<String>,
    /// The host (an alias its own config resolves).
    pub host: String,
    /// `:port`, when given.
    pub port: Option<u16>,
}

/// The effective configuration for one destination. Paths are absolute (`~` and
/// tokens expanded) except where OpenSSH itself leaves them relative.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// The destination as typed (without any `user@`).
    pub alias: String,
    /// The host name to connect to (`HostName`, or the alias).
    pub hostname: String,
    /// `Port`.
    pub port: u16,
    /// `User` (default: the local user).
    pub user: String,
    /// Identity files in the order they are to be tried (`-i` first). Includes
    /// OpenSSH's defaults (`~/.ssh/id_rsa`, ...) when none is configured; they may
    /// not exist.
    pub identity_files: Vec<PathBuf>,
    /// `CertificateFile`s.
    pub certificate_files: Vec<PathBuf>,
    /// `IdentitiesOnly`: only the configured identities, not every agent key.
    pub identities_only: bool,
    /// `IdentityAgent`: a socket path, `SSH_AUTH_SOCK` (use the environment) or
    /// `none`; `None` when unset (use `SSH_AUTH_SOCK`).
    pub identity_agent: Option<String>,
    /// `ProxyJump` hops, first hop first; empty when there is none.
    pub proxy_jump: Vec<JumpHost>,
    /// `ProxyCommand` with `%h %p %r %n %%` (and the other client tokens) expanded.
    pub proxy_command: Option<String>,
    /// `AddressFamily`.
    pub address_family: AddressFamily,
    /// `ConnectTimeout` (the TCP connect), when set.
    pub connect_timeout: Option<Duration>,
    /// `ConnectionAttempts`.
    pub connection_attempts: u32,
    /// `ServerAliveInterval`, when set.
    pub server_alive_interval: Option<Duration>,
    /// `ServerAliveCountMax`.
    pub server_alive_count_max: u32,
    /// `UserKnownHostsFile`s.
    pub user_known_hosts_files: Vec<PathBuf>,
    /// `GlobalKnownHostsFile`s.
    pub global_known_hosts_files: Vec<PathBuf>,
    /// `StrictHostKeyChecking`.
    pub strict_host_key_checking: StrictHostKeyChecking,
    /// `HostKeyAlias`: the name host keys are looked up and recorded under.
    pub host_key_alias: Option<String>,
    /// `HashKnownHosts`: a recorded host's name is hashed.
    pub hash_known_hosts: bool,
    /// `CheckHostIP`: the address's key is checked too.
    pub check_host_ip: bool,
    /// `BatchMode`: never ask a person (passphrases, host keys).
    pub batch_mode: bool,
    /// `Ciphers`, in order of preference.
    pub ciphers: Vec<String>,
    /// `KexAlgorithms`, in order of preference.
    pub kex_algorithms: Vec<String>,
    /// `MACs`, in order of preference.
    pub macs: Vec<String>,
    /// `HostKeyAlgorithms`, in order of preference.
    pub host_key_algorithms: Vec<String>,
    /// `PubkeyAcceptedAlgorithms`: the key types offered.
    pub pubkey_accepted_algorithms: Vec<String>,
    /// `ControlPath`, expanded; `None` when unset or `none`. robosync's own
    /// client cannot share it, but tells the user when a master is live.
    pub control_path: Option<PathBuf>,
    /// `CASignatureAlgorithms`: what a CA may have signed a host certificate with.
    pub ca_signature_algorithms: Vec<String>,
    /// Directives in effect that robosync's built-in client does not honour, one
    /// sentence each, naming the directive.
    pub warnings: Vec<String>,
}

/// Why the configuration could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file that cannot be read.
    #[error("cannot read ssh config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A line that does not parse.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A `-o` option that does not parse.
    #[error("bad -o option {option:?}: {message}")]
    BadOption {
        /// The option as given.
        option: String,
        /// What is wrong.
        message: String,
    },
    /// A directive's value that is not valid for it.
    #[error("invalid {key} value {value:?}: {message}")]
    BadValue {
        /// The directive.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
    /// `ssh -G` could not be started.
    #[error("cannot run {program} -G: {source}; install OpenSSH's client or let robosync read ssh_config itself")]
    SshGSpawn {
        /// The program.
        program: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// `ssh -G` failed.
    #[error("`ssh -G {host}` failed ({status}): {stderr}; `ssh {host}` would fail the same way, fix the configuration it names")]
    SshG {
        /// The destination asked about.
        host: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// The local user is not in the password database.
    #[error("cannot find the local user (uid {uid}) in the password database; set HOME and USER")]
    NoLocalUser {
        /// The uid looked up.
        uid: u32,
    },
}

/// Resolves with `ssh -G` when an `ssh` binary is on `PATH`, otherwise natively.
///
/// A failing `ssh -G` is an error, not a reason to fall back: `ssh` itself would
/// refuse the same configuration.
pub fn resolve(req: &ConfigRequest) -> Result<HostConfig, ConfigError> {
    match find_in_path("ssh") {
        Some(ssh) => resolve_with_program(&ssh, req),
        None => resolve_native(req),
    }
}

/// Resolves with `ssh -G` from `PATH`.
pub fn resolve_with_ssh_g(req: &ConfigRequest) -> Result<HostConfig, ConfigError> {
    resolve_with_program(Path::new("ssh"), req)
}

/// Resolves by reading the configuration files ourselves (see the module docs).
pub fn resolve_native(req: &ConfigRequest) -> Result<HostConfig, ConfigError> {
    let local = LocalContext::current()?;
    let (dump, mut warnings) = native_dump(req, &local)?;
    let (_, alias) = split_user_host(&req.host);
    warnings.splice(0..0, request_warnings(req, &local));
    host_config_from_dump(alias, &dump, &local, warnings)
}

/// `ssh` drops a `-i` file it cannot access (with a warning on stderr); so do we,
/// saying so.
fn request_warnings(req: &ConfigRequest, local: &LocalContext) -> Vec<String> {
    req.identity_files
        .iter()
        .filter(|id| !Path::new(&tilde(&id.to_string_lossy(), local)).exists())
        .map(|id| {
            format!(
                "identity file {} (-i) not accessible: ignored",
                id.display()
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The `ssh -G` dump and its translation into HostConfig.

/// `ssh -G` output: lowercase keys, each with the values printed for it in order.
#[derive(Debug, Default)]
struct Dump(HashMap<String, Vec<String>>);

impl Dump {
    /// Reads `ssh -G` output: one `key value` per line.
    fn from_ssh_g(stdout: &[u8]) -> Dump {
        let mut dump = Dump::default();
        for line in String::from_utf8_lossy(stdout).lines() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            dump.push(&key.to_ascii_lowercase(), value.to_string());
        }
        dump
    }
    fn push(&mut self, key: &str, value: String) {
        self.0.entry(key.to_string()).or_default().push(value);
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }
    fn all(&self, key: &str) -> &[String] {
        self.0.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
}

fn host_config_from_dump(
    alias: &str,
    dump: &Dump,
    local: &LocalContext,
    mut warnings: Vec<String>,
) -> Result<HostConfig, ConfigError> {
    let hostname = dump.get("hostname").unwrap_or(alias).to_string();
    let port = match dump.get("port") {
        Some(p) => parse_port("port", p)?,
        None => 22,
    };
    let user = dump
        .get("user")
        .map(str::to_string)
        .unwrap_or_else(|| local.user.clone());
    let host_key_alias = dump.get("hostkeyalias").map(str::to_string);
    let tokens = Tokens {
        local,
        hostname: &hostname,
        original: alias,
        port,
        user: &user,
        host_key_alias: host_key_alias.as_deref(),
    };
    let paths = |key: &str| -> Result<Vec<PathBuf>, ConfigError> {
        dump.all(key)
            .iter()
            .filter(|v| !v.eq_ignore_ascii_case("none"))
            .map(|v| {
                let expanded = expand_dollar(&tokens.expand(&tilde(v, local), key)?, key)?;
                Ok(PathBuf::from(expanded))
            })
            .collect()
    };
    let identity_files = paths("identityfile")?;
    let certificate_files = paths("certificatefile")?;
    let file_list = |key: &str| -> Vec<PathBuf> {
        match dump.get(key) {
            None => Vec::new(),
            Some(v) if v.eq_ignore_ascii_case("none") => Vec::new(),
            Some(v) => v.split_whitespace().map(PathBuf::from).collect(),
        }
    };
    let proxy_jump = match dump.get("proxyjump") {
        Some(v) if !v.eq_ignore_ascii_case("none") => parse_jump_chain(v)?,
        _ => Vec::new(),
    };
    let proxy_command = match dump.get("proxycommand") {
        Some(v) if !v.eq_ignore_ascii_case("none") && proxy_jump.is_empty() => {
            Some(tokens.expand(v, "proxycommand")?)
        }
        _ => None,
    };
    let address_family = match dump.get("addressfamily").unwrap_or("any") {
        v if v.eq_ignore_ascii_case("any") => AddressFamily::Any,
        v if v.eq_ignore_ascii_case("inet") => AddressFamily::Inet,
        v if v.eq_ignore_ascii_case("inet6") => AddressFamily::Inet6,
        v => return Err(bad_value("addressfamily", v, "expected any, inet or inet6")),
    };
    let seconds = |key: &str| -> Result<Option<Duration>, ConfigError> {
        match dump.get(key) {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("none") => Ok(None),
            Some(v) => match parse_time(v) {
                Some(0) => Ok(None),
                Some(s) => Ok(Some(Duration::from_secs(s))),
                None => Err(bad_value(key, v, "expected a time such as 30, 5m or 1h")),
            },
        }
    };
    let count = |key: &str, default: u32| -> Result<u32, ConfigError> {
        match dump.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| bad_value(key, v, "expected a whole number")),
        }
    };
    let flag = |key: &str| -> Result<bool, ConfigError> {
        match dump.get(key) {
            None => Ok(false),
            Some(v) => parse_bool(v).ok_or_else(|| bad_value(key, v, "expected yes or no")),
        }
    };
    let strict_host_key_checking = match dump.get("stricthostkeychecking") {
        None => StrictHostKeyChecking::Ask,
        Some(v) => parse_strict(v).ok_or_else(|| {
            bad_value(
                "stricthostkeychecking",
                v,
                "expected yes, accept-new, no or ask",
            )
        })?,
    };
    let list = |key: &str| -> Vec<String> {
        dump.get(key)
            .map(|v| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let control_path = match dump.get("controlpath") {
        Some(v) if !v.eq_ignore_ascii_case("none") => Some(PathBuf::from(expand_dollar(
            &tokens.expand(&tilde(v, local), "controlpath")?,
            "controlpath",
        )?)),
        _ => None,
    };
    warnings.extend(unsupported_warnings(dump));
    Ok(HostConfig {
        alias: alias.to_string(),
        port,
        identity_files,
        certificate_files,
        identities_only: flag("identitiesonly")?,
        identity_agent: dump.get("identityagent").map(str::to_string),
        proxy_jump,
        proxy_command,
        address_family,
        connect_timeout: seconds("connecttimeout")?,
        connection_attempts: count("connectionattempts", 1)?,
        server_alive_interval: seconds("serveraliveinterval")?,
        server_alive_count_max: count("serveralivecountmax", 3)?,
        user_known_hosts_files: file_list("userknownhostsfile"),
        global_known_hosts_files: file_list("globalknownhostsfile"),
        strict_host_key_checking,
        host_key_alias,
        hash_known_hosts: flag("hashknownhosts")?,
        check_host_ip: flag("checkhostip")?,
        batch_mode: flag("batchmode")?,
        ciphers: list("ciphers"),
        kex_algorithms: list("kexalgorithms"),
        macs: list("macs"),
        host_key_algorithms: list("hostkeyalgorithms"),
        pubkey_accepted_algorithms: list("pubkeyacceptedalgorithms"),
        ca_signature_algorithms: list("casignaturealgorithms"),
        control_path,
        warnings,
        hostname,
        user,
    })
}

fn unsupported_warnings(dump: &Dump) -> Vec<String> {
    let mut w = Vec::new();
    let is_set = |key: &str, off: &[&str]| {
        dump.get(key)
            .is_some_and(|v| !off.iter().any(|o| v.eq_ignore_ascii_case(o)))
    };
    let shared = is_set("controlmaster", &["false", "no"]) || is_set("controlpath", &["none"]);
    if shared {
        w.push(
            "warning: ControlMaster/ControlPath: robosync's built-in SSH client does not share an \
             OpenSSH master connection (each of its logins is a new one, with any MFA prompt); \
             use --ssh-program ssh to go through the master"
                .to_string(),
        );
    }
    let simple: &[(&str, &[&str], &str)] = &[
        (
            "gssapiauthentication",
            &["no", "false"],
            "GSSAPIAuthentication yes: the built-in client has no GSSAPI/Kerberos; use --ssh-program ssh",
        ),
        (
            "pkcs11provider",
            &["none"],
            "PKCS11Provider: the built-in client cannot use PKCS#11 tokens; load the key into ssh-agent or use --ssh-program ssh",
        ),
        (
            "knownhostscommand",
            &["none"],
            "KnownHostsCommand: not run by the built-in client; only the known_hosts files are consulted",
        ),
        (
            "verifyhostkeydns",
            &["no", "false"],
            "VerifyHostKeyDNS: SSHFP records are not consulted by the built-in client",
        ),
        (
            "hostbasedauthentication",
            &["no", "false"],
            "HostbasedAuthentication: not supported by the built-in client",
        ),
        (
            "proxyusefdpass",
            &["no", "false"],
            "ProxyUseFdpass: not supported; the ProxyCommand's stdin/stdout are used",
        ),
        (
            "remotecommand",
            &["none"],
            "RemoteCommand: ignored, robosync starts the sftp subsystem",
        ),
        (
            "tunnel",
            &["no", "false"],
            "Tunnel: tun/tap forwarding is ignored",
        ),
        (
            "compression",
            &["no", "false"],
            "warning: Compression yes: the built-in client does not compress (its SSH library is built without zlib); \
             use --ssh-program ssh to compress",
        ),
        (
            "canonicalizehostname",
            &["no", "false"],
            "CanonicalizeHostname: host name canonicalisation is not performed",
        ),
    ];
    for (key, off, message) in simple {
        if is_set(key, off) {
            w.push((*message).to_string());
        }
    }
    let forwards: Vec<&str> = ["localforward", "remoteforward", "dynamicforward"]
        .into_iter()
        .filter(|k| !dump.all(k).is_empty())
        .collect();
    if !forwards.is_empty() {
        w.push(format!(
            "{}: port forwarding is ignored by robosync",
            forwards
                .iter()
                .map(|k| display_keyword(k))
                .collect::<Vec<_>>()
                .join("/")
        ));
    }
    if is_set("permitlocalcommand", &["no", "false"]) && dump.get("localcommand").is_some() {
        w.push("LocalCommand: not run by robosync".to_string());
    }
    w
}

fn display_keyword(key: &str) -> &'static str {
    match key {
        "localforward" => "LocalForward",
        "remoteforward" => "RemoteForward",
        _ => "DynamicForward",
    }
}

fn bad_value(key: &str, value: &str, message: &str) -> ConfigError {
    ConfigError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        message: message.to_string(),
    }
}

fn parse_port(key: &str, value: &str) -> Result<u16, ConfigError> {
    match value.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(bad_value(key, value, "expected a port number 1-65535")),
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

fn parse_strict(v: &str) -> Option<StrictHostKeyChecking> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(StrictHostKeyChecking::Yes),
        "no" | "false" | "off" => Some(StrictHostKeyChecking::No),
        "accept-new" => Some(StrictHostKeyChecking::AcceptNew),
        "ask" => Some(StrictHostKeyChecking::Ask),
        _ => None,
    }
}

/// OpenSSH's `convtime`: `90`, `1m30s`, `2h`, units s m h d w.
fn parse_time(v: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in v.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let mult = match c.to_ascii_lowercase() {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 604800,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(mult)?)?;
        digits.clear();
    }
    if !digits.is_empty() {
        total = total.checked_add(digits.parse().ok()?)?;
    } else if v.is_empty() {
        return None;
    }
    Some(total)
}

/// `ProxyJump` value: `[user@]host[:port]` or `ssh://[user@]host[:port]` hops,
/// comma-separated.
fn parse_jump_chain(v: &str) -> Result<Vec<JumpHost>, ConfigError> {
    v.split(',')
        .map(|hop| {
            parse_jump_host(hop.trim())
                .ok_or_else(|| bad_value("proxyjump", v, "expected [user@]host[:port],..."))
        })
        .collect()
}

fn parse_jump_host(hop: &str) -> Option<JumpHost> {
    let hop = hop.strip_prefix("ssh://").unwrap_or(hop);
    let hop = hop.strip_suffix('/').unwrap_or(hop);
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
        _ => (None, hop),
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        let (h, after) = inner.split_once(']')?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p.parse::<u16>().ok()?)),
            None if after.is_empty() => (h, None),
            None => return None,
        }
    } else if rest.matches(':').count() == 1 {
        let (h, p) = rest.split_once(':')?;
        (h, Some(p.parse::<u16>().ok()?))
    } else {
        (rest, None)
    };
    if host.is_empty() {
        return None;
    }
    Some(JumpHost {
        user,
        host: host.to_string(),
        port,
    })
}

fn split_user_host(dest: &str) -> (Option<&str>, &str) {
    match dest.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u), h),
        _ => (None, dest),
    }
}

// ---------------------------------------------------------------------------
// Local facts and token expansion.

#[derive(Debug, Clone)]
struct LocalContext {
    user: String,
    home: String,
    uid: u32,
    /// Full local host name (`%l`).
    hostname: String,
}

impl LocalContext {
    fn current() -> Result<Self, ConfigError> {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let (user, home) = match passwd_by_uid(uid) {
            Some(entry) => entry,
            None => match (std::env::var("USER"), std::env::var("HOME")) {
                (Ok(u), Ok(h)) => (u, h),
                _ => return Err(ConfigError::NoLocalUser { uid }),
            },
        };
        Ok(LocalContext {
            user,
            home,
            uid,
            hostname: local_hostname(),
        })
    }
}

fn local_hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on
    // success when the name fits, and we stop at the first NUL in any case.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn passwd_from_raw(pw: &libc::passwd) -> (String, String) {
    // SAFETY: getpwuid_r/getpwnam_r filled pw with NUL-terminated strings that
    // live in the caller's buffer for the duration of this call.
    unsafe {
        (
            CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned(),
            CStr::from_ptr(pw.pw_dir).to_string_lossy().into_owned(),
        )
    }
}

fn passwd_by_uid(uid: u32) -> Option<(String, String)> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: zeroed passwd is a valid out-parameter; buf outlives its use.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut result) };
    if r != 0 || result.is_null() {
        return None;
    }
    Some(passwd_from_raw(&pw))
}

fn passwd_by_name(name: &str) -> Option<(String, String)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: as in passwd_by_uid.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return None;
    }
    Some(passwd_from_raw(&pw))
}

/// `~` and `~user` at the start of a path.
fn tilde(path: &str, local: &LocalContext) -> String {
    let Some(rest) = path.strip_prefix('~') else {
        return path.to_string();
    };
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let home = if name.is_empty() {
        Some(local.home.clone())
    } else {
        passwd_by_name(name).map(|(_, h)| h)
    };
    match home {
        Some(h) => format!("{}{}", h.trim_end_matches('/'), tail),
        None => path.to_string(),
    }
}

/// `${NAME}` environment references, as OpenSSH expands them in paths.
fn expand_dollar(s: &str, key: &str) -> Result<String, ConfigError> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err(bad_value(key, s, "unterminated ${"));
        };
        let name = &after[..end];
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => {
                return Err(bad_value(
                    key,
                    s,
                    &format!("environment variable {name} is not set"),
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Values for the client's `%` tokens.
struct Tokens<'a> {
    local: &'a LocalContext,
    hostname: &'a str,
    original: &'a str,
    port: u16,
    user: &'a str,
    host_key_alias: Option<&'a str>,
}

impl Tokens<'_> {
    /// `%C`: SHA-1 of `%l%h%p%r`, as OpenSSH 9.2 computes it.
    fn connection_hash(&self) -> String {
        use sha1::{Digest, Sha1};
        let digest = Sha1::digest(
            format!(
                "{}{}{}{}",
                self.local.hostname, self.hostname, self.port, self.user
            )
            .as_bytes(),
        );
        digest.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    fn expand(&self, s: &str, key: &str) -> Result<String, ConfigError> {
        if !s.contains('%') {
            return Ok(s.to_string());
        }
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(t) = chars.next() else {
                return Err(bad_value(key, s, "ends with a lone %"));
            };
            match t {
                '%' => out.push('%'),
                'C' => out.push_str(&self.connection_hash()),
                'd' => out.push_str(&self.local.home),
                'h' => out.push_str(self.hostname),
                'i' => out.push_str(&self.local.uid.to_string()),
                'k' => out.push_str(self.host_key_alias.unwrap_or(self.original)),
                'L' => out.push_str(self.local.hostname.split('.').next().unwrap_or("")),
                'l' => out.push_str(&self.local.hostname),
                'n' => out.push_str(self.original),
                'p' => out.push_str(&self.port.to_string()),
                'r' => out.push_str(self.user),
                'u' => out.push_str(&self.local.user),
                other => {
                    return Err(bad_value(key, s, &format!("unknown token %{other}")));
                }
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------
// The native resolver.

/// Fuzzing entry points (see `crate::fuzzing`): arbitrary text goes through
/// the parsers and into a [`HostConfig`] as `ssh rorqual` would resolve it,
/// without touching the machine (no file read, no command run).
pub(crate) mod fuzz {
    use super::*;

    const HOST: &str = "rorqual";

    fn local() -> LocalContext {
        LocalContext {
            user: "fuzz".into(),
            home: "/nonexistent/fuzz".into(),
            uid: 1000,
            hostname: "fuzzhost.example".into(),
        }
    }

    /// `text` as the only configuration file (`-F text`), both passes.
    pub(crate) fn native(text: &str) {
        let local = local();
        let mut opts = Options::default();
        let mut pass = Pass {
            local: &local,
            host: HOST.into(),
            original: HOST.into(),
            final_pass: false,
            inert: true,
        };
        let path = Path::new("fuzz");
        if read_config_text(&mut opts, &pass, text, path, FileKind::User, 0, false).is_err() {
            return;
        }
        let hostname = match opts.get("hostname") {
            Some(h) => expand_hostname(h, HOST),
            None => HOST.to_string(),
        };
        if opts.want_final_pass {
            opts.single
                .insert("hostname".into(), vec![hostname.clone()]);
            pass.host = hostname.clone();
            pass.final_pass = true;
            if read_config_text(&mut opts, &pass, text, path, FileKind::User, 0, false).is_err() {
                return;
            }
        }
        if let Ok(dump) = options_to_dump(&opts, &local, HOST, &hostname) {
            let _ = host_config_from_dump(HOST, &dump, &local, Vec::new());
        }
    }

    /// `stdout` as the output of `ssh -G rorqual`.
    pub(crate) fn ssh_g(stdout: &[u8]) {
        let dump = Dump::from_ssh_g(stdout);
        let _ = host_config_from_dump(HOST, &dump, &local(), Vec::new());
    }
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "robosync-sshcfg-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn have_ssh() -> bool {
        find_in_path("ssh").is_some()
    }

    fn request(config: &Path, host: &str) -> ConfigRequest {
        ConfigRequest {
            host: host.into(),
            config_file: Some(config.to_path_buf()),
            ..Default::default()
        }
    }

    /// Resolves natively and, when `ssh` is installed, with `ssh -G`, and asserts
    /// that both agree on every field that drives the connection.
    fn resolve_both(req: &ConfigRequest) -> HostConfig {
        let native = resolve_native(req).unwrap();
        if !have_ssh() {
            eprintln!("ssh not installed: checking the native resolver only");
            return native;
        }
        let ssh = resolve_with_ssh_g(req).unwrap();
        macro_rules! same {
            ($($f:ident),*) => {$(
                assert_eq!(native.$f, ssh.$f, "field {} differs for {:?}", stringify!($f), req);
            )*};
        }
        same!(
            alias,
            hostname,
            port,
            user,
            identity_files,
            certificate_files,
            identities_only,
            identity_agent,
            proxy_jump,
            proxy_command,
            address_family,
            connect_timeout,
            connection_attempts,
            server_alive_interval,
            server_alive_count_max,
            user_known_hosts_files,
            global_known_hosts_files,
            strict_host_key_checking,
            host_key_alias,
            hash_known_hosts,
            check_host_ip,
            batch_mode,
            ciphers,
            kex_algorithms,
            macs,
            host_key_algorithms,
            pubkey_accepted_algorithms,
            ca_signature_algorithms,
            warnings
        );
        native
    }

    fn home() -> String {
        LocalContext::current().unwrap().home
    }

    #[test]
    fn defaults_match_openssh() {
        let t = TempDir::new();
        let cfg = t.write("config", "");
        let c = resolve_both(&request(&cfg, "example.org"));
        assert_eq!(c.hostname, "example.org");
        assert_eq!(c.port, 22);
        assert_eq!(c.user, LocalContext::current().unwrap().user);
        assert_eq!(c.identity_files.len(), DEFAULT_IDENTITY_FILES.len());
        assert_eq!(
            c.identity_files[0],
            PathBuf::from(format!("{}/.ssh/id_rsa", home()))
        );
        assert_eq!(c.strict_host_key_checking, StrictHostKeyChecking::Ask);
        assert_eq!(c.server_alive_count_max, 3);
        assert_eq!(c.connection_attempts, 1);
        assert_eq!(c.connect_timeout, None);
        assert!(c.proxy_jump.is_empty() && c.proxy_command.is_none());
        assert_eq!(
            c.global_known_hosts_files,
            vec![
                PathBuf::from("/etc/ssh/ssh_known_hosts"),
                PathBuf::from("/etc/ssh/ssh_known_hosts2")
            ]
        );
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn host_alias_and_first_value_wins() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "# robot node\n\
             Host rorqual\n\
             \x20 HostName robot.rorqual.alliancecan.ca\n\
             \x20 User=bob\n\
             \x20 Port = 2222\n\
             \x20 IdentityFile ~/.ssh/robot_key\n\
             \x20 IdentitiesOnly yes\n\
             \x20 ConnectTimeout 1m30s\n\
             \x20 ServerAliveInterval 30\n\
             \x20 ServerAliveCountMax 5\n\
             Host rorqual other\n\
             \x20 User alice\n\
             \x20 Port 99\n\
             \x20 IdentityFile /keys/second\n\
             Host *\n\
             \x20 StrictHostKeyChecking accept-new\n\
             \x20 HashKnownHosts yes\n\
             \x20 user carol\n",
        );
        let c = resolve_both(&request(&cfg, "rorqual"));
        assert_eq!(c.hostname, "robot.rorqual.alliancecan.ca");
        assert_eq!(c.user, "bob");
        assert_eq!(c.port, 2222);
        assert_eq!(
            c.identity_files,
            vec![
                PathBuf::from(format!("{}/.ssh/robot_key", home())),
                PathBuf::from("/keys/second")
            ]
        );
        assert!(c.identities_only);
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(90)));
        assert_eq!(c.server_alive_interval, Some(Duration::from_secs(30)));
        assert_eq!(c.server_alive_count_max, 5);
        assert_eq!(c.strict_host_key_checking, StrictHostKeyChecking::AcceptNew);
        assert!(c.hash_known_hosts);

        let other = resolve_both(&request(&cfg, "other"));
        assert_eq!((other.user.as_str(), other.port), ("alice", 99));
        let unknown = resolve_both(&request(&cfg, "elsewhere"));
        assert_eq!(unknown.user, "carol");
    }

    #[test]
    fn command_line_options_come_first() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host h\n User fromfile\n Port 1000\n IdentityFile /k/file\n AddressFamily inet\n",
        );
        let mut req = request(&cfg, "h");
        req.options = vec!["User=fromopt".into(), "ConnectTimeout 7".into()];
        req.port = Some(2000);
        let cli_key = t.write("cli_key", "");
        req.identity_files = vec![cli_key.clone(), PathBuf::from("/nonexistent/key")];
        let c = resolve_both(&req);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.user, "fromopt");
        assert_eq!(c.port, 2000);
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(c.identity_files, vec![cli_key, PathBuf::from("/k/file")]);
        assert_eq!(c.address_family, AddressFamily::Inet);

        let mut req = request(&cfg, "someone@h");
        req.family = Some(AddressFamily::Inet6);
        let c = resolve_both(&req);
        assert_eq!(c.user, "someone");
        assert_eq!(c.alias, "h");
        assert_eq!(c.address_family, AddressFamily::Inet6);
    }

    #[test]
    fn host_patterns_wildcards_and_negation() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host *.cscs.ch !ela.cscs.ch\n\
             \x20 ProxyJump ela.cscs.ch\n\
             Host robot-?? build*\n\
             \x20 User robot\n\
             Host a,b\n\
             \x20 User comma\n",
        );
        let c = resolve_both(&request(&cfg, "daint.cscs.ch"));
        assert_eq!(c.proxy_jump.len(), 1);
        assert_eq!(c.proxy_jump[0].host, "ela.cscs.ch");
        let ela = resolve_both(&request(&cfg, "ela.cscs.ch"));
        assert!(ela.proxy_jump.is_empty());
        assert_eq!(resolve_both(&request(&cfg, "robot-01")).user, "robot");
        assert_eq!(resolve_both(&request(&cfg, "builder")).user, "robot");
        assert_ne!(resolve_both(&request(&cfg, "robot-001")).user, "robot");
        // Commas are not list separators on Host lines.
        assert_ne!(resolve_both(&request(&cfg, "a")).user, "comma");
    }

    #[test]
    fn match_host_originalhost_user_localuser_all() {
        let t = TempDir::new();
        let local = LocalContext::current().unwrap().user;
        let cfg = t.write(
            "config",
            &format!(
                "Host rc\n\
                 \x20 HostName login.rc.int.colorado.edu\n\
                 Match host=*.rc.int.colorado.edu\n\
                 \x20 MACs hmac-sha1,hmac-sha2-256\n\
                 \x20 Port 2201\n\
                 Match originalhost rc\n\
                 \x20 User rcuser\n\
                 Match user rcuser\n\
                 \x20 IdentityFile /keys/rc\n\
                 Match !host *.example.com localuser {local}\n\
                 \x20 ServerAliveInterval 15\n\
                 Match all\n\
                 \x20 ConnectionAttempts 3\n"
            ),
        );
        let c = resolve_both(&request(&cfg, "rc"));
        assert_eq!(c.hostname, "login.rc.int.colorado.edu");
        assert_eq!(c.port, 2201);
        assert_eq!(c.user, "rcuser");
        assert_eq!(c.macs, vec!["hmac-sha1", "hmac-sha2-256"]);
        assert_eq!(c.identity_files, vec![PathBuf::from("/keys/rc")]);
        assert_eq!(c.server_alive_interval, Some(Duration::from_secs(15)));
        assert_eq!(c.connection_attempts, 3);

        let d = resolve_both(&request(&cfg, "x.example.com"));
        assert_eq!(d.server_alive_interval, None);
        assert_eq!(d.port, 22);
    }

    #[test]
    fn match_final_reparses_with_the_final_hostname() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host a\n HostName b.example\n\
             Host b.example\n User x\n Port 99\n\
             Match final\n ServerAliveInterval 7\n\
             Match final host b.example\n ConnectTimeout 4\n",
        );
        let c = resolve_both(&request(&cfg, "a"));
        assert_eq!((c.user.as_str(), c.port), ("x", 99));
        assert_eq!(c.server_alive_interval, Some(Duration::from_secs(7)));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(4)));

        // Without `Match final`, Host lines only see the name as typed.
        let cfg2 = t.write(
            "config2",
            "Host a\n HostName b.example\nHost b.example\n User x\n",
        );
        assert_ne!(resolve_both(&request(&cfg2, "a")).user, "x");
    }

    #[test]
    fn match_exec_runs_with_tokens() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host a\n HostName %h.example.org\n\
             Match exec \"test %h = a.example.org\"\n User execd\n\
             Match exec false\n Port 5\n",
        );
        let c = resolve_both(&request(&cfg, "a"));
        assert_eq!(c.hostname, "a.example.org");
        assert_eq!(c.user, "execd");
        assert_eq!(c.port, 22);
    }

    #[test]
    fn fuzzing_reads_no_file_and_runs_no_command() {
        let t = TempDir::new();
        let marker = t.0.join("ran");
        t.write("included", "User included\n");
        let text = format!(
            "Include {}\nMatch exec \"touch {}\"\n User execd\n",
            t.0.join("included").display(),
            marker.display()
        );
        fuzz::native(&text);
        assert!(!marker.exists(), "Match exec ran a command");
        // The same text, resolved for real, does both.
        let cfg = t.write("config", &text);
        let c = resolve_native(&request(&cfg, "rorqual")).unwrap();
        assert!(marker.exists());
        assert_eq!(c.user, "included");
    }

    #[test]
    fn include_globs_and_scoping() {
        let t = TempDir::new();
        t.write(
            "conf.d/10-robot.conf",
            "Host robot\n User r10\n IdentityFile /keys/r\n",
        );
        t.write(
            "conf.d/20-other.conf",
            "Host robot\n User r20\n Port 2020\n",
        );
        t.write("conf.d/ignored.txt", "Host robot\n Port 1\n");
        t.write("scoped.conf", "CertificateFile /keys/r-cert.pub\n");
        let dir = t.0.display();
        let cfg = t.write(
            "config",
            &format!(
                "Host robot\n\
                 \x20 Include {dir}/scoped.conf\n\
                 \x20 Include {dir}/conf.d/*.conf\n\
                 Host elsewhere\n\
                 \x20 Include {dir}/scoped.conf\n\
                 Include {dir}/missing/*.conf\n"
            ),
        );
        let c = resolve_both(&request(&cfg, "robot"));
        assert_eq!(c.user, "r10");
        assert_eq!(c.port, 2020);
        assert_eq!(c.identity_files, vec![PathBuf::from("/keys/r")]);
        assert_eq!(c.certificate_files, vec![PathBuf::from("/keys/r-cert.pub")]);
        let e = resolve_both(&request(&cfg, "nothing"));
        assert!(e.certificate_files.is_empty());
    }

    #[test]
    fn tokens_and_tilde() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host tok\n\
             \x20 HostName tok.example\n\
             \x20 User ruser\n\
             \x20 Port 2022\n\
             \x20 UserKnownHostsFile ~/kh/%h_%p_%r_%n_%u_%l_%L_%i_%%_%C %d/kh2_%k\n\
             \x20 IdentityFile ~/.ssh/id_%h_%r\n\
             \x20 IdentityAgent ~/.ssh/agent-%L.sock\n\
             \x20 ProxyCommand nc %h %p # comment\n\
             \x20 HostKeyAlias tok-alias\n",
        );
        let c = resolve_both(&request(&cfg, "tok"));
        let home = home();
        assert_eq!(
            c.identity_files,
            vec![PathBuf::from(format!("{home}/.ssh/id_tok.example_ruser"))]
        );
        // ProxyCommand is taken verbatim, comment included, as OpenSSH does.
        assert_eq!(
            c.proxy_command.as_deref(),
            Some("nc tok.example 2022 # comment")
        );
        assert_eq!(c.host_key_alias.as_deref(), Some("tok-alias"));
        assert_eq!(
            c.user_known_hosts_files[1],
            PathBuf::from(format!("{home}/kh2_tok-alias"))
        );
        let first = c.user_known_hosts_files[0].to_string_lossy().into_owned();
        assert!(
            first.starts_with(&format!("{home}/kh/tok.example_2022_ruser_tok_")),
            "{first}"
        );
        assert!(first.contains("_%_"), "{first}");
    }

    #[test]
    fn proxy_jump_chains_and_none() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host chain\n ProxyJump alice@ela.cscs.ch:2222,bastion,[::1]:22\n\
             Host nojump\n ProxyJump none\n\
             Host *\n ProxyJump default-bastion\n\
             Host cmd\n ProxyCommand ssh -W %h:%p gw\n",
        );
        let c = resolve_both(&request(&cfg, "chain"));
        assert_eq!(
            c.proxy_jump,
            vec![
                JumpHost {
                    user: Some("alice".into()),
                    host: "ela.cscs.ch".into(),
                    port: Some(2222)
                },
                JumpHost {
                    user: None,
                    host: "bastion".into(),
                    port: None
                },
                JumpHost {
                    user: None,
                    host: "::1".into(),
                    port: Some(22)
                },
            ]
        );
        let n = resolve_both(&request(&cfg, "nojump"));
        assert!(n.proxy_jump.is_empty() && n.proxy_command.is_none());
        // ProxyJump from `Host *` came first, so the later ProxyCommand is ignored.
        let cmd = resolve_both(&request(&cfg, "cmd"));
        assert_eq!(cmd.proxy_jump[0].host, "default-bastion");
        assert!(cmd.proxy_command.is_none());
    }

    #[test]
    fn algorithm_modifiers() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host algo\n\
             \x20 Ciphers +aes128-cbc,aes256-ctr\n\
             \x20 MACs -hmac-sha1*,umac-64*\n\
             \x20 KexAlgorithms ^curve25519-sha256,diffie-hellman-group14-sha1\n\
             \x20 HostKeyAlgorithms ssh-ed25519*,rsa-sha2-*\n\
             \x20 PubkeyAcceptedKeyTypes +ssh-rsa\n",
        );
        let c = resolve_both(&request(&cfg, "algo"));
        assert_eq!(c.ciphers.last().map(String::as_str), Some("aes128-cbc"));
        assert!(!c.macs.iter().any(|m| m.starts_with("hmac-sha1")));
        assert_eq!(
            c.kex_algorithms[..2],
            ["curve25519-sha256", "diffie-hellman-group14-sha1"]
        );
        assert_eq!(c.host_key_algorithms[0], "ssh-ed25519");
        assert_eq!(
            c.pubkey_accepted_algorithms.last().map(String::as_str),
            Some("ssh-rsa")
        );
    }

    #[test]
    fn known_hosts_settings_and_booleans() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host k1\n UserKnownHostsFile /a/known /b/known\n GlobalKnownHostsFile /g/known\n\
             \x20StrictHostKeyChecking no\n CheckHostIP yes\n BatchMode yes\n\
             Host k2\n UserKnownHostsFile none\n StrictHostKeyChecking yes\n\
             Host k3\n StrictHostKeyChecking off\n",
        );
        let c = resolve_both(&request(&cfg, "k1"));
        assert_eq!(
            c.user_known_hosts_files,
            vec![PathBuf::from("/a/known"), PathBuf::from("/b/known")]
        );
        assert_eq!(c.global_known_hosts_files, vec![PathBuf::from("/g/known")]);
        assert_eq!(c.strict_host_key_checking, StrictHostKeyChecking::No);
        assert!(c.check_host_ip && c.batch_mode);
        // BatchMode turns keepalives on, as in OpenSSH.
        assert_eq!(c.server_alive_interval, Some(Duration::from_secs(300)));
        let c2 = resolve_both(&request(&cfg, "k2"));
        assert!(c2.user_known_hosts_files.is_empty());
        assert_eq!(c2.strict_host_key_checking, StrictHostKeyChecking::Yes);
        let c3 = resolve_both(&request(&cfg, "k3"));
        assert_eq!(c3.strict_host_key_checking, StrictHostKeyChecking::No);
    }

    #[test]
    fn unsupported_directives_warn() {
        let t = TempDir::new();
        let cfg = t.write(
            "config",
            "Host narval\n\
             \x20 ControlPath ~/.ssh/cm-%r@%h:%p\n\
             \x20 ControlMaster auto\n\
             \x20 ControlPersist 10m\n\
             \x20 GSSAPIAuthentication yes\n\
             \x20 LocalForward 8080 localhost:80\n\
             \x20 AddKeysToAgent yes\n\
             \x20 RequestTTY no\n",
        );
        let c = resolve_both(&request(&cfg, "narval"));
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("ControlMaster"));
        assert!(c.warnings[1].contains("GSSAPIAuthentication"));
        assert!(c.warnings[2].contains("LocalForward"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let t = TempDir::new();
        let cfg = t.write("config", "Host x\n  NoSuchOption yes\n");
        let err = resolve_native(&request(&cfg, "x")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 2, .. }), "{err}");
        assert!(err
            .to_string()
            .contains("NoSuchOption".to_ascii_lowercase().as_str()));
        if have_ssh() {
            assert!(matches!(
                resolve_with_ssh_g(&request(&cfg, "x")),
                Err(ConfigError::SshG { .. })
            ));
        }
        let ignored = t.write("ok", "IgnoreUnknown NoSuch*\nHost x\n NoSuchOption yes\n");
        assert!(resolve_both(&request(&ignored, "x")).warnings.is_empty());

        let missing = resolve_native(&request(&t.0.join("absent"), "x")).unwrap_err();
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
    }

    #[test]
    fn line_splitting() {
        assert_eq!(split_line("  # c").unwrap(), None);
        assert_eq!(
            split_line("User=bob").unwrap(),
            Some(("user".into(), vec!["bob".into()]))
        );
        assert_eq!(
            split_line("ProxyCommand = \"ssh -W\" '%h:%p' # x").unwrap(),
            Some(("proxycommand".into(), vec!["ssh -W".into(), "%h:%p".into()]))
        );
        assert!(split_line("User \"open").is_err());
        assert_eq!(parse_time("1h2m3s"), Some(3723));
        assert_eq!(parse_time("x"), None);
        assert!(wildcard_match("robot.rorqual", "robot.*"));
        assert!(!wildcard_match("robot", "robot?"));
        assert_eq!(match_pattern_list("a.b", "*.b,!a.*", true), -1);
    }
}

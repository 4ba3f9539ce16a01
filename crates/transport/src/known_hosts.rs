//! Host key policy over OpenSSH `known_hosts` files.
//!
//! This module owns the decision "is the key (or host certificate) this server
//! presented the one we expect?" and the recording of newly accepted keys. It
//! reads and writes files but never prompts and never connects: the connection
//! code maps a [`Verdict`] onto `StrictHostKeyChecking`.
//!
//! File format, as in `sshd(8)`: `[marker] hostpatterns keytype base64 [comment]`.
//!
//! - Host patterns are comma-separated, with `*`/`?` wildcards and `!` negation (a
//!   matching negated pattern rejects the line), matched case-insensitively
//!   against `host` for port 22 and `[host]:port` otherwise.
//! - Hashed entries `|1|salt|hmac` (HMAC-SHA1 of the same name, keyed by the salt)
//!   as written by `HashKnownHosts yes` or `ssh-keygen -H`.
//! - `@cert-authority` lines trust host certificates signed by that CA for the
//!   hosts their patterns match; `@revoked` lines refuse a key for every host,
//!   whatever other lines say (stricter than OpenSSH, which also matches the
//!   pattern of `@revoked` lines; they are `*` in practice).
//! - Keys are compared by type and key data, never by comment. Unreadable files
//!   and malformed lines are skipped, as `ssh` does.
//!
//! `HostKeyQuery::ip` (CheckHostIP) is used when recording a key: the address is
//! written next to the host name. OpenSSH only warns about address entries, so
//! they never change a verdict here.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::ssh_key::{Algorithm, Certificate, HashAlg, PublicKey};
use sha1::Sha1;

use crate::ssh_config::wildcard_match;

/// The host whose key is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostKeyQuery<'a> {
    /// `HostKeyAlias` if set, else the host name connected to.
    pub host: &'a str,
    /// The port connected to (non-22 ports are recorded as `[host]:port`).
    pub port: u16,
    /// The address connected to, when `CheckHostIP` is on.
    pub ip: Option<IpAddr>,
}

/// What the known_hosts files say about a presented key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A line for this host lists this key.
    Trusted {
        /// The known_hosts file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
    },
    /// A host certificate signed by the `@cert-authority` on this line.
    TrustedByCa {
        /// The known_hosts file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
    },
    /// Nothing is known about this host.
    Unknown,
    /// Keys of other types are known for this host, not this type (OpenSSH
    /// proceeds as for an unknown key, but says so). Callers treat it as
    /// [`Verdict::Unknown`].
    OtherTypesKnown {
        /// The known_hosts file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The key type recorded there.
        known_type: String,
        /// The key type the server presented.
        presented_type: String,
    },
    /// A different key of the same type is recorded for this host.
    Changed {
        /// The known_hosts file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
        /// SHA256 fingerprint of the recorded key.
        expected_fingerprint: String,
        /// SHA256 fingerprint of the presented key.
        presented_fingerprint: String,
    },
    /// The key (or the certificate's CA) is marked `@revoked`.
    Revoked {
        /// The known_hosts file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
        /// SHA256 fingerprint of the revoked key.
        fingerprint: String,
    },
    /// A host certificate from a trusted CA that is not valid for this
    /// connection (expired, not yet valid, wrong principal, not a host
    /// certificate, bad signature).
    InvalidCertificate {
        /// The known_hosts file naming the CA.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
        /// Why the certificate does not do.
        reason: String,
    },
}

impl Verdict {
    /// Whether the key may be used without asking anyone.
    pub fn is_trusted(&self) -> bool {
        matches!(self, Verdict::Trusted { .. } | Verdict::TrustedByCa { .. })
    }

    /// A message in the spirit of OpenSSH's, naming files, lines, fingerprints
    /// and what to do next.
    pub fn explain(&self, host: &str, port: u16) -> String {
        let name = host_port_name(host, port);
        match self {
            Verdict::Trusted { file, line } => {
                format!(
                    "host key for {name} matches {}:{line}",
                    file.display()
                )
            }
            Verdict::TrustedByCa { file, line } => format!(
                "host certificate for {name} is signed by the certificate authority in {}:{line}",
                file.display()
            ),
            Verdict::Unknown => format!(
                "the authenticity of host {name} can't be established: its key is in no known_hosts \
                 file; verify it (e.g. connect once with `ssh{} {host}`) or rerun with \
                 -o StrictHostKeyChecking=accept-new to record it on first use",
                port_flag(port)
            ),
            Verdict::OtherTypesKnown {
                file,
                line,
                known_type,
                presented_type,
            } => format!(
                "the {presented_type} host key for {name} is not known, but a {known_type} key for it \
                 is recorded in {}:{line}; the server may have a new key type. Verify it, then rerun \
                 with -o StrictHostKeyChecking=accept-new to add it",
                file.display()
            ),
            Verdict::Changed {
                file,
                line,
                expected_fingerprint,
                presented_fingerprint,
            } => format!(
                "WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED for {name}: it presented {presented_fingerprint} \
                 but {}:{line} records {expected_fingerprint}. Someone could be eavesdropping on you \
                 (man-in-the-middle attack), or the host key has just been changed. If the change is \
                 expected, remove the old key with `ssh-keygen -f \"{}\" -R \"{name}\"` and connect again",
                file.display(),
                file.display()
            ),
            Verdict::Revoked {
                file,
                line,
                fingerprint,
            } => format!(
                "host key {fingerprint} presented by {name} is marked @revoked in {}:{line}; refusing to connect",
                file.display()
            ),
            Verdict::InvalidCertificate { file, line, reason } => format!(
                "host certificate presented by {name} is not valid ({reason}); its certificate authority \
                 is trusted by {}:{line}. Ask the host's administrators to renew it",
                file.display()
            ),
        }
    }
}

fn port_flag(port: u16) -> String {
    if port == 22 {
        String::new()
    } else {
        format!(" -p {port}")
    }
}

/// `host` for port 22, `[host]:port` otherwise, as known_hosts names hosts.
fn host_port_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// `SHA256:...` as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn key_data_fingerprint(key: &KeyData) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The key type as known_hosts names it (`rsa-sha2-*` signatures use `ssh-rsa` keys).
fn key_type(key: &KeyData) -> String {
    match key.algorithm() {
        Algorithm::Rsa { .. } => "ssh-rsa".to_string(),
        other => other.as_str().to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    CertAuthority,
    Revoked,
}

struct Entry {
    file: PathBuf,
    line: usize,
    marker: Marker,
    hosts: String,
    key: KeyData,
}

fn parse_line(text: &str) -> Option<(Marker, String, KeyData)> {
    let text = text.trim();
    if text.is_empty() || text.starts_with('#') {
        return None;
    }
    let mut fields = text.split_whitespace();
    let mut first = fields.next()?;
    let marker = match first {
        "@cert-authority" => Marker::CertAuthority,
        "@revoked" => Marker::Revoked,
        m if m.starts_with('@') => return None,
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = fields.next()?;
    }
    let keytype = fields.next()?;
    let b64 = fields.next()?;
    let key = PublicKey::from_openssh(&format!("{keytype} {b64}")).ok()?;
    Some((marker, first.to_string(), key.key_data().clone()))
}

fn read_entries(files: &[PathBuf]) -> Vec<Entry> {
    let mut entries = Vec::new();
    for file in files {
        let Ok(mut f) = fs::File::open(file) else {
            continue;
        };
        let mut bytes = Vec::new();
        if f.read_to_end(&mut bytes).is_err() {
            continue;
        }
        parse_file(file, &bytes, &mut entries);
    }
    entries
}

/// Appends the well-formed lines of one file's `bytes` to `entries`.
fn parse_file(file: &Path, bytes: &[u8], entries: &mut Vec<Entry>) {
    let text = String::from_utf8_lossy(bytes);
    for (i, line) in text.lines().enumerate() {
        if let Some((marker, hosts, key)) = parse_line(line) {
            entries.push(Entry {
                file: file.to_path_buf(),
                line: i + 1,
                marker,
                hosts,
                key,
            });
        }
    }
}

fn hmac_sha1(salt: &[u8], name: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(salt).expect("HMAC takes any key length");
    mac.update(name.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Whether a host field matches `name` (already lowercase).
fn hosts_match(field: &str, name: &str) -> bool {
    if let Some(rest) = field.strip_prefix("|1|") {
        let Some((salt, hash)) = rest.split_once('|') else {
            return false;
        };
        let (Ok(salt), Ok(hash)) = (
            BASE64.decode(salt.as_bytes()),
            BASE64.decode(hash.as_bytes()),
        ) else {
            return false;
        };
        return hmac_sha1(&salt, name) == hash;
    }
    let mut positive = false;
    for pattern in field.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if wildcard_match(name, &pattern.to_ascii_lowercase()) {
            if negated {
                return false;
            }
            positive = true;
        }
    }
    positive
}

fn query_name(q: &HostKeyQuery<'_>) -> String {
    host_port_name(&q.host.to_ascii_lowercase(), q.port)
}

fn revoked(entries: &[Entry], keys: &[&KeyData]) -> Option<Verdict> {
    entries
        .iter()
        .find(|e| e.marker == Marker::Revoked && keys.contains(&&e.key))
        .map(|e| Verdict::Revoked {
            file: e.file.clone(),
            line: e.line,
            fingerprint: key_data_fingerprint(&e.key),
        })
}

/// Checks a plain host key against `files` (user files first, then global).
pub fn check(files: &[PathBuf], q: &HostKeyQuery<'_>, presented: &PublicKey) -> Verdict {
    let entries = read_entries(files);
    check_key(&entries, q, presented.key_data())
}

fn check_key(entries: &[Entry], q: &HostKeyQuery<'_>, presented: &KeyData) -> Verdict {
    if let Some(v) = revoked(entries, &[presented]) {
        return v;
    }
    let name = query_name(q);
    let presented_type = key_type(presented);
    let mut changed = None;
    let mut other = None;
    for e in entries
        .iter()
        .filter(|e| e.marker == Marker::None && hosts_match(&e.hosts, &name))
    {
        if &e.key == presented {
            return Verdict::Trusted {
                file: e.file.clone(),
                line: e.line,
            };
        }
        let known_type = key_type(&e.key);
        if known_type == presented_type {
            changed.get_or_insert_with(|| Verdict::Changed {
                file: e.file.clone(),
                line: e.line,
                expected_fingerprint: key_data_fingerprint(&e.key),
                presented_fingerprint: key_data_fingerprint(presented),
            });
        } else {
            other.get_or_insert_with(|| Verdict::OtherTypesKnown {
                file: e.file.clone(),
                line: e.line,
                known_type,
                presented_type: presented_type.clone(),
            });
        }
    }
    changed.or(other).unwrap_or(Verdict::Unknown)
}

/// Checks a host certificate: trusted when an `@cert-authority` line whose
/// patterns match the host lists its signing CA and the certificate is a valid
/// host certificate for this host now. Without a matching CA, the certificate's
/// plain key is checked as [`check`] would, as OpenSSH does.
pub fn check_certificate(files: &[PathBuf], q: &HostKeyQuery<'_>, cert: &Certificate) -> Verdict {
    check_certificate_in(&read_entries(files), q, cert)
}

fn check_certificate_in(entries: &[Entry], q: &HostKeyQuery<'_>, cert: &Certificate) -> Verdict {
    if let Some(v) = revoked(entries, &[cert.public_key(), cert.signature_key()]) {
        return v;
    }
    let name = query_name(q);
    let Some(ca) = entries.iter().find(|e| {
        e.marker == Marker::CertAuthority
            && &e.key == cert.signature_key()
            && hosts_match(&e.hosts, &name)
    }) else {
        return check_key(entries, q, cert.public_key());
    };
    let invalid = |reason: String| Verdict::InvalidCertificate {
        file: ca.file.clone(),
        line: ca.line,
        reason,
    };
    if cert.cert_type() != CertType::Host {
        return invalid("it is a user certificate, not a host certificate".into());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now < cert.valid_after() {
        return invalid(format!(
            "not valid before {} (Unix time), check the clocks",
            cert.valid_after()
        ));
    }
    if now >= cert.valid_before() {
        return invalid(format!("expired at {} (Unix time)", cert.valid_before()));
    }
    let ca_fp = cert.signature_key().fingerprint(HashAlg::Sha256);
    if cert.validate_at(now, [&ca_fp]).is_err() {
        return invalid("its signature does not verify".into());
    }
    let principals = cert.valid_principals();
    if !principals.is_empty() && !principals.iter().any(|p| p.eq_ignore_ascii_case(q.host)) {
        return invalid(format!(
            "it is for {}, not {}",
            principals.join(", "),
            q.host
        ));
    }
    if let Some((option, _)) = cert.critical_options().iter().next() {
        return invalid(format!("unsupported critical option {option}"));
    }
    Verdict::TrustedByCa {
        file: ca.file.clone(),
        line: ca.line,
    }
}

/// Records `key` for the queried host at the end of `file`, creating its
/// directory (mode 0700) and the file (mode 0600) if needed. With `hashed`, the
/// names are written as `|1|salt|hmac` like `HashKnownHosts yes`.
pub fn append(file: &Path, q: &HostKeyQuery<'_>, key: &PublicKey, hashed: bool) -> io::Result<()> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
    }
    let mut names = vec![query_name(q)];
    if let Some(ip) = q.ip {
        let ip_name = host_port_name(&ip.to_string(), q.port);
        if ip_name != names[0] {
            names.push(ip_name);
        }
    }
    let key_text = PublicKey::new(key.key_data().clone(), "")
        .to_openssh()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let key_text = key_text.trim_end();
    let mut text = String::new();
    if hashed {
        for name in &names {
            let salt = random_salt()?;
            let hash = hmac_sha1(&salt, name);
            text.push_str(&format!(
                "|1|{}|{} {key_text}\n",
                BASE64.encode(&salt),
                BASE64.encode(&hash)
            ));
        }
    } else {
        text.push_str(&format!("{} {key_text}\n", names.join(",")));
    }
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file)?;
    let len = f.metadata()?.len();
    if len > 0 {
        // Do not glue our line onto a last line that lacks its newline.
        let existing = fs::read(file)?;
        if existing.last() != Some(&b'\n') {
            text.insert(0, '\n');
        }
    }
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

fn random_salt() -> io::Result<Vec<u8>> {
    let mut salt = vec![0u8; 20];
    fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// Fuzzing entry point (see `crate::fuzzing`): `bytes` as a known_hosts
/// file, asked about `key` and `cert` for two host names.
pub(crate) fn fuzz(bytes: &[u8], key: &PublicKey, cert: &Certificate) {
    let mut entries = Vec::new();
    parse_file(Path::new("fuzz"), bytes, &mut entries);
    for (host, port) in [("rorqual", 22), ("Robot.Example", 2222)] {
        let q = HostKeyQuery {
            host,
            port,
            ip: None,
        };
        check_key(&entries, &q, key.key_data()).explain(host, port);
        check_certificate_in(&entries, &q, cert).explain(host, port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "robosync-knownhosts-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.path(name);
            fs::write(&p, text).unwrap();
            p
        }
        /// A fresh ed25519 key pair `name`/`name.pub`; returns the public line.
        fn keygen(&self, name: &str, kind: &str) -> String {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", "", "-C", "comment-is-ignored", "-f"])
                .arg(self.path(name))
                .status()
                .expect("ssh-keygen is installed");
            assert!(status.success());
            fs::read_to_string(self.path(&format!("{name}.pub")))
                .unwrap()
                .trim()
                .to_string()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn q(host: &str, port: u16) -> HostKeyQuery<'_> {
        HostKeyQuery {
            host,
            port,
            ip: None,
        }
    }

    fn key(line: &str) -> PublicKey {
        PublicKey::from_openssh(line).unwrap()
    }

    /// `type base64`, without the comment.
    fn bare(line: &str) -> String {
        line.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn plain_entry_comments_and_malformed_lines() {
        let t = TempDir::new();
        let k = t.keygen("host", "ed25519");
        let file = t.write(
            "known_hosts",
            &format!(
                "# a comment\n\ngarbage\nrobot.example ssh-ed25519 !!notbase64\n\
                 other.example,robot.example {} different comment\n",
                bare(&k)
            ),
        );
        let v = check(
            std::slice::from_ref(&file),
            &q("robot.example", 22),
            &key(&k),
        );
        assert_eq!(v, Verdict::Trusted { file, line: 5 });
        assert!(v.is_trusted());
        assert_eq!(
            check(&[t.path("known_hosts")], &q("ROBOT.example", 22), &key(&k)),
            Verdict::Trusted {
                file: t.path("known_hosts"),
                line: 5
            }
        );
        // A bare host pattern only matches port 22.
        assert_eq!(
            check(
                &[t.path("known_hosts")],
                &q("robot.example", 2222),
                &key(&k)
            ),
            Verdict::Unknown
        );
    }

    #[test]
    fn bracketed_port_wildcards_and_negation() {
        let t = TempDir::new();
        let k = t.keygen("host", "ed25519");
        let file = t.write(
            "known_hosts",
            &format!(
                "[robot.example]:2222 {k}\n*.cluster.example,!login.cluster.example {k}\nnode?? {k}\n"
            ),
        );
        let files = [file.clone()];
        assert_eq!(
            check(&files, &q("robot.example", 2222), &key(&k)),
            Verdict::Trusted {
                file: file.clone(),
                line: 1
            }
        );
        assert_eq!(
            check(&files, &q("robot.example", 22), &key(&k)),
            Verdict::Unknown
        );
        assert_eq!(
            check(&files, &q("n1.cluster.example", 22), &key(&k)),
            Verdict::Trusted {
                file: file.clone(),
                line: 2
            }
        );
        assert_eq!(
            check(&files, &q("login.cluster.example", 22), &key(&k)),
            Verdict::Unknown
        );
        assert!(check(&files, &q("node01", 22), &key(&k)).is_trusted());
        assert!(!check(&files, &q("node001", 22), &key(&k)).is_trusted());
    }

    #[test]
    fn hashed_entries_from_ssh_keygen() {
        let t = TempDir::new();
        let k = t.keygen("host", "ed25519");
        let file = t.write(
            "known_hosts",
            &format!("robot.example {k}\n[robot.example]:2222 {k}\n"),
        );
        let status = Command::new("ssh-keygen")
            .args(["-q", "-H", "-f"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success());
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("|1|") && !text.contains("robot.example"),
            "{text}"
        );
        let files = [file];
        assert!(check(&files, &q("robot.example", 22), &key(&k)).is_trusted());
        assert!(check(&files, &q("robot.example", 2222), &key(&k)).is_trusted());
        assert_eq!(
            check(&files, &q("robot.example", 2200), &key(&k)),
            Verdict::Unknown
        );
        assert_eq!(
            check(&files, &q("other.example", 22), &key(&k)),
            Verdict::Unknown
        );
    }

    #[test]
    fn changed_key_reports_file_line_and_fingerprints() {
        let t = TempDir::new();
        let old = t.keygen("old", "ed25519");
        let new = t.keygen("new", "ed25519");
        let rsa = t.keygen("rsa", "rsa");
        let file = t.write("known_hosts", &format!("# c\nrobot.example {old}\n"));
        let v = check(
            std::slice::from_ref(&file),
            &q("robot.example", 22),
            &key(&new),
        );
        assert_eq!(
            v,
            Verdict::Changed {
                file: file.clone(),
                line: 2,
                expected_fingerprint: fingerprint(&key(&old)),
                presented_fingerprint: fingerprint(&key(&new)),
            }
        );
        let message = v.explain("robot.example", 22);
        assert!(
            message.contains(&format!("{}:2", file.display())),
            "{message}"
        );
        assert!(message.contains(&fingerprint(&key(&old))));
        assert!(message.contains("ssh-keygen -f"));
        assert!(message.contains("-R \"robot.example\""));
        assert!(Verdict::Changed {
            file: file.clone(),
            line: 2,
            expected_fingerprint: String::new(),
            presented_fingerprint: String::new(),
        }
        .explain("robot.example", 2222)
        .contains("-R \"[robot.example]:2222\""));

        let other = check(
            std::slice::from_ref(&file),
            &q("robot.example", 22),
            &key(&rsa),
        );
        assert!(matches!(
            &other,
            Verdict::OtherTypesKnown { line: 2, known_type, presented_type, .. }
                if known_type == "ssh-ed25519" && presented_type == "ssh-rsa"
        ));
        assert!(Verdict::Unknown
            .explain("robot.example", 22)
            .contains("StrictHostKeyChecking=accept-new"));
    }

    #[test]
    fn fingerprint_matches_ssh_keygen() {
        let t = TempDir::new();
        let k = t.keygen("host", "ed25519");
        let out = Command::new("ssh-keygen")
            .args(["-l", "-E", "sha256", "-f"])
            .arg(t.path("host.pub"))
            .output()
            .unwrap();
        let printed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            printed.split_whitespace().nth(1),
            Some(fingerprint(&key(&k)).as_str())
        );
    }

    #[test]
    fn revoked_wins_over_trust_in_any_file() {
        let t = TempDir::new();
        let k = t.keygen("host", "ed25519");
        let user = t.write("user_known_hosts", &format!("robot.example {k}\n"));
        let global = t.write("global_known_hosts", &format!("# g\n@revoked * {k}\n"));
        let v = check(&[user, global.clone()], &q("robot.example", 22), &key(&k));
        assert_eq!(
            v,
            Verdict::Revoked {
                file: global,
                line: 2,
                fingerprint: fingerprint(&key(&k)),
            }
        );
        assert!(v.explain("robot.example", 22).contains("@revoked"));
    }

    #[test]
    fn several_files_first_listing_wins() {
        let t = TempDir::new();
        let k = t.keygen("host", "ed25519");
        let a = t.write("a", "unrelated.example ssh-ed25519 AAAA\n");
        let b = t.write("b", &format!("robot.example {k}\n"));
        let missing = t.path("missing");
        assert_eq!(
            check(&[missing, a, b.clone()], &q("robot.example", 22), &key(&k)),
            Verdict::Trusted { file: b, line: 1 }
        );
    }

    #[test]
    fn append_plain_and_hashed_then_check() {
        let t = TempDir::new();
        let k = t.keygen("host", "ed25519");
        let file = t.path("new/dir/known_hosts");
        let query = HostKeyQuery {
            host: "robot.example",
            port: 2222,
            ip: Some("192.0.2.7".parse().unwrap()),
        };
        append(&file, &query, &key(&k), false).unwrap();
        let text = fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            format!("[robot.example]:2222,[192.0.2.7]:2222 {}\n", bare(&k))
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(file.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        assert!(check(std::slice::from_ref(&file), &query, &key(&k)).is_trusted());

        let hashed = t.write("hashed", "robot.example ssh-ed25519 AAAA-no-newline");
        append(&hashed, &q("robot.example", 22), &key(&k), true).unwrap();
        let text = fs::read_to_string(&hashed).unwrap();
        assert!(text.lines().nth(1).unwrap().starts_with("|1|"), "{text}");
        assert!(check(
            std::slice::from_ref(&hashed),
            &q("robot.example", 22),
            &key(&k)
        )
        .is_trusted());
        // OpenSSH finds our hashed entry too.
        let found = Command::new("ssh-keygen")
            .args(["-F", "robot.example", "-f"])
            .arg(&hashed)
            .output()
            .unwrap();
        assert!(found.status.success());
        assert!(String::from_utf8_lossy(&found.stdout).contains("|1|"));
    }

    fn sign_host_cert(
        t: &TempDir,
        principals: &str,
        validity: &str,
        host_cert: bool,
    ) -> Certificate {
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-s"])
            .arg(t.path("ca"))
            .args(["-I", "robot-host"]);
        if host_cert {
            cmd.arg("-h");
        }
        let status = cmd
            .args(["-n", principals, "-V", validity])
            .arg(t.path("hostkey.pub"))
            .status()
            .unwrap();
        assert!(status.success());
        Certificate::from_openssh(&fs::read_to_string(t.path("hostkey-cert.pub")).unwrap()).unwrap()
    }

    #[test]
    fn cert_authority_host_certificates() {
        let t = TempDir::new();
        let ca = t.keygen("ca", "ed25519");
        let hostkey = t.keygen("hostkey", "ed25519");
        let file = t.write(
            "known_hosts",
            &format!("# CA\n@cert-authority *.example,!evil.example {ca}\n"),
        );
        let files = [file.clone()];
        let good = sign_host_cert(&t, "robot.example,evil.example", "-5m:+1h", true);
        assert_eq!(
            check_certificate(&files, &q("robot.example", 22), &good),
            Verdict::TrustedByCa {
                file: file.clone(),
                line: 2
            }
        );
        // The CA's pattern excludes this host: the plain key is unknown.
        assert_eq!(
            check_certificate(&files, &q("evil.example", 22), &good),
            Verdict::Unknown
        );
        // A host outside the certificate's principals.
        let v = check_certificate(&files, &q("other.example", 22), &good);
        assert!(
            matches!(v, Verdict::InvalidCertificate { line: 2, .. }),
            "{v:?}"
        );
        assert!(v.explain("other.example", 22).contains("not other.example"));

        let expired = sign_host_cert(&t, "robot.example", "20200101:20200102", true);
        let v = check_certificate(&files, &q("robot.example", 22), &expired);
        assert!(
            matches!(&v, Verdict::InvalidCertificate { reason, .. } if reason.contains("expired")),
            "{v:?}"
        );

        let user_cert = sign_host_cert(&t, "robot.example", "-5m:+1h", false);
        let v = check_certificate(&files, &q("robot.example", 22), &user_cert);
        assert!(
            matches!(&v, Verdict::InvalidCertificate { reason, .. } if reason.contains("user certificate")),
            "{v:?}"
        );

        // A revoked CA refuses every certificate it signed.
        let revoked_ca = t.write("revoked", &format!("@revoked * {ca}\n"));
        let v = check_certificate(
            &[file.clone(), revoked_ca.clone()],
            &q("robot.example", 22),
            &good,
        );
        assert!(matches!(v, Verdict::Revoked { line: 1, .. }), "{v:?}");
        // So does a revoked host key.
        let revoked_key = t.write("revoked_key", &format!("@revoked * {hostkey}\n"));
        let v = check_certificate(&[file, revoked_key], &q("robot.example", 22), &good);
        assert!(matches!(v, Verdict::Revoked { .. }), "{v:?}");
    }
}

//! Read-only probes for `robosync doctor`: what a server presents before
//! anyone logs in, judged by the same known_hosts policy a connection uses,
//! without asking, recording or authenticating anything.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use russh::client;

use crate::connect::{connect_agent, ssh_config, Connection, Target};
use crate::error::Error;
use crate::known_hosts::{self, HostKeyQuery, Verdict};
use crate::ssh_config::HostConfig;

/// The host key a server presented and what known_hosts says of it.
#[derive(Debug, Clone)]
pub struct HostKeyProbe {
    /// The key's algorithm (`ssh-ed25519`, `ssh-rsa`, …).
    pub algorithm: String,
    /// `SHA256:…` of the key (of the certificate's key for a certificate).
    pub fingerprint: String,
    /// The server presented a host certificate.
    pub certificate: bool,
    /// The address connected to (none through a proxy).
    pub addr: Option<SocketAddr>,
    /// What the known_hosts files say about the key.
    pub verdict: Verdict,
}

struct Recorder {
    target: Target,
    addr: Option<SocketAddr>,
    seen: Arc<Mutex<Option<HostKeyProbe>>>,
}

impl client::Handler for Recorder {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let cfg = &self.target.config;
        let q = HostKeyQuery {
            host: cfg.host_key_alias.as_deref().unwrap_or(&cfg.hostname),
            port: cfg.port,
            ip: if cfg.check_host_ip {
                self.addr.map(|a| a.ip())
            } else {
                None
            },
        };
        let files: Vec<PathBuf> = cfg
            .user_known_hosts_files
            .iter()
            .chain(cfg.global_known_hosts_files.iter())
            .cloned()
            .collect();
        let (algorithm, fingerprint, certificate, verdict) = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => (
                key.algorithm().as_str().to_string(),
                known_hosts::fingerprint(key),
                false,
                known_hosts::check(&files, &q, key),
            ),
            russh::keys::PublicKeyOrCertificate::Certificate(cert) => (
                cert.algorithm().as_str().to_string(),
                cert.public_key()
                    .fingerprint(russh::keys::HashAlg::Sha256)
                    .to_string(),
                true,
                known_hosts::check_certificate(&files, &q, cert),
            ),
        };
        *self.seen.lock().unwrap() = Some(HostKeyProbe {
            algorithm,
            fingerprint,
            certificate,
            addr: self.addr,
            verdict,
        });
        // Never go on: the probe ends at the key, whatever it is.
        Ok(false)
    }
}

/// Connects as a sync would (address, proxy), takes the host key the
/// server presents and stops there: nothing is written to known_hosts and
/// nobody is asked.
pub async fn host_key(target: &Target) -> Result<HostKeyProbe, Error> {
    let (stream, addr, _) = Connection::dial(target, &target.config).await?;
    let seen = Arc::new(Mutex::new(None));
    let recorder = Recorder {
        target: target.clone(),
        addr,
        seen: seen.clone(),
    };
    let config = Arc::new(ssh_config(&target.config)?);
    let ended = client::connect_stream(config, stream, recorder).await;
    let seen = seen.lock().unwrap().take();
    match (seen, ended) {
        (Some(probe), _) => Ok(probe),
        (None, Err(e)) => Err(Error::Connect(format!(
            "SSH handshake with {} failed before a host key: {e}",
            target.peer()
        ))),
        (None, Ok(_)) => Err(Error::Connect(format!(
            "{} finished a handshake without a host key",
            target.peer()
        ))),
    }
}

/// The keys the host's agent (`IdentityAgent`, else `SSH_AUTH_SOCK`) holds,
/// as `TYPE SHA256:… comment` (a certificate as `TYPE-cert …`); `None`
/// when no agent is configured or it does not answer.
pub async fn agent_identities(cfg: &HostConfig) -> Option<Vec<String>> {
    let mut agent = connect_agent(cfg).await?;
    let ids = agent.request_identities().await.ok()?;
    Some(
        ids.iter()
            .map(|id| match id {
                russh::keys::agent::AgentIdentity::PublicKey { key, comment } => format!(
                    "{} {} {comment}",
                    key.algorithm().as_str(),
                    known_hosts::fingerprint(key)
                ),
                russh::keys::agent::AgentIdentity::Certificate { certificate, .. } => format!(
                    "{}-cert {}",
                    certificate.algorithm().as_str(),
                    certificate
                        .public_key()
                        .fingerprint(russh::keys::HashAlg::Sha256)
                ),
            })
            .map(|s| s.trim_end().to_string())
            .collect(),
    )
}

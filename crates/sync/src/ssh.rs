//! The usual [`Connector`]: a host reached as `ssh HOST` would reach it
//! (ssh_config, `-o`, `-p`, `-i`, `-4`/`-6`), after the auth hook has had
//! its turn (a certificate renewed, an MFA login held).

use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use robosync_transport::auth_hook::{self, HookError};
use robosync_transport::ssh_config::{self, ConfigRequest};
use robosync_transport::{SessionOptions, Target};

use crate::failure::{fail, Failure, EXIT_DENIED, EXIT_USAGE};
use crate::paths::Connector;

/// Reaches every host with the same command-line settings.
pub struct SshConnector {
    /// `-F`, `-o`, `-p`, `-i`, `-4`/`-6`; `host` and `user` (the
    /// endpoint's `user@`) are filled in per host.
    pub request: ConfigRequest,
    /// The auth hook, run before each host's first connection.
    pub hook: auth_hook::Settings,
    /// `--ssh-program`: an OpenSSH client binary instead of russh.
    pub ssh_program: Option<PathBuf>,
    /// Timeouts of the SFTP sessions.
    pub session: SessionOptions,
}

impl Connector for SshConnector {
    fn target<'a>(
        &'a self,
        user: &'a Option<String>,
        host: &'a str,
    ) -> BoxFuture<'a, Result<Target, Failure>> {
        Box::pin(async move {
            let mut request = self.request.clone();
            request.host = host.to_string();
            request.user = user.clone();
            let req = request.clone();
            let config = tokio::task::spawn_blocking(move || ssh_config::resolve(&req))
                .await
                .map_err(|e| fail(EXIT_USAGE, format!("reading the ssh config failed: {e}")))?
                .map_err(|e| fail(EXIT_USAGE, e.to_string()))?;
            auth_hook::before_connect(&self.hook, host, &config)
                .await
                .map_err(|e| match e {
                    HookError::Config(m) => fail(EXIT_USAGE, m),
                    HookError::Failed(m) => fail(EXIT_DENIED, m),
                })?;
            Ok(Target {
                request,
                config: Arc::new(config),
                ssh_program: self.ssh_program.clone(),
                session: self.session.clone(),
            })
        })
    }
}

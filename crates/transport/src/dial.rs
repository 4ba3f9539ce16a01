//! How the [`Pool`](crate::Pool) reaches a server: a [`Dialer`] opens
//! connections ([`Link`]s) and SFTP sessions on them. [`SshDialer`] is the
//! real one (russh, or an `ssh` program per session); with the `testing`
//! feature, `testing::MemDialer` opens in-memory servers sharing
//! one file tree, which a test can make drop or refuse, so the pool and
//! everything above it run without sshd.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::client::Sftp;
use crate::connect::{open_sftp_via_ssh, Connection, Target};
use crate::error::Error;

/// Connecting, the key exchange, logging in and opening channels: a bound
/// on one attempt beyond the TCP connect itself.
const LOGIN_LIMIT: Duration = Duration::from_secs(30);

/// One connection to the server, carrying SFTP sessions (channels).
pub trait Link: Send + Sync + 'static {
    /// Opens one more SFTP session on this connection.
    fn open_sftp(&self) -> BoxFuture<'_, Result<Sftp, Error>>;
    /// Whether the connection is gone, or was declared dead.
    fn is_closed(&self) -> bool;
    /// Declares the connection dead (a request on it went unanswered): it
    /// counts as closed from now on and is torn down in the background.
    fn abandon(&self);
    /// Ends the connection.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// A freshly opened connection and what connecting found worth saying
/// (fallbacks, warnings: each a [`crate::PoolEvent::Note`]).
pub struct Dialed {
    /// The connection.
    pub link: Arc<dyn Link>,
    /// Messages from connecting, in order.
    pub notes: Vec<String>,
}

/// A way of opening connections and sessions to one server.
pub trait Dialer: Send + Sync + 'static {
    /// Who the sessions talk to (`user@host:port`), for messages.
    fn peer(&self) -> String;
    /// How long one login (with its channels) may take before it counts as failed.
    fn login_limit(&self) -> Duration;
    /// Whether sessions share connections ([`Dialer::connect`]); when not
    /// (an `ssh` program per session), each session is a connection of its
    /// own ([`Dialer::open_alone`]) and no key exchange is timed.
    fn shares_connections(&self) -> bool {
        true
    }
    /// Whether the host allows one login only (it asks a person to
    /// authenticate): all channels then go on it.
    fn one_login(&self) -> bool {
        false
    }
    /// Opens one connection; `handshake` learns how long the key exchange took.
    fn connect(
        &self,
        handshake: Option<tokio::sync::oneshot::Sender<Duration>>,
    ) -> BoxFuture<'_, Result<Dialed, Error>>;
    /// Opens one session that is a connection of its own (see
    /// [`Dialer::shares_connections`]).
    fn open_alone(&self) -> BoxFuture<'_, Result<Sftp, Error>>;
}

/// The real dialer: `ssh HOST` as the [`Target`] resolved it, over russh,
/// or through the system `ssh` program (`--ssh-program`).
pub struct SshDialer {
    target: Target,
}

impl SshDialer {
    /// A dialer for `target`.
    pub fn new(target: Target) -> SshDialer {
        SshDialer { target }
    }

    /// The target it dials.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

/// A russh connection as a [`Link`].
struct SshLink {
    conn: Arc<Connection>,
    session: crate::SessionOptions,
}

impl Link for SshLink {
    fn open_sftp(&self) -> BoxFuture<'_, Result<Sftp, Error>> {
        self.conn.open_sftp(self.session.clone()).boxed()
    }

    fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    fn abandon(&self) {
        self.conn.abandon()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.conn.close().boxed()
    }
}

impl Dialer for SshDialer {
    fn peer(&self) -> String {
        self.target.peer()
    }

    fn login_limit(&self) -> Duration {
        self.target
            .config
            .connect_timeout
            .unwrap_or(Duration::from_secs(30))
            + LOGIN_LIMIT
    }

    fn shares_connections(&self) -> bool {
        self.target.ssh_program.is_none()
    }

    fn one_login(&self) -> bool {
        // MFA hosts: one login, all channels on it (see connect::needs_interactive_auth).
        self.target.ssh_program.is_none()
            && crate::connect::needs_interactive_auth(&self.target.config)
    }

    fn connect(
        &self,
        handshake: Option<tokio::sync::oneshot::Sender<Duration>>,
    ) -> BoxFuture<'_, Result<Dialed, Error>> {
        async move {
            let conn = Connection::open(&self.target, handshake).await?;
            let notes = conn.notes.clone();
            let link: Arc<dyn Link> = Arc::new(SshLink {
                conn: Arc::new(conn),
                session: self.target.session.clone(),
            });
            Ok(Dialed { link, notes })
        }
        .boxed()
    }

    fn open_alone(&self) -> BoxFuture<'_, Result<Sftp, Error>> {
        open_sftp_via_ssh(&self.target).boxed()
    }
}

//! robosync-transport: everything between robosync and a remote SFTP server.
//!
//! Brief overview: [`ssh_config`] resolves a destination the way `ssh` would;
//! [`connect::Connection`] authenticates (russh, over a socket that asks for
//! quick ACKs until its first session runs: see `quickack`) and checks host
//! keys with our own [`known_hosts`] policy; [`client::Sftp`] (from
//! robosync-sftp, re-exported with its codec [`proto`] and [`Error`]) runs an
//! SFTP v3 session over a russh channel or an `ssh -s sftp` child
//! ([`channel_io`] is the russh carrier: packets go to russh owned, not
//! copied), with many requests in flight; [`pool::Pool`] spreads sessions over
//! several connections and reconnects, reporting each connection as a typed
//! [`PoolEvent`]; it opens them through a [`Dialer`] ([`SshDialer`] for a
//! real host; with the `testing` feature, `testing::MemDialer` opens
//! in-memory servers that a test can make drop, refuse or go silent, so the
//! pool and everything above it run without sshd); [`auth_hook`] runs `--auth-command`
//! (under a lock, with a timeout) to refresh a certificate before the first
//! login.
//!
//! Must not: run remote commands (no `exec`, no PTY), decide what to transfer
//! (the planner does), or touch local files (except the auth hook's lock).

#![deny(missing_docs)]

mod algorithms;
pub mod auth_hook;
pub mod channel_io;
pub mod connect;
pub mod dial;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod known_hosts;
mod passphrase;
pub mod pool;
pub mod probe;
mod quickack;
pub mod ssh_config;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use client::{Extensions, Limits, SessionOptions, Sftp};
pub use connect::{Connection, Target};
pub use dial::{Dialed, Dialer, Link, SshDialer};
pub use error::Error;
pub use pool::{EventSink, Pool, PoolEvent, PoolOptions};
pub use robosync_sftp::{client, proto};

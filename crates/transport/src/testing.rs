//! A [`Dialer`] over in-memory SFTP servers (robosync-sftp's
//! [`MemServer`]), so a [`Pool`](crate::Pool), and everything that runs on
//! one, is tested in milliseconds without sshd.
//!
//! Each connection is a set of in-memory server sessions serving one shared
//! [`MemFs`]. What each connection's servers do is the test's choice
//! ([`MemDialer::new`]'s `plan`, asked once per connection: honest, hostile
//! from some request on, or refused), and [`MemDialer::kill`] drops every
//! connection at once, as a dead carrier would. A connection counts as
//! closed once any of its servers has ended (a hostile mode hung up), as
//! a TCP connection's channels all go with it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use robosync_sftp::testing::{MemFs, MemServer, ServerOptions};

use crate::client::{SessionOptions, Sftp};
use crate::dial::{Dialed, Dialer, Link};
use crate::error::Error;

/// What a connection's servers do, chosen per connection (numbered from 0).
pub type ConnectionPlan = dyn Fn(usize) -> Result<ServerOptions, Error> + Send + Sync;

/// Opens in-memory connections to one shared tree.
pub struct MemDialer {
    fs: MemFs,
    plan: Box<ConnectionPlan>,
    session: SessionOptions,
    dialed: AtomicUsize,
    links: Mutex<Vec<Arc<MemLink>>>,
}

impl MemDialer {
    /// Connections serve `fs`; `plan(n)` says how the `n`-th connection's
    /// servers behave, or the error its login fails with. Sessions use
    /// `session` (its `request_timeout` bounds a silent server).
    pub fn new(
        fs: MemFs,
        session: SessionOptions,
        plan: impl Fn(usize) -> Result<ServerOptions, Error> + Send + Sync + 'static,
    ) -> MemDialer {
        MemDialer {
            fs,
            plan: Box::new(plan),
            session,
            dialed: AtomicUsize::new(0),
            links: Mutex::new(Vec::new()),
        }
    }

    /// Every connection honest, with `opts`.
    pub fn honest(fs: MemFs, opts: ServerOptions) -> MemDialer {
        MemDialer::new(fs, SessionOptions::default(), move |_| Ok(opts.clone()))
    }

    /// Logins tried so far (refused ones included).
    pub fn dials(&self) -> usize {
        self.dialed.load(Ordering::SeqCst)
    }

    /// Drops every connection open now, as a dead carrier: their servers
    /// end, and what was in flight on them fails.
    pub fn kill(&self) {
        for l in self.links.lock().unwrap().iter() {
            l.kill();
        }
    }

    /// Handles open now, across all servers.
    pub fn open_handles(&self) -> usize {
        self.links
            .lock()
            .unwrap()
            .iter()
            .flat_map(|l| {
                l.servers
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| s.open_handles())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

/// One in-memory connection: its sessions' servers.
struct MemLink {
    fs: MemFs,
    opts: ServerOptions,
    session: SessionOptions,
    servers: Mutex<Vec<MemServer>>,
    closed: AtomicBool,
}

impl MemLink {
    fn kill(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for s in self.servers.lock().unwrap().iter() {
            s.kill();
        }
    }
}

impl Link for MemLink {
    fn open_sftp(&self) -> BoxFuture<'_, Result<Sftp, Error>> {
        async move {
            if self.is_closed() {
                return Err(Error::ConnectionLost {
                    peer: "memory".into(),
                    detail: "the connection closed".into(),
                });
            }
            let (server, stream) = MemServer::start(self.fs.clone(), self.opts.clone());
            self.servers.lock().unwrap().push(server);
            Sftp::start(stream, "memory", self.session.clone()).await
        }
        .boxed()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
            || self.servers.lock().unwrap().iter().any(|s| s.has_ended())
    }

    fn abandon(&self) {
        self.kill();
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        async move { self.kill() }.boxed()
    }
}

impl Dialer for MemDialer {
    fn peer(&self) -> String {
        "memory".into()
    }

    fn login_limit(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn connect(
        &self,
        handshake: Option<tokio::sync::oneshot::Sender<Duration>>,
    ) -> BoxFuture<'_, Result<Dialed, Error>> {
        async move {
            let n = self.dialed.fetch_add(1, Ordering::SeqCst);
            let opts = (self.plan)(n)?;
            if let Some(h) = handshake {
                let _ = h.send(Duration::ZERO);
            }
            let link = Arc::new(MemLink {
                fs: self.fs.clone(),
                opts,
                session: self.session.clone(),
                servers: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
            });
            self.links.lock().unwrap().push(link.clone());
            Ok(Dialed {
                link,
                notes: Vec::new(),
            })
        }
        .boxed()
    }

    fn open_alone(&self) -> BoxFuture<'_, Result<Sftp, Error>> {
        async move {
            let Dialed { link, .. } = self.connect(None).await?;
            link.open_sftp().await
        }
        .boxed()
    }
}

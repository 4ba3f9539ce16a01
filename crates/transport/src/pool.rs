//! Many SFTP sessions over a few SSH connections, repaired when links drop.
//!
//! Throughput across latency comes from many channels (OpenSSH gives each a
//! 2 MiB window) and many requests in flight; logins are few and paced so
//! sshd's MaxStartups is never tripped.
//!
//! When a connection dies (closed, or a request on it went unanswered),
//! everything in flight on all its channels fails at once, to be re-issued
//! on live sessions. When no live session is left, that outage has one
//! deadline (`retry_for` from its start): [`Pool::repair`] reconnects with
//! exponential backoff and jitter, each attempt bounded by what remains,
//! and past it every caller gets the same "not re-established" error at once.
//! A login alone does not end an outage: one of its sessions must answer a
//! request (a server that logs in, then answers nothing, ends in the same
//! error rather than in logins forever).
//! Lost connections are replaced in the background while others still work.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::client::Sftp;
use crate::dial::{Dialer, Link as Connection, SshDialer};
use crate::error::Error;
use crate::Target;

/// How many sessions a [`Pool`] aims for, and how long it keeps reconnecting.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// SSH connections (logins).
    pub connections: usize,
    /// SFTP channels per connection.
    pub channels: usize,
    /// Keep reconnecting this long after a drop before giving up.
    pub retry_for: Duration,
    /// Connections and channels per connection to use instead when the
    /// server is near (round trip under [`NEAR`]): there the CPU, not the
    /// 2 MiB channel windows, limits throughput, and every extra login or
    /// channel costs the server a shell and an sftp-server.
    pub when_near: Option<(usize, usize)>,
}

/// A round trip shorter than this means a LAN or the same host.
pub const NEAR: Duration = Duration::from_millis(2);

/// Connecting plus the key exchange (two round trips and the crypto) taking
/// longer than this means a distant server: about 20 ms away or more
/// (measured: 16 ms on loopback, 112 ms across a 50 ms round trip).
pub const FAR_HANDSHAKE: Duration = Duration::from_millis(50);

/// What happens to a pool's connections, as it happens: for a front-end to
/// show (`-v`: one line per connection and channel) or count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    /// Connection `number` (counted from 1 over the pool's life) logged in
    /// and opened `channels` SFTP channels.
    Connected {
        /// Which connection.
        number: usize,
        /// SFTP channels opened on it.
        channels: usize,
    },
    /// `added` more channels opened on connection `number`.
    ChannelsAdded {
        /// Which connection.
        number: usize,
        /// Channels added.
        added: usize,
    },
    /// Connection `number` was lost: what was in flight on it goes again
    /// on live sessions.
    ConnectionLost {
        /// Which connection.
        number: usize,
        /// Why it counts as lost.
        why: String,
    },
    /// Connection `number` logged in to replace a lost one.
    Reconnected {
        /// Which connection (a new number).
        number: usize,
        /// SFTP channels opened on it.
        channels: usize,
    },
    /// A detail worth a `-v` reader's time (a fallback, fewer channels or
    /// connections than asked for, a warning from a later login).
    Note(String),
    /// Something probably wrong that did not stop the first login (an
    /// expiring certificate, a ControlMaster robosync cannot share).
    Warning(String),
}

impl std::fmt::Display for PoolEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |n: &usize| if *n == 1 { "" } else { "s" };
        match self {
            PoolEvent::Connected { number, channels } => {
                write!(
                    f,
                    "connection #{number}: {channels} SFTP channel{}",
                    s(channels)
                )
            }
            PoolEvent::ChannelsAdded { number, added } => {
                write!(
                    f,
                    "connection #{number}: {added} more SFTP channel{}",
                    s(added)
                )
            }
            PoolEvent::ConnectionLost { number, why } => {
                write!(f, "connection #{number} lost: {why}")
            }
            PoolEvent::Reconnected { number, channels } => write!(
                f,
                "connection #{number}: reconnected, {channels} SFTP channel{}",
                s(channels)
            ),
            PoolEvent::Note(n) | PoolEvent::Warning(n) => f.write_str(n),
        }
    }
}

/// Where a pool's events go (called from its tasks, concurrently).
pub type EventSink = Arc<dyn Fn(PoolEvent) + Send + Sync>;

struct Link {
    /// Which connection (see [`PoolEvent::Connected`]).
    number: usize,
    conn: Option<Arc<dyn Connection>>,
    sessions: Vec<Arc<Sftp>>,
}

/// SFTP sessions over a few connections to one server, kept alive: see the
/// module's documentation.
pub struct Pool {
    dialer: Arc<dyn Dialer>,
    opts: PoolOptions,
    links: Mutex<Vec<Link>>,
    next: AtomicUsize,
    repair: tokio::sync::Mutex<()>,
    /// Where events go.
    events: EventSink,
    /// Connections opened so far (numbers them).
    dialed: AtomicUsize,
    /// Connections already reported lost.
    lost_numbers: Mutex<Vec<usize>>,
    /// The pool is logging out: connections closing now are not lost.
    closing: AtomicBool,
    /// The first login is over: warnings from connecting are notes from now
    /// on (a later login repeats what the first already said).
    opened: AtomicBool,
    /// Connections re-established after a loss.
    pub reconnects: AtomicUsize,
    /// The background task adding channels and connections.
    grower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether the first session found the server near (see [`NEAR`]).
    near: std::sync::atomic::AtomicBool,
    /// Connections opened early, alongside the first (see [`Pool::open_expecting`]).
    early: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The server refused a further login: asking again would only repeat that.
    refused_more: std::sync::atomic::AtomicBool,
    /// A channel opening for a large listing (see [`Pool::widen_for_listing`]).
    widening: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// When the current outage (no live session) must end; `None` while
    /// sessions live. One deadline however many callers wait on it.
    outage: Mutex<Option<Instant>>,
    /// Sessions logged in during the current outage, with the replies each
    /// had then: the outage ends only once one of them answers more (a
    /// server that accepts logins and then answers nothing, a hung
    /// filesystem behind it, would otherwise reset the deadline forever).
    proving: Mutex<Vec<(Arc<Sftp>, u64)>>,
    /// Why the pool gave up (an outage outlived `retry_for`), once it has.
    lost: Mutex<Option<Error>>,
    /// Connections lost and not yet replaced, and whether a task replaces them.
    to_replace: AtomicUsize,
    replacing: AtomicBool,
    me: Weak<Pool>,
}

impl Pool {
    /// Opens the first connection with one SFTP channel (errors here are
    /// final: auth, host key, refused SFTP) and returns at once; the other
    /// channels and connections open in the background and join as they come
    /// (each channel costs the server a fork and an sftp-server start, so a
    /// small run should not wait for all of them). Refusals mean fewer.
    pub async fn open(target: Target, opts: PoolOptions) -> Result<Arc<Pool>, Error> {
        let quiet: EventSink = Arc::new(|_| {});
        Self::open_expecting(
            Arc::new(SshDialer::new(target)),
            opts,
            async { false },
            quiet,
        )
        .await
    }

    /// [`Pool::open`], and when the first key exchange shows a distant
    /// server ([`FAR_HANDSHAKE`]) and `work` says the run has enough to do,
    /// the other connections log in as soon as the first has authenticated
    /// (never before: a refused key must not be tried twice), alongside its
    /// channel and the listing, rather than after the plan.
    /// Connections come from `dialer`; `events` hears what happens to them.
    pub async fn open_expecting(
        dialer: Arc<dyn Dialer>,
        opts: PoolOptions,
        work: impl std::future::Future<Output = bool> + Send + 'static,
        events: EventSink,
    ) -> Result<Arc<Pool>, Error> {
        let pool = Arc::new_cyclic(|me| Pool {
            dialer,
            opts,
            links: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
            repair: tokio::sync::Mutex::new(()),
            events,
            dialed: AtomicUsize::new(0),
            lost_numbers: Mutex::new(Vec::new()),
            closing: AtomicBool::new(false),
            opened: AtomicBool::new(false),
            reconnects: AtomicUsize::new(0),
            grower: Mutex::new(None),
            near: Default::default(),
            early: Mutex::new(None),
            refused_more: Default::default(),
            widening: Mutex::new(None),
            outage: Mutex::new(None),
            proving: Mutex::new(Vec::new()),
            lost: Mutex::new(None),
            to_replace: AtomicUsize::new(0),
            replacing: AtomicBool::new(false),
            me: me.clone(),
        });
        let (handshake, took) = tokio::sync::oneshot::channel();
        let early = pool.clone();
        // (An `ssh` program per session reports no handshake: nothing early.)
        *pool.early.lock().unwrap() = pool.dialer.shares_connections().then(|| {
            tokio::spawn(async move {
                let Ok(took) = took.await else { return };
                if took < FAR_HANDSHAKE || early.opts.connections < 2 || !work.await {
                    return;
                }
                // The first connection is still opening its channel: it counts.
                let (wanted, channels) = (early.opts.connections, early.opts.channels.max(1));
                early.more_connections(1, wanted, channels).await;
            })
        });
        let first = match pool.open_link(1, Some(handshake), None).await {
            Ok(l) => Ok(l),
            // The link dropped during the login (something answered, then
            // went away): log in again within --retry-for. A host that does
            // not answer at all, or refuses us, is reported at once.
            Err(e) if e.is_connection() => {
                pool.note(format!("{e}; logging in again"));
                let deadline = Instant::now() + pool.opts.retry_for;
                pool.reconnect_until(1, deadline, e).await
            }
            Err(e) => Err(e),
        };
        let first = match first {
            Ok(l) => l,
            Err(e) => {
                pool.stop_early();
                return Err(e);
            }
        };
        let near = first.sessions.first().is_some_and(|s| s.rtt < NEAR);
        pool.near.store(near, Ordering::Relaxed);
        let (number, channels) = (first.number, first.sessions.len());
        pool.links.lock().unwrap().push(first);
        pool.event(PoolEvent::Connected { number, channels });
        pool.opened.store(true, Ordering::Relaxed);
        Ok(pool)
    }

    /// Whether the first session found the server near (see [`NEAR`]).
    pub fn is_near(&self) -> bool {
        self.near.load(Ordering::Relaxed)
    }

    /// (connections, channels per connection) this pool aims for.
    fn shape(&self) -> (usize, usize) {
        let (c, m) = match self.opts.when_near {
            Some(s) if self.near.load(Ordering::Relaxed) => s,
            _ => (self.opts.connections, self.opts.channels),
        };
        (c.max(1), m.max(1))
    }

    /// Opens a second channel on the first connection now, in the background,
    /// for a listing of `entries` expected entries: on a near server a large
    /// listing is bound by one sftp-server's CPU (about 3 µs an entry), and a
    /// second one halves it, which repays the channel's start (a fork, a shell,
    /// an sftp-server: a few milliseconds) from several thousand entries on.
    /// Distant servers' listings wait on round trips instead: nothing opens.
    pub fn widen_for_listing(self: &Arc<Self>, entries: usize) {
        const WORTH_A_CHANNEL: usize = 5_000;
        let (_, channels) = self.shape();
        if entries < WORTH_A_CHANNEL || channels < 2 || !self.is_near() {
            return;
        }
        let mut widening = self.widening.lock().unwrap();
        if widening.is_some() || self.grower.lock().unwrap().is_some() {
            return;
        }
        let Some(conn) = self
            .links
            .lock()
            .unwrap()
            .first()
            .and_then(|l| l.conn.clone())
        else {
            return;
        };
        let pool = self.clone();
        *widening = Some(tokio::spawn(async move {
            // Counting none elsewhere keeps a refusal quiet here: it is not
            // news until `expand` meets it, and reports it, for the transfers.
            let number = pool.first_number();
            if let Ok(l) = pool.extend_link(number, Some(conn), 1, 0).await {
                pool.event(PoolEvent::ChannelsAdded {
                    number,
                    added: l.sessions.len(),
                });
                pool.links.lock().unwrap().push(l);
            }
        }));
    }

    /// Opens the other channels and connections in the background; they join
    /// as they come. Called once a run knows it has work for them: each costs
    /// the server a fork, a login shell (where the site's wrapper runs) and an
    /// sftp-server, which a no-change rerun or a handful of files never repays.
    /// Only the first call does anything.
    pub fn expand(self: &Arc<Self>) {
        let mut grower = self.grower.lock().unwrap();
        if grower.is_some() {
            return;
        }
        let pool = self.clone();
        *grower = Some(tokio::spawn(async move { pool.grow().await }));
    }

    async fn grow(self: Arc<Self>) {
        let widening = self.widening.lock().unwrap().take();
        if let Some(task) = widening {
            let _ = task.await;
        }
        // Sessions on the first connection, wherever they are linked.
        let (number, conn, on_first) = {
            let links = self.links.lock().unwrap();
            match links.first() {
                Some(l) => {
                    let on_first = match &l.conn {
                        Some(_) => links
                            .iter()
                            .filter(|o| o.conn.is_some() && o.number == l.number)
                            .map(|o| o.sessions.len())
                            .sum(),
                        None => l.sessions.len(),
                    };
                    (l.number, l.conn.clone(), on_first)
                }
                None => (0, None, 0),
            }
        };
        // The first connection's other channels and the other connections
        // open at the same time: across latency each costs several round
        // trips, and a run should not wait for them one after another.
        let (wanted, channels) = self.shape();
        // Counted before anything is added (extra channels form links of their own).
        let connected = self.links.lock().unwrap().len().max(1);
        let more_channels = async {
            if channels > on_first && on_first > 0 {
                match self
                    .extend_link(number, conn, channels - on_first, on_first)
                    .await
                {
                    Ok(l) => {
                        let added = l.sessions.len();
                        self.links.lock().unwrap().push(l);
                        self.event(PoolEvent::ChannelsAdded { number, added });
                    }
                    // A refusal is noted by extend_link; a drop is news of its own.
                    Err(e) if e.is_transient() => {
                        self.note(format!("could not open more channels: {e}"))
                    }
                    Err(_) => {}
                }
            }
        };
        // Further logins, after any opened early (counted once they are in).
        let more_connections = async {
            let early = self.early.lock().unwrap().take();
            let have = match early {
                Some(task) => {
                    let _ = task.await;
                    self.connections().max(1)
                }
                None => connected,
            };
            self.more_connections(have, wanted, channels).await;
        };
        futures::join!(more_channels, more_connections);
    }

    /// Logs in until there are `wanted` connections, counting `have`, in
    /// small concurrent batches well under sshd's MaxStartups (10
    /// unauthenticated connections by default); stops at the first refusal.
    async fn more_connections(&self, mut have: usize, wanted: usize, channels: usize) {
        while have < wanted && !self.refused_more.load(Ordering::Relaxed) {
            let batch = (wanted - have).min(4);
            let opened =
                futures::future::join_all((0..batch).map(|_| self.open_link(channels, None, None)))
                    .await;
            let mut failed = None;
            for r in opened {
                match r {
                    Ok(l) => {
                        let (number, channels) = (l.number, l.sessions.len());
                        self.links.lock().unwrap().push(l);
                        self.event(PoolEvent::Connected { number, channels });
                        have += 1;
                    }
                    Err(e) => failed = Some(e),
                }
            }
            if let Some(e) = failed {
                self.refused_more.store(true, Ordering::Relaxed);
                self.note(format!(
                    "using {have} connection(s) instead of {wanted}: {e}"
                ));
            }
        }
    }

    /// Distinct live SSH connections now (extra channels form links of their own).
    fn connections(&self) -> usize {
        let mut seen: Vec<usize> = Vec::new();
        for l in self.links.lock().unwrap().iter() {
            if l.conn.as_ref().is_some_and(|c| !c.is_closed()) && !seen.contains(&l.number) {
                seen.push(l.number);
            }
        }
        seen.len()
    }

    /// Connections now, counting each `ssh` program (no connection of ours) as one.
    fn live_links(&self) -> usize {
        let ssh_programs = self
            .links
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.conn.is_none())
            .count();
        self.connections() + ssh_programs
    }

    fn stop_early(&self) {
        if let Some(task) = self.early.lock().unwrap().take() {
            task.abort();
        }
    }

    fn note(&self, s: String) {
        self.event(PoolEvent::Note(s));
    }

    fn event(&self, e: PoolEvent) {
        (self.events)(e);
    }

    /// What connecting said: its warnings count as such during the first
    /// login only (later logins repeat them: notes then, as before).
    fn connecting_said(&self, n: &str) {
        match n.strip_prefix("warning: ") {
            Some(w) if !self.opened.load(Ordering::Relaxed) => {
                self.event(PoolEvent::Warning(w.to_string()))
            }
            _ => self.note(n.to_string()),
        }
    }

    /// The first connection's number (0 before any).
    fn first_number(&self) -> usize {
        self.links.lock().unwrap().first().map_or(0, |l| l.number)
    }

    /// Reports connection `number` lost, once.
    fn lost(&self, number: usize, why: &str) {
        if self.closing.load(Ordering::Relaxed) {
            return;
        }
        let mut seen = self.lost_numbers.lock().unwrap();
        if !seen.contains(&number) {
            seen.push(number);
            drop(seen);
            self.event(PoolEvent::ConnectionLost {
                number,
                why: why.to_string(),
            });
        }
    }

    /// Opens one connection and its channels, bounded in time (and by
    /// `within` when given): a handshake through a link that died mid-way
    /// must not hang the run.
    async fn open_link(
        &self,
        channels: usize,
        handshake: Option<tokio::sync::oneshot::Sender<Duration>>,
        within: Option<Duration>,
    ) -> Result<Link, Error> {
        let limit = self.dialer.login_limit();
        let limit = within.map_or(limit, |w| w.min(limit));
        let number = self.dialed.fetch_add(1, Ordering::Relaxed) + 1;
        let opened = async {
            let conn = if self.dialer.shares_connections() {
                let dialed = self.dialer.connect(handshake).await?;
                for n in &dialed.notes {
                    self.connecting_said(n);
                }
                Some(dialed.link)
            } else {
                None
            };
            self.extend_link(number, conn, channels, 0).await
        };
        match tokio::time::timeout(limit, opened).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                peer: self.dialer.peer(),
                after: limit,
            }),
        }
    }

    /// Opens `n` SFTP sessions on `conn` (or `n` `ssh -s sftp` processes);
    /// fails only if none opens. `already` counts sessions on it elsewhere.
    async fn extend_link(
        &self,
        number: usize,
        conn: Option<Arc<dyn Connection>>,
        n: usize,
        already: usize,
    ) -> Result<Link, Error> {
        // Concurrently: each costs a few round trips and a server-side fork.
        let opened = futures::future::join_all((0..n.max(1)).map(|_| async {
            match &conn {
                Some(c) => c.open_sftp().await,
                None => self.dialer.open_alone().await,
            }
        }))
        .await;
        let mut sessions = Vec::new();
        let mut failed = None;
        for r in opened {
            match r {
                Ok(s) => sessions.push(Arc::new(s)),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            // Only the server's refusal says how many channels it allows; a
            // connection that dropped meanwhile says nothing of the kind.
            if !e.is_transient() && sessions.len() + already > 0 {
                self.note(format!(
                    "server allowed {} SFTP channel(s) per connection, not {} ({e})",
                    sessions.len() + already,
                    self.shape().1
                ));
            }
            if sessions.is_empty() {
                return Err(e);
            }
        }
        if let Some(conn) = &conn {
            let (pool, conn, watched) = (self.me.clone(), conn.clone(), sessions.clone());
            tokio::spawn(async move {
                let why = watch(conn, watched).await;
                if let (Some(why), Some(pool)) = (why, pool.upgrade()) {
                    pool.lost(number, why);
                }
            });
        }
        Ok(Link {
            number,
            conn,
            sessions,
        })
    }

    /// Ends the background growth: waits for it (so its notes are complete)
    /// or, when nobody will read them, stops it.
    pub async fn settle(&self, wait: bool) {
        self.stop_early();
        let Some(task) = self.grower.lock().unwrap().take() else {
            return;
        };
        if wait {
            let _ = tokio::time::timeout(Duration::from_secs(60), task).await;
        } else {
            task.abort();
        }
    }

    /// Sessions the pool aims for (connections × channels).
    pub fn capacity(&self) -> usize {
        let (c, m) = self.shape();
        c * m
    }

    /// All live sessions now.
    pub fn sessions(&self) -> Vec<Arc<Sftp>> {
        self.links
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.conn.as_ref().is_none_or(|c| !c.is_closed()))
            .flat_map(|l| l.sessions.iter().filter(|s| !s.is_dead()).cloned())
            .collect()
    }

    /// A live session (round robin), reconnecting if every one is gone.
    pub async fn session(&self) -> Result<Arc<Sftp>, Error> {
        loop {
            let live = self.sessions();
            if !live.is_empty() {
                let i = self.next.fetch_add(1, Ordering::Relaxed);
                return Ok(live[i % live.len()].clone());
            }
            self.repair().await?;
        }
    }

    /// Drops dead links. When no live session is left, reconnects until
    /// the outage's deadline ([`PoolOptions::retry_for`] from the moment the
    /// pool had none), then fails with a [`Error::ConnectionLost`] saying so;
    /// while other sessions still live, lost connections are replaced in the
    /// background and this returns at once.
    pub async fn repair(&self) -> Result<(), Error> {
        let _guard = self.repair.lock().await;
        let lost_conns = self.prune();
        self.end_outage_if_answered();
        if !self.sessions().is_empty() {
            self.replace_later(lost_conns);
            return Ok(());
        }
        let deadline = *self
            .outage
            .lock()
            .unwrap()
            .get_or_insert_with(|| Instant::now() + self.opts.retry_for);
        let why = Error::ConnectionLost {
            peer: self.dialer.peer(),
            detail: "no live session left".into(),
        };
        match self.reconnect_until(self.shape().1, deadline, why).await {
            Ok(l) => {
                self.on_probation(&l);
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                let (number, channels) = (l.number, l.sessions.len());
                self.links.lock().unwrap().push(l);
                self.event(PoolEvent::Reconnected { number, channels });
                self.replace_later(lost_conns.saturating_sub(1));
                Ok(())
            }
            Err(e) => {
                if e.is_connection() {
                    let mut lost = self.lost.lock().unwrap();
                    if lost.is_none() {
                        *lost = Some(e.clone());
                    }
                }
                Err(e)
            }
        }
    }

    /// Sessions of `l`, which replaces lost ones during an outage: the
    /// outage is over once one of them answers a request.
    fn on_probation(&self, l: &Link) {
        let mut proving = self.proving.lock().unwrap();
        proving.extend(l.sessions.iter().map(|s| (s.clone(), s.answered())));
    }

    /// [`Pool::on_probation`] for connection `number`, if an outage is on.
    fn on_probation_if_outage(&self, number: usize) {
        if self.outage.lock().unwrap().is_none() {
            return;
        }
        let sessions: Vec<Arc<Sftp>> = self
            .links
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.number == number)
            .flat_map(|l| l.sessions.iter().cloned())
            .collect();
        let mut proving = self.proving.lock().unwrap();
        proving.extend(sessions.into_iter().map(|s| {
            let at = s.answered();
            (s, at)
        }));
    }

    /// Ends the outage (its deadline) once a session that logged in during
    /// it has answered a request, or when none did and sessions live anyway.
    fn end_outage_if_answered(&self) {
        let live = !self.sessions().is_empty();
        let mut proving = self.proving.lock().unwrap();
        let answered = proving.iter().any(|(s, at)| s.answered() > *at);
        if answered || (proving.is_empty() && live) {
            proving.clear();
            *self.outage.lock().unwrap() = None;
        }
    }

    /// Why the pool gave up on the connection (an outage outlived
    /// `retry_for`), if it has: the run then ends as "connection lost".
    pub fn gave_up(&self) -> Option<Error> {
        self.lost.lock().unwrap().clone()
    }

    /// Removes links with no live session or a closed connection; returns
    /// how many connections (or `ssh` processes) went with them.
    fn prune(&self) -> usize {
        let mut links = self.links.lock().unwrap();
        let alive = |l: &Link| {
            l.sessions.iter().any(|s| !s.is_dead())
                && l.conn.as_ref().is_none_or(|c| !c.is_closed())
        };
        let mut gone: Vec<usize> = Vec::new();
        for l in links.iter().filter(|l| !alive(l)) {
            match &l.conn {
                Some(_) if !gone.contains(&l.number) => {
                    // A connection counts once, whichever of its links goes last.
                    if !links
                        .iter()
                        .any(|o| alive(o) && o.conn.is_some() && o.number == l.number)
                    {
                        gone.push(l.number);
                    }
                }
                Some(_) => {}
                None => gone.push(l.number),
            }
        }
        links.retain(alive);
        drop(links);
        for &number in &gone {
            self.lost(number, "its sessions ended");
        }
        gone.len()
    }

    /// Logs in again (with `channels` channels) until `deadline`, with
    /// backoff and jitter, each attempt bounded by the time left. `first`
    /// is why we are here, reported if no attempt is made.
    async fn reconnect_until(
        &self,
        channels: usize,
        deadline: Instant,
        first: Error,
    ) -> Result<Link, Error> {
        let mut delay = Duration::from_millis(250);
        let mut last = first;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.open_link(channels, None, Some(left)).await {
                Ok(l) => return Ok(l),
                // A key or host-key problem will not heal by retrying.
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => last = e,
            }
            // Jitter from the clock's low bits: enough to spread simultaneous retries.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos() as u64;
            let jitter = Duration::from_millis(nanos % (delay.as_millis() as u64 / 2 + 1));
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep((delay + jitter).min(left)).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        Err(Error::ConnectionLost {
            peer: self.dialer.peer(),
            detail: format!(
                "not re-established within --retry-for {:?} (last: {last}); rerun to resume, or allow longer with --retry-for",
                self.opts.retry_for
            ),
        })
    }

    /// Replaces `n` more lost connections in the background (one task at a
    /// time), each within `retry_for`; the run goes on meanwhile.
    fn replace_later(&self, n: usize) {
        // (Even after a refused further login: this only restores a count
        // the server accepted.)
        if n == 0 {
            return;
        }
        self.to_replace.fetch_add(n, Ordering::Relaxed);
        if self.replacing.swap(true, Ordering::Relaxed) {
            return;
        }
        let Some(pool) = self.me.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            while pool.to_replace.load(Ordering::Relaxed) > 0 {
                // Repairs of an outage meanwhile may have replaced some already.
                if pool.live_links() >= pool.shape().0 {
                    pool.to_replace.store(0, Ordering::Relaxed);
                    break;
                }
                let deadline = Instant::now() + pool.opts.retry_for;
                let why = Error::ConnectionLost {
                    peer: pool.dialer.peer(),
                    detail: "replacing a lost connection".into(),
                };
                match pool.reconnect_until(pool.shape().1, deadline, why).await {
                    Ok(l) => {
                        pool.reconnects.fetch_add(1, Ordering::Relaxed);
                        let (number, channels) = (l.number, l.sessions.len());
                        pool.links.lock().unwrap().push(l);
                        pool.event(PoolEvent::Reconnected { number, channels });
                        pool.on_probation_if_outage(number);
                        pool.to_replace.fetch_sub(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        pool.note(format!("a lost connection was not replaced: {e}"));
                        pool.to_replace.store(0, Ordering::Relaxed);
                    }
                }
            }
            pool.replacing.store(false, Ordering::Relaxed);
        });
    }

    /// Logs out: every connection closed (each bounded in time).
    pub async fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.stop_early();
        if let Some(task) = self.widening.lock().unwrap().take() {
            task.abort();
        }
        let conns: Vec<_> = self
            .links
            .lock()
            .unwrap()
            .drain(..)
            .filter_map(|l| l.conn)
            .collect();
        // A frozen link must not hold up the end of the run.
        for c in conns {
            let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
        }
    }

    /// Who the sessions talk to (`user@host:port`).
    pub fn peer(&self) -> String {
        self.dialer.peer()
    }
}

/// Watches one link's sessions on `conn`: when the connection closes, or a
/// request on any of its channels goes unanswered (the connection is then
/// declared dead), every session on it ends at once, so that what was in
/// flight fails now and is re-issued elsewhere rather than waiting out its
/// timeout. Russh reports a closed connection only by polling.
/// Returns why, or `None` when the sessions ended on their own.
async fn watch(conn: Arc<dyn Connection>, sessions: Vec<Arc<Sftp>>) -> Option<&'static str> {
    let why = loop {
        if conn.is_closed() {
            break "the SSH connection closed";
        }
        if sessions.iter().any(|s| s.link_failed()) {
            conn.abandon();
            break "another channel of its SSH connection went unanswered";
        }
        if sessions.iter().all(|s| s.is_dead()) {
            return None;
        }
        // Only sessions still live: an ended one would wake this at once, forever.
        let live = sessions.iter().filter(|s| !s.is_dead());
        let any_ended = futures::future::select_all(live.map(|s| Box::pin(s.ended())));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = any_ended => {}
        }
    };
    for s in &sessions {
        s.kill(why);
    }
    Some(why)
}

/// The pool over in-memory servers ([`crate::testing::MemDialer`]): no sshd.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemDialer;
    use crate::SessionOptions;
    use robosync_sftp::testing::{Hostile, MemFs, ServerOptions};

    fn opts(retry_for: Duration) -> PoolOptions {
        PoolOptions {
            connections: 1,
            channels: 2,
            retry_for,
            when_near: None,
        }
    }

    async fn open(
        dialer: MemDialer,
        retry_for: Duration,
    ) -> (Arc<Pool>, Arc<Mutex<Vec<PoolEvent>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let events = events.clone();
            Arc::new(move |e| events.lock().unwrap().push(e))
        };
        let pool = Pool::open_expecting(Arc::new(dialer), opts(retry_for), async { false }, sink)
            .await
            .unwrap();
        (pool, events)
    }

    /// A STAT of the root on any session, repairing as a run does, until
    /// it is answered or the pool gives up.
    async fn stat_root(pool: &Pool) -> Result<(), Error> {
        loop {
            let s = pool.session().await?;
            match s.stat(b"/").await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_connection() => pool.repair().await?,
                Err(e) => return Err(e),
            }
        }
    }

    #[tokio::test]
    async fn a_dropped_connection_is_reported_lost_and_replaced() {
        let fs = MemFs::new();
        let dialer = MemDialer::new(fs, SessionOptions::default(), |n| {
            Ok(ServerOptions {
                // The first connection hangs up at its second request.
                hostile: (n == 0).then_some(Hostile::DropCarrier),
                honest: 1,
                ..Default::default()
            })
        });
        let (pool, events) = open(dialer, Duration::from_secs(10)).await;
        stat_root(&pool).await.unwrap();
        assert_eq!(pool.reconnects.load(Ordering::Relaxed), 1);
        let events = events.lock().unwrap().clone();
        assert_eq!(
            events.first(),
            Some(&PoolEvent::Connected {
                number: 1,
                channels: 1
            })
        );
        assert!(
            events.contains(&PoolEvent::Reconnected {
                number: 2,
                channels: 2
            }),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PoolEvent::ConnectionLost { number: 1, .. })),
            "{events:?}"
        );
        pool.close().await;
    }

    #[tokio::test]
    async fn logins_that_then_answer_nothing_do_not_end_the_outage() {
        let fs = MemFs::new();
        let session = SessionOptions {
            request_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        // Every connection opens its sessions, then answers nothing.
        let dialer = MemDialer::new(fs, session, |_| {
            Ok(ServerOptions {
                hostile: Some(Hostile::Silent),
                honest: 1,
                ..Default::default()
            })
        });
        let (pool, _) = open(dialer, Duration::from_secs(1)).await;
        // A guard, not a measurement: before, each login restarted the
        // outage's deadline, and this never ended.
        let r = tokio::time::timeout(Duration::from_secs(60), stat_root(&pool))
            .await
            .expect("the pool gave up");
        assert!(matches!(r, Err(Error::ConnectionLost { .. })), "{r:?}");
        assert!(pool.gave_up().is_some());
    }

    #[tokio::test]
    async fn a_login_refused_past_retry_for_is_connection_lost() {
        let fs = MemFs::new();
        let dialer = MemDialer::new(fs, SessionOptions::default(), |n| match n {
            0 => Ok(ServerOptions::default()),
            _ => Err(Error::ConnectionLost {
                peer: "memory".into(),
                detail: "refused".into(),
            }),
        });
        let killer = Arc::new(dialer);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink: EventSink = {
            let events = events.clone();
            Arc::new(move |e| events.lock().unwrap().push(e))
        };
        let pool = Pool::open_expecting(
            killer.clone(),
            opts(Duration::from_millis(500)),
            async { false },
            sink,
        )
        .await
        .unwrap();
        stat_root(&pool).await.unwrap();
        killer.kill();
        let r = stat_root(&pool).await;
        assert!(matches!(r, Err(Error::ConnectionLost { .. })), "{r:?}");
        assert!(killer.dials() >= 2, "it tried to log in again");
    }
}

//! An in-memory SFTP v3 server over `tokio::io::duplex`, for tests that
//! need a server in milliseconds and without sshd: the engine, a remote
//! walker, an executor.
//!
//! It keeps a tree of files, directories and symlinks ([`MemFs`]) and
//! answers as OpenSSH's sftp-server does (status codes, symlink handling,
//! handles as 4 raw bytes, SYMLINK's arguments in OpenSSH's order), with
//! the extensions robosync uses: posix-rename, fsync, limits, copy-data,
//! hardlink, lsetstat, expand-path, statvfs. A per-session handle limit
//! ([`ServerOptions::max_handles`]) answers FAILURE past it, as OpenSSH's
//! does. [`Hostile`] modes make it lie, send garbage, go silent or drop the
//! carrier, for tests of what a client does with a server it cannot trust.
//!
//! Simplifications, none of which the client can rely on anyway: a hard
//! link is a copy, an open handle follows its path (a file removed while
//! open reads as missing), owners are not kept, every mode bit is allowed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use crate::client::{SessionOptions, Sftp};
use crate::error::Error;
use crate::proto::{self, Attrs, Packet, Reader};

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A directory (its entries are the paths under it).
    Dir,
    /// A symlink and its target, as given.
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Entry {
    node: Node,
    /// Permission bits (no type bits).
    mode: u32,
    mtime: u32,
}

/// One change a client made to a [`MemFs`], in the order the servers made
/// them (see [`MemFs::changes`]): for tests of what lands when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file, directory or symlink was created at this path.
    Created(Vec<u8>),
    /// Bytes were written to the file at this path.
    Written(Vec<u8>),
    /// The entry at the first path was renamed to the second.
    Renamed(Vec<u8>, Vec<u8>),
}

/// A file tree in memory, shared between a test and its servers. Paths are
/// absolute byte strings (`/` joins components; any other byte, UTF-8 or
/// not, is part of a name).
#[derive(Clone)]
pub struct MemFs {
    tree: Arc<Mutex<BTreeMap<Vec<u8>, Entry>>>,
    changes: Arc<Mutex<Vec<Change>>>,
}

impl Default for MemFs {
    fn default() -> MemFs {
        MemFs::new()
    }
}

impl MemFs {
    /// A tree holding only the root directory `/`.
    pub fn new() -> MemFs {
        let mut tree = BTreeMap::new();
        tree.insert(b"/".to_vec(), dir_entry(0o755));
        MemFs {
            tree: Arc::new(Mutex::new(tree)),
            changes: Arc::default(),
        }
    }

    /// Adds (or replaces) a file at absolute `path`, making its parents.
    pub fn add_file(&self, path: &[u8], data: &[u8]) {
        self.add(path, Node::File(data.to_vec()), 0o644);
    }

    /// Adds a directory at absolute `path`, making its parents.
    pub fn add_dir(&self, path: &[u8]) {
        self.add(path, Node::Dir, 0o755);
    }

    /// Adds a symlink at absolute `path` pointing at `target`.
    pub fn add_symlink(&self, path: &[u8], target: &[u8]) {
        self.add(path, Node::Symlink(target.to_vec()), 0o777);
    }

    fn add(&self, path: &[u8], node: Node, mode: u32) {
        let key = key_of(&components(path));
        let mut tree = self.tree.lock().unwrap();
        let mut parent = key.clone();
        while let Some(p) = parent_key(&parent) {
            tree.entry(p.clone()).or_insert_with(|| dir_entry(0o755));
            parent = p;
        }
        tree.insert(
            key,
            Entry {
                node,
                mode,
                mtime: 1_700_000_000,
            },
        );
    }

    /// What is at absolute `path` (not following a final symlink).
    pub fn get(&self, path: &[u8]) -> Option<Node> {
        let key = key_of(&components(path));
        self.tree.lock().unwrap().get(&key).map(|e| e.node.clone())
    }

    /// The permission bits and mtime at absolute `path`.
    pub fn meta(&self, path: &[u8]) -> Option<(u32, u32)> {
        let key = key_of(&components(path));
        self.tree
            .lock()
            .unwrap()
            .get(&key)
            .map(|e| (e.mode, e.mtime))
    }

    /// What clients changed so far, in order (what a test adds is not listed).
    pub fn changes(&self) -> Vec<Change> {
        self.changes.lock().unwrap().clone()
    }

    fn changed(&self, c: Change) {
        self.changes.lock().unwrap().push(c);
    }

    /// Every path in the tree, sorted.
    pub fn paths(&self) -> Vec<Vec<u8>> {
        self.tree.lock().unwrap().keys().cloned().collect()
    }
}

fn dir_entry(mode: u32) -> Entry {
    Entry {
        node: Node::Dir,
        mode,
        mtime: 1_700_000_000,
    }
}

/// A path's components, without empty ones and `.`; `..` is kept for the
/// resolver to apply.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

fn key_of(comps: &[Vec<u8>]) -> Vec<u8> {
    let mut key = Vec::new();
    for c in comps {
        key.push(b'/');
        key.extend_from_slice(c);
    }
    if key.is_empty() {
        key.push(b'/');
    }
    key
}

fn parent_key(key: &[u8]) -> Option<Vec<u8>> {
    if key == b"/" {
        return None;
    }
    let cut = key.iter().rposition(|b| *b == b'/').unwrap_or(0);
    Some(if cut == 0 {
        b"/".to_vec()
    } else {
        key[..cut].to_vec()
    })
}

/// A server that cannot be trusted, from its [`ServerOptions::honest`]-th
/// request on (the first ones, the session's opening, are answered well).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// Attributes claim 1 GiB more than a file holds, and READ answers
    /// more bytes than were asked for.
    LyingSizes,
    /// READDIR answers names that leave the directory (`..`, `../../etc`,
    /// `a/b`, an empty name, a NUL) alongside the real ones.
    TraversalNames,
    /// A reply's length promises more than follows, then the stream ends.
    Truncated,
    /// A reply that is no SFTP packet (an unknown type, fields cut short).
    Garbage,
    /// A reply claiming to be 4 GiB long.
    Oversized,
    /// Requests are read, never answered.
    Silent,
    /// The stream is closed at the first request.
    DropCarrier,
    /// Replies carry ids nobody asked for.
    WrongIds,
}

/// How a [`MemServer`] behaves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Handles one session may hold open; OPEN and OPENDIR past it fail.
    pub max_handles: usize,
    /// What `limits@openssh.com` answers for reads and writes.
    pub max_read: u64,
    /// What `limits@openssh.com` answers for writes.
    pub max_write: u64,
    /// Whether the OpenSSH extensions are advertised at all.
    pub extensions: bool,
    /// What `~` and relative paths mean.
    pub home: Vec<u8>,
    /// Replies to requests that arrived together go out in reverse order.
    pub reorder: bool,
    /// Misbehaviour, from request number `honest` on.
    pub hostile: Option<Hostile>,
    /// Requests answered properly before `hostile` starts (1: the
    /// session's opening `limits` query).
    pub honest: usize,
    /// Buffer of the in-memory pipe, each way.
    pub pipe_bytes: usize,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            max_handles: 512,
            max_read: 255 * 1024,
            max_write: 255 * 1024,
            extensions: true,
            home: b"/".to_vec(),
            reorder: false,
            hostile: None,
            honest: 1,
            pipe_bytes: 256 * 1024,
        }
    }
}

/// What a server saw; read with [`MemServer`]'s accessors.
#[derive(Default)]
struct Seen {
    /// Requests handled, and requests read but held.
    handled: AtomicUsize,
    waiting: AtomicUsize,
    open_handles: AtomicUsize,
    /// The most requests answered as one group (see [`ServerOptions::reorder`]).
    max_group: AtomicUsize,
}

/// One running in-memory server (one SFTP session's far end).
pub struct MemServer {
    /// The tree it serves.
    pub fs: MemFs,
    seen: Arc<Seen>,
    held: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl MemServer {
    /// Starts a server for `fs`; returns it and the client's end of the pipe.
    pub fn start(fs: MemFs, opts: ServerOptions) -> (MemServer, DuplexStream) {
        let (client, server) = tokio::io::duplex(opts.pipe_bytes);
        let seen = Arc::new(Seen::default());
        let (held, held_rx) = tokio::sync::watch::channel(false);
        let session = Session {
            fs: fs.clone(),
            opts,
            seen: seen.clone(),
            handles: HashMap::new(),
            next_handle: 0x7f_fff0,
            count: 0,
        };
        let task = tokio::spawn(session.run(server, held_rx));
        (
            MemServer {
                fs,
                seen,
                held,
                task,
            },
            client,
        )
    }

    /// Starts a server and an [`Sftp`] session on it.
    pub async fn connect(
        fs: MemFs,
        opts: ServerOptions,
        session: SessionOptions,
    ) -> Result<(MemServer, Sftp), Error> {
        let (server, stream) = MemServer::start(fs, opts);
        let sftp = Sftp::start(stream, "memory", session).await?;
        Ok((server, sftp))
    }

    /// From now on requests are read and counted but not answered, until
    /// [`MemServer::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Answers everything held, and what comes next.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    /// Ends the server at once, as a dropped link would: its end of the
    /// pipe closes, so the client reads end-of-stream.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Whether the server has ended (killed, or closed by a hostile mode).
    pub fn has_ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Requests received so far (INIT included).
    pub fn requests(&self) -> usize {
        self.seen.handled.load(Ordering::SeqCst) + self.seen.waiting.load(Ordering::SeqCst)
    }

    /// Handles open now.
    pub fn open_handles(&self) -> usize {
        self.seen.open_handles.load(Ordering::SeqCst)
    }

    /// The most requests that arrived together and were answered as a group.
    pub fn max_group(&self) -> usize {
        self.seen.max_group.load(Ordering::SeqCst)
    }
}

enum Handle {
    File {
        key: Vec<u8>,
        writable: bool,
    },
    Dir {
        names: Vec<(Vec<u8>, Attrs)>,
        next: usize,
    },
}

struct Session {
    fs: MemFs,
    opts: ServerOptions,
    seen: Arc<Seen>,
    handles: HashMap<u32, Handle>,
    next_handle: u32,
    /// Requests handled so far.
    count: usize,
}

/// What a request's handling decided to send.
enum Out {
    Reply(Vec<u8>),
    Nothing,
    /// Write these bytes, then end the stream.
    Last(Vec<u8>),
}

/// Errors as OpenSSH's sftp-server reports them.
type Res<T> = Result<T, (u32, &'static str)>;
const NO_SUCH_FILE: (u32, &str) = (proto::FX_NO_SUCH_FILE, "No such file");
const FAILURE: (u32, &str) = (proto::FX_FAILURE, "Failure");
const BAD: (u32, &str) = (proto::FX_BAD_MESSAGE, "Bad message");

impl Session {
    async fn run(mut self, mut io: DuplexStream, mut held: tokio::sync::watch::Receiver<bool>) {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            // Every whole packet in the buffer, unless held.
            if !*held.borrow() {
                let mut group = Vec::new();
                self.seen.waiting.store(0, Ordering::SeqCst);
                while let Some(body) = take_packet(&mut buf) {
                    self.seen.handled.fetch_add(1, Ordering::SeqCst);
                    group.push(self.handle(&body));
                }
                self.seen.max_group.fetch_max(group.len(), Ordering::SeqCst);
                if self.opts.reorder {
                    group.reverse();
                }
                for out in group {
                    match out {
                        Out::Reply(bytes) => {
                            if io.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                        Out::Nothing => {}
                        Out::Last(bytes) => {
                            let _ = io.write_all(&bytes).await;
                            let _ = io.shutdown().await;
                            return;
                        }
                    }
                }
            } else {
                self.seen
                    .waiting
                    .store(count_packets(&buf), Ordering::SeqCst);
            }
            tokio::select! {
                n = io.read_buf(&mut buf) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                changed = held.changed() => if changed.is_err() { return },
            }
        }
    }

    fn handle(&mut self, body: &[u8]) -> Out {
        let mut r = Reader::new(body);
        let Ok(kind) = r.u8() else {
            return Out::Nothing;
        };
        let Ok(id) = r.u32() else { return Out::Nothing };
        if kind == proto::FXP_INIT {
            return Out::Reply(self.version());
        }
        self.count += 1;
        let reply = match self.answer(kind, id, &mut r) {
            Ok(bytes) => bytes,
            Err((code, msg)) => status(id, code, msg),
        };
        match self.opts.hostile.filter(|_| self.count > self.opts.honest) {
            Some(h) => misbehave(h, kind, id, reply),
            None => Out::Reply(reply),
        }
    }

    fn version(&self) -> Vec<u8> {
        let mut p = Packet::new(proto::FXP_VERSION, proto::VERSION);
        if self.opts.extensions {
            for (name, data) in [
                ("posix-rename@openssh.com", "1"),
                ("statvfs@openssh.com", "2"),
                ("fsync@openssh.com", "1"),
                ("lsetstat@openssh.com", "1"),
                ("limits@openssh.com", "1"),
                ("expand-path@openssh.com", "1"),
                ("copy-data", "1"),
                ("hardlink@openssh.com", "1"),
            ] {
                p = p.bytes(name.as_bytes()).bytes(data.as_bytes());
            }
        }
        p.finish()
    }

    fn answer(&mut self, kind: u8, id: u32, r: &mut Reader<'_>) -> Res<Vec<u8>> {
        let ok = || Ok(status(id, proto::FX_OK, ""));
        match kind {
            proto::FXP_OPEN => {
                let path = r.bytes().map_err(|_| BAD)?;
                let flags = r.u32().map_err(|_| BAD)?;
                let attrs = r.attrs().map_err(|_| BAD)?;
                let h = self.open(path, flags, &attrs)?;
                Ok(handle_reply(id, h))
            }
            proto::FXP_CLOSE => {
                let h = handle_arg(r)?;
                self.handles.remove(&h).ok_or(FAILURE)?;
                self.seen.open_handles.fetch_sub(1, Ordering::SeqCst);
                ok()
            }
            proto::FXP_READ => {
                let key = self.file_handle(r, false)?;
                let off = r.u64().map_err(|_| BAD)?;
                let len = r.u32().map_err(|_| BAD)?.min(self.opts.max_read as u32);
                let tree = self.fs.tree.lock().unwrap();
                let Some(Node::File(data)) = tree.get(&key).map(|e| &e.node) else {
                    return Err(NO_SUCH_FILE);
                };
                if off >= data.len() as u64 {
                    return Err((proto::FX_EOF, "EOF"));
                }
                let end = (off + len as u64).min(data.len() as u64);
                let chunk = &data[off as usize..end as usize];
                Ok(Packet::new(proto::FXP_DATA, id).bytes(chunk).finish())
            }
            proto::FXP_WRITE => {
                let key = self.file_handle(r, true)?;
                let off = r.u64().map_err(|_| BAD)?;
                let data = r.bytes().map_err(|_| BAD)?;
                let end = off.checked_add(data.len() as u64).ok_or(FAILURE)?;
                if end > 1 << 30 {
                    return Err(FAILURE); // a full disk, as far as a test cares
                }
                let mut tree = self.fs.tree.lock().unwrap();
                let Some(Node::File(file)) = tree.get_mut(&key).map(|e| &mut e.node) else {
                    return Err(NO_SUCH_FILE);
                };
                if file.len() < end as usize {
                    file.resize(end as usize, 0);
                }
                file[off as usize..end as usize].copy_from_slice(data);
                drop(tree);
                self.fs.changed(Change::Written(key));
                ok()
            }
            proto::FXP_LSTAT | proto::FXP_STAT => {
                let path = r.bytes().map_err(|_| BAD)?;
                let key = self.resolve(path, kind == proto::FXP_STAT)?;
                Ok(attrs_reply(id, &self.attrs_of(&key)?))
            }
            proto::FXP_FSTAT => {
                let key = self.any_handle_key(r)?;
                Ok(attrs_reply(id, &self.attrs_of(&key)?))
            }
            proto::FXP_SETSTAT | proto::FXP_FSETSTAT => {
                let key = if kind == proto::FXP_SETSTAT {
                    self.resolve(r.bytes().map_err(|_| BAD)?, true)?
                } else {
                    self.any_handle_key(r)?
                };
                let attrs = r.attrs().map_err(|_| BAD)?;
                self.set_attrs(&key, &attrs)?;
                ok()
            }
            proto::FXP_OPENDIR => {
                let path = r.bytes().map_err(|_| BAD)?;
                let key = self.resolve(path, true)?;
                let names = self.dir_names(&key)?;
                let h = self.new_handle(Handle::Dir { names, next: 0 })?;
                Ok(handle_reply(id, h))
            }
            proto::FXP_READDIR => {
                let h = handle_arg(r)?;
                let Some(Handle::Dir { names, next }) = self.handles.get_mut(&h) else {
                    return Err(FAILURE);
                };
                if *next >= names.len() {
                    return Err((proto::FX_EOF, "EOF"));
                }
                // OpenSSH sends up to 100 entries per READDIR.
                let batch = &names[*next..(*next + 100).min(names.len())];
                *next += batch.len();
                let mut p = Packet::new(proto::FXP_NAME, id).u32(batch.len() as u32);
                for (name, attrs) in batch {
                    p = p.bytes(name).bytes(b"").attrs(attrs);
                }
                Ok(p.finish())
            }
            proto::FXP_REMOVE => {
                let key = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                let mut tree = self.fs.tree.lock().unwrap();
                match tree.get(&key).map(|e| &e.node) {
                    None => Err(NO_SUCH_FILE),
                    Some(Node::Dir) => Err(FAILURE),
                    Some(_) => {
                        tree.remove(&key);
                        ok()
                    }
                }
            }
            proto::FXP_MKDIR => {
                let key = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                let attrs = r.attrs().map_err(|_| BAD)?;
                let mode = attrs.permissions.unwrap_or(0o777) & 0o7777;
                self.create(&key, Node::Dir, mode)?;
                ok()
            }
            proto::FXP_RMDIR => {
                let key = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                let mut tree = self.fs.tree.lock().unwrap();
                match tree.get(&key).map(|e| &e.node) {
                    None => Err(NO_SUCH_FILE),
                    Some(Node::Dir) if key != b"/" && children(&tree, &key).is_empty() => {
                        tree.remove(&key);
                        ok()
                    }
                    Some(_) => Err(FAILURE),
                }
            }
            proto::FXP_REALPATH => {
                let key = self.resolve(r.bytes().map_err(|_| BAD)?, true)?;
                Ok(name_reply(id, &key))
            }
            proto::FXP_READLINK => {
                let key = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                match self.fs.tree.lock().unwrap().get(&key).map(|e| &e.node) {
                    Some(Node::Symlink(t)) => Ok(name_reply(id, t)),
                    Some(_) => Err(FAILURE),
                    None => Err(NO_SUCH_FILE),
                }
            }
            proto::FXP_SYMLINK => {
                // OpenSSH's order: the target first, then the link.
                let target = r.bytes().map_err(|_| BAD)?.to_vec();
                let key = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                self.create(&key, Node::Symlink(target), 0o777)?;
                ok()
            }
            proto::FXP_RENAME => {
                let from = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                let to = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                self.rename(&from, &to, false)?;
                ok()
            }
            proto::FXP_EXTENDED => {
                let name = r.bytes().map_err(|_| BAD)?.to_vec();
                self.extended(&name, id, r)
            }
            _ => Err((proto::FX_OP_UNSUPPORTED, "Operation unsupported")),
        }
    }

    fn extended(&mut self, name: &[u8], id: u32, r: &mut Reader<'_>) -> Res<Vec<u8>> {
        let ok = || Ok(status(id, proto::FX_OK, ""));
        if !self.opts.extensions {
            return Err((proto::FX_OP_UNSUPPORTED, "Operation unsupported"));
        }
        match name {
            b"posix-rename@openssh.com" => {
                let from = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                let to = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                self.rename(&from, &to, true)?;
                ok()
            }
            b"fsync@openssh.com" => {
                self.file_handle(r, false)?;
                ok()
            }
            b"limits@openssh.com" => Ok(Packet::new(proto::FXP_EXTENDED_REPLY, id)
                .u64(256 * 1024 + 1024)
                .u64(self.opts.max_read)
                .u64(self.opts.max_write)
                .u64(self.opts.max_handles as u64)
                .finish()),
            b"copy-data" => {
                let from = self.file_handle(r, false)?;
                let from_off = r.u64().map_err(|_| BAD)?;
                let len = r.u64().map_err(|_| BAD)?;
                let to = self.file_handle(r, true)?;
                let to_off = r.u64().map_err(|_| BAD)?;
                let mut tree = self.fs.tree.lock().unwrap();
                let Some(Node::File(src)) = tree.get(&from).map(|e| &e.node) else {
                    return Err(NO_SUCH_FILE);
                };
                let start = (from_off as usize).min(src.len());
                let end = match len {
                    0 => src.len(),
                    n => (start as u64).saturating_add(n).min(src.len() as u64) as usize,
                };
                let bytes = src[start..end].to_vec();
                let end = to_off.checked_add(bytes.len() as u64).ok_or(FAILURE)?;
                if end > 1 << 30 {
                    return Err(FAILURE);
                }
                let Some(Node::File(dst)) = tree.get_mut(&to).map(|e| &mut e.node) else {
                    return Err(NO_SUCH_FILE);
                };
                if dst.len() < end as usize {
                    dst.resize(end as usize, 0);
                }
                dst[to_off as usize..end as usize].copy_from_slice(&bytes);
                ok()
            }
            b"hardlink@openssh.com" => {
                let from = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                let to = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                let entry = self.fs.tree.lock().unwrap().get(&from).cloned();
                let entry = entry.ok_or(NO_SUCH_FILE)?;
                if entry.node == Node::Dir {
                    return Err(FAILURE);
                }
                self.create(&to, entry.node, entry.mode)?;
                ok()
            }
            b"lsetstat@openssh.com" => {
                let key = self.resolve(r.bytes().map_err(|_| BAD)?, false)?;
                let attrs = r.attrs().map_err(|_| BAD)?;
                self.set_attrs(&key, &attrs)?;
                ok()
            }
            b"expand-path@openssh.com" => {
                let path = r.bytes().map_err(|_| BAD)?;
                let key = self.resolve(path, true)?;
                Ok(name_reply(id, &key))
            }
            b"statvfs@openssh.com" => {
                self.resolve(r.bytes().map_err(|_| BAD)?, true)?;
                let mut p = Packet::new(proto::FXP_EXTENDED_REPLY, id);
                // bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax
                for v in [
                    4096,
                    4096,
                    1 << 20,
                    1 << 19,
                    1 << 19,
                    1 << 16,
                    1 << 15,
                    1 << 15,
                    1,
                    0,
                    255,
                ] {
                    p = p.u64(v);
                }
                Ok(p.finish())
            }
            _ => Err((proto::FX_OP_UNSUPPORTED, "Operation unsupported")),
        }
    }

    /// The tree key `path` names: relative paths start at home, `~` is
    /// home; symlinks are followed on the way (and at the end if
    /// `follow_last`), 40 at most, as Linux does. The last component need
    /// not exist.
    fn resolve(&self, path: &[u8], follow_last: bool) -> Res<Vec<u8>> {
        let path = match path {
            b"~" => self.opts.home.clone(),
            p if p.starts_with(b"~/") => [&self.opts.home[..], &p[1..]].concat(),
            p if p.starts_with(b"/") => p.to_vec(),
            p => [&self.opts.home[..], b"/", p].concat(),
        };
        let tree = self.fs.tree.lock().unwrap();
        let mut todo: std::collections::VecDeque<Vec<u8>> = components(&path).into();
        let mut cur: Vec<Vec<u8>> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop_front() {
            if c == b".." {
                cur.pop();
                continue;
            }
            cur.push(c);
            let last = todo.is_empty();
            match tree.get(&key_of(&cur)).map(|e| &e.node) {
                Some(Node::Symlink(target)) if !last || follow_last => {
                    links += 1;
                    if links > 40 {
                        return Err(NO_SUCH_FILE); // ELOOP, as OpenSSH maps it
                    }
                    cur.pop();
                    if target.starts_with(b"/") {
                        cur.clear();
                    }
                    for t in components(target).into_iter().rev() {
                        todo.push_front(t);
                    }
                }
                Some(Node::File(_)) | Some(Node::Symlink(_)) if !last => return Err(NO_SUCH_FILE),
                None if !last => return Err(NO_SUCH_FILE),
                _ => {}
            }
        }
        Ok(key_of(&cur))
    }

    fn attrs_of(&self, key: &[u8]) -> Res<Attrs> {
        let tree = self.fs.tree.lock().unwrap();
        let e = tree.get(key).ok_or(NO_SUCH_FILE)?;
        Ok(entry_attrs(e))
    }

    fn set_attrs(&self, key: &[u8], attrs: &Attrs) -> Res<()> {
        let mut tree = self.fs.tree.lock().unwrap();
        let e = tree.get_mut(key).ok_or(NO_SUCH_FILE)?;
        if let Some(size) = attrs.size {
            let Node::File(data) = &mut e.node else {
                return Err(FAILURE);
            };
            if size > 1 << 30 {
                return Err(FAILURE);
            }
            data.resize(size as usize, 0);
        }
        if let Some(p) = attrs.permissions {
            e.mode = p & 0o7777;
        }
        if let Some((_, mtime)) = attrs.times {
            e.mtime = mtime;
        }
        Ok(())
    }

    fn create(&self, key: &[u8], node: Node, mode: u32) -> Res<()> {
        let mut tree = self.fs.tree.lock().unwrap();
        if tree.contains_key(key) {
            return Err(FAILURE); // EEXIST
        }
        let parent = parent_key(key).ok_or(FAILURE)?;
        match tree.get(&parent).map(|e| &e.node) {
            Some(Node::Dir) => {}
            _ => return Err(NO_SUCH_FILE),
        }
        tree.insert(
            key.to_vec(),
            Entry {
                node,
                mode,
                mtime: 1_700_000_000,
            },
        );
        drop(tree);
        self.fs.changed(Change::Created(key.to_vec()));
        Ok(())
    }

    fn open(&mut self, path: &[u8], flags: u32, attrs: &Attrs) -> Res<u32> {
        if self.handles.len() >= self.opts.max_handles {
            return Err(FAILURE);
        }
        let key = self.resolve(path, true)?;
        let exists = {
            let mut tree = self.fs.tree.lock().unwrap();
            match tree.get_mut(&key) {
                Some(_) if flags & proto::FXF_CREAT != 0 && flags & proto::FXF_EXCL != 0 => {
                    return Err(FAILURE)
                }
                Some(Entry {
                    node: Node::File(data),
                    ..
                }) => {
                    if flags & proto::FXF_TRUNC != 0 {
                        data.clear();
                    }
                    true
                }
                Some(_) => return Err(FAILURE),
                None => false,
            }
        };
        if !exists {
            if flags & proto::FXF_CREAT == 0 {
                return Err(NO_SUCH_FILE);
            }
            let mode = attrs.permissions.unwrap_or(0o666) & 0o7777;
            self.create(&key, Node::File(Vec::new()), mode)?;
        }
        let writable = flags & proto::FXF_WRITE != 0;
        self.new_handle(Handle::File { key, writable })
    }

    fn new_handle(&mut self, h: Handle) -> Res<u32> {
        if self.handles.len() >= self.opts.max_handles {
            return Err(FAILURE);
        }
        self.next_handle = self.next_handle.wrapping_add(1);
        self.handles.insert(self.next_handle, h);
        self.seen.open_handles.fetch_add(1, Ordering::SeqCst);
        Ok(self.next_handle)
    }

    fn file_handle(&self, r: &mut Reader<'_>, write: bool) -> Res<Vec<u8>> {
        match self.handles.get(&handle_arg(r)?) {
            Some(Handle::File { key, writable }) if *writable || !write => Ok(key.clone()),
            Some(Handle::File { .. }) => Err((proto::FX_PERMISSION_DENIED, "Permission denied")),
            _ => Err(FAILURE),
        }
    }

    fn any_handle_key(&self, r: &mut Reader<'_>) -> Res<Vec<u8>> {
        match self.handles.get(&handle_arg(r)?) {
            Some(Handle::File { key, .. }) => Ok(key.clone()),
            _ => Err(FAILURE),
        }
    }

    fn dir_names(&self, key: &[u8]) -> Res<Vec<(Vec<u8>, Attrs)>> {
        let tree = self.fs.tree.lock().unwrap();
        match tree.get(key).map(|e| &e.node) {
            Some(Node::Dir) => {}
            Some(_) => return Err(FAILURE),
            None => return Err(NO_SUCH_FILE),
        }
        let mut names = vec![
            (b".".to_vec(), entry_attrs(&dir_entry(0o755))),
            (b"..".to_vec(), entry_attrs(&dir_entry(0o755))),
        ];
        for child in children(&tree, key) {
            let name = child[child.iter().rposition(|b| *b == b'/').unwrap_or(0) + 1..].to_vec();
            names.push((name, entry_attrs(&tree[&child])));
        }
        Ok(names)
    }

    /// Moves `from` (with everything under it) to `to`; `replace` as
    /// posix-rename does, else an existing `to` is an error (plain RENAME).
    fn rename(&self, from: &[u8], to: &[u8], replace: bool) -> Res<()> {
        let mut tree = self.fs.tree.lock().unwrap();
        let moving = tree.get(from).ok_or(NO_SUCH_FILE)?.clone();
        if to.starts_with(from) && to.get(from.len()) == Some(&b'/') {
            return Err(FAILURE); // into itself
        }
        match tree.get(to).map(|e| &e.node) {
            Some(_) if !replace => return Err(FAILURE),
            Some(Node::Dir) if moving.node != Node::Dir || !children(&tree, to).is_empty() => {
                return Err(FAILURE)
            }
            Some(n) if *n != Node::Dir && moving.node == Node::Dir => return Err(FAILURE),
            _ => {}
        }
        match parent_key(to).and_then(|p| tree.get(&p)).map(|e| &e.node) {
            Some(Node::Dir) => {}
            _ => return Err(NO_SUCH_FILE),
        }
        let under: Vec<Vec<u8>> = descendants(&tree, from);
        tree.remove(from);
        tree.insert(to.to_vec(), moving);
        for old in under {
            let e = tree.remove(&old).expect("listed just now");
            tree.insert([to, &old[from.len()..]].concat(), e);
        }
        drop(tree);
        self.fs.changed(Change::Renamed(from.to_vec(), to.to_vec()));
        Ok(())
    }
}

/// The keys directly under directory `key`.
fn children(tree: &BTreeMap<Vec<u8>, Entry>, key: &[u8]) -> Vec<Vec<u8>> {
    descendants(tree, key)
        .into_iter()
        .filter(|k| !k[prefix_len(key)..].contains(&b'/'))
        .collect()
}

/// Every key under directory `key`, at any depth.
fn descendants(tree: &BTreeMap<Vec<u8>, Entry>, key: &[u8]) -> Vec<Vec<u8>> {
    let prefix = if key == b"/" {
        b"/".to_vec()
    } else {
        [key, b"/"].concat()
    };
    tree.range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .filter(|k| k.len() > prefix.len())
        .collect()
}

fn prefix_len(key: &[u8]) -> usize {
    if key == b"/" {
        1
    } else {
        key.len() + 1
    }
}

fn entry_attrs(e: &Entry) -> Attrs {
    let (kind, size) = match &e.node {
        Node::File(d) => (proto::S_IFREG, d.len() as u64),
        Node::Dir => (proto::S_IFDIR, 4096),
        Node::Symlink(t) => (proto::S_IFLNK, t.len() as u64),
    };
    Attrs {
        size: Some(size),
        uid_gid: Some((1000, 1000)),
        permissions: Some(kind | e.mode),
        times: Some((e.mtime, e.mtime)),
    }
}

fn file_attrs(size: u64) -> Attrs {
    Attrs {
        size: Some(size),
        permissions: Some(proto::S_IFREG | 0o644),
        ..Attrs::default()
    }
}

fn handle_arg(r: &mut Reader<'_>) -> Res<u32> {
    let h = r.bytes().map_err(|_| BAD)?;
    let h: [u8; 4] = h.try_into().map_err(|_| FAILURE)?;
    Ok(u32::from_be_bytes(h))
}

fn status(id: u32, code: u32, message: &str) -> Vec<u8> {
    Packet::new(proto::FXP_STATUS, id)
        .u32(code)
        .bytes(message.as_bytes())
        .bytes(b"")
        .finish()
}

fn handle_reply(id: u32, h: u32) -> Vec<u8> {
    Packet::new(proto::FXP_HANDLE, id)
        .bytes(&h.to_be_bytes())
        .finish()
}

fn attrs_reply(id: u32, a: &Attrs) -> Vec<u8> {
    Packet::new(proto::FXP_ATTRS, id).attrs(a).finish()
}

fn name_reply(id: u32, name: &[u8]) -> Vec<u8> {
    Packet::new(proto::FXP_NAME, id)
        .u32(1)
        .bytes(name)
        .bytes(b"")
        .attrs(&Attrs::default())
        .finish()
}

/// What a hostile server sends instead of `reply` (the request was carried
/// out: only the answer misbehaves).
fn misbehave(h: Hostile, kind: u8, id: u32, mut reply: Vec<u8>) -> Out {
    match h {
        Hostile::Silent => Out::Nothing,
        Hostile::DropCarrier => Out::Last(Vec::new()),
        Hostile::Truncated => {
            reply[..4].copy_from_slice(&1000u32.to_be_bytes());
            Out::Last(reply)
        }
        Hostile::Garbage => {
            // Type 77 does not exist; then a STATUS whose fields stop short.
            let mut p = Packet::new(77, id).u32(0xdead_beef).finish();
            p.extend_from_slice(&[0, 0, 0, 6, proto::FXP_STATUS, 0, 0, 0, 0, 9]);
            Out::Reply(p)
        }
        Hostile::Oversized => Out::Reply(vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        Hostile::WrongIds => {
            reply[5..9].copy_from_slice(&id.wrapping_add(1_000_000).to_be_bytes());
            Out::Reply(reply)
        }
        Hostile::LyingSizes => Out::Reply(lie_about_sizes(reply)),
        Hostile::TraversalNames if kind == proto::FXP_READDIR => {
            Out::Reply(with_bad_names(id, reply))
        }
        Hostile::TraversalNames => Out::Reply(reply),
    }
}

/// A NAME reply with names that leave the directory put in front.
fn with_bad_names(id: u32, reply: Vec<u8>) -> Vec<u8> {
    let mut r = Reader::new(&reply[4..]);
    let (Ok(proto::FXP_NAME), Ok(_), Ok(n)) = (r.u8(), r.u32(), r.u32()) else {
        return reply;
    };
    let bad: [&[u8]; 6] = [b"..", b"../../etc", b"a/b", b"", b"x\0y", b"/etc/passwd"];
    let mut p = Packet::new(proto::FXP_NAME, id).u32(n + bad.len() as u32);
    for name in bad {
        p = p.bytes(name).bytes(b"").attrs(&file_attrs(3));
    }
    let mut out = p.finish();
    out.extend_from_slice(r.rest());
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// A reply rewritten to lie: sizes grow by 1 GiB, data by 16 bytes.
fn lie_about_sizes(reply: Vec<u8>) -> Vec<u8> {
    let Ok((id, decoded)) = proto::decode_reply(&reply[4..]) else {
        return reply;
    };
    let grow = |mut a: Attrs| {
        a.size = a.size.map(|s| s + (1 << 30));
        a
    };
    match decoded {
        proto::Reply::Attrs(a) => attrs_reply(id, &grow(a)),
        proto::Reply::Data(mut d) => {
            d.extend_from_slice(&[0xAA; 16]);
            Packet::new(proto::FXP_DATA, id).bytes(&d).finish()
        }
        proto::Reply::Name(names) => {
            let mut p = Packet::new(proto::FXP_NAME, id).u32(names.len() as u32);
            for n in names {
                p = p.bytes(&n.filename).bytes(b"").attrs(&grow(n.attrs));
            }
            p.finish()
        }
        _ => reply,
    }
}

/// One whole packet's body off the front of `buf`, if it holds one.
fn take_packet(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let len = u32::from_be_bytes(*buf.first_chunk::<4>()?) as usize;
    if buf.len() < 4 + len {
        return None;
    }
    let body = buf[4..4 + len].to_vec();
    buf.drain(..4 + len);
    Some(body)
}

/// How many whole packets `buf` holds.
fn count_packets(mut buf: &[u8]) -> usize {
    let mut n = 0;
    while let Some(h) = buf.first_chunk::<4>() {
        let len = u32::from_be_bytes(*h) as usize;
        if buf.len() < 4 + len {
            break;
        }
        buf = &buf[4 + len..];
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests;

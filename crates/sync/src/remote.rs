//! Listing a remote tree over SFTP: many directories in flight, one linear
//! READDIR loop each, lstat semantics (symlinks are not followed).
//!
//! Names from the server are not trusted: anything that is not a single plain
//! path component is reported and skipped.
//!
//! Also the remote operations a run repeats on a new session when the link
//! drops ([`on_session`]), and robosync's small state files at the
//! destination (the manifest copy, the lease): read whole, written under a
//! temp name and renamed into place.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use robosync_planner::{escape, Kind, Node, Tree};
use robosync_scanner::Filter;
use robosync_transport::{proto, Error, Pool, Sftp};
use tokio::task::JoinSet;

use crate::failure::{EntryError, Operation};
use crate::{join, os};

/// Name of robosync's own state directory at the destination root.
pub const STATE_DIR: &[u8] = b".robosync";
/// Temp files carry this marker: `.NAME.rbs-XXXXXXXX.part`.
pub const TEMP_MARK: &[u8] = b".rbs-";

pub use robosync_transport::client::safe_name;

pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(b".")
        && name.ends_with(b".part")
        && name.windows(TEMP_MARK.len()).any(|w| w == TEMP_MARK)
}

/// One directory's READDIR result, keyed by its relative path.
type DirListing = (Vec<u8>, Result<Vec<robosync_transport::proto::Name>, Error>);

#[derive(Default)]
pub struct Listing {
    pub tree: Tree,
    /// Leftover temp files (relative paths).
    pub temps: Vec<Vec<u8>>,
    /// Names refused or entries that could not be read.
    pub errors: Vec<EntryError>,
    /// The root itself does not exist (a push creates it; a pull has no source).
    pub root_missing: bool,
}

/// Where the walker gets its sessions: the run's [`Pool`], or (a unit test)
/// one in-memory session.
pub trait Sessions: Send + Sync + 'static {
    /// A live session.
    fn session(&self) -> impl std::future::Future<Output = Result<Arc<Sftp>, Error>> + Send;
    /// How many directories to keep in flight.
    fn listing_width(&self) -> usize;
    /// Who the sessions talk to, for messages.
    fn peer(&self) -> String;
}

impl Sessions for Pool {
    fn session(&self) -> impl std::future::Future<Output = Result<Arc<Sftp>, Error>> + Send {
        Pool::session(self)
    }

    // Across latency, many directories in flight hide the round trips.
    // Near, the server's CPU is the limit: a few per session keep each
    // busy, and leave the rest for sessions that join meanwhile.
    fn listing_width(&self) -> usize {
        if self.is_near() {
            8 * self.sessions().len().max(1)
        } else {
            32
        }
    }

    fn peer(&self) -> String {
        Pool::peer(self)
    }
}

/// Lists everything under `root` (remote path bytes). A missing root is an empty listing.
/// `only`: of the root's directories, descend into this one alone (a
/// single file's run needs nothing below its neighbours).
pub async fn list<S: Sessions>(
    pool: &Arc<S>,
    root: &[u8],
    max_entries: usize,
    only: Option<&[u8]>,
) -> Result<Listing, Error> {
    walk(pool, root, max_entries, only, vec![Vec::new()], |_| true).await
}

/// Lists the directories `start` (relative to `root`; the root is the
/// empty path) and, below them, each subdirectory `descend` accepts (with
/// what is below it, as `descend` decides again). The entries of the
/// listed directories only; `only`: see [`list`].
pub async fn walk<S: Sessions>(
    pool: &Arc<S>,
    root: &[u8],
    max_entries: usize,
    only: Option<&[u8]>,
    start: Vec<Vec<u8>>,
    descend: impl Fn(&[u8]) -> bool,
) -> Result<Listing, Error> {
    let mut out = Listing::default();
    // Collected, then built in one pass (see Tree::from_unsorted).
    let mut nodes: Vec<(PathBuf, Node)> = Vec::new();
    let mut tasks: JoinSet<DirListing> = JoinSet::new();
    let mut queue: Vec<Vec<u8>> = start;
    let mut symlinks = Vec::new();
    // Each directory in flight holds a handle: within what the server lets
    // one session hold (limits@openssh.com), half of it, so the lease and
    // the manifest copy opened meanwhile still fit; past it, OPENDIR fails.
    let handles = match pool.session().await {
        Ok(s) => s.limits.max_open_handles as usize,
        Err(e) => return Err(e),
    };
    loop {
        let mut in_flight = pool.listing_width();
        if handles > 0 {
            in_flight = in_flight.min((handles / 2).max(1));
        }
        while tasks.len() < in_flight {
            let Some(rel) = queue.pop() else { break };
            let pool = pool.clone();
            let abs = join(root, &rel);
            tasks.spawn(async move {
                let r = async {
                    let s = pool.session().await?;
                    s.list_dir(&abs).await
                }
                .await;
                (rel, r)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        let (rel, result) = done.expect("listing task panicked");
        let names = match result {
            Ok(n) => n,
            Err(Error::NoSuchFile(_)) if rel.is_empty() => {
                out.root_missing = true;
                continue;
            }
            // A server that breaks the protocol ends the run (exit 12).
            Err(e) if e.is_connection() || matches!(e, Error::Protocol { .. }) => return Err(e),
            Err(e) => {
                let msg = format!("cannot list {}: {e}", escape(&os(&join(root, &rel))));
                out.errors
                    .push(EntryError::at(&os(&rel), Operation::List, msg));
                continue;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for n in names {
            if !safe_name(&n.filename) || !seen.insert(n.filename.clone()) {
                let msg = format!(
                    "server sent an unsafe or duplicate name {:?} in {}: skipped",
                    escape(&os(&n.filename)),
                    escape(&os(&join(root, &rel)))
                );
                out.errors
                    .push(EntryError::at(&os(&rel), Operation::List, msg));
                continue;
            }
            if rel.is_empty() && n.filename == STATE_DIR {
                continue;
            }
            let path = join(&rel, &n.filename);
            if is_temp_name(&n.filename) {
                out.temps.push(path);
                continue;
            }
            let a = &n.attrs;
            let kind = if a.is_dir() {
                if (!rel.is_empty() || only.is_none_or(|o| o == &n.filename[..])) && descend(&path)
                {
                    queue.push(path.clone());
                }
                Kind::Dir
            } else if a.is_file() {
                Kind::File
            } else if a.is_symlink() {
                symlinks.push(path.clone());
                Kind::Symlink(PathBuf::new())
            } else {
                continue;
            };
            nodes.push((
                os(&path),
                Node {
                    kind,
                    size: a.size.unwrap_or(0),
                    mtime: a.mtime().unwrap_or(0) as i64,
                    mode: a.permissions.unwrap_or(0) & 0o7777,
                    whole: None,
                    blocks: Vec::new(),
                },
            ));
            if nodes.len() > max_entries {
                return Err(Error::Protocol {
                    peer: pool.peer(),
                    detail: format!(
                        "remote tree has more than {max_entries} entries; refusing to list further"
                    ),
                });
            }
        }
    }
    // Symlink targets, pipelined.
    let mut links = JoinSet::new();
    for rel in symlinks {
        let pool = pool.clone();
        let abs = join(root, &rel);
        links.spawn(async move {
            let r = async { pool.session().await?.readlink(&abs).await }.await;
            (rel, r)
        });
    }
    let mut tree = Tree::from_unsorted(nodes);
    while let Some(done) = links.join_next().await {
        let (rel, r) = done.expect("readlink task panicked");
        match r {
            Ok(t) => {
                if let Some(n) = tree.nodes.get_mut(&os(&rel)) {
                    n.kind = Kind::Symlink(os(&t));
                }
            }
            Err(e) => out.errors.push(EntryError::at(
                &os(&rel),
                Operation::Read,
                format!("cannot read link {}: {e}", escape(&os(&rel))),
            )),
        }
    }
    out.tree = tree;
    Ok(out)
}

/// A remote path as the user meant it, the way scp reads it: `~` and `~/x`
/// under the login directory, `~user/x` where the server can expand it
/// (expand-path@openssh.com), an empty path the login directory itself, and
/// anything else as given (relative paths start at the login directory).
pub async fn expand_home(s: &robosync_transport::Sftp, path: &[u8]) -> Result<Vec<u8>, Error> {
    if path.is_empty() {
        return Ok(b".".to_vec());
    }
    if !path.starts_with(b"~") {
        return Ok(path.to_vec());
    }
    if s.extensions.expand_path {
        return s.expand_path(path).await;
    }
    let (user, rest) = match path.iter().position(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (path, &b""[..]),
    };
    if user != b"~" {
        // A path the server cannot resolve, as a missing source (exit 23).
        return Err(Error::from_status(
            "expand",
            escape(&os(user)).as_bytes(),
            proto::FX_OP_UNSUPPORTED,
            "the server lacks expand-path@openssh.com: give the full path".into(),
        ));
    }
    // SFTP starts in the login directory.
    Ok(join(&s.realpath(b".").await?, rest))
}

/// `tree` without what the filter excludes (an excluded directory takes
/// its children): a pull's source.
pub fn included(tree: Tree, filter: &Filter) -> Tree {
    if filter.is_empty() {
        return tree;
    }
    let mut excluded: HashSet<PathBuf> = HashSet::new();
    let mut nodes = std::collections::BTreeMap::new();
    for (p, n) in tree.nodes {
        if p.ancestors().skip(1).any(|a| excluded.contains(a)) {
            continue;
        }
        if filter.includes(&p, n.kind == Kind::Dir) {
            nodes.insert(p, n);
        } else {
            excluded.insert(p);
        }
    }
    Tree {
        nodes,
        ..Tree::default()
    }
}

/// `dest` without what `--delete` must not touch, as rsync's receiver
/// decides: an entry the source lacks and the receiver filter excludes is
/// kept with everything below it (so are `pruned`, entries a scan with that
/// filter already left out), and a directory the source lacks that holds a
/// kept entry stays too ("cannot delete non-empty directory"). Entries the
/// source has are never deleted, whatever the filter says of them.
pub fn protected(mut dest: Tree, source: &Tree, receiver: &Filter, pruned: &[PathBuf]) -> Tree {
    if receiver.is_empty() && pruned.is_empty() {
        return dest;
    }
    let mut kept: HashSet<PathBuf> = pruned
        .iter()
        .filter(|p| !source.nodes.contains_key(*p))
        .cloned()
        .collect();
    for (p, n) in &dest.nodes {
        if source.nodes.contains_key(p) || p.ancestors().skip(1).any(|a| kept.contains(a)) {
            continue;
        }
        if !receiver.includes(p, n.kind == Kind::Dir) {
            kept.insert(p.clone());
        }
    }
    let holders: HashSet<PathBuf> = kept
        .iter()
        .flat_map(|k| k.ancestors().skip(1))
        .filter(|a| !source.nodes.contains_key(*a))
        .map(Path::to_path_buf)
        .collect();
    // A directory the source has as a file or symlink cannot make way.
    let is_dir = |p: &Path| source.nodes.get(p).is_some_and(|n| n.kind == Kind::Dir);
    dest.held.extend(
        kept.iter()
            .flat_map(|k| k.ancestors().skip(1))
            .filter(|a| source.nodes.contains_key(*a) && !is_dir(a))
            .map(Path::to_path_buf),
    );
    dest.nodes
        .retain(|p, _| !holders.contains(p) && !p.ancestors().any(|a| kept.contains(a)));
    dest
}

/// `--checksum`: the content hashes of the remote files `which` picks in
/// `tree` (paths under `root`), read back over SFTP, several files and
/// blocks in flight, and stored in their nodes, so the planner compares
/// content on both sides as rsync -c does. Files that cannot be read keep
/// no hash (the plan then goes by size and mtime) and are reported.
pub async fn hash_files(
    pool: &Arc<Pool>,
    root: &[u8],
    tree: &mut Tree,
    which: impl Fn(&std::path::Path, &Node) -> bool,
) -> Vec<EntryError> {
    use futures::stream::StreamExt;
    let wanted: Vec<(PathBuf, u64)> = tree
        .nodes
        .iter()
        .filter(|(p, n)| n.kind == Kind::File && which(p, n))
        .map(|(p, n)| (p.clone(), n.size))
        .collect();
    let results: Vec<_> = futures::stream::iter(wanted)
        .map(|(rel, size)| async move {
            let abs = join(root, rel.as_os_str().as_encoded_bytes());
            let r = async {
                let s = pool.session().await?;
                remote_digest(&s, &abs, size).await
            }
            .await;
            (rel, r)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut errors = Vec::new();
    for (rel, r) in results {
        match r {
            Ok(d) => {
                if let Some(n) = tree.nodes.get_mut(&rel) {
                    n.whole = Some(d.whole);
                    n.blocks = d.blocks;
                }
            }
            Err(e) => errors.push(EntryError::at(
                &rel,
                Operation::Read,
                format!("cannot read {} to checksum it: {e}", escape(&rel)),
            )),
        }
    }
    errors
}

/// The scanner's digest of a remote file of `size` bytes, read a block at a
/// time (never the whole file in memory). A file that ends early or grew
/// is an error: its content is not what was listed.
async fn remote_digest(
    s: &robosync_transport::Sftp,
    path: &[u8],
    size: u64,
) -> Result<robosync_scanner::Digest, Error> {
    use futures::stream::{StreamExt, TryStreamExt};
    use robosync_scanner::BLOCK_SIZE;
    let changed = || Error::Connect(format!("{} changed while it was read", escape(&os(path))));
    if size <= BLOCK_SIZE {
        let data = s.read_range(path, 0, size).await?;
        if data.len() as u64 != size {
            return Err(changed());
        }
        return Ok(robosync_scanner::hash_bytes(&data));
    }
    let blocks: Vec<[u8; 32]> = futures::stream::iter(0..size.div_ceil(BLOCK_SIZE))
        .map(|i| async move {
            let len = (size - i * BLOCK_SIZE).min(BLOCK_SIZE);
            let data = s.read_range(path, i * BLOCK_SIZE, len).await?;
            if data.len() as u64 != len {
                return Err(changed());
            }
            Ok(robosync_scanner::hash_block(&data, i, size))
        })
        .buffered(8)
        .try_collect()
        .await?;
    Ok(robosync_scanner::Digest {
        whole: robosync_scanner::whole_from_blocks(&blocks),
        blocks,
    })
}

/// The most entries a remote listing may hold before we call the server absurd.
pub const MAX_REMOTE_ENTRIES: usize = 50_000_000;

/// Lists the remote tree; when the link drops meanwhile, lists it again
/// from the start once the pool has reconnected (a listing changes nothing,
/// so starting over is safe).
/// `only`: see [`list`].
pub async fn list_remote(
    pool: &Arc<Pool>,
    root: &[u8],
    only: Option<&[u8]>,
) -> Result<Listing, Error> {
    on_session(pool, |_| list(pool, root, MAX_REMOTE_ENTRIES, only)).await
}

/// Runs `op`, which must be safe to repeat (it reads, or its changes are
/// idempotent), on a live session; when the link drops meanwhile, runs it
/// again once the pool has reconnected.
/// Gives up when reconnecting does (see [`Pool::repair`]) or after
/// [`RESTARTS`] drops in one operation.
pub async fn on_session<T, F, Fut>(pool: &Pool, op: F) -> Result<T, Error>
where
    F: Fn(Arc<robosync_transport::Sftp>) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut restarts = 0;
    loop {
        match op(pool.session().await?).await {
            Err(e) if e.is_connection() && restarts < RESTARTS => {
                restarts += 1;
                pool.repair().await?;
            }
            r => return r,
        }
    }
}

/// A link that drops this often during one operation will not let it finish.
const RESTARTS: usize = 10;

/// Reads a small remote file, or `None` if it cannot be read. Two round
/// trips: OPEN, then FSTAT and reads of the first 4 MiB in one flight
/// (reads past the end just answer EOF); a bigger file costs one more pass.
pub async fn read_small(s: &robosync_transport::Sftp, path: &[u8]) -> Option<Vec<u8>> {
    const AHEAD: u64 = 4 << 20;
    let h = s
        .open(
            path,
            robosync_transport::proto::FXF_READ,
            &Default::default(),
        )
        .await
        .ok()?;
    let chunk = s.limits.max_read.max(1) as u64;
    let reads = (0..AHEAD.div_ceil(chunk)).map(|k| s.read(&h, k * chunk, chunk as u32));
    let (attrs, parts) = futures::join!(s.fstat(&h), futures::future::join_all(reads));
    s.close_detached(&h);
    let size = attrs.ok()?.size?;
    if size > (4u64 << 30) {
        return None;
    }
    let mut out = Vec::with_capacity(size as usize);
    for p in parts {
        // A short read ends what the speculative reads can be trusted for.
        match p.ok()? {
            Some(bytes) if bytes.len() as u64 == chunk => out.extend_from_slice(&bytes),
            Some(bytes) => {
                out.extend_from_slice(&bytes);
                break;
            }
            None => break,
        }
    }
    if (out.len() as u64) < size {
        let rest = s
            .read_range(path, out.len() as u64, size - out.len() as u64)
            .await
            .ok()?;
        out.extend_from_slice(&rest);
    }
    (out.len() as u64 == size).then_some(out)
}

/// Writes a small remote file atomically (temp + rename) in three round
/// trips: OPEN (creating the directory only if that fails), WRITEs and CLOSE
/// as one ordered batch, RENAME.
pub async fn write_small(
    s: &robosync_transport::Sftp,
    path: &[u8],
    data: &[u8],
) -> Result<(), Error> {
    let h = open_small(s, path).await?;
    finish_small(s, &h, path, data).await
}

/// [`write_small`]'s first step: opens (empties) `path`'s temp file, making
/// its directory if missing. Returns the handle.
pub async fn open_small(s: &robosync_transport::Sftp, path: &[u8]) -> Result<Vec<u8>, Error> {
    use robosync_transport::proto::{FXF_CREAT, FXF_TRUNC, FXF_WRITE};
    let dir = &path[..path.iter().rposition(|&b| b == b'/').unwrap_or(0)];
    let flags = FXF_WRITE | FXF_CREAT | FXF_TRUNC;
    let tmp = small_tmp(path);
    let private = private_attrs(0o600);
    match s.open(&tmp, flags, &private).await {
        Ok(h) => Ok(h),
        Err(Error::NoSuchFile(_)) => {
            s.mkdir_p(dir).await?;
            s.open(&tmp, flags, &private).await
        }
        Err(e) => Err(e),
    }
}

/// [`write_small`]'s rest: `data` into the temp file opened as `h` on `s`,
/// then the temp file renamed over `path`.
pub async fn finish_small(
    s: &robosync_transport::Sftp,
    h: &[u8],
    path: &[u8],
    data: &[u8],
) -> Result<(), Error> {
    // FSETSTAT too: a temp left by an older run keeps its mode through OPEN.
    s.write_and_close(h, 0, data, Some(&private_attrs(0o600)))
        .await
        .map_err(|e| e.at_path(&small_tmp(path)))?;
    s.rename(&small_tmp(path), path).await
}

/// Attributes that set only the permission bits.
pub fn private_attrs(mode: u32) -> robosync_transport::proto::Attrs {
    robosync_transport::proto::Attrs {
        permissions: Some(mode),
        ..Default::default()
    }
}

pub fn small_tmp(path: &[u8]) -> Vec<u8> {
    [path, b".tmp"].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/etc", b"a\0b"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert!(safe_name(b"ok name \xff"));
    }

    #[test]
    fn temp_names_are_recognised() {
        assert!(is_temp_name(b".data.bin.rbs-0123abcd.part"));
        assert!(!is_temp_name(b"data.part"));
    }

    /// The walker against the in-memory SFTP server (crates/sftp, feature
    /// `testing`): one session, no sshd.
    mod walker {
        use super::*;
        use robosync_sftp::testing::{Hostile, MemFs, MemServer, ServerOptions};

        struct One(Arc<Sftp>);

        impl Sessions for One {
            async fn session(&self) -> Result<Arc<Sftp>, Error> {
                Ok(self.0.clone())
            }
            fn listing_width(&self) -> usize {
                32
            }
            fn peer(&self) -> String {
                "memory".into()
            }
        }

        async fn listing(fs: MemFs, opts: ServerOptions) -> (MemServer, Listing) {
            let (server, sftp) = MemServer::connect(fs, opts, Default::default())
                .await
                .unwrap();
            let one = Arc::new(One(Arc::new(sftp)));
            let l = list(&one, b"/src", MAX_REMOTE_ENTRIES, None).await.unwrap();
            (server, l)
        }

        fn paths(l: &Listing) -> Vec<String> {
            let mut v: Vec<String> = l.tree.nodes.keys().map(|p| escape(p)).collect();
            v.sort();
            v
        }

        #[tokio::test]
        async fn lists_300_directories_and_names_that_are_not_utf8() {
            let fs = MemFs::new();
            for i in 0..300 {
                fs.add_file(format!("/src/d{i:03}/f.txt").as_bytes(), b"x");
            }
            fs.add_file(b"/src/caf\xe9.txt", b"bytes");
            fs.add_symlink(b"/src/link", b"d000/f.txt");
            fs.add_file(b"/src/.robosync/manifest", b"ours");
            fs.add_file(b"/src/.f.txt.rbs-0123456789abcdef.part", b"temp");
            let (server, l) = listing(fs, ServerOptions::default()).await;
            assert!(l.errors.is_empty(), "{:?}", l.errors);
            // 300 directories, their files, the odd name and the link; not
            // robosync's state, and the temp file set apart.
            assert_eq!(l.tree.nodes.len(), 602, "{:?}", paths(&l));
            assert!(l.tree.nodes.contains_key(&os(b"caf\xe9.txt")));
            assert_eq!(
                l.tree.nodes[&os(b"link")].kind,
                Kind::Symlink(os(b"d000/f.txt"))
            );
            assert_eq!(l.temps, vec![b".f.txt.rbs-0123456789abcdef.part".to_vec()]);
            // Every directory handle was closed again.
            assert_eq!(server.open_handles(), 0);
        }

        /// More directories in flight (32) than the server lets one session
        /// hold open: the walker keeps to the session's handle limit.
        #[tokio::test]
        async fn a_server_with_few_handles_is_listed_whole() {
            let fs = MemFs::new();
            for i in 0..100 {
                fs.add_file(format!("/src/d{i:03}/f.txt").as_bytes(), b"x");
            }
            let opts = ServerOptions {
                max_handles: 8,
                ..Default::default()
            };
            let (_server, l) = listing(fs, opts).await;
            assert!(l.errors.is_empty(), "{:?}", l.errors);
            assert_eq!(l.tree.nodes.len(), 200);
        }

        #[tokio::test]
        async fn names_that_leave_the_directory_are_refused_and_reported() {
            let fs = MemFs::new();
            fs.add_file(b"/src/a.txt", b"a");
            fs.add_file(b"/src/d/b.txt", b"b");
            let opts = ServerOptions {
                hostile: Some(Hostile::TraversalNames),
                ..Default::default()
            };
            let (_server, l) = listing(fs, opts).await;
            assert_eq!(paths(&l), ["a.txt", "d", "d/b.txt"]);
            assert!(!l.errors.is_empty());
            for e in &l.errors {
                assert_eq!(e.operation, Operation::List, "{e:?}");
                assert!(e.message.contains("unsafe or duplicate name"), "{e:?}");
            }
        }

        #[tokio::test]
        async fn a_missing_root_lists_empty() {
            let (_server, l) = listing(MemFs::new(), ServerOptions::default()).await;
            assert!(l.root_missing);
            assert!(l.tree.nodes.is_empty());
        }
    }
}

//! Listing a remote tree over SFTP: many directories in flight, one linear
//! READDIR loop each, lstat semantics (symlinks are not followed).
//!
//! Names from the server are not trusted: anything that is not a single plain
//! path component is reported and skipped.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use robosync_planner::{escape, Kind, Node, Tree};
use robosync_scanner::Filter;
use robosync_transport::{proto, Error, Pool};
use tokio::task::JoinSet;

use crate::endpoint::{join, os};

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
    pub errors: Vec<String>,
    /// The root itself does not exist (a push creates it; a pull has no source).
    pub root_missing: bool,
}

/// Lists everything under `root` (remote path bytes). A missing root is an empty listing.
/// `only`: of the root's directories, descend into this one alone (a
/// single file's run needs nothing below its neighbours).
pub async fn list(
    pool: &Arc<Pool>,
    root: &[u8],
    max_entries: usize,
    only: Option<&[u8]>,
) -> Result<Listing, Error> {
    let mut out = Listing::default();
    // Collected, then built in one pass (see Tree::from_unsorted).
    let mut nodes: Vec<(PathBuf, Node)> = Vec::new();
    let mut tasks: JoinSet<DirListing> = JoinSet::new();
    let mut queue: Vec<Vec<u8>> = vec![Vec::new()];
    let mut symlinks = Vec::new();
    loop {
        // Across latency, many directories in flight hide the round trips.
        // Near, the server's CPU is the limit: a few per session keep each
        // busy, and leave the rest for sessions that join meanwhile.
        let in_flight = if pool.is_near() {
            8 * pool.sessions().len().max(1)
        } else {
            32
        };
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
                out.errors.push(format!(
                    "cannot list {}: {e}",
                    escape(&os(&join(root, &rel)))
                ));
                continue;
            }
        };
        let mut seen = std::collections::HashSet::new();
        for n in names {
            if !safe_name(&n.filename) || !seen.insert(n.filename.clone()) {
                out.errors.push(format!(
                    "server sent an unsafe or duplicate name {:?} in {}: skipped",
                    escape(&os(&n.filename)),
                    escape(&os(&join(root, &rel)))
                ));
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
                if !rel.is_empty() || only.is_none_or(|o| o == &n.filename[..]) {
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
                    peer: pool.target().peer(),
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
            Err(e) => out
                .errors
                .push(format!("cannot read link {}: {e}", escape(&os(&rel)))),
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
) -> Vec<String> {
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
            Err(e) => errors.push(format!("cannot read {} to checksum it: {e}", escape(&rel))),
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
        let data = crate::push::read_range(s, path, 0, size).await?;
        if data.len() as u64 != size {
            return Err(changed());
        }
        return Ok(robosync_scanner::hash_bytes(&data));
    }
    let blocks: Vec<[u8; 32]> = futures::stream::iter(0..size.div_ceil(BLOCK_SIZE))
        .map(|i| async move {
            let len = (size - i * BLOCK_SIZE).min(BLOCK_SIZE);
            let data = crate::push::read_range(s, path, i * BLOCK_SIZE, len).await?;
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
}

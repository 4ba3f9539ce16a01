//! Reruns that do not list what has not changed (push only).
//!
//! A clean push leaves a [`ListingRecord`] in the pair's state: the
//! destination's tree as that run left it, tied to the manifest it wrote.
//! The next push, when the destination's manifest copy and the local
//! manifest still hold that same content, stats every recorded directory
//! (many in flight) and lists only those whose type, mode or mtime moved;
//! the rest of the tree comes from the record. robosync sets every
//! directory's mtime after writing in it, and a create, delete or rename in
//! a directory changes its mtime, so an outside change of what a directory
//! holds shows. What it cannot see: a file edited in place, or replaced
//! keeping its directory's mtime (the directory's entries are unchanged),
//! and an outside change that puts the directory's mtime back. A directory
//! whose mtime was within [`RACY_SECONDS`] of the record's writing is
//! listed anyway (a change in that same second would not move it). Hence a full
//! listing every [`FULL_LISTING_EVERY`]th run or after
//! [`FULL_LISTING_AFTER`] seconds, with `--full-listing` or `--checksum`.
//!
//! A pull always lists its source in full: there, the remote is the
//! source, and a file edited in place must be seen.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::stream::StreamExt;
use robosync_manifest::{ListedEntry, ListedKind, ListingRecord, Manifest};
use robosync_planner::{Action, Kind, Node, Tree};
use robosync_transport::{Error, Pool};

use crate::remote::{walk, Listing, MAX_REMOTE_ENTRIES};
use crate::{join, os, Options};

/// At most this many runs in a row trust the record: the next lists in full.
pub const FULL_LISTING_EVERY: u32 = 10;
/// Nor is a record older than this (seconds since its full listing) trusted.
pub const FULL_LISTING_AFTER: i64 = 7 * 24 * 3600;
/// A directory whose recorded mtime is within this many seconds of the
/// record's writing is listed anyway (git's "racy" timestamps): SFTP v3
/// mtimes are whole seconds, so an outside change in the same second as a
/// fresh source directory's mtime would leave it unchanged, and the
/// server's clock may be a little off ours.
pub const RACY_SECONDS: i64 = 5;
/// Directory stats in flight across the pool's sessions: one round trip
/// confirms this many directories.
const STATS_IN_FLIGHT: usize = 512;

/// Why this push lists its destination in full, or the record it may
/// confirm instead.
pub fn full_listing_reason(
    args: &Options,
    record: Option<ListingRecord>,
    now_unix: i64,
) -> Result<ListingRecord, String> {
    if args.full_listing {
        return Err("--full-listing".into());
    }
    if args.checksum {
        return Err("--checksum".into());
    }
    if args.backup_dir.is_some() {
        return Err("--backup-dir".into());
    }
    let Some(record) = record else {
        return Err("no record of the destination from a clean run".into());
    };
    if record.quick_runs + 1 >= FULL_LISTING_EVERY {
        return Err(format!(
            "the periodic full listing: every {FULL_LISTING_EVERY}th run"
        ));
    }
    if now_unix.saturating_sub(record.full_at_unix) >= FULL_LISTING_AFTER {
        return Err(format!(
            "the periodic full listing: {} days since the last",
            FULL_LISTING_AFTER / 86_400
        ));
    }
    Ok(record)
}

/// Whether the destination's manifest copy (as read this run) holds the
/// content the record was written with.
pub fn copy_agrees(record: &ListingRecord, copy: Option<&[u8]>) -> bool {
    copy.and_then(|b| Manifest::decode(b).ok())
        .is_some_and(|m| record.matches(&m))
}

/// A destination confirmed against the record.
pub struct Confirmed {
    /// The tree: the record's, with the changed directories listed afresh.
    pub listing: Listing,
    /// Directories stated.
    pub dirs: usize,
    /// Of those, listed again (their mtime, mode or type moved), and the
    /// new directories found in them.
    pub listed: usize,
}

/// Stats every directory of `record` under `root` and lists those that
/// changed (with any new directory below them). `None` when a recorded
/// directory is gone or no longer a directory: only a full listing can
/// say what took its place.
pub async fn confirm(
    pool: &Arc<Pool>,
    root: &[u8],
    record: &ListingRecord,
) -> Result<Option<Confirmed>, Error> {
    let dirs: Vec<&ListedEntry> = record
        .entries
        .iter()
        .filter(|e| e.kind == ListedKind::Dir)
        .collect();
    // Owned items: a stream of borrowed ones makes the future not Send-general.
    let stats: Vec<_> = futures::stream::iter(0..dirs.len())
        .map(|i| {
            let (path, mtime, mode) = (dirs[i].path.clone(), dirs[i].mtime, dirs[i].mode);
            async move {
                let r = async { pool.session().await?.lstat(&join(root, &path)).await }.await;
                (path, mtime, mode, r)
            }
        })
        .buffer_unordered(STATS_IN_FLIGHT)
        .collect()
        .await;
    let mut changed = Vec::new();
    for (path, mtime, mode, r) in stats {
        match r {
            Ok(a) if a.is_dir() => {
                let now = a.permissions.unwrap_or(0) & 0o7777;
                let seen = a.mtime().map_or(0, i64::from);
                let racy = mtime >= record.recorded_at_unix - RACY_SECONDS;
                if seen != mtime || now != mode || racy {
                    changed.push((path, seen, now));
                }
            }
            Err(e) if e.is_connection() || matches!(e, Error::Protocol { .. }) => return Err(e),
            _ => return Ok(None),
        }
    }
    let known: HashSet<&[u8]> = dirs.iter().map(|d| &d.path[..]).collect();
    let start = changed.iter().map(|c| c.0.clone()).collect();
    let fresh = walk(pool, root, MAX_REMOTE_ENTRIES, None, start, |p| {
        !known.contains(p)
    })
    .await?;
    let new_dirs = fresh
        .tree
        .nodes
        .iter()
        .filter(|(p, n)| n.kind == Kind::Dir && !known.contains(p.as_os_str().as_bytes()))
        .count();
    let listed = changed.len() + new_dirs;
    let mut tree = recorded_tree(record);
    let changed: HashMap<PathBuf, (i64, u32)> = changed
        .into_iter()
        .map(|(p, mtime, mode)| (os(&p), (mtime, mode)))
        .collect();
    // What the changed directories held is what they hold now, and they
    // are as their stat showed them (a mode or mtime set outside is seen).
    tree.nodes
        .retain(|p, _| !p.parent().is_some_and(|d| changed.contains_key(d)));
    tree.nodes.extend(fresh.tree.nodes);
    for (p, (mtime, mode)) in &changed {
        if let Some(n) = tree.nodes.get_mut(p) {
            (n.mtime, n.mode) = (*mtime, *mode);
        }
    }
    // Nothing below a directory that is no longer there.
    let mut dirs_now: HashSet<PathBuf> = HashSet::from([PathBuf::new()]);
    tree.nodes.retain(|p, n| {
        let under = p.parent().is_some_and(|d| dirs_now.contains(d));
        if under && n.kind == Kind::Dir {
            dirs_now.insert(p.clone());
        }
        under
    });
    Ok(Some(Confirmed {
        listing: Listing {
            tree,
            temps: fresh.temps,
            errors: fresh.errors,
            root_missing: false,
        },
        dirs: dirs.len(),
        listed,
    }))
}

/// The record's tree, without the root (a listing never holds it).
fn recorded_tree(record: &ListingRecord) -> Tree {
    Tree::from_unsorted(
        record
            .entries
            .iter()
            .filter(|e| !e.path.is_empty())
            .map(|e| {
                let kind = match &e.kind {
                    ListedKind::File => Kind::File,
                    ListedKind::Dir => Kind::Dir,
                    ListedKind::Symlink(t) => Kind::Symlink(os(t)),
                };
                let node = Node {
                    kind,
                    size: e.size,
                    mtime: e.mtime,
                    mode: e.mode,
                    whole: None,
                    blocks: Vec::new(),
                };
                (os(&e.path), node)
            })
            .collect(),
    )
}

/// What a push's destination holds once `actions` all landed: the
/// destination as seen (`dest`, unfiltered) with each action's source node
/// in place (a file's size and mtime as the server shows them after
/// landing are taken from the manifest when recording), the removals gone,
/// and every source directory with the source's mode and mtime (the
/// executor sets them last). Whole seconds, clamped as SFTP v3 sends them.
pub fn tree_after(mut dest: Tree, source: &Tree, actions: &[Action]) -> Tree {
    let sent = |n: &Node| Node {
        kind: n.kind.clone(),
        size: n.size,
        mtime: n.mtime.clamp(0, u32::MAX as i64),
        mode: n.mode & 0o7777,
        whole: None,
        blocks: Vec::new(),
    };
    for a in actions {
        let p = a.path();
        match a {
            Action::Delete { .. } => {
                dest.nodes.retain(|q, _| !q.starts_with(p));
            }
            _ => match source.nodes.get(p) {
                Some(n) => {
                    dest.nodes.insert(p.to_path_buf(), sent(n));
                }
                None => {
                    dest.nodes.remove(p);
                }
            },
        }
    }
    for (p, n) in &source.nodes {
        if n.kind == Kind::Dir && !p.as_os_str().is_empty() {
            dest.nodes.insert(p.clone(), sent(n));
        }
    }
    dest.nodes.remove(Path::new(""));
    dest
}

/// The record of a clean push: `after` (see [`tree_after`]) with the
/// landed files as the manifest saw them, and the root's attributes.
/// `quick`: the record this run confirmed instead of a full listing.
pub fn record_of(
    after: &Tree,
    root: (i64, u32),
    manifest: &Manifest,
    quick: Option<&ListingRecord>,
    now_unix: i64,
) -> ListingRecord {
    let mut entries = Vec::with_capacity(after.nodes.len() + 1);
    entries.push(ListedEntry {
        path: Vec::new(),
        kind: ListedKind::Dir,
        size: 0,
        mtime: root.0,
        mode: root.1,
    });
    for (p, n) in &after.nodes {
        let path = p.as_os_str().as_bytes();
        let (kind, mut size, mut mtime) = match &n.kind {
            Kind::File => (ListedKind::File, n.size, n.mtime),
            Kind::Dir => (ListedKind::Dir, n.size, n.mtime),
            Kind::Symlink(t) => (
                ListedKind::Symlink(t.as_os_str().as_bytes().to_vec()),
                n.size,
                n.mtime,
            ),
        };
        if kind == ListedKind::File {
            if let Some(r) = manifest.files.get(path) {
                (size, mtime) = (r.remote_size, r.remote_mtime);
            }
        }
        entries.push(ListedEntry {
            path: path.to_vec(),
            kind,
            size,
            mtime,
            mode: n.mode,
        });
    }
    ListingRecord {
        manifest_digest: manifest.content_digest(),
        quick_runs: quick.map_or(0, |r| r.quick_runs + 1),
        full_at_unix: quick.map_or(now_unix, |r| r.full_at_unix),
        recorded_at_unix: now_unix,
        entries,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(kind: Kind, size: u64, mtime: i64) -> Node {
        Node {
            kind,
            size,
            mtime,
            mode: 0o755,
            whole: None,
            blocks: Vec::new(),
        }
    }

    fn tree(nodes: &[(&str, Node)]) -> Tree {
        Tree::from_unsorted(
            nodes
                .iter()
                .map(|(p, n)| (PathBuf::from(p), n.clone()))
                .collect(),
        )
    }

    #[test]
    fn the_tree_after_a_push_has_the_sources_entries_and_keeps_what_stayed() {
        let source = tree(&[
            ("d", node(Kind::Dir, 0, 20)),
            ("d/new", node(Kind::File, 3, 21)),
            ("same", node(Kind::File, 1, 5)),
        ]);
        let dest = tree(&[
            ("d", node(Kind::Dir, 0, 99)),
            ("d/gone", node(Kind::Dir, 0, 1)),
            ("d/gone/x", node(Kind::File, 1, 1)),
            ("same", node(Kind::File, 1, 5)),
            ("extra", node(Kind::File, 7, 7)),
        ]);
        let actions = [
            Action::Copy {
                path: "d/new".into(),
                size: 3,
                reason: robosync_planner::Reason::New,
            },
            Action::Delete {
                path: "d/gone".into(),
                dir: true,
            },
        ];
        let after = tree_after(dest, &source, &actions);
        let paths: Vec<_> = after.nodes.keys().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(paths, ["d", "d/new", "extra", "same"]);
        assert_eq!(after.nodes[Path::new("d")].mtime, 20);
        assert_eq!(after.nodes[Path::new("d/new")].size, 3);

        let mut m = Manifest::default();
        m.files.insert(
            b"d/new".to_vec(),
            robosync_manifest::Record {
                size: 3,
                mtime_ns: 21_000_000_000,
                mode: 0o644,
                whole: [0; 32],
                blocks: Vec::new(),
                remote_size: 3,
                remote_mtime: 22,
            },
        );
        let r = record_of(&after, (30, 0o700), &m, None, 1000);
        assert_eq!(r.entries[0].path, b"");
        assert_eq!((r.entries[0].mtime, r.entries[0].mode), (30, 0o700));
        let new = r.entries.iter().find(|e| e.path == b"d/new").unwrap();
        assert_eq!(new.mtime, 22, "the server's mtime after landing");
        assert_eq!((r.quick_runs, r.full_at_unix), (0, 1000));
        let again = record_of(&after, (30, 0o700), &m, Some(&r), 2000);
        assert_eq!((again.quick_runs, again.full_at_unix), (1, 1000));
        assert_eq!(recorded_tree(&again).nodes, after_with_22(after));
    }

    fn after_with_22(mut t: Tree) -> std::collections::BTreeMap<PathBuf, Node> {
        t.nodes.get_mut(Path::new("d/new")).unwrap().mtime = 22;
        t.nodes
    }

    #[test]
    fn a_record_is_trusted_for_nine_runs_and_seven_days() {
        let args = Options::default();
        let r = |quick_runs, full_at_unix| {
            Some(ListingRecord {
                quick_runs,
                full_at_unix,
                ..Default::default()
            })
        };
        let now = 10 * FULL_LISTING_AFTER;
        assert!(full_listing_reason(&args, r(0, now), now).is_ok());
        assert!(full_listing_reason(&args, r(8, now), now).is_ok());
        assert!(full_listing_reason(&args, r(9, now), now).is_err());
        assert!(full_listing_reason(&args, r(0, now - FULL_LISTING_AFTER + 1), now).is_ok());
        assert!(full_listing_reason(&args, r(0, now - FULL_LISTING_AFTER), now).is_err());
        assert!(full_listing_reason(&args, None, now).is_err());
        for (full_listing, checksum) in [(true, false), (false, true)] {
            let args = Options {
                full_listing,
                checksum,
                ..Options::default()
            };
            assert!(full_listing_reason(&args, r(0, now), now).is_err());
        }
    }
}

//! Directory attributes: which directories the destination already holds
//! right (left alone), and which a plan's actions disturb (set again after).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use robosync_planner::{Action, Kind, Tree};

use crate::Direction;

/// Permission bits the destination gets: a pull never sets setuid/setgid
/// from a server.
pub fn mode_mask(direction: Direction) -> u32 {
    match direction {
        Direction::Push => 0o7777,
        Direction::Pull => 0o1777,
    }
}

/// Directories the destination already holds with the source's mode and
/// mtime (whole seconds, as SFTP v3 carries them): their attributes are
/// left alone unless something inside them changes.
pub fn dirs_in_place(source: &Tree, dest: &Tree, direction: Direction) -> HashSet<PathBuf> {
    let mask = mode_mask(direction);
    source
        .nodes
        .iter()
        .filter(|(_, s)| s.kind == Kind::Dir)
        .filter(|(p, s)| {
            dest.nodes.get(*p).is_some_and(|d| {
                d.kind == Kind::Dir && d.mode == s.mode & mask && d.mtime == s.mtime
            })
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// Directories whose attributes `actions` may disturb: new ones, and those
/// where something is created, renamed or removed.
pub fn dirs_touched(actions: &[Action]) -> HashSet<PathBuf> {
    actions
        .iter()
        .flat_map(|a| {
            let here = matches!(a, Action::Mkdir { .. }).then(|| a.path().to_path_buf());
            let parent = a.path().parent().map(Path::to_path_buf);
            here.into_iter().chain(parent)
        })
        .collect()
}

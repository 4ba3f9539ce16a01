use std::collections::HashSet;
use std::path::Path;

use robosync_manifest::{pick_newer, state_paths, Choice, Manifest};

use crate::util::{manifest, path, record};

#[test]
fn state_paths_are_stable_and_readable() {
    let a = state_paths(Path::new("/state"), "/data/run42", "robot01:/srv/mirror");
    let b = state_paths(Path::new("/state"), "/data/run42", "robot01:/srv/mirror");
    assert_eq!(a, b);
    assert_eq!(a.dir.parent(), Some(Path::new("/state")));
    assert_eq!(a.manifest, a.dir.join("manifest"));
    assert_eq!(a.journal, a.dir.join("journal"));
    assert_eq!(a.stat_cache, a.dir.join("stat-cache"));
    let key = a.dir.file_name().unwrap().to_str().unwrap();
    // Pinned: moving state between versions would lose every pair's state.
    assert_eq!(key, {
        let h = blake3::hash(b"/data/run42\0robot01:/srv/mirror").to_hex();
        format!("{}-data_run42--robot01_srv_mirror", &h[..32])
    });
}

#[test]
fn state_paths_differ_for_different_pairs() {
    let pairs = [
        ("/data/a", "robot01:/srv/m"),
        ("/data/a", "robot02:/srv/m"),
        ("/data/b", "robot01:/srv/m"),
        ("/data/a/", "robot01:/srv/m"),
        ("robot01:/srv/m", "/data/a"),
        ("/data a", "robot01:/srv/m"), // same sanitized suffix as "/data/a"
        ("", ""),
        ("/ünïcode/ダ", "h:/x"),
    ];
    let dirs: HashSet<_> = pairs
        .iter()
        .map(|(s, d)| state_paths(Path::new("/st"), s, d).dir)
        .collect();
    assert_eq!(dirs.len(), pairs.len());
    for d in &dirs {
        let name = d.file_name().unwrap().to_str().unwrap();
        assert!(name.len() <= 32 + 1 + 48, "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{name}"
        );
    }
}

fn at(unix: i64, run_id: u64) -> Manifest {
    let mut m = manifest(2);
    m.written_at_unix = unix;
    m.run_id = run_id;
    m
}

#[test]
fn pick_newer_with_missing_copies() {
    assert_eq!(pick_newer(None, None), (None, Choice::Neither));
    assert_eq!(
        pick_newer(Some(at(5, 1)), None),
        (Some(at(5, 1)), Choice::OnlyLocal)
    );
    let (m, c) = pick_newer(None, Some(at(5, 1)));
    assert_eq!((m, c), (Some(at(5, 1)), Choice::OnlyRemote));
    assert!(c.is_remote());
}

#[test]
fn pick_newer_prefers_time_then_run_id() {
    let (m, c) = pick_newer(Some(at(10, 1)), Some(at(20, 0)));
    assert_eq!((m.unwrap().written_at_unix, c), (20, Choice::RemoteNewer));
    let (m, c) = pick_newer(Some(at(30, 0)), Some(at(20, 9)));
    assert_eq!((m.unwrap().written_at_unix, c), (30, Choice::LocalNewer));
    let (m, c) = pick_newer(Some(at(20, 3)), Some(at(20, 4)));
    assert_eq!((m.unwrap().run_id, c), (4, Choice::RemoteNewer));
    let (m, c) = pick_newer(Some(at(20, 5)), Some(at(20, 4)));
    assert_eq!((m.unwrap().run_id, c), (5, Choice::LocalNewer));
}

#[test]
fn pick_newer_identical_and_tie() {
    assert_eq!(
        pick_newer(Some(at(7, 7)), Some(at(7, 7))),
        (Some(at(7, 7)), Choice::Identical)
    );
    let mut local = at(7, 7);
    local.files.insert(path(100), record(100));
    let (m, c) = pick_newer(Some(local.clone()), Some(at(7, 7)));
    assert_eq!((m, c), (Some(local), Choice::Tie));
    assert!(c.to_string().contains("local"));
    assert!(!c.is_remote());
}

//! Issue 16: push and pull are one run (crates/sync), so they agree: the
//! phases `-vv` shows, directories left alone when already right, files
//! found already in place adopted into the manifest. Each agreement is
//! checked in both directions.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use robosync_manifest::Manifest;

use crate::util::*;

#[derive(Clone, Copy, Debug)]
enum Way {
    Push,
    Pull,
}

const WAYS: [Way; 2] = [Way::Push, Way::Pull];

/// A source tree and an empty destination for `way`, with the two
/// arguments that sync one into the other (the contents form).
struct Pair {
    _t: tempfile::TempDir,
    src: PathBuf,
    dest: PathBuf,
    state: PathBuf,
    args: [String; 2],
}

fn pair(sshd: &Sshd, way: Way, name: &str) -> Pair {
    let t = tempdir();
    let state = t.path().join("state");
    let (src, dest) = match way {
        Way::Push => (t.path().join("src"), sshd.mkdir(&format!("{name}-dest"))),
        Way::Pull => (sshd.mkdir(&format!("{name}-src")), t.path().join("dest")),
    };
    sample_tree(&src);
    let args = match way {
        Way::Push => [contents(&src), remote(&dest)],
        Way::Pull => [remote(&src), dest.display().to_string()],
    };
    Pair {
        _t: t,
        src,
        dest,
        state,
        args,
    }
}

fn sync(sshd: &Sshd, p: &Pair, extra: &[&str]) -> Ran {
    run(robosync(sshd, &p.state).args(extra).args(&p.args)).success()
}

/// Every directory under `root` (itself included) with its ctime: setting a
/// directory's mode or times changes it, even to the same values.
fn dir_ctimes(root: &Path) -> Vec<(PathBuf, i64, i64)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let m = fs::symlink_metadata(&d).unwrap();
        out.push((d.clone(), m.ctime(), m.ctime_nsec()));
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() && e.file_name() != ".robosync" {
                todo.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The phase names of a `-vv` run's `[  1.234 s] NAME` lines, in order.
fn phases(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split_once(" s] "))
        .map(|(_, name)| name.to_string())
        .collect()
}

#[test]
fn push_and_pull_show_the_same_phases_under_vv() {
    let sshd = Sshd::start();
    let mut seen = Vec::new();
    for way in WAYS {
        let p = pair(&sshd, way, "phases");
        let ran = sync(&sshd, &p, &["-vv"]);
        seen.push((way, phases(&ran.stderr()), ran.stderr()));
    }
    // The remote listing starts with the connection and overlaps the scan;
    // "listing the destination" is the wait for what remains of it.
    let expected = [
        "connecting",
        "scanning",
        "listing the destination",
        "planning",
        "transferring",
        "recording",
        "closing",
    ];
    for (way, names, stderr) in &seen {
        let fits = names.iter().map(String::as_str).eq(expected);
        assert!(fits, "{way:?} -vv phases {names:?}; stderr:\n{stderr}");
    }
}

#[test]
fn a_rerun_leaves_directories_that_are_already_right_alone() {
    let sshd = Sshd::start();
    for way in WAYS {
        let p = pair(&sshd, way, "dirs");
        sync(&sshd, &p, &[]);
        assert_same_tree(&p.src, &p.dest);
        let before = dir_ctimes(&p.dest);
        let again = sync(&sshd, &p, &["--json"]);
        assert_eq!(again.json()["files_transferred"], 0, "{way:?}");
        assert_eq!(
            dir_ctimes(&p.dest),
            before,
            "{way:?}: a rerun with nothing to do re-set directory attributes"
        );
        // A directory whose mode changed at the destination is set again.
        let a = p.dest.join("a");
        fs::set_permissions(&a, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        sync(&sshd, &p, &[]);
        assert_same_tree(&p.src, &p.dest);
    }
}

#[test]
fn files_already_in_place_are_adopted_into_the_manifest() {
    let sshd = Sshd::start();
    for way in WAYS {
        let p = pair(&sshd, way, "adopt");
        sync(&sshd, &p, &[]);
        let copy = p.dest.join(".robosync/manifest");
        let files = |m: &Manifest| m.files.len();
        let first = Manifest::decode(&fs::read(&copy).unwrap()).unwrap();
        assert!(files(&first) > 0, "{way:?}");
        // Forget everything robosync knew: the files are still in place.
        fs::remove_dir_all(&p.state).unwrap();
        fs::remove_file(&copy).unwrap();
        let again = sync(&sshd, &p, &["--json"]);
        assert_eq!(again.json()["files_transferred"], 0, "{way:?}");
        let adopted = Manifest::decode(&fs::read(&copy).unwrap()).unwrap();
        assert_eq!(
            adopted.files.keys().collect::<Vec<_>>(),
            first.files.keys().collect::<Vec<_>>(),
            "{way:?}: files found in place were not recorded"
        );
        for (k, r) in &adopted.files {
            assert_eq!(r.whole, first.files[k].whole, "{way:?}");
        }
    }
}

/// An entry's failure reaches `--json` typed where it happened (path and
/// operation), not read back out of the message: a name holding ": " is
/// kept whole (reading the message cut it there).
#[test]
fn json_errors_carry_the_entry_and_operation_the_engine_typed() {
    use std::os::unix::fs::PermissionsExt;
    let sshd = Sshd::builder().unprivileged(true).start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("ok.txt"), b"fine\n");
    write(&src.join("a: b/sub/x.txt"), b"refused\n");
    let dest = sshd.mkdir("typed-dest");
    fs::create_dir(dest.join("a: b")).unwrap();
    for d in [src.join("a: b"), dest.join("a: b")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let ran = run(robosync(&sshd, &t.path().join("state"))
        .arg("--json")
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(ran.code(), 23, "{}", ran.stderr());
    assert_eq!(fs::read(dest.join("ok.txt")).unwrap(), b"fine\n");
    let json = ran.json();
    let errors = json["errors"].as_array().unwrap();
    let mkdir = errors
        .iter()
        .find(|e| e["operation"] == "create directory")
        .unwrap_or_else(|| panic!("no create-directory error: {json}"));
    assert_eq!(mkdir["path"], "a: b/sub", "{json}");
    assert_eq!(mkdir["kind"], "entry", "{json}");
    for e in errors {
        assert!(
            e["path"].is_string(),
            "an entry error without its path: {json}"
        );
    }
}

/// Issue 18: with `-v`, one line per connection and per channels added,
/// from the pool's typed events; without it, none.
#[test]
fn verbose_shows_one_line_per_connection_both_ways() {
    let sshd = Sshd::start();
    for way in WAYS {
        let p = pair(&sshd, way, "conns");
        let ran = sync(&sshd, &p, &["-v", "--connections", "2", "--channels", "2"]);
        let stderr = ran.stderr();
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("connection #"))
            .collect();
        assert!(
            lines.contains(&"connection #1: 1 SFTP channel"),
            "{way:?}: {stderr}"
        );
        // Logging out at the end loses nothing.
        assert!(!stderr.contains(" lost"), "{way:?}: {stderr}");
        let p = pair(&sshd, way, "quiet-conns");
        let ran = sync(&sshd, &p, &[]);
        assert!(
            !ran.stderr().contains("connection #"),
            "{way:?}: {}",
            ran.stderr()
        );
    }
}

//! Issue 18: `robosync state list` and `robosync state clean`: the local
//! state of each (source, destination) pair, listed, and removed when old
//! or named, never while a run holds it.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

fn state_cmd(state: &Path, args: &[&str]) -> Ran {
    run(Command::new(env!("CARGO_BIN_EXE_robosync"))
        .arg("state")
        .args(args)
        .arg("--state-dir")
        .arg(state))
}

/// The pair directories under `state`.
fn pair_dirs(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && p.file_name().unwrap() != "locks")
        .collect();
    v.sort();
    v
}

/// Dates every file of a pair's state `days` back, as if its last run were then.
fn age(dir: &Path, days: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for e in fs::read_dir(dir).unwrap() {
        set_mtime(&e.unwrap().path(), now - days * 86_400);
    }
}

/// The listing's line for the pair whose route contains `needle`.
#[track_caller]
fn line<'a>(listing: &'a str, needle: &str) -> &'a str {
    listing
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{listing}"))
}

/// A source of two files pushed to the sshd's `dest` and pulled back into
/// `back`, with the state in `state`: the paths `(src, dest, back, state)`
/// under `t`.
fn push_and_pull(sshd: &Sshd, t: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let (src, back, state) = (t.join("src"), t.join("back"), t.join("state"));
    write(&src.join("a/one.txt"), b"one\n");
    write(&src.join("big.bin"), &bytes(300 << 10, 1));
    let dest = sshd.mkdir("dest");
    run(robosync(sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    run(robosync(sshd, &state).arg(remote(&dest)).arg(&back)).success();
    (src, dest, back, state)
}

#[test]
fn state_list_names_each_pair_after_a_push_and_a_pull() {
    let sshd = Sshd::start();
    let t = tempdir();
    let (src, dest, back, state) = push_and_pull(&sshd, t.path());

    let ran = state_cmd(&state, &["list"]).success();
    let out = ran.stdout();
    assert!(out.starts_with("KEY"), "{out}");
    assert_eq!(out.lines().count(), 3, "a header and two pairs:\n{out}");
    let src_abs = fs::canonicalize(&src).unwrap();
    // A push's destination as the run records it: without the slash.
    let push = line(
        &out,
        &format!(
            "{} -> {}",
            src_abs.display(),
            remote(&dest).trim_end_matches('/')
        ),
    );
    assert!(push.contains(" push "), "{push}");
    assert!(push.contains(" ok "), "{push}");
    assert!(push.contains(" ago)"), "the last run, dated: {push}");
    let back_abs = fs::canonicalize(&back).unwrap();
    let pull = line(
        &out,
        &format!("{} -> {}", remote(&dest), back_abs.display()),
    );
    assert!(pull.contains(" pull "), "{pull}");
    assert!(!out.contains("locked"), "{out}");
    // The key's first 12 digits name its directory.
    for l in [push, pull] {
        let key = l.split_whitespace().next().unwrap();
        assert_eq!(key.len(), 12);
        assert!(pair_dirs(&state).iter().any(|d| d
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(key)));
    }

    // No state yet: nothing listed, said on stderr, success.
    let empty = state_cmd(&t.path().join("none"), &["list"]).success();
    assert_eq!(empty.stdout(), "");
    assert!(empty.stderr().contains("no pairs"), "{}", empty.stderr());
}

#[test]
fn state_list_says_a_run_was_interrupted() {
    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port);
    let config = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let (src, state) = (t.path().join("src"), t.path().join("state"));
    let size = 24 << 20;
    write(&src.join("big.bin"), &bytes(size, 3));
    let dest = sshd.mkdir("dest");
    let mut push = robosync_with(&config, &state);
    push.arg(contents(&src)).arg(remote(&dest));
    assert!(
        kill_when(&mut push, || proxy.stats().up, (size / 2) as u64),
        "the push finished before it could be killed"
    );
    let out = state_cmd(&state, &["list"]).success().stdout();
    assert!(line(&out, " push ").contains("interrupted"), "{out}");
    // The rerun resumes and ends it.
    run(robosync_with(&config, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    let out = state_cmd(&state, &["list"]).success().stdout();
    assert!(!out.contains("interrupted"), "{out}");
}

#[test]
fn state_clean_previews_removes_old_state_keeps_a_locked_pair_and_the_next_run_works() {
    let sshd = Sshd::start();
    let t = tempdir();
    let (src, dest, back, state) = push_and_pull(&sshd, t.path());
    let dirs = pair_dirs(&state);
    assert_eq!(dirs.len(), 2);
    let before = snapshot(&state);

    // Young state: the default age (90 days) keeps both.
    let kept = state_cmd(&state, &["clean"]).success();
    assert!(kept.stdout().contains("freed 0 pairs"), "{}", kept.stdout());
    assert_eq!(snapshot(&state), before);

    // Both a year old; a live run (its flock) holds the pull's.
    for d in &dirs {
        age(d, 365);
    }
    let listing = state_cmd(&state, &["list"]).success().stdout();
    let pull_key = line(&listing, " pull ").split_whitespace().next().unwrap();
    let pull_dir = dirs
        .iter()
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(pull_key)
        })
        .unwrap()
        .clone();
    let push_dir = dirs.iter().find(|d| **d != pull_dir).unwrap().clone();
    let lock = fs::File::open(pull_dir.join("lock")).unwrap();
    // SAFETY: flock on a descriptor `lock` owns.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let listing = state_cmd(&state, &["list"]).success().stdout();
    assert!(line(&listing, " pull ").contains("locked"), "{listing}");

    // -n: says what would go, removes nothing.
    let before = snapshot(&state);
    let dry = state_cmd(&state, &["clean", "-n"]).success().stdout();
    assert!(dry.contains("would remove: "), "{dry}");
    assert!(dry.contains("kept (a running robosync holds it)"), "{dry}");
    assert!(dry.contains("would free 1 pair "), "{dry}");
    assert_eq!(snapshot(&state), before);

    let done = state_cmd(&state, &["clean"]).success().stdout();
    assert!(done.contains("removed: "), "{done}");
    assert!(
        done.contains("kept (a running robosync holds it)"),
        "{done}"
    );
    assert!(!push_dir.exists(), "{done}");
    assert!(
        pull_dir.join("manifest").exists(),
        "the locked pair keeps its state"
    );
    drop(lock);

    // A pair named that matches nothing is an error; one named by its
    // remote side goes whatever its age.
    let none = state_cmd(&state, &["clean", "robot:/nowhere/"]);
    assert_eq!(none.code(), 1, "{}", none.stderr());
    assert!(
        none.stderr().contains("no pair matches"),
        "{}",
        none.stderr()
    );
    let back_abs = fs::canonicalize(&back).unwrap();
    let named = state_cmd(&state, &["clean", &back_abs.display().to_string()]).success();
    assert!(named.stdout().contains("removed: "), "{}", named.stdout());
    assert!(!pull_dir.exists());

    // The next runs find no local state: a full listing and compare, and
    // everything where it was.
    write(&src.join("three.txt"), b"three\n");
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    run(robosync(&sshd, &state).arg(remote(&dest)).arg(&back)).success();
    assert_same_tree(&src, &back);
    assert_eq!(pair_dirs(&state).len(), 2);
}

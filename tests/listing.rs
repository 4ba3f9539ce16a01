//! Issue 19: a push rerun confirms its destination against the record of
//! the last clean run (a stat per directory) and lists only the
//! directories whose mtime moved; a full listing is one flag away, implied
//! by --checksum, and comes by itself every 10th run. A pull lists its
//! source in full.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::util::*;

struct Pair {
    _t: tempfile::TempDir,
    src: PathBuf,
    dest: PathBuf,
    state: PathBuf,
}

fn pair(sshd: &Sshd, name: &str) -> Pair {
    let p = fresh_pair(sshd, name);
    // An hour old: a directory as fresh as its record is listed anyway
    // (see `a_change_in_the_second_of_a_fresh_directory_is_still_seen`).
    age_directories(&p.src, now_unix() - 3600);
    p
}

/// A pair whose source was just made (its directories' mtimes are now).
fn fresh_pair(sshd: &Sshd, name: &str) -> Pair {
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    Pair {
        state: t.path().join("state"),
        src,
        dest: sshd.mkdir(name),
        _t: t,
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every directory under `root` (itself included) gets mtime `secs`.
fn age_directories(root: &Path, secs: i64) {
    for e in fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            age_directories(&e.path(), secs);
        }
    }
    set_mtime(root, secs);
}

/// A `-vv --json` push of `p` with `extra` arguments, which must succeed.
fn push(sshd: &Sshd, p: &Pair, extra: &[&str]) -> Ran {
    let mut cmd = robosync(sshd, &p.state);
    cmd.args(["-vv", "--json"]).args(extra);
    run(cmd.arg(contents(&p.src)).arg(remote(&p.dest))).success()
}

/// The run's `listing:` note.
fn listing_note(ran: &Ran) -> String {
    let err = ran.stderr();
    let notes: Vec<&str> = err.lines().filter(|l| l.starts_with("listing: ")).collect();
    assert_eq!(notes.len(), 1, "one listing note expected; stderr:\n{err}");
    notes[0].to_string()
}

fn confirmed(ran: &Ran, listed: usize) -> bool {
    let note = listing_note(ran);
    note.starts_with("listing: confirmed ") && note.contains(&format!(" listed {listed} that "))
}

fn listed_whole(ran: &Ran, why: &str) -> bool {
    listing_note(ran) == format!("listing: the whole destination ({why})")
}

/// A file's content rewritten where it is (no create, rename or delete in
/// its directory, whose mtime stays), with the same size.
fn edit_in_place(path: &Path) {
    let len = fs::metadata(path).unwrap().len() as usize;
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(&vec![b'X'; len]).unwrap();
}

#[test]
fn a_rerun_lists_only_the_directories_changed_outside_and_fixes_them() {
    let sshd = Sshd::start();
    let p = pair(&sshd, "listing-changed");
    assert!(listed_whole(
        &push(&sshd, &p, &[]),
        "no record of the destination from a clean run"
    ));
    let again = push(&sshd, &p, &[]);
    assert!(confirmed(&again, 0), "{}", again.stderr());
    assert_eq!(again.json()["files_transferred"], 0);

    // Outside, at the destination: a file created in one directory, one
    // deleted in another (each changes its directory's mtime).
    write(&p.dest.join("a/b/extra.txt"), b"not from the source\n");
    fs::remove_file(p.dest.join("a/b/c/deep.txt")).unwrap();
    let fixed = push(&sshd, &p, &["--delete"]);
    assert!(confirmed(&fixed, 2), "{}", fixed.stderr());
    assert_same_tree(&p.src, &p.dest);
    let after = push(&sshd, &p, &[]);
    assert!(confirmed(&after, 0), "{}", after.stderr());
    assert_eq!(after.json()["files_transferred"], 0);

    // A new directory with files in it: listed with everything below.
    write(&p.dest.join("a/new/deeper/x"), b"x");
    let found = push(&sshd, &p, &["--delete"]);
    assert!(confirmed(&found, 3), "{}", found.stderr());
    assert_same_tree(&p.src, &p.dest);
}

#[test]
fn an_in_place_edit_is_seen_by_full_listings_only() {
    let sshd = Sshd::start();
    let p = pair(&sshd, "listing-edit");
    // An edit made within the source's mtime second would pass even a
    // full listing's size and mtime check.
    set_mtime(&p.src.join("a/b/c/deep.txt"), 1_600_000_000);
    push(&sshd, &p, &[]);
    let file = p.dest.join("a/b/c/deep.txt");
    let want = fs::read(&file).unwrap();

    // What the quick check cannot see (README, "Reruns"): the rerun trusts
    // the record, the edit stays.
    edit_in_place(&file);
    let quick = push(&sshd, &p, &[]);
    assert!(confirmed(&quick, 0), "{}", quick.stderr());
    assert_ne!(fs::read(&file).unwrap(), want);
    // One flag away.
    let full = push(&sshd, &p, &["--full-listing"]);
    assert!(listed_whole(&full, "--full-listing"), "{}", full.stderr());
    assert_eq!(fs::read(&file).unwrap(), want);
    // --checksum lists in full too.
    edit_in_place(&file);
    let checked = push(&sshd, &p, &["--checksum"]);
    assert!(listed_whole(&checked, "--checksum"), "{}", checked.stderr());
    assert_eq!(fs::read(&file).unwrap(), want);

    // And by itself: nine runs trust the record, the tenth lists in full.
    edit_in_place(&file);
    for n in 1..10 {
        let quick = push(&sshd, &p, &[]);
        assert!(confirmed(&quick, 0), "run {n}: {}", quick.stderr());
        assert_ne!(fs::read(&file).unwrap(), want, "run {n}");
    }
    let periodic = push(&sshd, &p, &[]);
    let why = "the periodic full listing: every 10th run";
    assert!(listed_whole(&periodic, why), "{}", periodic.stderr());
    assert_eq!(fs::read(&file).unwrap(), want);
    assert!(confirmed(&push(&sshd, &p, &[]), 0));
}

/// The pair's listing record in the state directory.
fn record_path(state: &Path) -> PathBuf {
    let pairs: Vec<PathBuf> = fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("manifest").exists())
        .collect();
    assert_eq!(pairs.len(), 1, "one pair's state in {}", state.display());
    pairs[0].join("listing")
}

#[test]
fn a_stale_or_absent_record_or_manifest_copy_means_a_full_listing() {
    let sshd = Sshd::start();
    let p = pair(&sshd, "listing-stale");
    push(&sshd, &p, &[]);
    let copy = p.dest.join(".robosync/manifest");
    let old_copy = fs::read(&copy).unwrap();

    // No manifest copy at the destination.
    fs::remove_file(&copy).unwrap();
    let why = "the destination's manifest copy is not the one recorded";
    let ran = push(&sshd, &p, &[]);
    assert!(listed_whole(&ran, why), "{}", ran.stderr());
    assert!(confirmed(&push(&sshd, &p, &[]), 0));

    // A stale one: another run's records (here, from before a change).
    write(&p.src.join("a/later.txt"), b"later\n");
    age_directories(&p.src, now_unix() - 3600);
    push(&sshd, &p, &[]);
    fs::write(&copy, &old_copy).unwrap();
    let ran = push(&sshd, &p, &[]);
    assert!(listed_whole(&ran, why), "{}", ran.stderr());
    assert_eq!(ran.json()["files_transferred"], 0);

    // No record (or a damaged one) in the local state.
    let record = record_path(&p.state);
    assert!(record.exists());
    fs::write(&record, b"not a record").unwrap();
    let ran = push(&sshd, &p, &[]);
    let why = "no record of the destination from a clean run";
    assert!(listed_whole(&ran, why), "{}", ran.stderr());
    fs::remove_file(&record).unwrap();
    assert!(listed_whole(&push(&sshd, &p, &[]), why));
    assert!(confirmed(&push(&sshd, &p, &[]), 0));

    // A recorded directory replaced by a file: listed in full, and fixed.
    fs::remove_dir_all(p.dest.join("a/b/c")).unwrap();
    write(&p.dest.join("a/b/c"), b"a file now");
    let ran = push(&sshd, &p, &[]);
    let why = "a recorded directory is gone or no longer a directory";
    assert!(listed_whole(&ran, why), "{}", ran.stderr());
    assert_same_tree(&p.src, &p.dest);
}

#[test]
fn a_pull_always_lists_its_source_in_full() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = sshd.mkdir("listing-pull");
    sample_tree(&src);
    let file = src.join("a/b/c/deep.txt");
    set_mtime(&file, 1_600_000_000);
    let (dest, state) = (t.path().join("dest"), t.path().join("state"));
    let pull = || {
        let mut cmd = robosync(&sshd, &state);
        run(cmd.arg("-vv").arg(remote(&src)).arg(&dest)).success()
    };
    pull();
    edit_in_place(&file);
    let ran = pull();
    assert!(!ran.stderr().contains("listing: "), "{}", ran.stderr());
    assert_eq!(
        fs::read(dest.join("a/b/c/deep.txt")).unwrap(),
        fs::read(&file).unwrap()
    );
}

/// SFTP v3 mtimes are whole seconds: a directory changed outside in the
/// same second as its (fresh) recorded mtime keeps that mtime. Such a
/// directory is listed anyway, so the change is still found. (Simulated
/// exactly: the outside create, then the directory's mtime put back.)
#[test]
fn a_change_in_the_second_of_a_fresh_directory_is_still_seen() {
    let sshd = Sshd::start();
    let p = fresh_pair(&sshd, "listing-racy");
    push(&sshd, &p, &[]);
    let dir = p.dest.join("a/b");
    let mtime = fs::metadata(&dir).unwrap().mtime();
    write(&dir.join("extra.txt"), b"not from the source\n");
    set_mtime(&dir, mtime);
    let fixed = push(&sshd, &p, &["--delete"]);
    assert!(listing_note(&fixed).starts_with("listing: confirmed "));
    assert!(!dir.join("extra.txt").exists(), "{}", fixed.stderr());
    assert_same_tree(&p.src, &p.dest);
}

//! Issue 15: rsync's meaning, rsync as the oracle, no silent success.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// A destination with files the source lacks, some of them excluded.
fn delete_case(src: &Path, dest: &Path) {
    write(&src.join("keep.txt"), b"keep\n");
    write(&src.join("sub/a.txt"), b"a\n");
    write(&dest.join("keep.txt"), b"old\n");
    write(&dest.join("top.tmp"), b"excluded, protected\n");
    write(&dest.join("server.tmp"), b"made by the server\n");
    write(&dest.join("cache/blob"), b"excluded dir\n");
    write(&dest.join("stale.txt"), b"goes\n");
    write(&dest.join("sub/stale.txt"), b"goes too\n");
    // Fixed times: trees made a second apart must compare equal.
    for f in ["keep.txt", "sub/a.txt"] {
        set_mtime(&src.join(f), 1_500_000_000);
    }
    for f in ["keep.txt", "top.tmp", "server.tmp", "cache/blob"] {
        set_mtime(&dest.join(f), 1_500_000_100);
    }
}

/// Observation 1: on the receiving side, excluded files are protected from
/// `--delete` (push and pull alike), exactly as `rsync -a --delete` does.
#[test]
fn delete_spares_excluded_files_as_rsync_does_push_and_pull() {
    let sshd = Sshd::start();
    let t = tempdir();
    let rules = ["--exclude", "*.tmp", "--exclude", "cache/"];

    // The oracle: rsync between two local directories.
    let (osrc, odest) = (t.path().join("osrc"), t.path().join("odest"));
    delete_case(&osrc, &odest);
    let out = Command::new("rsync")
        .args(["-a", "--delete"])
        .args(rules)
        .arg(format!("{}/", osrc.display()))
        .arg(&odest)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // Push.
    let src = t.path().join("src");
    let dest = sshd.mkdir("dest");
    delete_case(&src, &dest);
    run(robosync(&sshd, &t.path().join("s1"))
        .args(["--delete", "--max-delete", "100"])
        .args(rules)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&odest, &dest);

    // Pull.
    let rsrc = sshd.mkdir("rsrc");
    let ldest = t.path().join("ldest");
    delete_case(&rsrc, &ldest);
    run(robosync(&sshd, &t.path().join("s2"))
        .args(["--delete", "--max-delete", "100"])
        .args(rules)
        .arg(remote(&rsrc))
        .arg(&ldest))
    .success();
    assert_same_tree(&odest, &ldest);
}

/// Observation 2: a pull from a path that does not exist copies nothing and
/// says so with rsync's code for a partial transfer, never exit 0.
#[test]
fn pull_from_a_missing_remote_path_is_an_error() {
    let sshd = Sshd::start();
    let t = tempdir();
    let missing = sshd.dir.path().join("no-such-dir");
    let dest = t.path().join("dest");
    let ran = run(robosync(&sshd, &t.path().join("state"))
        .arg("--json")
        .arg(remote(&missing))
        .arg(&dest));
    assert_eq!(ran.code(), 23, "{}", ran.stderr());
    assert!(ran.stderr().contains("no-such-dir"), "{}", ran.stderr());
    assert_eq!(ran.json()["exit_code"], 23);
    assert!(!ran.json()["errors"].as_array().unwrap().is_empty());
    assert!(!dest.exists(), "a destination was made for nothing");
}

/// Observation 11: values that cannot work are refused, with the usage
/// code and a reason, before anything connects.
#[test]
fn nonsensical_values_are_refused_with_the_usage_code() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("f"), b"f\n");
    let dest = sshd.mkdir("dest");
    let bad: &[&[&str]] = &[
        &["--timeout", "0s"],
        &["--timeout", "99999999999999h"],
        &["--retry-for", "99999999999999h"],
        &["--connections", "0"],
        &["--channels", "0"],
        &["--channels", "10000"],
        &["--connections", "1000"],
    ];
    for args in bad {
        let ran = run(robosync(&sshd, &t.path().join("state"))
            .args(*args)
            .arg(contents(&src))
            .arg(remote(&dest)));
        assert_eq!(ran.code(), 1, "{args:?}: {}", ran.stderr());
        assert!(
            ran.stderr().contains(args[0]),
            "{args:?} not named: {}",
            ran.stderr()
        );
    }
    // clap's own errors too (its default, 2, means "could not connect").
    for args in [
        &["--no-such-flag"][..],
        &["--timeout", "soon"],
        &["only-one-path"],
    ] {
        let ran = run(robosync(&sshd, &t.path().join("state")).args(args));
        assert_eq!(ran.code(), 1, "{args:?}: {}", ran.stderr());
    }
    let newline = format!("{}/x\ny", dest.display());
    let ran = run(robosync(&sshd, &t.path().join("state"))
        .arg(contents(&src))
        .arg(format!("robot:{newline}")));
    assert_eq!(ran.code(), 1, "{}", ran.stderr());
    assert!(ran.stderr().contains("newline"), "{}", ran.stderr());
    assert!(fs::read_dir(&dest).unwrap().next().is_none());
}

/// Observation 6: `-n --delete` shows every deletion a real run would make,
/// then names the guard that would stop it (and exits as the real run would).
#[test]
fn dry_run_lists_deletions_and_names_the_guard_that_would_stop_them() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("one.txt"), b"1\n");
    let dest = sshd.mkdir("dest");
    let ldest = t.path().join("ldest");
    for d in [&dest, &ldest] {
        for i in 0..4 {
            write(&d.join(format!("extra{i}")), b"x\n");
        }
    }
    let rsrc = sshd.mkdir("rsrc");
    write(&rsrc.join("one.txt"), b"1\n");
    let state = t.path().join("state");
    for (from, to, left) in [
        (contents(&src), remote(&dest), &dest),
        (remote(&rsrc), ldest.display().to_string(), &ldest),
    ] {
        let ran = run(robosync(&sshd, &state)
            .args(["-n", "--delete"])
            .arg(&from)
            .arg(&to));
        assert_eq!(ran.code(), 25, "{}", ran.stderr());
        for i in 0..4 {
            assert!(
                ran.stdout().contains(&format!("*deleting   extra{i}")),
                "{from}: {}",
                ran.stdout()
            );
        }
        assert!(ran.stderr().contains("would stop"), "{}", ran.stderr());
        assert!(ran.stderr().contains("--max-delete"), "{}", ran.stderr());
        assert!(left.join("extra0").exists(), "a dry run deleted");
    }
}

/// Observation 7 (part): a pushed symlink keeps its own mtime (lsetstat), so
/// a tree pushed and pulled back is the tree that left.
#[test]
fn pushed_symlinks_keep_their_own_mtime() {
    use std::os::unix::fs::MetadataExt;
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("target.txt"), b"t\n");
    std::os::unix::fs::symlink("target.txt", src.join("link")).unwrap();
    // (set_mtime does not follow the link.)
    set_mtime(&src.join("link"), 1_400_000_000);
    let dest = sshd.mkdir("dest");
    run(robosync(&sshd, &t.path().join("state"))
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    let m = fs::symlink_metadata(dest.join("link")).unwrap();
    assert!(m.file_type().is_symlink());
    assert_eq!(m.mtime(), 1_400_000_000);
}

/// Observation 8: `-c` compares content on both sides: a remote file edited
/// to the same size and mtime is found and put right, push and pull.
#[test]
fn checksum_finds_a_remote_edit_that_kept_size_and_mtime() {
    use std::os::unix::fs::MetadataExt;
    let sshd = Sshd::start();
    let t = tempdir();
    let state = t.path().join("state");
    // Rewrites `f` in place with other bytes of the same length, keeping its mtime.
    let tamper = |f: &Path| {
        let mtime = fs::metadata(f).unwrap().mtime();
        let mut data = fs::read(f).unwrap();
        data.iter_mut().for_each(|b| *b = b.wrapping_add(1));
        fs::write(f, &data).unwrap();
        set_mtime(f, mtime);
    };
    for size in [100usize, 600 << 10] {
        // Push: the destination is the remote side.
        let src = t.path().join(format!("src{size}"));
        write(&src.join("f.bin"), &bytes(size, 3));
        let dest = sshd.mkdir(&format!("dest{size}"));
        run(robosync(&sshd, &state)
            .arg(contents(&src))
            .arg(remote(&dest)))
        .success();
        tamper(&dest.join("f.bin"));
        run(robosync(&sshd, &state)
            .arg("-c")
            .arg(contents(&src))
            .arg(remote(&dest)))
        .success();
        assert_same_tree(&src, &dest);

        // Pull: the source is the remote side.
        let rsrc = sshd.mkdir(&format!("rsrc{size}"));
        write(&rsrc.join("f.bin"), &bytes(size, 4));
        let ldest = t.path().join(format!("ldest{size}"));
        run(robosync(&sshd, &state).arg(remote(&rsrc)).arg(&ldest)).success();
        tamper(&rsrc.join("f.bin"));
        run(robosync(&sshd, &state)
            .arg("-c")
            .arg(remote(&rsrc))
            .arg(&ldest))
        .success();
        assert_same_tree(&rsrc, &ldest);
    }
}

/// Observation 4: `host:~/dir` is `dir` in the login directory (as scp and
/// rsync read it), never a directory literally named `~`; push and pull.
#[test]
fn tilde_paths_are_the_login_directory() {
    let sshd = Sshd::start();
    let t = tempdir();
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let name = format!("robosync-tilde-test-{}", std::process::id());
    let there = home.join(&name);
    let literal = home.join("~");
    let had_literal = literal.exists();
    let src = t.path().join("src");
    write(&src.join("f.txt"), b"tilde\n");
    let state = t.path().join("state");
    let pushed = run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(format!("robot:~/{name}")));
    let pulled = run(robosync(&sshd, &state)
        .arg(format!("robot:~/{name}/"))
        .arg(t.path().join("back")));
    let landed = fs::read(there.join("f.txt")).ok();
    let _ = fs::remove_dir_all(&there);
    let made_literal = !had_literal && literal.exists();
    if made_literal {
        let _ = fs::remove_dir_all(&literal);
    }
    assert_eq!(pushed.code(), 0, "{}", pushed.stderr());
    assert_eq!(pulled.code(), 0, "{}", pulled.stderr());
    assert_eq!(landed.as_deref(), Some(&b"tilde\n"[..]));
    assert!(!made_literal, "a directory named ~ was made");
    assert_same_tree(&src, &t.path().join("back"));
}

/// Ctrl-C (and a scheduler's SIGTERM) stops the run with rsync's code 20
/// and says that a rerun resumes (and `--json` still prints its one
/// document, saying so); the rerun then completes.
#[test]
fn an_interrupted_run_says_so_and_exits_20() {
    let sshd = Sshd::start();
    let proxy = Proxy::with_shaping(
        sshd.port,
        robosync_testbed::Shaping {
            one_way_delay: std::time::Duration::ZERO,
            rate: 4 << 20,
        },
    );
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("big.bin"), &bytes(32 << 20, 1));
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let before = proxy.stats().up;
        let json = sig == libc::SIGTERM;
        let child = robosync_with(&cfg, &state)
            .args(json.then_some("--json"))
            .arg(contents(&src))
            .arg(remote(&dest))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while proxy.stats().up < before + (1 << 20) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(20), "{stderr}");
        assert!(stderr.contains("interrupted: rerun to resume"), "{stderr}");
        if json {
            let r: robosync_sync::json::Report = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("stdout is not one report ({e}): {stderr}"));
            assert_eq!(r.exit_code, 20);
            assert_eq!(
                r.errors.last().map(|e| e.kind),
                Some(robosync_sync::json::ErrorKind::Interrupted)
            );
        }
        assert!(
            !dest.join(".robosync/lock").exists(),
            "the destination's lease outlived the run"
        );
    }
    run(robosync_with(&cfg, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
}

/// Observation 7 (part): a setuid/setgid file lands with its mode where the
/// server allows it, and is never sent again on every rerun.
#[test]
fn special_mode_bits_do_not_cause_a_resend_loop() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempdir();
    let sshd = Sshd::start();
    let src = t.path().join("src");
    write(&src.join("suid"), b"#!/bin/sh\n");
    write(&src.join("sgid"), b"#!/bin/sh\n");
    write(&src.join("sticky/f"), b"x\n");
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("sgid"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::set_permissions(src.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    let again = run(robosync(&sshd, &state)
        .arg("--json")
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_eq!(again.json()["files_transferred"], 0, "{}", again.stdout());
    assert_same_tree(&src, &dest);
}

/// Observation 7 (part): `-S` sends a sparse file's data, not its holes, and
/// the destination holds the same bytes.
#[test]
fn sparse_files_send_their_data_not_their_holes() {
    use std::io::{Seek, SeekFrom, Write};
    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let mut f = fs::File::create(src.join("sparse.img")).unwrap();
    f.seek(SeekFrom::Start(32 << 20)).unwrap();
    f.write_all(&bytes(1 << 20, 9)).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let dest = sshd.mkdir("dest");
    run(robosync_with(&cfg, &t.path().join("state"))
        .arg("-S")
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    let sent = proxy.stats().up;
    assert!(sent < 8 << 20, "sent {sent} bytes for 1 MiB of data");
}

/// `--files-from`, with rsync as the oracle: only the listed paths and the
/// directories leading to them; a listed directory's contents only with
/// `-r`; comments, blank lines, `/` and `./` prefixes as rsync reads them.
/// Push and pull, the list from a file and from standard input.
#[test]
fn files_from_selects_as_rsync_does_push_and_pull() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    write(&src.join("deep/er/x.txt"), b"x\n");
    write(&src.join("deep/er/y.txt"), b"y\n");
    write(&src.join("deep/other.txt"), b"other\n");
    write(&src.join("listed-dir/in.txt"), b"in\n");
    write(&src.join("listed-dir/sub/in2.txt"), b"in2\n");
    write(&src.join("unlisted.txt"), b"no\n");
    let list = t.path().join("list");
    fs::write(
        &list,
        "# a comment\n; another\n\ndeep/er/x.txt\n/run.sh\n./name with spaces.txt\nlisted-dir\nno-such-entry\n",
    )
    .unwrap();
    for recursive in [false, true] {
        let tag = if recursive { "r" } else { "plain" };
        let oracle = t.path().join(format!("oracle-{tag}"));
        let mut rsync = Command::new("rsync");
        rsync.arg("-a");
        if recursive {
            rsync.arg("-r");
        }
        let out = rsync
            .arg(format!("--files-from={}", list.display()))
            .arg(contents(&src))
            .arg(&oracle)
            .output()
            .unwrap();
        // The missing entry: rsync says so and exits 23, and so must we.
        assert_eq!(out.status.code(), Some(23), "{out:?}");
        assert!(oracle.join("deep/er/x.txt").exists(), "{out:?}");

        let dest = sshd.mkdir(&format!("push-{tag}"));
        let mut push = robosync(&sshd, &t.path().join(format!("s-push-{tag}")));
        push.arg("--files-from").arg(&list);
        if recursive {
            push.arg("-r");
        }
        let r = run(push.arg(contents(&src)).arg(remote(&dest)));
        assert_eq!(r.code(), 23, "{}", r.stderr());
        assert!(r.stderr().contains("no-such-entry"), "{}", r.stderr());
        assert_same_tree(&oracle, &dest);

        // Pull, the list on standard input.
        let back = t.path().join(format!("pull-{tag}"));
        let mut pull = robosync(&sshd, &t.path().join(format!("s-pull-{tag}")));
        pull.args(["--files-from", "-"]);
        if recursive {
            pull.arg("-r");
        }
        pull.arg(remote(&src))
            .arg(&back)
            .stdin(fs::File::open(&list).unwrap());
        let r = run(&mut pull);
        assert_eq!(r.code(), 23, "{}", r.stderr());
        assert!(r.stderr().contains("no-such-entry"), "{}", r.stderr());
        assert_same_tree(&oracle, &back);
    }
}

#[test]
fn files_from_that_cannot_be_read_is_3_and_dotdot_is_refused() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("f"), b"f\n");
    let dest = sshd.mkdir("d");
    let r = run(robosync(&sshd, &t.path().join("s"))
        .arg("--files-from")
        .arg(t.path().join("missing-list"))
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(r.code(), 3, "{}", r.stderr());
    let list = t.path().join("list");
    fs::write(&list, "../etc/passwd\n").unwrap();
    let r = run(robosync(&sshd, &t.path().join("s"))
        .arg("--files-from")
        .arg(&list)
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.stderr().contains(".."), "{}", r.stderr());
}

/// The groups of names sharing an inode under `root`, as sorted path lists.
fn link_groups(root: &Path) -> Vec<Vec<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let mut by_ino: std::collections::BTreeMap<u64, Vec<PathBuf>> = Default::default();
    for (rel, _) in snapshot(root) {
        let m = fs::symlink_metadata(root.join(&rel)).unwrap();
        if m.is_file() && m.nlink() > 1 {
            by_ino.entry(m.ino()).or_default().push(rel);
        }
    }
    let mut groups: Vec<Vec<PathBuf>> = by_ino.into_values().collect();
    for g in &mut groups {
        g.sort();
    }
    groups.sort();
    groups
}

/// `-H`: names of one local file land as links to one remote file, as
/// `rsync -aH` makes them; a rerun keeps them; a pull with -H is refused.
#[test]
fn hard_links_arrive_as_links_as_rsync_h_makes_them() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("a.bin"), &bytes(300 << 10, 1));
    write(&src.join("single.txt"), b"one name\n");
    write(&src.join("x/y.txt"), b"two names\n");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::hard_link(src.join("a.bin"), src.join("sub/b.bin")).unwrap();
    fs::hard_link(src.join("a.bin"), src.join("z.bin")).unwrap();
    fs::hard_link(src.join("x/y.txt"), src.join("w.txt")).unwrap();

    let oracle = t.path().join("oracle");
    let out = Command::new("rsync")
        .arg("-aH")
        .arg(contents(&src))
        .arg(&oracle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let want = link_groups(&oracle);
    assert_eq!(want.len(), 2, "{want:?}");

    let dest = sshd.mkdir("d");
    let state = t.path().join("state");
    let push = || {
        run(robosync(&sshd, &state)
            .arg("-H")
            .arg(contents(&src))
            .arg(remote(&dest)))
        .success()
    };
    push();
    assert_same_tree(&oracle, &dest);
    assert_eq!(link_groups(&dest), want);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
    // A new name for an unchanged file links to the one in place.
    fs::hard_link(src.join("a.bin"), src.join("x/new.bin")).unwrap();
    push();
    let groups = link_groups(&dest);
    assert!(groups.iter().any(|g| g.len() == 4), "{groups:?}");

    let r = run(robosync(&sshd, &t.path().join("s2"))
        .arg("-H")
        .arg(remote(&dest))
        .arg(t.path().join("back")));
    assert_eq!(r.code(), 1, "{}", r.stderr());
    assert!(r.stderr().contains("-H"), "{}", r.stderr());
}

/// Observation 7 (part): where the server drops a setgid bit (a login that
/// is not in the file's group: the kernel clears it on chmod), the file
/// lands without it, and a rerun does not send it again and again.
#[test]
fn a_setgid_bit_the_server_drops_causes_no_resend_loop() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let t = tempdir();
    // Root without CAP_FSETID: files in a setgid directory of a group it is
    // not in lose their setgid bit on chmod, as an ordinary user's would.
    let sshd = Sshd::builder().unprivileged(true).start();
    let src = t.path().join("src");
    write(&src.join("sgid"), b"#!/bin/sh\n");
    fs::set_permissions(src.join("sgid"), fs::Permissions::from_mode(0o2755)).unwrap();
    let dest = sshd.mkdir("dest");
    chown(&dest, None, Some(65534)).unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o2777)).unwrap();
    let state = t.path().join("state");
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    let mode = fs::metadata(dest.join("sgid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "the server kept setgid: {mode:o}");
    for _ in 0..2 {
        let again = run(robosync(&sshd, &state)
            .arg("--json")
            .arg(contents(&src))
            .arg(remote(&dest)))
        .success();
        assert_eq!(again.json()["files_transferred"], 0, "{}", again.stdout());
    }
}

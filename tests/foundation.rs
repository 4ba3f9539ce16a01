//! Issue 2: the first end-to-end push through a robot key.

use std::fs;

use crate::util::*;

#[test]
fn push_lands_tree_identically_and_rerun_transfers_nothing() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");

    let first = run(robosync(&sshd, &state)
        .arg("--json")
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    assert!(
        first.json()["files_transferred"].as_u64().unwrap() >= 8,
        "{}",
        first.stdout()
    );
    assert!(temp_files(&dest).is_empty());
    // robosync's record of the destination is there, renamed into place
    // (its temp file opens during the transfer), with no temp file left.
    let kept: Vec<_> = fs::read_dir(dest.join(".robosync"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kept, ["manifest"]);
    assert!(fs::metadata(dest.join(".robosync/manifest")).unwrap().len() > 0);

    let second = run(robosync(&sshd, &state)
        .arg("--json")
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_eq!(second.json()["files_transferred"], 0, "{}", second.stdout());
    assert_eq!(second.json()["bytes_transferred"], 0);

    // Only the SFTP server was ever started: no exec, no shell.
    let cmds = sshd.wrapper_commands();
    assert!(!cmds.is_empty());
    for c in &cmds {
        assert_eq!(
            c,
            &sshd.sftp_server.display().to_string(),
            "wrapper saw {cmds:?}"
        );
    }
}

/// A wrapper's refusal on stdout is quoted. One on stderr never reaches the
/// client (sshd discards a subsystem's stderr): robosync sees a channel
/// closing unanswered and must say so, and where the reason is, rather than
/// quote an empty string.
#[test]
fn refused_subsystem_is_reported_with_the_servers_words() {
    let sshd = Sshd::builder().reject_sftp(true).start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("f"), b"x");
    let dest = sshd.mkdir("d");
    let attempt = || {
        run(robosync(&sshd, &t.path().join("state"))
            .arg(contents(&src))
            .arg(remote(&dest)))
    };
    let r = attempt();
    assert_eq!(r.code(), 5, "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("the server refused SFTP"), "{err}");
    assert!(
        err.contains("Command rejected by transfer_commands.sh"),
        "{err}"
    );
    assert!(!err.to_lowercase().contains("too long"), "{err}");

    sshd.set_reject_sftp_on_stderr();
    let r = attempt();
    assert_eq!(r.code(), 5, "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("the server refused SFTP"), "{err}");
    assert!(err.contains("closed without a word"), "{err}");
    assert!(err.contains("server's logs"), "{err}");
    assert!(!err.contains("\"\""), "{err}");
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 0, "nothing may land");
}

#[test]
fn unknown_host_key_is_refused_and_named() {
    let sshd = Sshd::start();
    fs::write(&sshd.known_hosts, "").unwrap();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("f"), b"x");
    let dest = sshd.mkdir("d");
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("127.0.0.1"), "{}", r.stderr());
    assert!(r.stderr().contains("accept-new"), "{}", r.stderr());
    assert!(!dest.join("f").exists());

    // accept-new records the key and connects.
    run(robosync(&sshd, &t.path().join("state"))
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert!(fs::read_to_string(&sshd.known_hosts)
        .unwrap()
        .contains("ssh-ed25519"));
}

#[test]
fn changed_host_key_is_refused() {
    let sshd = Sshd::start();
    let other = t_key();
    fs::write(
        &sshd.known_hosts,
        format!("[127.0.0.1]:{} {}\n", sshd.port, other.trim()),
    )
    .unwrap();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("f"), b"x");
    let dest = sshd.mkdir("d");
    let r = run(robosync(&sshd, &t.path().join("state"))
        .args(["-o", "StrictHostKeyChecking=no"])
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("SHA256:"), "{err}");
    assert!(
        err.contains(&sshd.known_hosts.display().to_string()),
        "{err}"
    );
    assert!(!dest.join("f").exists());
}

fn t_key() -> String {
    let d = tempdir();
    let k = d.path().join("k");
    robosync_testbed::keygen(&k);
    fs::read_to_string(k.with_extension("pub")).unwrap()
}

/// Directory mtimes end as the source's: after a first push, after a file
/// is added inside one directory, and after someone changed one at the
/// destination; a directory nothing touched keeps its time through reruns.
#[test]
fn directory_mtimes_follow_the_source() {
    use std::os::unix::fs::MetadataExt;
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("a/one"), b"1");
    write(&src.join("b/two"), b"2");
    set_mtime(&src.join("a"), 1_600_000_000);
    set_mtime(&src.join("b"), 1_600_000_100);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    let mtime = |p: &std::path::Path| fs::metadata(p).unwrap().mtime();
    let push = || {
        run(robosync(&sshd, &state)
            .arg(contents(&src))
            .arg(remote(&dest)))
        .success();
    };

    push();
    assert_eq!(mtime(&dest.join("a")), 1_600_000_000);
    assert_eq!(mtime(&dest.join("b")), 1_600_000_100);

    write(&src.join("a/three"), b"3");
    set_mtime(&src.join("a"), 1_600_000_200);
    push();
    assert_eq!(mtime(&dest.join("a")), 1_600_000_200, "a file landed in a/");
    assert_eq!(mtime(&dest.join("b")), 1_600_000_100);

    // A changed file lands by rename, which moves its directory's mtime at
    // the destination though the source directory's did not change.
    write(&src.join("b/two"), b"two, longer");
    set_mtime(&src.join("b"), 1_600_000_100);
    push();
    assert_eq!(
        mtime(&dest.join("b")),
        1_600_000_100,
        "a file was replaced in b/"
    );

    set_mtime(&dest.join("b"), 1_700_000_000);
    push();
    assert_eq!(
        mtime(&dest.join("b")),
        1_600_000_100,
        "changed at the destination"
    );
    assert_eq!(mtime(&dest.join("a")), 1_600_000_200);
    assert_same_tree(&src, &dest);

    // A file touched at the destination is sent again (by a full listing:
    // its directory's mtime did not move, see README "Reruns") and its
    // record comes out as it was: the manifest copy's temp file, opened in
    // case during the transfer, is gone again.
    set_mtime(&dest.join("a/one"), 1_650_000_000);
    run(robosync(&sshd, &state)
        .arg("--full-listing")
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    let kept: Vec<_> = fs::read_dir(dest.join(".robosync"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kept, ["manifest"]);
}

/// Two runs of one source and destination (an overlapping cron job) would
/// share one journal: the second is refused at once, touching nothing, and
/// the pair is free again as soon as the first ends.
#[test]
fn an_overlapping_run_of_the_same_pair_is_refused() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    small_files(&src, 20);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    let push = || {
        run(robosync(&sshd, &state)
            .arg(contents(&src))
            .arg(remote(&dest)))
    };
    push().success();
    let pair = fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("lock").exists())
        .expect("the pair's state directory has a lock file");
    let journal = fs::read(pair.join("journal")).unwrap_or_default();
    let held = fs::File::open(pair.join("lock")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
    // SAFETY: flock on a descriptor the test owns.
    assert_eq!(unsafe { libc::flock(fd, libc::LOCK_EX) }, 0);
    let r = push();
    assert_eq!(r.code(), 75, "{}", r.stderr());
    assert!(
        r.stderr().contains("another robosync run"),
        "{}",
        r.stderr()
    );
    assert_eq!(fs::read(pair.join("journal")).unwrap_or_default(), journal);
    drop(held);
    push().success();
}

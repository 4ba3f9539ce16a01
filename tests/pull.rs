//! Issue 7: pull (remote → local) with the push's guarantees, and safety
//! against a hostile server.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::util::*;

/// The sample tree plus a few hundred small files.
fn pull_tree(root: &Path) {
    sample_tree(root);
    for i in 0..300 {
        write(
            &root.join(format!("many/d{:02}/f{i:04}", i % 10)),
            &bytes(100 + i * 37, i as u64),
        );
    }
}

#[test]
fn pull_lands_tree_identically_and_rerun_transfers_nothing() {
    let sshd = Sshd::start();
    let src = sshd.mkdir("src");
    pull_tree(&src);
    let t = tempdir();
    let dest = t.path().join("dest");
    let state = t.path().join("state");

    let first = run(robosync(&sshd, &state)
        .arg("--json")
        .arg(remote(&src))
        .arg(&dest))
    .success();
    assert_same_tree(&src, &dest);
    assert!(
        first.json()["files_transferred"].as_u64().unwrap() >= 300,
        "{}",
        first.stdout()
    );
    assert!(temp_files(&dest).is_empty());

    let second = run(robosync(&sshd, &state)
        .arg("--json")
        .arg(remote(&src))
        .arg(&dest))
    .success();
    assert_eq!(second.json()["files_transferred"], 0, "{}", second.stdout());
    assert_eq!(second.json()["bytes_transferred"], 0);

    // A changed remote file comes back; nothing else does.
    write(&src.join("a/b/c/deep.txt"), b"deeper\n");
    set_mtime(&src.join("a/b/c/deep.txt"), 1_600_000_123);
    let third = run(robosync(&sshd, &state)
        .arg("--json")
        .arg(remote(&src))
        .arg(&dest))
    .success();
    assert_eq!(third.json()["files_transferred"], 1, "{}", third.stdout());
    assert_same_tree(&src, &dest);
}

#[test]
fn push_then_pull_into_a_fresh_dir_reproduces_the_source() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    pull_tree(&src);
    let mid = sshd.mkdir("mid");
    run(robosync(&sshd, &t.path().join("state"))
        .arg(contents(&src))
        .arg(remote(&mid)))
    .success();
    let back = t.path().join("back");
    run(robosync(&sshd, &t.path().join("state"))
        .arg(remote(&mid))
        .arg(&back))
    .success();
    assert_same_tree(&src, &back);
}

/// An ssh_config whose `robot` alias goes through `proxy`.
fn config_via(sshd: &Sshd, proxy: &Proxy) -> PathBuf {
    let stanza = sshd.config_stanza("robot").replace(
        &format!("Port {}", sshd.port),
        &format!("Port {}", proxy.port),
    );
    let host_pub = fs::read_to_string(&sshd.host_key_pub).unwrap();
    let mut kh = fs::read_to_string(&sshd.known_hosts).unwrap();
    kh.push_str(&format!("[127.0.0.1]:{} {}\n", proxy.port, host_pub.trim()));
    fs::write(&sshd.known_hosts, kh).unwrap();
    let path = sshd.dir.path().join("ssh_config.pull-proxy");
    fs::write(&path, stanza).unwrap();
    path
}

#[test]
fn interrupted_pull_resumes_and_completes() {
    let sshd = Sshd::start();
    let src = sshd.mkdir("src");
    write(&src.join("huge.bin"), &bytes(48 << 20, 3));
    write(&src.join("small.txt"), b"small\n");
    let proxy = Proxy::start(sshd.port);
    let config = config_via(&sshd, &proxy);
    let t = tempdir();
    let dest = t.path().join("dest");
    let state = t.path().join("state");
    let pull = |retry: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_robosync"));
        c.env_remove("SSH_AUTH_SOCK")
            .arg("-F")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(["--retry-for", retry, "--json", "--connections", "1"])
            .arg(remote(&src))
            .arg(&dest);
        c
    };

    let child = pull("0s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Cut once a good part of the file has come down.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.stats().down < 16 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    proxy.cut_all();
    let out = child.wait_with_output().unwrap();
    assert_ne!(out.status.code(), Some(0), "the cut should fail the run");
    assert_ne!(out.status.code(), Some(101), "panic");
    assert!(
        !dest.join("huge.bin").exists(),
        "no partial file under its final name"
    );

    let before = proxy.stats().down;
    let second = run(&mut pull("30s")).success();
    assert_same_tree(&src, &dest);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
    let fetched = second.json()["bytes_transferred"].as_u64().unwrap();
    assert!(
        fetched < 48 << 20,
        "resumed run fetched {fetched} bytes (proxy saw {} more)",
        proxy.stats().down - before
    );
}

#[test]
fn pull_delete_with_an_empty_remote_root_is_refused() {
    let sshd = Sshd::start();
    let empty = sshd.mkdir("empty");
    let t = tempdir();
    let dest = t.path().join("dest");
    write(&dest.join("keep/me.txt"), b"precious\n");
    write(&dest.join("and-me"), b"precious\n");
    // An empty source trips the guard (25); a missing one is no source at
    // all (23, as rsync's "link_stat failed"): neither deletes anything.
    for (root, code, says) in [
        (empty.clone(), 25, "empty"),
        (empty.join("missing"), 23, "does not exist"),
    ] {
        let r = run(robosync(&sshd, &t.path().join("state"))
            .arg("--delete")
            .arg(remote(&root))
            .arg(&dest));
        assert_eq!(r.code(), code, "{}", r.stderr());
        assert!(r.stderr().contains(says), "{}", r.stderr());
        assert_eq!(fs::read(dest.join("keep/me.txt")).unwrap(), b"precious\n");
        assert_eq!(fs::read(dest.join("and-me")).unwrap(), b"precious\n");
    }
}

#[test]
fn pull_delete_removes_locally_what_the_remote_lacks() {
    let sshd = Sshd::start();
    let src = sshd.mkdir("src");
    pull_tree(&src);
    let t = tempdir();
    let dest = t.path().join("dest");
    write(&dest.join("extra.txt"), b"x");
    let r = run(robosync(&sshd, &t.path().join("state"))
        .args(["--delete", "--max-delete", "5", "--json"])
        .arg(remote(&src))
        .arg(&dest))
    .success();
    assert_eq!(r.json()["deleted"], 1);
    assert_same_tree(&src, &dest);
}

#[test]
fn hostile_server_cannot_write_outside_the_destination() {
    let hostile = robosync_testbed::hostile_sftp_server();
    let sshd = Sshd::builder().sftp_server(&hostile).start();
    let t = tempdir();
    let base = t.path().join("base");
    let sentinel = base.join("sentinel");
    write(&sentinel.join("keep.txt"), b"untouched\n");
    let dest = base.join("dest");
    fs::create_dir_all(&dest).unwrap();
    // A directory of the tree is a symlink out of the root on our side.
    symlink("../sentinel", dest.join("sub")).unwrap();
    let before = snapshot(&base.join("sentinel"));

    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg("robot:/hostile-root/")
        .arg(&dest));
    let err = r.stderr();
    assert_ne!(r.code(), 0, "{err}");
    assert_ne!(r.code(), 101, "panic: {err}");
    for bad in [
        "../escape",
        "/tmp/robosync-hostile-abs",
        "a/b",
        "\"\"",
        r"x\\x00y",
        "dup",
        "link/inside",
        "../../../escape2",
    ] {
        assert!(err.contains(bad), "{bad} not reported: {err}");
    }
    assert!(err.contains("greedy"), "{err}");
    assert!(err.contains("short"), "{err}");
    // Changed on the server while read: reported, never landed.
    assert!(
        err.contains("moving")
            && err.contains("changed on the server while robosync was reading it"),
        "{err}"
    );
    assert!(!dest.join("moving").exists());
    assert_eq!(snapshot(&base.join("sentinel")), before);
    assert!(!base.join("escape").exists());
    assert!(!t.path().join("escape2").exists());
    assert!(!Path::new("/tmp/robosync-hostile-abs").exists());
    // What was sound landed, inside the root.
    assert_eq!(fs::read(dest.join("good.txt")).unwrap(), b"hello world");
    assert_eq!(fs::read(dest.join("sub/deep.txt")).unwrap(), b"deep\n");
    assert!(fs::symlink_metadata(dest.join("sub")).unwrap().is_dir());
    assert_eq!(
        fs::read_link(dest.join("link")).unwrap(),
        Path::new("../../sentinel")
    );
    let names: Vec<_> = fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    // A READDIR announcing u32::MAX names: refused, no panic.
    let r = run(robosync(&sshd, &t.path().join("state2"))
        .args(["--retry-for", "0s"])
        .arg("robot:/absurd-root/")
        .arg(base.join("dest2")));
    assert_ne!(r.code(), 0, "{}", r.stderr());
    assert_ne!(r.code(), 101, "panic: {}", r.stderr());
    assert_eq!(snapshot(&base.join("sentinel")), before);
}

#[test]
fn pull_dry_run_itemises_and_changes_nothing() {
    let sshd = Sshd::start();
    let src = sshd.mkdir("src");
    sample_tree(&src);
    let t = tempdir();
    let dest = t.path().join("not-yet");
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg("-n")
        .arg(remote(&src))
        .arg(&dest))
    .success();
    assert!(r.stdout().contains(">f+++++++++ big.bin"), "{}", r.stdout());
    assert!(
        r.stdout().contains("cL+++++++++ link -> a/b/c/deep.txt"),
        "{}",
        r.stdout()
    );
    assert!(!dest.exists());
}

/// The push's crash test, reversed: SIGKILL a pull of a 256 MiB file and
/// 2,000 small files at several points; the rerun completes identically and
/// the bytes that crossed the wire (server → client, at the proxy) stay
/// within the data plus framing plus one in-flight window per kill.
#[test]
fn sigkill_during_pull_then_rerun_fetches_the_rest_once() {
    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(&sshd, &proxy);
    let src = sshd.mkdir("src");
    write(&src.join("big/huge.bin"), &bytes(256 << 20, 21));
    small_files(&src, 2000);
    let total = total_size(&src);
    let t = tempdir();
    let dest = t.path().join("dest");
    let state = t.path().join("state");
    let args = ["--connections", "1", "--channels", "2"];

    let mut kills = 0;
    for frac in [0.2, 0.5, 0.8] {
        let mut cmd = robosync_with(&cfg, &state);
        cmd.args(args).arg(remote(&src)).arg(&dest);
        kills += kill_when(
            &mut cmd,
            || proxy.stats().down,
            (total as f64 * frac) as u64,
        ) as u64;
    }
    assert!(kills >= 2, "the pull finished before it could be killed");
    run(robosync_with(&cfg, &state)
        .args(args)
        .arg(remote(&src))
        .arg(&dest))
    .success();
    assert_same_tree(&src, &dest);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));

    // Per kill at most the in-flight read window is lost (bounded by the
    // 16 MiB byte budget of each of the 2 sessions).
    let received = proxy.stats().down;
    let allowed = total + total / 20 + (4 << 20) + kills * (32 << 20);
    assert!(
        received <= allowed,
        "received {received} bytes for {total} bytes of data (allowed {allowed})"
    );
}

/// A local file whose bytes changed under the same size and mtime is
/// fetched again: the destination's content hash must match what robosync
/// wrote, not just its stat. (Here the edit moves the ctime, so the stat cache
/// rehashes it even without `--checksum`; `--checksum` rehashes every local
/// file, which is what catches rot that leaves every timestamp alone.)
#[test]
fn pull_refetches_a_local_file_changed_under_the_same_size_and_mtime() {
    let sshd = Sshd::start();
    let src = sshd.mkdir("src");
    write(&src.join("data/a.bin"), &bytes(100_000, 1));
    write(&src.join("data/b.bin"), &bytes(50_000, 2));
    let t = tempdir();
    let dest = t.path().join("dest");
    let state = t.path().join("state");
    let pull = |extra: &[&str]| {
        run(robosync(&sshd, &state)
            .args(extra)
            .arg("--json")
            .arg(remote(&src))
            .arg(&dest))
        .success()
    };
    let victim = dest.join("data/a.bin");
    let rot = || {
        use std::os::unix::fs::MetadataExt;
        let mtime = fs::metadata(&victim).unwrap().mtime();
        let mut rotten = fs::read(&victim).unwrap();
        rotten[500] ^= 0xff;
        fs::write(&victim, &rotten).unwrap();
        set_mtime(&victim, mtime);
    };
    pull(&[]);
    assert_same_tree(&src, &dest);

    rot();
    let plain = pull(&[]);
    assert_eq!(plain.json()["files_transferred"], 1, "{}", plain.stdout());
    assert_same_tree(&src, &dest);

    let intact = pull(&["--checksum"]);
    assert_eq!(intact.json()["files_transferred"], 0, "{}", intact.stdout());

    rot();
    let checked = pull(&["--checksum"]);
    assert_eq!(
        checked.json()["files_transferred"],
        1,
        "{}",
        checked.stdout()
    );
    assert_same_tree(&src, &dest);
}

/// Files in flight are bounded by the open-file limit: a push holds each one
/// open locally, a pull each temp file of a file bigger than one READ. With
/// a hard limit of 192 (robosync raises the soft limit only to the hard
/// one), hundreds of such files still land both ways, every one of them.
#[test]
fn many_files_land_both_ways_under_a_low_open_file_limit() {
    use std::os::unix::process::CommandExt;
    let limited = |mut c: std::process::Command| {
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 192,
                    rlim_max: 192,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    };
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    for i in 0..400u64 {
        // Above one READ (at most 255 KiB from OpenSSH), and some tiny ones.
        let size = if i % 4 == 0 { 64 } else { 300 << 10 };
        write(
            &src.join(format!("d{:02}/f{i:04}", i % 8)),
            &bytes(size as usize, i),
        );
    }
    let mid = sshd.mkdir("mid");
    let state = t.path().join("state");
    run(limited(robosync(&sshd, &state))
        .arg(contents(&src))
        .arg(remote(&mid)))
    .success();
    assert_same_tree(&src, &mid);
    let back = t.path().join("back");
    run(limited(robosync(&sshd, &state))
        .arg(remote(&mid))
        .arg(&back))
    .success();
    assert_same_tree(&src, &back);
    assert!(temp_files(&back).is_empty());
}

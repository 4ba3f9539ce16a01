//! Issue 14, items 6, 10 and 11: private state, one run per destination
//! however it is spelled or reached, and a full disk said plainly.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

/// Runs `cmd` under umask 022, as a cron job usually does.
fn umask_022(cmd: &mut Command) -> &mut Command {
    // SAFETY: umask is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        })
    }
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Every directory under `state` is 0700 and every file 0600.
#[track_caller]
fn assert_private(state: &Path) {
    let mut seen = 0;
    let mut stack = vec![state.to_path_buf()];
    while let Some(d) = stack.pop() {
        assert_eq!(mode(&d), 0o700, "{} is not 0700", d.display());
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                seen += 1;
                assert_eq!(mode(&p), 0o600, "{} is not 0600", p.display());
            }
        }
    }
    assert!(seen >= 3, "expected state files under {}", state.display());
}

#[test]
fn state_files_are_private_whatever_the_umask() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("a/one.txt"), b"one\n");
    write(&src.join("two.bin"), &bytes(600 << 10, 5));
    let dest = sshd.mkdir("dest");
    // A destination state directory left world-readable by an older version.
    fs::create_dir_all(dest.join(".robosync")).unwrap();
    fs::set_permissions(dest.join(".robosync"), fs::Permissions::from_mode(0o755)).unwrap();
    let state = t.path().join("state");
    run(umask_022(&mut robosync(&sshd, &state))
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_private(&state);
    assert_eq!(mode(&dest.join(".robosync")), 0o700);
    assert_eq!(mode(&dest.join(".robosync/manifest")), 0o600);

    // A pull's state too.
    let back = t.path().join("back");
    let pulled = t.path().join("pulled-state");
    run(umask_022(&mut robosync(&sshd, &pulled))
        .arg(remote(&dest))
        .arg(&back))
    .success();
    assert_private(&pulled);
    assert_eq!(mode(&back.join(".robosync/manifest")), 0o600);
}

/// A second ssh_config alias, `robot2`, for the same sshd.
fn two_aliases(sshd: &Sshd, proxy: &Proxy) -> PathBuf {
    let cfg = via_proxy(sshd, proxy);
    let mut text = fs::read_to_string(&cfg).unwrap();
    text.push_str(&sshd.config_stanza("robot2"));
    fs::write(&cfg, text).unwrap();
    cfg
}

/// A slow link: the first run holds the destination for several seconds.
fn slow(sshd: &Sshd) -> Proxy {
    Proxy::with_shaping(
        sshd.port,
        robosync_testbed::Shaping {
            one_way_delay: Duration::from_millis(5),
            rate: 2 << 20,
        },
    )
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) until `path` exists while `child` still runs.
#[track_caller]
fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the first run ended before it held the destination"
        );
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn finish(child: Child) -> Ran {
    Ran {
        out: child.wait_with_output().unwrap(),
    }
}

#[test]
fn one_push_destination_runs_once_however_it_is_spelled_or_reached() {
    let sshd = Sshd::start();
    let proxy = slow(&sshd);
    let cfg = two_aliases(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("big.bin"), &bytes(16 << 20, 9));
    small_files(&src, 40);
    let dest = sshd.mkdir("dest");

    let mut first = spawn(
        robosync_with(&cfg, &t.path().join("state-a"))
            .args(["--connections", "1"])
            .arg(contents(&src))
            .arg(remote(&dest)),
    );
    wait_for(&dest.join(".robosync/lock"), &mut first);

    // Another alias (straight to the sshd), another state directory and
    // another spelling of the same directory: refused, naming the holder.
    let spelled = format!("robot2:{}/../dest/", dest.display());
    let second = run(robosync_with(&cfg, &t.path().join("state-b"))
        .arg(contents(&src))
        .arg(&spelled));
    let first_pid = first.id();
    assert_eq!(second.code(), 75, "stderr: {}", second.stderr());
    assert!(
        second.stderr().contains(&format!("pid {first_pid}")),
        "the holder is not named: {}",
        second.stderr()
    );

    let first = finish(first).success();
    assert!(first.stderr().is_empty() || !first.stderr().contains("error"));
    assert_same_tree(&src, &dest);
    assert!(
        !dest.join(".robosync/lock").exists(),
        "the lease was not released"
    );
    // Released: the next run goes.
    run(robosync_with(&cfg, &t.path().join("state-b"))
        .arg(contents(&src))
        .arg(&spelled))
    .success();
}

#[test]
fn one_pull_destination_runs_once_however_it_is_spelled() {
    let sshd = Sshd::start();
    let proxy = slow(&sshd);
    let cfg = two_aliases(&sshd, &proxy);
    let t = tempdir();
    let src = sshd.mkdir("src");
    write(&src.join("big.bin"), &bytes(16 << 20, 11));
    small_files(&src, 40);
    let work = t.path().join("work");
    fs::create_dir_all(&work).unwrap();

    let mut first = spawn(
        robosync_with(&cfg, &t.path().join("state-a"))
            .current_dir(&work)
            .args(["--connections", "1"])
            .arg(remote(&src))
            .arg("./d"),
    );
    let d = work.join("d");
    wait_for(&d.join(".robosync/lock"), &mut first);
    let second = run(robosync_with(&cfg, &t.path().join("state-b"))
        .arg(format!("robot2:{}/", src.display()))
        .arg(format!("{}/", d.display())));
    assert_eq!(second.code(), 75, "stderr: {}", second.stderr());
    assert!(
        second.stderr().contains(&format!("pid {}", first.id())),
        "the holder is not named: {}",
        second.stderr()
    );
    finish(first).success();
    assert_same_tree(&src, &d);
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    assert_eq!(
        unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) },
        0
    );
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn plant_lease(dest: &Path, host: &str, pid: u32) -> PathBuf {
    let lock = dest.join(".robosync/lock");
    write(
        &lock,
        format!("robosync lease\nhost {host}\npid {pid}\nsince 1700000000\nrun 42\n").as_bytes(),
    );
    lock
}

#[test]
fn a_live_lease_refuses_and_a_stale_one_is_taken_over() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("f.txt"), b"payload\n");
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");

    // Another machine's run, refreshed just now: busy.
    let lock = plant_lease(&dest, "cron-host-b", 4242);
    let busy = run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(busy.code(), 75, "stderr: {}", busy.stderr());
    assert!(
        busy.stderr().contains("cron-host-b") && busy.stderr().contains("pid 4242"),
        "{}",
        busy.stderr()
    );
    assert!(
        !dest.join("f.txt").exists(),
        "a refused run changed the destination"
    );
    // A dry run changes nothing and takes no lease: it says who holds it.
    let dry = run(robosync(&sshd, &state)
        .arg("-n")
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(dry.code(), 0, "stderr: {}", dry.stderr());
    assert!(dry.stderr().contains("cron-host-b"), "{}", dry.stderr());
    assert!(lock.exists());

    // Not refreshed for an hour: stale, taken over, and released at the end.
    set_mtime(&lock, now() - 3600);
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    assert!(!lock.exists(), "the lease was not released");

    // This machine's run that died (its pid is gone): taken over at once.
    plant_lease(&dest, &hostname(), dead_pid());
    write(&src.join("g.txt"), b"more\n");
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    assert!(!lock.exists());
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// A real OpenSSH sftp-server that can write at most 64 KiB into one file:
/// past that, write(2) fails (EFBIG) and sftp-server answers
/// SSH_FX_FAILURE, exactly what it answers for ENOSPC and EDQUOT.
fn small_quota_server(dir: &Path) -> PathBuf {
    let script = dir.join("sftp-server-quota");
    fs::write(
        &script,
        "#!/bin/sh\ntrap '' XFSZ\nulimit -f 128\nexec /usr/lib/openssh/sftp-server \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

#[test]
fn a_full_destination_names_the_file_and_says_out_of_space() {
    let t = tempdir();
    let server = small_quota_server(t.path());
    let sshd = Sshd::builder().sftp_server(&server).start();
    let src = t.path().join("src");
    write(&src.join("small.txt"), b"fits\n");
    write(&src.join("data/huge.bin"), &bytes(2 << 20, 3));
    let dest = sshd.mkdir("dest");
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(r.code(), 23, "stderr: {}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("data/huge.bin"), "no file named: {err}");
    assert!(
        err.contains("out of space or over quota"),
        "no disk-full wording: {err}"
    );
    assert!(!err.contains("\"\""), "an empty path in: {err}");
    assert!(
        err.contains("robosync temp file"),
        "temps not counted: {err}"
    );
    assert_eq!(fs::read(dest.join("small.txt")).unwrap(), b"fits\n");
}

/// A 1 MiB tmpfs, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` (with the reason printed) where tmpfs cannot be mounted (not root).
    fn mount(at: &Path) -> Option<SmallDisk> {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk(at.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_local_disk_names_the_file_and_says_so() {
    let sshd = Sshd::start();
    let t = tempdir();
    let Some(_disk) = SmallDisk::mount(&t.path().join("disk")) else {
        return;
    };
    let src = sshd.mkdir("src");
    write(&src.join("small.txt"), b"fits\n");
    write(&src.join("data/huge.bin"), &bytes(2 << 20, 4));
    let dest = t.path().join("disk/d");
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg(remote(&src))
        .arg(&dest));
    assert_eq!(r.code(), 23, "stderr: {}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("data/huge.bin"), "no file named: {err}");
    assert!(
        err.contains("local disk is full"),
        "no disk-full wording: {err}"
    );
}

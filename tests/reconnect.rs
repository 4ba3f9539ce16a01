//! Issue 14 (items 7–10): reconnecting is fast and bounded. Pull recovers
//! from a cut at any stage, `--retry-for` is one deadline for an outage
//! that ends with exit 30, and a dead connection fails what is in flight on
//! it at once rather than after the request timeout.
//!
//! Every run here has a watchdog (a bound, not a timing assertion): a run
//! that waits out a 600 s request timeout, or never gives up, is killed
//! and the test fails on its exit status.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;

/// How long any run below may take before it is killed (then the test fails).
const WATCHDOG: Duration = Duration::from_secs(120);

/// Runs `cmd`, SIGKILLing it after [`WATCHDOG`] (its exit code is then -1).
fn run_bounded(cmd: &mut Command) -> Ran {
    run_within(cmd, WATCHDOG)
}

/// Runs `cmd`, SIGKILLing it after `watchdog` (its exit code is then -1).
fn run_within(cmd: &mut Command, watchdog: Duration) -> Ran {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run robosync");
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + watchdog;
            while !done.load(Ordering::Relaxed) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !done.load(Ordering::Relaxed) {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            }
        })
    };
    let out = child.wait_with_output().expect("robosync did not run");
    done.store(true, Ordering::Relaxed);
    watchdog.join().unwrap();
    Ran { out }
}

/// Many small files in many directories: a listing of many round trips.
fn wide_tree(root: &Path, n: usize) {
    for i in 0..n {
        write(
            &root.join(format!("d{:03}/file-with-a-longish-name-{i:05}", i % 100)),
            &bytes(1 + i % 50, i as u64),
        );
    }
}

fn pull_cmd(cfg: &Path, state: &Path, src: &Path, dest: &Path, extra: &[&str]) -> Command {
    let mut c = robosync_with(cfg, state);
    c.args(extra).arg(remote(src)).arg(dest);
    c
}

fn push_cmd(cfg: &Path, state: &Path, src: &Path, dest: &Path, extra: &[&str]) -> Command {
    let mut c = robosync_with(cfg, state);
    c.args(extra).arg(contents(src)).arg(remote(dest));
    c
}

/// Cuts every connection once, when `wire()` passes `at` (or the run ends).
fn cut_at(
    proxy: &Arc<Proxy>,
    wire: fn(&Proxy) -> u64,
    at: u64,
    done: &Arc<AtomicBool>,
) -> std::thread::JoinHandle<bool> {
    let (proxy, done) = (proxy.clone(), done.clone());
    std::thread::spawn(move || {
        while wire(&proxy) < at {
            if done.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        proxy.cut_all();
        true
    })
}

/// A cut is a lost connection, not a server's limit on channels (the
/// testbed's sshd allows 20 sessions; runs below pass -v to show notes).
#[track_caller]
fn assert_not_misdescribed(r: &Ran) {
    for limit in ["MaxSessions", "server allowed"] {
        assert!(
            !r.stderr().contains(limit),
            "a cut reported as a channel limit: {}",
            r.stderr()
        );
    }
}

#[test]
fn pull_recovers_from_cuts_during_login() {
    let sshd = Sshd::start();
    let src = sshd.mkdir("src");
    sample_tree(&src);
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    // What the client sends to log in, start SFTP and list an empty tree
    // (under 2 KB): cuts at fractions of it fall in the key exchange, the
    // authentication, the channel's opening and SFTP's start.
    let empty = sshd.mkdir("empty");
    run_bounded(&mut pull_cmd(
        &cfg,
        &t.path().join("state-empty"),
        &empty,
        &t.path().join("dest-empty"),
        &["--connections", "1"],
    ))
    .success();
    let login = proxy.stats().up;
    for (k, frac) in [0.05, 0.25, 0.45, 0.65, 0.8, 0.9].into_iter().enumerate() {
        let dest = t.path().join(format!("dest{k}"));
        let before = proxy.stats().cuts;
        let mark = (login as f64 * frac) as u64;
        proxy.cut_when_up_exceeds(proxy.stats().up + mark);
        let r = run_bounded(&mut pull_cmd(
            &cfg,
            &t.path().join(format!("state{k}")),
            &src,
            &dest,
            &["--retry-for", "60s", "--connections", "1", "-v"],
        ));
        proxy.cut_when_up_exceeds(u64::MAX);
        assert_eq!(
            proxy.stats().cuts,
            before + 1,
            "the cut at {mark} bytes did not happen"
        );
        assert_eq!(
            r.code(),
            0,
            "cut at {mark} of {login} bytes: {}",
            r.stderr()
        );
        assert_not_misdescribed(&r);
        assert_same_tree(&src, &dest);
        assert!(temp_files(&dest).is_empty());
    }
}

#[test]
fn push_recovers_from_cuts_during_login_and_setup() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(&sshd, &proxy);
    // What the client sends to log in, start SFTP, prepare and list an
    // empty destination. Cuts in the login (up to about half of it), in the
    // flight that takes the destination's lease (about 0.6-0.75: a retry
    // must know the lease its lost attempt made), in the listing, and as
    // the extra channels open (0.99 and past).
    let empty = t.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    run_bounded(&mut push_cmd(
        &cfg,
        &t.path().join("state-empty"),
        &empty,
        &sshd.mkdir("dest-empty"),
        &["--connections", "1"],
    ))
    .success();
    let setup = proxy.stats().up;
    for (k, frac) in [
        0.05, 0.25, 0.45, 0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 0.99, 1.01, 1.1,
    ]
    .into_iter()
    .enumerate()
    {
        let dest = sshd.mkdir(&format!("dest{k}"));
        let before = proxy.stats().cuts;
        let mark = (setup as f64 * frac) as u64;
        proxy.cut_when_up_exceeds(proxy.stats().up + mark);
        // A run of under a second here; -v waits up to 60 s for channels
        // still opening at the end, so channel opens stuck on the dead
        // connection (as russh leaves them) would trip this watchdog.
        let r = run_within(
            &mut push_cmd(
                &cfg,
                &t.path().join(format!("state{k}")),
                &src,
                &dest,
                &["--retry-for", "60s", "--connections", "1", "-v"],
            ),
            Duration::from_secs(45),
        );
        proxy.cut_when_up_exceeds(u64::MAX);
        assert_eq!(proxy.stats().cuts, before + 1, "no cut at {mark} bytes");
        assert_eq!(
            r.code(),
            0,
            "cut at {mark} of {setup} bytes: {}",
            r.stderr()
        );
        assert_not_misdescribed(&r);
        assert_same_tree(&src, &dest);
        assert!(temp_files(&dest).is_empty());
    }
}

#[test]
fn pull_recovers_from_a_cut_during_listing() {
    let sshd = Sshd::start();
    let src = sshd.mkdir("src");
    wide_tree(&src, 3000);
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let dest = t.path().join("dest");
    // The listing alone is about 400 KB from the server; a login under 10 KB.
    proxy.cut_when_down_exceeds(60_000);
    let r = run_bounded(&mut pull_cmd(
        &cfg,
        &t.path().join("state"),
        &src,
        &dest,
        &["--retry-for", "60s", "-v"],
    ));
    assert_eq!(proxy.stats().cuts, 1);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_not_misdescribed(&r);
    assert_same_tree(&src, &dest);
    assert!(temp_files(&dest).is_empty());
}

/// A link that goes down and stays down (cut, then every new connection
/// closed at once) ends the run by itself with exit 30 and says why.
#[test]
fn a_link_that_stays_down_ends_with_exit_30() {
    let sshd = Sshd::start();
    let proxy = Arc::new(Proxy::start(sshd.port));
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    small_files(&src, 1500);
    let total = total_size(&src);

    for (k, pull) in [false, true].into_iter().enumerate() {
        let (from, to) = if pull {
            (
                sshd.mkdir(&format!("remote-src{k}")),
                t.path().join("dest-pull"),
            )
        } else {
            (src.clone(), sshd.mkdir("dest-push"))
        };
        if pull {
            small_files(&from, 1500);
        }
        proxy.refuse_new(false);
        let done = Arc::new(AtomicBool::new(false));
        let wire: fn(&Proxy) -> u64 = if pull {
            |p| p.stats().down
        } else {
            |p| p.stats().up
        };
        let start = wire(&proxy);
        let downer = {
            let (proxy, done) = (proxy.clone(), done.clone());
            std::thread::spawn(move || {
                while wire(&proxy) < start + total / 3 {
                    if done.load(Ordering::Relaxed) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                proxy.refuse_new(true);
                proxy.cut_all();
                true
            })
        };
        let extra = ["--retry-for", "4s", "--timeout", "4s", "-v"];
        let state = t.path().join(format!("state{k}"));
        let mut cmd = if pull {
            pull_cmd(&cfg, &state, &from, &to, &extra)
        } else {
            push_cmd(&cfg, &state, &from, &to, &extra)
        };
        let r = run_bounded(&mut cmd);
        done.store(true, Ordering::Relaxed);
        assert!(
            downer.join().unwrap(),
            "the run ended before the link went down"
        );
        assert_eq!(r.code(), 30, "pull={pull}: {}", r.stderr());
        assert!(r.stderr().contains("--retry-for"), "{}", r.stderr());
        assert_not_misdescribed(&r);
    }
}

/// A link that freezes for good (nothing forwarded, nothing closed): every
/// new login hangs too. The outage ends the run with exit 30 by itself.
#[test]
fn a_link_frozen_for_good_ends_with_exit_30() {
    let sshd = Sshd::start();
    let proxy = Arc::new(Proxy::start(sshd.port));
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    small_files(&src, 1500);
    let total = total_size(&src);
    let dest = sshd.mkdir("dest");
    let done = Arc::new(AtomicBool::new(false));
    let freezer = {
        let (proxy, done) = (proxy.clone(), done.clone());
        std::thread::spawn(move || {
            while proxy.stats().up < total / 3 {
                if done.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            proxy.freeze(true);
            true
        })
    };
    let r = run_bounded(&mut push_cmd(
        &cfg,
        &t.path().join("state"),
        &src,
        &dest,
        &["--retry-for", "5s", "--timeout", "5s"],
    ));
    done.store(true, Ordering::Relaxed);
    assert!(freezer.join().unwrap(), "the run ended before the freeze");
    proxy.freeze(false);
    assert_eq!(r.code(), 30, "{}", r.stderr());
    assert!(r.stderr().contains("--retry-for"), "{}", r.stderr());
}

/// A pull whose link freezes for longer than the request timeout, then
/// thaws, completes exactly.
#[test]
fn a_frozen_link_thawed_later_completes_a_pull_exactly() {
    let sshd = Sshd::start();
    let src = sshd.mkdir("src");
    write(&src.join("big.bin"), &bytes(24 << 20, 5));
    small_files(&src, 800);
    let total = total_size(&src);
    let proxy = Arc::new(Proxy::start(sshd.port));
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let dest = t.path().join("dest");
    let done = Arc::new(AtomicBool::new(false));
    let freezer = {
        let (proxy, done) = (proxy.clone(), done.clone());
        std::thread::spawn(move || {
            while proxy.stats().down < total / 3 {
                if done.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            proxy.freeze(true);
            std::thread::sleep(Duration::from_secs(8));
            proxy.freeze(false);
            true
        })
    };
    let r = run_bounded(&mut pull_cmd(
        &cfg,
        &t.path().join("state"),
        &src,
        &dest,
        &["--retry-for", "60s", "--timeout", "4s"],
    ));
    done.store(true, Ordering::Relaxed);
    assert!(freezer.join().unwrap(), "the run ended before the freeze");
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert_same_tree(&src, &dest);
    assert!(temp_files(&dest).is_empty());
}

/// One cut with many small files in flight: the requests on the dead
/// connection fail at once and go again on a new one. With a 600 s request
/// timeout, waiting one out would trip the watchdog.
#[test]
fn a_cut_with_many_small_files_in_flight_does_not_wait_out_the_timeout() {
    let sshd = Sshd::start();
    let proxy = Arc::new(Proxy::start(sshd.port));
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let extra = [
        "--retry-for",
        "60s",
        "--timeout",
        "600s",
        "--connections",
        "2",
        "--channels",
        "4",
        "-v",
    ];
    for (k, pull) in [false, true].into_iter().enumerate() {
        let (src, dest): (PathBuf, PathBuf) = if pull {
            let s = sshd.mkdir("pull-src");
            small_files(&s, 2000);
            (s, t.path().join("pull-dest"))
        } else {
            let s = t.path().join("push-src");
            // Big files striped over every session fill the channel windows:
            // at the cut, writers wait for window space that never comes.
            for i in 0..3 {
                write(&s.join(format!("big{i}.bin")), &bytes(16 << 20, i));
            }
            small_files(&s, 2000);
            (s, sshd.mkdir("push-dest"))
        };
        let total = total_size(&src);
        let done = Arc::new(AtomicBool::new(false));
        let (wire, start): (fn(&Proxy) -> u64, u64) = if pull {
            (|p| p.stats().down, proxy.stats().down)
        } else {
            (|p| p.stats().up, proxy.stats().up)
        };
        let cutter = cut_at(&proxy, wire, start + total / 2, &done);
        let state = t.path().join(format!("state{k}"));
        let mut cmd = if pull {
            pull_cmd(&cfg, &state, &src, &dest, &extra)
        } else {
            push_cmd(&cfg, &state, &src, &dest, &extra)
        };
        let r = run_bounded(&mut cmd);
        done.store(true, Ordering::Relaxed);
        assert!(cutter.join().unwrap(), "the run ended before the cut");
        assert_eq!(r.code(), 0, "pull={pull}: {}", r.stderr());
        assert_not_misdescribed(&r);
        assert_same_tree(&src, &dest);
        // Including temps whose OPEN reached the server while a cut took its reply.
        assert!(temp_files(&dest).is_empty());
    }
}

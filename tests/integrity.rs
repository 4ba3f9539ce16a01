//! Issue 14: nothing lands unless it is what the source is, an interrupted
//! run never wedges the next, and nothing outside DEST is touched, whatever
//! a co-tenant of the destination does meanwhile.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use robosync_testbed::Shaping;

use crate::util::*;

/// Runs `f` on a thread until the returned guard is dropped.
struct Meddler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Meddler {
    fn start(f: impl Fn() + Send + 'static) -> Meddler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                f();
                std::thread::sleep(Duration::from_micros(300));
            }
        });
        Meddler {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Meddler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Observation 1: a temp file changed behind robosync's back (a late request
/// from an abandoned connection, a co-tenant) must never land as success.
#[test]
fn a_temp_emptied_behind_robosyncs_back_never_lands_as_success() {
    let sshd = Sshd::start();
    let proxy = Proxy::with_shaping(
        sshd.port,
        Shaping {
            one_way_delay: Duration::from_millis(5),
            rate: 0,
        },
    );
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    for i in 0..300 {
        write(
            &src.join(format!("d{}/f{i:03}", i % 10)),
            &bytes(1 + (i * 37) % 10_000, i as u64),
        );
    }
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    let first = {
        let watched = dest.clone();
        let _truncator = Meddler::start(move || {
            for p in temp_files(&watched) {
                if let Ok(f) = fs::OpenOptions::new().write(true).open(&p) {
                    let _ = f.set_len(0);
                }
            }
        });
        run(robosync_with(&cfg, &state)
            .arg(contents(&src))
            .arg(remote(&dest)))
    };
    assert_ne!(first.code(), 101, "panicked: {}", first.stderr());
    if first.code() == 0 {
        assert_same_tree(&src, &dest);
    }
    // Left alone, the next runs put everything right and say so.
    run(robosync_with(&cfg, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    run(robosync_with(&cfg, &state)
        .arg("--checksum")
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
}

/// Observation 4: temp names are not predictable, and a symlink planted
/// where one might go redirects nothing.
#[test]
fn symlinks_planted_at_temp_names_redirect_nothing() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("empty"), b"");
    write(&src.join("small.txt"), b"hello\n");
    let dest = sshd.mkdir("dest");
    let outside = sshd.mkdir("outside");
    let victim = outside.join("victim");
    write(&victim, b"precious\n");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o640)).unwrap();
    // The names the content-derived scheme gave these two files.
    for (name, data) in [("empty", &b""[..]), ("small.txt", &b"hello\n"[..])] {
        let h = blake3::hash(data).to_hex().to_string();
        symlink(&victim, dest.join(format!(".{name}.rbs-{}.part", &h[..8]))).unwrap();
    }
    let state = t.path().join("state");
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_eq!(fs::read(&victim).unwrap(), b"precious\n");
    assert_eq!(
        fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
        0o640
    );
    assert_same_tree(&src, &dest);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
}

/// Pushes `src`, SIGKILLs robosync half-way through its bytes, and does
/// `meddle` to every temp file it left.
fn interrupted_push(
    sshd: &Sshd,
    src: &Path,
    dest: &Path,
    state: &Path,
    meddle: impl Fn(&Path),
) -> (Proxy, PathBuf) {
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(sshd, &proxy);
    let total = total_size(src);
    let mut cmd = robosync_with(&cfg, state);
    cmd.args(["--connections", "1", "--channels", "1"])
        .arg(contents(src))
        .arg(remote(dest));
    assert!(
        kill_when(&mut cmd, || proxy.stats().up, total / 2),
        "the push finished before it could be interrupted"
    );
    let temps = temp_files(dest);
    assert!(!temps.is_empty(), "the interrupted run left no temp file");
    temps.iter().for_each(|p| meddle(p));
    (proxy, cfg)
}

/// Observation 2: a read-only file whose temp already carries its final
/// mode (interrupted between the attributes and the rename) does not wedge
/// later runs.
#[test]
fn a_read_only_temp_left_by_an_interrupted_run_does_not_wedge_the_next() {
    let t = tempdir();
    // Without root's power to ignore file modes, as a robot node's login.
    let sshd = Sshd::builder().unprivileged(true).start();
    let src = t.path().join("src");
    write(&src.join("ro.bin"), &bytes(16 << 20, 5));
    fs::set_permissions(src.join("ro.bin"), fs::Permissions::from_mode(0o444)).unwrap();
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    let (_proxy, cfg) = interrupted_push(&sshd, &src, &dest, &state, |p| {
        fs::set_permissions(p, fs::Permissions::from_mode(0o444)).unwrap()
    });
    run(robosync_with(&cfg, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
}

/// Observation 5: a temp shorter (or longer) than the journal says is
/// resumed or restarted, never a panic, never a wrong file.
#[test]
fn a_temp_shorter_or_longer_than_the_journal_says_is_handled() {
    for change in [0u64, 1 << 20, 40 << 20] {
        let sshd = Sshd::start();
        let t = tempdir();
        let src = t.path().join("src");
        write(&src.join("big.bin"), &bytes(24 << 20, 8));
        let dest = sshd.mkdir("dest");
        let state = t.path().join("state");
        let (_proxy, cfg) = interrupted_push(&sshd, &src, &dest, &state, |p| {
            let f = fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(change).unwrap();
        });
        let rerun = run(robosync_with(&cfg, &state)
            .arg(contents(&src))
            .arg(remote(&dest)));
        assert_eq!(
            rerun.code(),
            0,
            "temp cut to {change} bytes: {}",
            rerun.stderr()
        );
        assert_same_tree(&src, &dest);
        assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
    }
}

/// Observation 3: `--delete` never follows a directory that a co-tenant
/// swapped for a symlink after it was listed, and says what it left: a
/// directory to delete whole (`gone`), and one whose extra file is deleted
/// (`kept`).
#[test]
fn delete_does_not_follow_a_directory_swapped_for_a_symlink() {
    for swap in ["gone", "kept"] {
        let sshd = Sshd::start();
        let proxy = Proxy::with_shaping(
            sshd.port,
            Shaping {
                one_way_delay: Duration::ZERO,
                rate: 2 << 20,
            },
        );
        let cfg = via_proxy(&sshd, &proxy);
        let t = tempdir();
        let src = t.path().join("src");
        write(&src.join("a-first.txt"), b"first\n");
        write(&src.join("kept/file.txt"), b"kept\n");
        write(&src.join("z-slow.bin"), &bytes(6 << 20, 2));
        let dest = sshd.mkdir("dest");
        write(&dest.join("gone/old.txt"), b"old\n");
        write(&dest.join("kept/old.txt"), b"old\n");
        let outside = sshd.mkdir("outside");
        write(&outside.join("precious.txt"), b"precious\n");
        write(&outside.join("old.txt"), b"precious too\n");
        let state = t.path().join("state");
        let swapped = Arc::new(AtomicBool::new(false));
        let ran = {
            let (d, outside, swapped) = (dest.clone(), outside.clone(), swapped.clone());
            let _cotenant = Meddler::start(move || {
                // Once files land, the listing is over: swap the directory.
                if swapped.load(Ordering::Relaxed) || !d.join("a-first.txt").exists() {
                    return;
                }
                fs::rename(d.join(swap), d.join(format!("{swap}.moved"))).unwrap();
                symlink(&outside, d.join(swap)).unwrap();
                swapped.store(true, Ordering::Relaxed);
            });
            run(robosync_with(&cfg, &state)
                .args(["--delete", "--max-delete", "100"])
                .arg(contents(&src))
                .arg(remote(&dest)))
        };
        assert!(swapped.load(Ordering::Relaxed), "the swap never happened");
        let stderr = ran.stderr();
        for (name, want) in [
            ("precious.txt", "precious\n"),
            ("old.txt", "precious too\n"),
        ] {
            assert_eq!(
                fs::read_to_string(outside.join(name)).ok().as_deref(),
                Some(want),
                "{swap}: {name} outside DEST was touched: {stderr}"
            );
        }
        assert_ne!(ran.code(), 0, "{swap}: a refused deletion must not exit 0");
        assert_ne!(ran.code(), 101, "{stderr}");
        assert!(
            stderr.contains(swap),
            "{swap}: does not say what it left: {stderr}"
        );
    }
}

//! Issue 4: crashes, dropped links, block deltas, delete guards, damaged state.

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::util::*;

/// SSH framing and SFTP headers on top of the payload, and the listing/handshake.
fn overhead(payload: u64) -> u64 {
    payload / 20 + (4 << 20)
}

#[test]
fn sigkill_at_several_points_then_rerun_lands_everything_once() {
    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("big/huge.bin"), &bytes(256 << 20, 3));
    small_files(&src, 2000);
    let total = total_size(&src);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    let args = ["--connections", "1", "--channels", "2"];

    // Kill at roughly 15%, 45% and 75% of the payload, as seen on the wire.
    let mut kills = 0;
    for frac in [0.15, 0.45, 0.75] {
        let mut cmd = robosync_with(&cfg, &state);
        cmd.args(args).arg(contents(&src)).arg(remote(&dest));
        kills += kill_when(&mut cmd, || proxy.stats().up, (total as f64 * frac) as u64) as u64;
    }
    assert!(
        kills >= 2,
        "the transfer finished before it could be killed"
    );
    run(robosync_with(&cfg, &state)
        .args(args)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));

    // Per kill at most the in-flight window is lost: 2 sessions × 16 MiB budget.
    let window = 2 * (16 << 20);
    let sent = proxy.stats().up;
    let allowed = total + overhead(total) + kills * window;
    assert!(
        sent <= allowed,
        "sent {sent} bytes for {total} bytes of data (allowed {allowed})"
    );
}

#[test]
fn dropped_connections_mid_run_are_survived_and_nothing_partial_is_visible() {
    let sshd = Sshd::start();
    let proxy = Arc::new(Proxy::start(sshd.port));
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("big.bin"), &bytes(96 << 20, 9));
    small_files(&src, 500);
    let total = total_size(&src);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");

    // Watch the destination: a file under its final name must always be complete.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (src, dest, stop) = (src.clone(), dest.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for k in final_names(&dest, &dest) {
                    let want = fs::metadata(src.join(&k)).map(|m| m.len()).ok();
                    let got = fs::metadata(dest.join(&k)).map(|m| m.len()).ok();
                    if want.is_some() && got.is_some() && want != got {
                        bad.push(k.clone());
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            bad
        })
    };
    let run_done = Arc::new(AtomicBool::new(false));
    let cutter = {
        let (proxy, run_done) = (proxy.clone(), run_done.clone());
        std::thread::spawn(move || {
            for frac in [0.2, 0.5, 0.8] {
                let at = (total as f64 * frac) as u64 + 12_345;
                while proxy.stats().up < at && !run_done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                }
                proxy.cut_all();
            }
        })
    };
    let first = run(robosync_with(&cfg, &state)
        .args([
            "--retry-for",
            "60s",
            "--connections",
            "2",
            "--channels",
            "2",
        ])
        .arg(contents(&src))
        .arg(remote(&dest)));
    run_done.store(true, Ordering::Relaxed);
    cutter.join().unwrap();
    if first.code() != 0 {
        // Allowed, but it must say what happened.
        assert!(first.stderr().contains("connection"), "{}", first.stderr());
    }
    run(robosync_with(&cfg, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    stop.store(true, Ordering::Relaxed);
    let bad = watcher.join().unwrap();
    assert!(
        bad.is_empty(),
        "partial files seen under their final names: {bad:?}"
    );
    assert!(proxy.stats().cuts >= 1);
    assert_same_tree(&src, &dest);
    assert!(temp_files(&dest).is_empty());
}

fn delta_case(extra: &[&str]) {
    let sshd = Sshd::start();
    let proxy = Proxy::start(sshd.port);
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    let file = src.join("data.bin");
    write(&file, &bytes(64 << 20, 5));
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    run(robosync_with(&cfg, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();

    // Change 1 MiB in the middle (not block-aligned).
    let f = fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&bytes(1 << 20, 77), (31 << 20) + 1000)
        .unwrap();
    drop(f);
    set_mtime(&file, 1_700_000_000);
    let before = proxy.stats().up;
    run(robosync_with(&cfg, &state)
        .args(extra)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    let sent = proxy.stats().up - before;
    assert_same_tree(&src, &dest);
    assert!(
        sent <= 2 << 20,
        "a 1 MiB change cost {sent} bytes on the wire"
    );
}

#[test]
fn a_changed_middle_is_sent_as_a_block_delta_with_copy_data() {
    delta_case(&[]);
}

#[test]
fn a_changed_middle_is_sent_as_a_block_delta_in_place() {
    delta_case(&["--inplace"]);
}

#[test]
fn delete_guards_refuse_an_empty_source_and_mass_deletion() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    for i in 0..10 {
        write(&src.join(format!("f{i}")), b"data");
    }
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();

    let empty = t.path().join("empty");
    fs::create_dir_all(&empty).unwrap();
    let r = run(robosync(&sshd, &state)
        .arg("--delete")
        .arg(contents(&empty))
        .arg(remote(&dest)));
    assert_eq!(r.code(), 25, "{}", r.stderr());
    assert!(r.stderr().contains("empty"), "{}", r.stderr());
    assert_eq!(
        fs::read_dir(&dest).unwrap().count(),
        11,
        "nothing may be deleted"
    );

    for i in 0..7 {
        fs::remove_file(src.join(format!("f{i}"))).unwrap();
    }
    let r = run(robosync(&sshd, &state)
        .arg("--delete")
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(r.code(), 25, "{}", r.stderr());
    assert!(r.stderr().contains("--max-delete"), "{}", r.stderr());
    assert!(dest.join("f0").exists());

    let r = run(robosync(&sshd, &state)
        .args(["--delete", "--max-delete", "7", "--backup-dir"])
        .arg(dest.join("../backup"))
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    let _ = r;
    assert!(!dest.join("f0").exists());
    assert!(
        dest.join("../backup/f0").exists(),
        "deleted entries are moved to the backup dir"
    );
    assert!(dest.join("f9").exists());
}

#[test]
fn damaged_manifest_and_journal_fall_back_to_a_full_compare() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();

    // Flip bytes in every state file, locally and on the destination.
    let mut damaged = 0;
    for dir in [state.clone(), dest.join(".robosync")] {
        for e in walk_files(&dir) {
            let mut b = fs::read(&e).unwrap();
            if b.len() > 40 {
                let n = b.len();
                b[n / 2] ^= 0xff;
                b[20] ^= 0x55;
                fs::write(&e, b).unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged >= 2);
    // The destination drifted too: the fallback must notice by size/mtime.
    write(&dest.join("empty"), b"changed behind robosync's back");
    let r = run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert!(r.stderr().contains("manifest"), "{}", r.stderr());
    assert_same_tree(&src, &dest);
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Files under their final names right now (tolerates entries vanishing mid-walk).
fn final_names(root: &std::path::Path, dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(final_names(root, &p)),
            Ok(t) if t.is_file() && !is_temp(&e.file_name()) => {
                out.push(p.strip_prefix(root).unwrap().to_path_buf())
            }
            _ => {}
        }
    }
    out
}

fn is_temp(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n.ends_with(".part") && n.contains(".rbs-")
}

//! Issue 18: what an operator sees. The progress display on a real
//! terminal (a pty), the `--json` report read back into its documented
//! struct, itemisation on stdout, `--stats`, `--log-file`, `--bwlimit`.

use std::fs;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::*;

use robosync_sync::json::{ErrorKind, Report, SCHEMA_VERSION};

/// What a run printed with its stderr (and, unless `pipe_stdout`, its
/// stdout) on a 160×40 pseudo-terminal.
struct Screen {
    code: i32,
    /// Everything written to the terminal, escape sequences removed.
    text: String,
    /// stdout, when it was a pipe.
    stdout: String,
}

fn on_terminal(mut cmd: Command, pipe_stdout: bool) -> Screen {
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 160,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors, which we then own.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded: both fds are open and owned by nobody else.
    let (master, slave) = unsafe { (fs::File::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    cmd.env("TERM", "xterm-256color").stdin(Stdio::null());
    cmd.stderr(Stdio::from(slave.try_clone().unwrap()));
    if pipe_stdout {
        cmd.stdout(Stdio::piped());
    } else {
        cmd.stdout(Stdio::from(slave.try_clone().unwrap()));
    }
    let mut child = cmd.spawn().unwrap();
    // Only the child may hold the terminal now: reading ends when it exits.
    drop((cmd, slave));
    let (tx, rx) = mpsc::channel();
    let mut m = master;
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = m.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        let _ = tx.send(all);
    });
    let stdout = child.stdout.take().map(|mut o| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = o.read_to_string(&mut s);
            s
        })
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("robosync did not finish on the terminal");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let raw = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    Screen {
        code: status.code().unwrap_or(-1),
        text: strip_escapes(&String::from_utf8_lossy(&raw)),
        stdout: stdout.map(|t| t.join().unwrap()).unwrap_or_default(),
    }
}

/// The terminal's text without its control sequences (`ESC [ … letter`).
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else if c != '\r' {
            out.push(c);
        }
    }
    out
}

/// A mixed tree: the sample tree (10 MiB file, links, odd names) and 40 small files.
fn mixed_tree(root: &Path) {
    sample_tree(root);
    small_files(root, 40);
}

/// The acceptance test: a push on a terminal, through a link slow enough
/// that the connection takes a few round trips and the transfer a few
/// seconds, shows the scan's counts while connecting, then the percentage
/// and files done/total, and leaves a one-line summary.
#[test]
fn progress_on_a_terminal_shows_phase_percentage_files_and_a_summary() {
    let sshd = Sshd::start();
    let shaping = robosync_testbed::Shaping {
        one_way_delay: Duration::from_millis(100),
        rate: 4 << 20,
    };
    let proxy = Proxy::with_shaping(sshd.port, shaping);
    let cfg = via_proxy(&sshd, &proxy);
    let t = tempdir();
    let src = t.path().join("src");
    mixed_tree(&src);
    let dest = sshd.mkdir("dest");
    let mut cmd = robosync_with(&cfg, &t.path().join("state"));
    cmd.args(["--connections", "1"])
        .arg(contents(&src))
        .arg(remote(&dest));
    let s = on_terminal(cmd, false);
    assert_eq!(s.code, 0, "{}", s.text);
    assert_same_tree(&src, &dest);
    let text = &s.text;
    // While connecting, the scan (done by then) is counted on the phase line.
    assert!(text.contains("connecting"), "{text}");
    assert!(
        text.contains("scanned ") && text.contains(" entries, hashed "),
        "{text}"
    );
    // During the transfer: percentage and files done of the total.
    assert!(text.contains("transferring"), "{text}");
    assert!(text.contains("%)"), "{text}");
    let files = snapshot(&src)
        .values()
        .filter(|i| !matches!(i, Item::Dir { .. }))
        .count();
    assert!(
        text.contains(&format!("/{files}")),
        "files of {files}: {text}"
    );
    // The summary is the last thing said, on one line (the bar is gone).
    let last = text[text.rfind("robosync: ").unwrap()..].trim_end();
    assert!(
        last.starts_with(&format!("robosync: sent {files} files")),
        "{last:?} in {text}"
    );
    assert!(!last.contains('\n') && last.contains("0 failed"), "{last}");
}

/// `robosync -v … > list.txt` on a terminal: the bar is on stderr, the
/// itemised list on stdout, where the redirection catches it.
#[test]
fn verbose_itemisation_goes_to_stdout_while_a_bar_shows() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let dest = sshd.mkdir("dest");
    let mut cmd = robosync(&sshd, &t.path().join("state"));
    cmd.arg("-v").arg(contents(&src)).arg(remote(&dest));
    let s = on_terminal(cmd, true);
    assert_eq!(s.code, 0, "{}", s.text);
    assert!(
        s.stdout.contains(">f+++++++++ big.bin"),
        "stdout: {:?}",
        s.stdout
    );
    assert!(!s.text.contains(">f+++++++++ big.bin"), "{}", s.text);
}

/// stdout parsed as exactly one JSON document, into the documented struct.
fn report(ran: &Ran) -> Report {
    let out = ran.stdout();
    let value: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {out:?}"));
    for key in [
        "schema_version",
        "exit_code",
        "dry_run",
        "files_transferred",
        "bytes_transferred",
        "files_skipped",
        "deleted",
        "resumed_bytes",
        "elapsed_seconds",
        "planned",
        "errors",
        "vanished",
    ] {
        assert!(value.get(key).is_some(), "{key} missing: {out}");
    }
    let r: Report = serde_json::from_value(value).unwrap();
    assert_eq!(r.schema_version, SCHEMA_VERSION);
    assert_eq!(r.exit_code, ran.code(), "{out}");
    // It round-trips: nothing in it the struct does not describe.
    assert_eq!(
        serde_json::from_str::<Report>(&serde_json::to_string(&r).unwrap()).unwrap(),
        r
    );
    r
}

#[test]
fn json_is_one_document_on_success_and_dry_run_even_with_v() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");

    let dry = run(robosync(&sshd, &state)
        .args(["--json", "-n", "-v"])
        .arg(contents(&src))
        .arg(remote(&dest)));
    let r = report(&dry);
    assert_eq!(r.exit_code, 0);
    assert!(r.dry_run);
    assert!(
        r.planned.iter().any(|l| l == ">f+++++++++ big.bin"),
        "{r:?}"
    );
    assert!(
        fs::read_dir(&dest).unwrap().next().is_none(),
        "a dry run wrote"
    );

    let real = run(robosync(&sshd, &state)
        .args(["--json", "-v", "--stats"])
        .arg(contents(&src))
        .arg(remote(&dest)));
    let r = report(&real);
    assert!(!r.dry_run && r.errors.is_empty(), "{r:?}");
    assert!(
        r.files_transferred >= 8 && r.bytes_transferred >= 10 << 20,
        "{r:?}"
    );
    // -v's itemisation and --stats' block go to stderr under --json.
    assert!(
        real.stderr().contains(">f+++++++++ big.bin"),
        "{}",
        real.stderr()
    );
    assert!(
        real.stderr().contains("Number of files transferred:"),
        "{}",
        real.stderr()
    );
    assert_same_tree(&src, &dest);
}

/// A push where one directory refuses writes: exit 23, and the failure is an
/// object naming the entry; the rest landed.
#[test]
fn json_reports_a_partial_failure_with_error_objects() {
    let sshd = Sshd::builder().unprivileged(true).start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("ok.txt"), b"fine\n");
    write(&src.join("locked/x.txt"), b"refused\n");
    let dest = sshd.mkdir("dest");
    fs::create_dir(dest.join("locked")).unwrap();
    for d in [src.join("locked"), dest.join("locked")] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o555)).unwrap();
    }
    let ran = run(robosync(&sshd, &t.path().join("state"))
        .arg("--json")
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(ran.code(), 23, "{}", ran.stderr());
    let r = report(&ran);
    assert_eq!(fs::read_to_string(dest.join("ok.txt")).unwrap(), "fine\n");
    assert_eq!(r.errors.len(), 1, "{r:?}");
    let e = &r.errors[0];
    assert_eq!(e.kind, ErrorKind::Entry);
    assert!(e.message.contains("locked/x.txt"), "{e:?}");
    assert_eq!(e.path.as_deref(), Some("locked/x.txt"), "{e:?}");
}

#[test]
fn json_reports_a_connection_failure_as_one_document() {
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("a"), b"a");
    let port = robosync_testbed::free_port();
    let cfg = t.path().join("ssh_config");
    fs::write(
        &cfg,
        format!("Host nowhere\n  HostName 127.0.0.1\n  Port {port}\n  BatchMode yes\n"),
    )
    .unwrap();
    let ran = run(robosync_with(&cfg, &t.path().join("state"))
        .args(["--json", "-v"])
        .arg(contents(&src))
        .arg("nowhere:/tmp/x"));
    assert_eq!(ran.code(), 10, "{}", ran.stderr());
    let r = report(&ran);
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert_eq!(r.errors[0].kind, ErrorKind::Connect);
}

/// `--log-file` keeps the itemised actions with timestamps, appended run
/// after run; `--itemize-changes` lists them without -v's notes.
#[test]
fn log_file_and_itemize_changes_record_each_action() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let dest = sshd.mkdir("dest");
    let log = t.path().join("robosync.log");
    let ran = run(robosync(&sshd, &t.path().join("state"))
        .arg("--itemize-changes")
        .arg("--log-file")
        .arg(&log)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert!(
        ran.stdout().contains(">f+++++++++ big.bin"),
        "{}",
        ran.stdout()
    );
    assert!(ran.stdout().contains("cd+++++++++ a/b"), "{}", ran.stdout());
    let text = fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.ends_with(">f+++++++++ big.bin"))
        .unwrap();
    // "2026-01-02 03:04:05 UTC >f+++++++++ big.bin"-like: a date first.
    assert!(
        line.as_bytes()[..4].iter().all(u8::is_ascii_digit),
        "{line}"
    );
    assert!(
        text.lines().last().unwrap().contains("done: exit 0"),
        "{text}"
    );
}

/// `--json-progress` (with `--json`): every stderr line is a JSON object of
/// the documented shape, phases come in the engine's order, progress lines
/// are at least half a second apart and show the transfer moving, and the
/// last line's counters are the totals and the report's. stdout holds the
/// report alone.
#[test]
fn json_progress_lines_parse_phases_in_order_and_end_at_the_totals() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let dest = sshd.mkdir("dest");
    let state = t.path().join("state");
    // 4 MiB/s: the 10 MiB file takes a few seconds, so progress lines come.
    let ran = run(robosync(&sshd, &state)
        .args(["--json", "--json-progress", "--bwlimit", "4M"])
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    let r = report(&ran);
    let lines: Vec<serde_json::Value> = ran
        .stderr()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    let fields = [
        "schema_version",
        "event",
        "phase",
        "elapsed_seconds",
        "bytes_done",
        "bytes_total",
        "bytes_resumed",
        "files_done",
        "files_total",
        "bytes_per_second",
        "scanned_entries",
        "hashed_bytes",
    ];
    for l in &lines {
        assert_eq!(l["schema_version"], 1, "{l}");
        for f in fields {
            assert!(l.get(f).is_some(), "{f} missing: {l}");
        }
        assert_eq!(l.as_object().unwrap().len(), fields.len(), "{l}");
    }
    let order = [
        "connecting",
        "scanning",
        "listing",
        "planning",
        "transferring",
        "recording",
        "closing",
    ];
    let phases: Vec<usize> = lines
        .iter()
        .filter(|l| l["event"] == "phase")
        .map(|l| order.iter().position(|p| l["phase"] == *p).unwrap())
        .collect();
    assert_eq!(phases.first(), Some(&0), "{lines:?}");
    assert!(phases.windows(2).all(|w| w[0] < w[1]), "{phases:?}");
    assert!(phases.contains(&4), "no transferring phase: {phases:?}");
    // Progress lines: at most two a second, and the transfer seen moving.
    let mut last = -1.0;
    for l in &lines {
        let at = l["elapsed_seconds"].as_f64().unwrap();
        if l["event"] == "progress" {
            assert!(at - last >= 0.49, "progress lines too close: {lines:?}");
        }
        last = at;
    }
    let moving: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "progress" && l["phase"] == "transferring")
        .collect();
    assert!(!moving.is_empty(), "{lines:?}");
    assert!(moving
        .iter()
        .any(|l| l["bytes_per_second"].as_u64() > Some(0)));
    let end = lines.last().unwrap();
    assert_eq!(end["event"], "end", "{end}");
    assert_eq!(lines.iter().filter(|l| l["event"] == "end").count(), 1);
    assert_eq!(end["bytes_done"], end["bytes_total"], "{end}");
    assert_eq!(end["files_done"], end["files_total"], "{end}");
    assert_eq!(end["files_done"], r.files_transferred, "{end} {r:?}");
    assert_eq!(end["bytes_done"], r.bytes_transferred, "{end} {r:?}");
    assert_same_tree(&src, &dest);

    // Alone, it leaves stdout empty.
    write(&src.join("new.txt"), b"new\n");
    let ran = run(robosync(&sshd, &state)
        .arg("--json-progress")
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_eq!(ran.stdout(), "");
    let end: serde_json::Value =
        serde_json::from_str(ran.stderr().lines().last().unwrap()).unwrap();
    assert_eq!(end["files_done"], 1, "{end}");
}

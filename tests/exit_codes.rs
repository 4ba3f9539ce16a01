//! Issue 15: one exit code per kind of outcome, rsync's numbers where the
//! meaning matches, each provoked for real (see main.rs for the table).

use std::fs;
use std::path::Path;

use crate::util::*;

/// A source with one file, and a destination on the server.
fn one_file(sshd: &Sshd, t: &Path) -> (String, String) {
    let src = t.join("src");
    write(&src.join("f"), b"x");
    (contents(&src), remote(&sshd.mkdir("d")))
}

#[test]
fn nothing_listening_on_the_port_is_10() {
    let sshd = Sshd::start();
    let t = tempdir();
    let (src, dest) = one_file(&sshd, t.path());
    let port = robosync_testbed::free_port();
    let cfg = t.path().join("config");
    let stanza = sshd
        .config_stanza("robot")
        .replace(&format!("Port {}", sshd.port), &format!("Port {port}"));
    fs::write(&cfg, stanza).unwrap();
    let r = run(robosync_with(&cfg, &t.path().join("state"))
        .args(["--retry-for", "0s", "--json"])
        .arg(&src)
        .arg(&dest));
    assert_eq!(r.code(), 10, "{}", r.stderr());
    assert_eq!(r.json()["exit_code"], 10);
}

/// A proxy that cannot reach the host (as a ProxyJump hop that is down):
/// the login never happens, which is not a lost connection (30) either.
#[test]
fn a_proxy_command_that_fails_is_10() {
    let sshd = Sshd::start();
    let t = tempdir();
    let (src, dest) = one_file(&sshd, t.path());
    let r = run(robosync(&sshd, &t.path().join("state"))
        .args(["-o", "ProxyCommand=exit 1", "--retry-for", "1s"])
        .arg(&src)
        .arg(&dest));
    assert_eq!(r.code(), 10, "{}", r.stderr());
}

#[test]
fn a_key_the_server_does_not_accept_is_255() {
    let sshd = Sshd::start();
    fs::write(&sshd.authorized_keys, "").unwrap();
    let t = tempdir();
    let (src, dest) = one_file(&sshd, t.path());
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg("--json")
        .arg(&src)
        .arg(&dest));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("permission denied"), "{}", r.stderr());
    assert_eq!(r.json()["exit_code"], 255);
}

#[test]
fn a_wrapper_refusing_sftp_is_5() {
    let sshd = Sshd::builder().reject_sftp(true).start();
    let t = tempdir();
    let (src, dest) = one_file(&sshd, t.path());
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg(&src)
        .arg(&dest));
    assert_eq!(r.code(), 5, "{}", r.stderr());
    assert!(
        r.stderr()
            .contains("Command rejected by transfer_commands.sh"),
        "{}",
        r.stderr()
    );
}

#[test]
fn a_server_breaking_the_protocol_is_12() {
    let hostile = robosync_testbed::hostile_sftp_server();
    let sshd = Sshd::builder().sftp_server(&hostile).start();
    let t = tempdir();
    // A READDIR announcing u32::MAX names.
    let r = run(robosync(&sshd, &t.path().join("state"))
        .args(["--retry-for", "0s"])
        .arg("robot:/absurd-root/")
        .arg(t.path().join("dest")));
    assert_eq!(r.code(), 12, "{}", r.stderr());
}

#[test]
fn an_unreadable_rules_file_is_3() {
    let sshd = Sshd::start();
    let t = tempdir();
    let (src, dest) = one_file(&sshd, t.path());
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg("--exclude-from")
        .arg(t.path().join("no-such-rules"))
        .arg(&src)
        .arg(&dest));
    assert_eq!(r.code(), 3, "{}", r.stderr());
    assert!(r.stderr().contains("no-such-rules"), "{}", r.stderr());
}

/// rsync's 24: a file the scan listed is gone when it is to be sent. Not
/// an error of 23: everything else lands, and a rerun is clean.
#[test]
fn a_source_file_vanishing_before_it_is_sent_is_24_push() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("stays.txt"), b"stays\n");
    write(&src.join("gone.txt"), b"gone\n");
    let dest = sshd.mkdir("d");
    let state = t.path().join("state");
    let r = run(robosync(&sshd, &state)
        .arg("--json")
        .env(
            "ROBOSYNC_TEST_BEFORE_TRANSFER",
            format!("rm {}", src.join("gone.txt").display()),
        )
        .arg(contents(&src))
        .arg(remote(&dest)));
    assert_eq!(r.code(), 24, "{}", r.stderr());
    assert!(
        r.stderr().contains("file has vanished: gone.txt"),
        "{}",
        r.stderr()
    );
    let json = r.json();
    assert_eq!(json["exit_code"], 24);
    assert_eq!(json["errors"], serde_json::json!([]));
    assert_eq!(json["vanished"], serde_json::json!(["gone.txt"]));
    assert_eq!(fs::read(dest.join("stays.txt")).unwrap(), b"stays\n");
    assert!(!dest.join("gone.txt").exists());
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
    run(robosync(&sshd, &state)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
}

#[test]
fn a_source_file_vanishing_before_it_is_fetched_is_24_pull() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = sshd.mkdir("src");
    write(&src.join("stays.txt"), b"stays\n");
    write(&src.join("gone.txt"), b"gone\n");
    let dest = t.path().join("dest");
    let state = t.path().join("state");
    let r = run(robosync(&sshd, &state)
        .arg("--json")
        .env(
            "ROBOSYNC_TEST_BEFORE_TRANSFER",
            format!("rm {}", src.join("gone.txt").display()),
        )
        .arg(remote(&src))
        .arg(&dest));
    assert_eq!(r.code(), 24, "{}", r.stderr());
    let json = r.json();
    assert_eq!(json["errors"], serde_json::json!([]));
    assert_eq!(json["vanished"], serde_json::json!(["gone.txt"]));
    assert_eq!(fs::read(dest.join("stays.txt")).unwrap(), b"stays\n");
    assert!(!dest.join("gone.txt").exists());
    assert!(temp_files(&dest).is_empty(), "{:?}", temp_files(&dest));
    run(robosync(&sshd, &state).arg(remote(&src)).arg(&dest)).success();
}

/// A vanished file does not hide a real failure: that one still decides (23).
#[test]
fn a_vanished_file_and_a_failed_one_is_23() {
    let sshd = Sshd::builder().unprivileged(true).start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("gone.txt"), b"gone\n");
    write(&src.join("locked/f"), b"f\n");
    let dest = sshd.mkdir("d");
    write(&dest.join("locked/f"), b"old\n");
    set_mtime(&dest.join("locked/f"), 1_000_000_000);
    // The server may not write into locked/.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dest.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
    let r = run(robosync(&sshd, &t.path().join("state"))
        .arg("--json")
        .env(
            "ROBOSYNC_TEST_BEFORE_TRANSFER",
            format!("rm {}", src.join("gone.txt").display()),
        )
        .arg(contents(&src))
        .arg(remote(&dest)));
    fs::set_permissions(dest.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(r.code(), 23, "{}", r.stderr());
    assert_eq!(r.json()["vanished"], serde_json::json!(["gone.txt"]));
}

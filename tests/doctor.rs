//! Issue 18: `robosync doctor HOST[:PATH]` against the testbed's robot
//! sshd: every check passes on a working node and leaves nothing there; a
//! refused subsystem, an expired certificate, an unknown host key and an
//! IPv6 connection against an IPv4 from= pattern each fail at their own
//! check, with the fix, and the exit code a sync would have had.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::*;

fn doctor(config: &Path, target: &str) -> Ran {
    doctor_with(&[], config, target)
}

/// `robosync doctor` with `extra` arguments first.
fn doctor_with(extra: &[&str], config: &Path, target: &str) -> Ran {
    let mut c = Command::new(env!("CARGO_BIN_EXE_robosync"));
    c.arg("doctor")
        .args(extra)
        .arg("-F")
        .arg(config)
        .arg("--probe-size")
        .arg("1M")
        .arg(target)
        .env_remove("SSH_AUTH_SOCK");
    run(&mut c)
}

/// The line of check `name`, e.g. "✓ SFTP: …".
fn line<'a>(r: &'a Ran, name: &str) -> &'a str {
    let out = std::str::from_utf8(&r.out.stdout).unwrap();
    out.lines()
        .find(|l| {
            l.split_once(' ')
                .is_some_and(|(mark, t)| !mark.is_empty() && t.starts_with(&format!("{name}:")))
        })
        .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
}

#[track_caller]
fn passed(r: &Ran, name: &str) {
    assert!(line(r, name).starts_with('✓'), "{}", r.stdout());
}

#[track_caller]
fn failed(r: &Ran, name: &str) {
    assert!(line(r, name).starts_with('✗'), "{}", r.stdout());
}

#[test]
fn doctor_passes_every_check_on_a_robot_node_and_leaves_nothing() {
    let sshd = Sshd::start();
    let dir = sshd.mkdir("dest");
    let r = doctor(&sshd.ssh_config, &format!("robot:{}", dir.display()));
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    for check in [
        "config",
        "key files",
        "DNS",
        "TCP",
        "host key",
        "authentication",
        "SFTP",
        "extensions",
        "PATH",
        "sessions",
        "round trip",
        "throughput",
    ] {
        passed(&r, check);
    }
    assert!(!r.stdout().contains('✗'), "{}", r.stdout());
    assert!(line(&r, "TCP").contains("127.0.0.1"), "{}", r.stdout());
    assert!(line(&r, "extensions").contains("posix-rename ✓"));
    // The probe file is gone; nothing else was made.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    // Only the SFTP server was asked for: no exec, no shell.
    let sftp = sshd.sftp_server.display().to_string();
    assert!(
        sshd.wrapper_commands().iter().all(|c| *c == sftp),
        "{:?}",
        sshd.wrapper_commands()
    );

    // Without a PATH the write probe is skipped, and the run still passes.
    let r = doctor(&sshd.ssh_config, "robot");
    assert_eq!(r.code(), 0, "{}", r.stdout());
    assert!(line(&r, "throughput").starts_with("- "), "{}", r.stdout());
}

#[test]
fn doctor_quotes_a_forced_command_that_refuses_sftp() {
    let sshd = Sshd::builder().reject_sftp(true).start();
    let r = doctor(&sshd.ssh_config, "robot:/tmp");
    assert_eq!(r.code(), 5, "{}\n{}", r.stdout(), r.stderr());
    passed(&r, "authentication");
    failed(&r, "SFTP");
    assert!(
        line(&r, "SFTP").contains("Command rejected by transfer_commands.sh"),
        "{}",
        r.stdout()
    );
    assert!(r.stdout().contains("fix: the key's forced command"));
}

#[test]
fn doctor_names_an_expired_certificate() {
    let t = tempdir();
    let ca = t.path().join("user_ca");
    robosync_testbed::keygen(&ca);
    let sshd = Sshd::builder()
        .config(&format!("TrustedUserCAKeys {}.pub", ca.display()))
        .start();
    fs::write(&sshd.authorized_keys, "").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stamp = |t: u64| {
        robosync_testbed::run(
            Command::new("date")
                .arg("-u")
                .arg("-d")
                .arg(format!("@{t}"))
                .arg("+%Y%m%d%H%M%SZ"),
        )
        .trim()
        .to_string()
    };
    robosync_testbed::run(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&ca)
            .args(["-I", "robosync-test", "-n", &sshd.user, "-V"])
            .arg(format!("{}:{}", stamp(now - 7200), stamp(now - 3600)))
            .arg(format!("{}.pub", sshd.client_key.display())),
    );
    let r = doctor(&sshd.ssh_config, "robot");
    assert_eq!(r.code(), 255, "{}\n{}", r.stdout(), r.stderr());
    failed(&r, "key files");
    assert!(line(&r, "key files").contains("expired"), "{}", r.stdout());
    // The checks that do not need the key still ran.
    passed(&r, "TCP");
    passed(&r, "host key");
    failed(&r, "authentication");
}

#[test]
fn doctor_refuses_an_unknown_host_key_with_its_fingerprint() {
    let sshd = Sshd::start();
    let fingerprint = robosync_testbed::run(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&sshd.host_key_pub),
    );
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    fs::write(&sshd.known_hosts, "").unwrap();
    let r = doctor(&sshd.ssh_config, "robot");
    assert_eq!(r.code(), 255, "{}\n{}", r.stdout(), r.stderr());
    failed(&r, "host key");
    assert!(
        line(&r, "host key").contains(&fingerprint),
        "{}",
        r.stdout()
    );
    assert!(r.stdout().contains("ssh-keyscan -p"), "{}", r.stdout());
    assert!(line(&r, "authentication").starts_with("- "));
    // Nothing was recorded.
    assert_eq!(fs::read_to_string(&sshd.known_hosts).unwrap(), "");
}

#[test]
fn doctor_shows_the_from_pattern_family_trap() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: ::1 is not available here; skipping the IPv6 test");
        return;
    }
    // The robot key's from= is 127.0.0.1; connecting to ::1 comes from ::1.
    let sshd = Sshd::builder().listen_ipv6_too().start();
    let t = tempdir();
    let host_pub = fs::read_to_string(&sshd.host_key_pub).unwrap();
    fs::write(
        &sshd.known_hosts,
        format!("[::1]:{} {}\n", sshd.port, host_pub.trim()),
    )
    .unwrap();
    let cfg = t.path().join("ssh_config");
    fs::write(
        &cfg,
        sshd.config_stanza("robot")
            .replace("HostName 127.0.0.1", "HostName ::1"),
    )
    .unwrap();
    let r = doctor(&cfg, "robot");
    assert_eq!(r.code(), 255, "{}\n{}", r.stdout(), r.stderr());
    passed(&r, "DNS");
    assert!(line(&r, "DNS").contains("over IPv6"), "{}", r.stdout());
    passed(&r, "TCP");
    assert!(line(&r, "TCP").contains("::1"), "{}", r.stdout());
    failed(&r, "authentication");
    assert!(r.stdout().contains("from="), "{}", r.stdout());
    assert!(r.stdout().contains("-4"), "{}", r.stdout());
}

#[test]
fn a_local_directory_named_doctor_is_still_a_source() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("doctor");
    write(&src.join("f.txt"), b"hi\n");
    let dest = sshd.mkdir("d");
    run(robosync(&sshd, &t.path().join("s"))
        .current_dir(t.path())
        .arg("./doctor")
        .arg(remote(&dest)))
    .success();
    assert_eq!(fs::read(dest.join("doctor/f.txt")).unwrap(), b"hi\n");
}

#[test]
fn doctor_lists_the_agent_keys_and_logs_in_with_them() {
    let sshd = Sshd::start();
    let t = tempdir();
    let agent = crate::connect::Agent::start(t.path());
    agent.add(&sshd.client_key);
    let cfg = t.path().join("ssh_config");
    fs::write(
        &cfg,
        sshd.config_stanza("robot")
            .replace(
                &format!("  IdentityFile {}\n", sshd.client_key.display()),
                "",
            )
            .replace("  IdentitiesOnly yes\n", "")
            .replace(
                "IdentityAgent none",
                &format!("IdentityAgent {}", t.path().join("agent.sock").display()),
            ),
    )
    .unwrap();
    let fingerprint = robosync_testbed::run(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(format!("{}.pub", sshd.client_key.display())),
    );
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    let r = doctor(&cfg, "robot");
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(
        line(&r, "config").ends_with("holding 1 key"),
        "{}",
        r.stdout()
    );
    assert!(
        r.stdout()
            .contains(&format!("note: agent key ssh-ed25519 {fingerprint}")),
        "{}",
        r.stdout()
    );
    passed(&r, "authentication");
}

/// `doctor --json`: stdout is one JSON document, a check object per line
/// of the human output (name, status, detail, fix, notes), the exit code
/// as without it; on a robot node all pass, with a refused SFTP subsystem
/// SFTP fails with its fix and what follows is skipped or absent.
#[test]
fn doctor_json_is_one_document_of_checks_with_the_same_exit_code() {
    fn json(config: &Path, target: &str) -> (Ran, serde_json::Value) {
        let r = doctor_with(&["--json"], config, target);
        let v = serde_json::from_str(&r.stdout())
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", r.stdout()));
        (r, v)
    }
    fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check in {v}"))
    }
    let sshd = Sshd::start();
    let dir = sshd.mkdir("dest");
    let target = format!("robot:{}", dir.display());
    let (r, v) = json(&sshd.ssh_config, &target);
    assert_eq!(r.code(), 0, "{v}\n{}", r.stderr());
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["target"], target.as_str());
    // The same checks, in the same order, as the lines.
    let human = doctor(&sshd.ssh_config, &target);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let out = human.stdout();
    let lines: Vec<&str> = out
        .lines()
        .filter_map(|l| {
            l.split_once(' ')
                .filter(|(m, _)| ["✓", "✗", "-"].contains(m))
        })
        .map(|(_, t)| t.split_once(':').unwrap().0)
        .collect();
    assert_eq!(names, lines, "{v}\n{}", human.stdout());
    for c in v["checks"].as_array().unwrap() {
        assert_eq!(c["status"], "ok", "{c}");
        assert!(c["fix"].is_null(), "{c}");
        assert!(c["detail"].as_str().is_some_and(|d| !d.is_empty()), "{c}");
        assert!(c["notes"].is_array(), "{c}");
    }
    assert!(check(&v, "TCP")["detail"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);

    let refusing = Sshd::builder().reject_sftp(true).start();
    let (r, v) = json(&refusing.ssh_config, "robot:/tmp");
    assert_eq!(r.code(), 5, "{v}");
    assert_eq!(v["exit_code"], 5);
    assert_eq!(check(&v, "authentication")["status"], "ok");
    let sftp = check(&v, "SFTP");
    assert_eq!(sftp["status"], "failed", "{sftp}");
    assert!(sftp["detail"]
        .as_str()
        .unwrap()
        .contains("Command rejected by transfer_commands.sh"));
    assert!(sftp["fix"]
        .as_str()
        .unwrap()
        .starts_with("the key's forced command"));
    let statuses: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses
            .iter()
            .all(|s| ["ok", "failed", "skipped"].contains(s)),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == "failed").count(),
        1,
        "{v}"
    );
}

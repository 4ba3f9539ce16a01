//! Issue 18: `robosync robot-key` makes a dedicated key (never over an
//! existing one), checks the from= pattern as the Alliance requires, and
//! prints a line and a config stanza that work: registered on the testbed's
//! robot sshd, `robosync doctor` then passes with them.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::*;

fn robot_key(home: &Path, args: &[&str]) -> Ran {
    let mut c = Command::new(env!("CARGO_BIN_EXE_robosync"));
    c.arg("robot-key")
        .args(args)
        .env("HOME", home)
        .env("USER", "alice");
    run(&mut c)
}

/// The printed authorized_keys line.
fn key_line(r: &Ran) -> String {
    r.stdout()
        .lines()
        .find(|l| l.starts_with("restrict,from="))
        .unwrap_or_else(|| panic!("no key line: {}", r.stdout()))
        .to_string()
}

#[test]
fn robot_key_creates_a_key_prints_line_stanza_and_doctor_and_never_overwrites() {
    let t = tempdir();
    let r = robot_key(t.path(), &["--from", "216.18.209.*"]);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let key = t.path().join(".ssh/robosync_robot_ed25519");
    let public = fs::read_to_string(t.path().join(".ssh/robosync_robot_ed25519.pub")).unwrap();
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o077, 0);
    assert_eq!(
        key_line(&r),
        format!(
            "restrict,from=\"216.18.209.*\",command=\"/cvmfs/soft.computecanada.ca/custom/bin/computecanada/allowed_commands/transfer_commands.sh\" {}",
            public.trim()
        )
    );
    let out = r.stdout();
    for want in [
        "Host robot\n",
        "  User alice\n",
        &format!("  IdentityFile {}\n", key.display()),
        "  IdentitiesOnly yes\n",
        // An IPv4-only pattern: pin the family so IPv6 cannot be refused.
        "  AddressFamily inet\n",
        "robosync doctor robot:~",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }

    // Again: refused, the key untouched.
    let before = fs::read(&key).unwrap();
    let r = robot_key(t.path(), &["--from", "216.18.209.*"]);
    assert_eq!(r.code(), 1, "{}", r.stdout());
    assert!(r.stderr().contains("already exists"), "{}", r.stderr());
    assert_eq!(fs::read(&key).unwrap(), before);
    // --reuse prints the line for the key that is there.
    let r = robot_key(t.path(), &["--from", "216.18.209.*", "--reuse"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(key_line(&r).ends_with(public.trim()));
    assert_eq!(fs::read(&key).unwrap(), before);
}

#[test]
fn robot_key_refuses_patterns_the_alliance_refuses_and_creates_nothing() {
    let t = tempdir();
    for (pattern, why) in [
        ("216.18.*.*", "first three parts must be fixed"),
        ("216.18.0.0/16", "/24 or longer"),
        ("216.18.209", "four parts"),
        ("10.1.2.*", "not a public address"),
        ("192.168.1.*", "not a public address"),
        ("login.example.org", "not host names"),
        ("fd00::/64", "not a public IPv6"),
        ("2620:123::/32", "/48 or longer"),
    ] {
        let r = robot_key(t.path(), &["--from", pattern]);
        assert_eq!(r.code(), 1, "{pattern}: {}", r.stdout());
        assert!(r.stderr().contains(why), "{pattern}: {}", r.stderr());
        assert!(!t.path().join(".ssh").exists(), "{pattern} made a key");
    }
    // Without --from: refused, with how to find the address.
    let r = robot_key(t.path(), &[]);
    assert_eq!(r.code(), 1);
    assert!(r.stderr().contains("--from"), "{}", r.stderr());
    assert!(r.stderr().contains("curl ifconfig.me"), "{}", r.stderr());
    assert!(!t.path().join(".ssh").exists());
}

#[test]
fn robot_key_accepts_ipv6_with_guidance() {
    let t = tempdir();
    let r = robot_key(t.path(), &["--from", "2620:123:7002:4::/64"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(key_line(&r).starts_with("restrict,from=\"2620:123:7002:4::/64\","));
    assert!(
        r.stdout().contains("  AddressFamily inet6\n"),
        "{}",
        r.stdout()
    );
    assert!(r.stdout().contains("IPv6:"), "{}", r.stdout());
    let t = tempdir();
    let r = robot_key(t.path(), &["--from", "216.18.209.*,2620:123:7002:4::/64"]);
    assert_eq!(r.code(), 0, "{}", r.stderr());
    assert!(!r.stdout().contains("  AddressFamily "), "{}", r.stdout());
}

#[test]
fn robot_key_line_and_stanza_work_against_the_robot_sshd() {
    let sshd = Sshd::start();
    let t = tempdir();
    let wrapper = format!(
        "{} {}",
        robosync_testbed::workspace_root()
            .join("fixtures/robot/transfer_commands.sh")
            .display(),
        sshd.wrapper_conf.display()
    );
    let port = sshd.port.to_string();
    let r = robot_key(
        t.path(),
        &[
            "--from",
            "127.0.0.1",
            "--any-address",
            "--command",
            &wrapper,
            "--hostname",
            "127.0.0.1",
            "--port",
            &port,
            "--user",
            &sshd.user,
            "--host",
            "mynode",
        ],
    );
    assert_eq!(r.code(), 0, "{}", r.stderr());
    fs::write(&sshd.authorized_keys, format!("{}\n", key_line(&r))).unwrap();
    // The stanza as printed, plus the testbed's known_hosts.
    let out = r.stdout();
    let stanza: String = out
        .lines()
        .skip_while(|l| !l.starts_with("Host mynode"))
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = t.path().join("config");
    fs::write(
        &cfg,
        format!(
            "{stanza}  UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  IdentityAgent none\n",
            sshd.known_hosts.display()
        ),
    )
    .unwrap();
    let dir = sshd.mkdir("d");
    let mut c = Command::new(env!("CARGO_BIN_EXE_robosync"));
    c.arg("doctor")
        .arg("-F")
        .arg(&cfg)
        .arg("--probe-size")
        .arg("1M")
        .arg(format!("mynode:{}", dir.display()))
        .env_remove("SSH_AUTH_SOCK");
    let r = run(&mut c);
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    assert!(!r.stdout().contains('✗'), "{}", r.stdout());
}

//! Issue 6: connecting like OpenSSH does — certificates and the auth hook,
//! the agent, ProxyJump, known_hosts policy, address families, and the
//! system-ssh carrier through a ControlMaster. Every test runs without a TTY
//! (stdin is /dev/null), so none of them may wait for input.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn sh(cmd: &mut Command) -> String {
    robosync_testbed::run(cmd)
}

fn keygen(path: &Path) {
    robosync_testbed::keygen(path);
}

fn pub_of(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// `SHA256:…` of a public key file.
fn fingerprint(pubkey: &Path) -> String {
    let out = sh(Command::new("ssh-keygen").arg("-lf").arg(pubkey));
    out.split_whitespace().nth(1).unwrap().to_string()
}

/// Signs `key`'s public half as a user certificate for the current user.
fn sign_user(ca: &Path, key: &Path, validity: &str, user: &str) {
    sh(Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca)
        .args(["-I", "robosync-test", "-n", user, "-V", validity])
        .arg(pub_of(key)));
}

/// ssh-keygen's absolute time format, UTC, `secs` from now.
fn keygen_time(offset_secs: i64) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + offset_secs;
    sh(Command::new("date")
        .arg("-u")
        .arg("-d")
        .arg(format!("@{t}"))
        .arg("+%Y%m%d%H%M%SZ"))
    .trim()
    .to_string()
}

/// An sshd that accepts only certificates signed by a fresh user CA: the plain
/// robot key is no longer in authorized_keys.
fn cert_sshd(t: &Path) -> (Sshd, PathBuf) {
    let ca = t.join("user_ca");
    keygen(&ca);
    let sshd = Sshd::builder()
        .config(&format!("TrustedUserCAKeys {}", pub_of(&ca).display()))
        .start();
    fs::write(&sshd.authorized_keys, "").unwrap();
    (sshd, ca)
}

fn one_file_tree(root: &Path) {
    write(&root.join("a/f.txt"), b"hello\n");
    write(&root.join("g.bin"), &bytes(100_000, 3));
}

#[test]
fn certificate_valid_works_expired_is_explained_expiring_warns() {
    let t = tempdir();
    let (sshd, ca) = cert_sshd(t.path());
    let src = t.path().join("src");
    one_file_tree(&src);

    // No certificate: the plain key alone is refused.
    let r = run(robosync(&sshd, &t.path().join("s0"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d0"))));
    assert_eq!(r.code(), 255, "{}", r.stderr());

    sign_user(&ca, &sshd.client_key, "+1h", &sshd.user);
    let dest = sshd.mkdir("d1");
    run(robosync(&sshd, &t.path().join("s1"))
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    assert!(
        sshd.log().contains("Accepted publickey") && sshd.log().contains("CERT"),
        "{}",
        sshd.log()
    );

    // Expired: a precise message before connecting, not "Permission denied".
    let window = format!("{}:{}", keygen_time(-7200), keygen_time(-3600));
    sign_user(&ca, &sshd.client_key, &window, &sshd.user);
    let r = run(robosync(&sshd, &t.path().join("s2"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d2"))));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("expired"), "{}", r.stderr());
    assert!(!r.stderr().contains("permission denied"), "{}", r.stderr());

    // Expiring within the hour: works, with a warning.
    sign_user(&ca, &sshd.client_key, "+30m", &sshd.user);
    let dest = sshd.mkdir("d3");
    let r = run(robosync(&sshd, &t.path().join("s3"))
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert!(r.stderr().contains("expires in"), "{}", r.stderr());
    assert_same_tree(&src, &dest);
}

#[test]
fn auth_hook_refreshes_once_under_concurrency() {
    let t = tempdir();
    let (sshd, ca) = cert_sshd(t.path());
    let src = t.path().join("src");
    one_file_tree(&src);
    // Start from an expired certificate: without the hook neither run could log in.
    let window = format!("{}:{}", keygen_time(-7200), keygen_time(-3600));
    sign_user(&ca, &sshd.client_key, &window, &sshd.user);

    let counter = t.path().join("hook-runs");
    let script = t.path().join("refresh.sh");
    fs::write(
        &script,
        format!(
            "echo run >> {counter}\nsleep 1\nssh-keygen -q -s {ca} -I refreshed -n {user} -V +2h {key}\n",
            counter = counter.display(),
            ca = ca.display(),
            user = sshd.user,
            key = pub_of(&sshd.client_key).display()
        ),
    )
    .unwrap();
    let hook = format!("sh {}", script.display());

    let dests = [sshd.mkdir("d1"), sshd.mkdir("d2")];
    let children: Vec<Child> = dests
        .iter()
        .enumerate()
        .map(|(i, d)| {
            robosync(&sshd, &t.path().join(format!("state{i}")))
                .arg("--auth-command")
                .arg(&hook)
                .arg(contents(&src))
                .arg(remote(d))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for d in &dests {
        assert_same_tree(&src, d);
    }
    assert_eq!(fs::read_to_string(&counter).unwrap(), "run\n");

    // A fresh certificate: the hook is not needed, so it does not run.
    run(robosync(&sshd, &t.path().join("state0"))
        .arg("--auth-command")
        .arg(&hook)
        .arg(contents(&src))
        .arg(remote(&dests[0])))
    .success();
    assert_eq!(fs::read_to_string(&counter).unwrap(), "run\n");

    // Within the margin, it runs; its failure stops the run with its stderr.
    let r = run(robosync(&sshd, &t.path().join("state0"))
        .args(["--auth-margin", "3h", "--auth-command"])
        .arg("echo signing service unreachable >&2; exit 7")
        .arg(contents(&src))
        .arg(remote(&dests[0])));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(
        r.stderr().contains("signing service unreachable"),
        "{}",
        r.stderr()
    );
}

#[test]
fn auth_hook_from_robosync_config_file() {
    let t = tempdir();
    let (sshd, ca) = cert_sshd(t.path());
    let src = t.path().join("src");
    one_file_tree(&src);
    let marker = t.path().join("ran");
    let conf = t.path().join("robosync.conf");
    fs::write(
        &conf,
        format!(
            "Host other\n  AuthCommand false\nHost rob*\n  AuthMargin 30m\n  AuthCommand touch {m} && ssh-keygen -q -s {ca} -I x -n {u} -V +1h {k}\n",
            m = marker.display(),
            ca = ca.display(),
            u = sshd.user,
            k = pub_of(&sshd.client_key).display()
        ),
    )
    .unwrap();
    let dest = sshd.mkdir("d");
    run(robosync(&sshd, &t.path().join("s"))
        .env("ROBOSYNC_CONFIG", &conf)
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert!(marker.exists());
    assert_same_tree(&src, &dest);
}

/// A foreground `ssh-agent` on a socket of our own, killed on drop.
pub(crate) struct Agent {
    child: Child,
    sock: PathBuf,
}

impl Agent {
    pub(crate) fn start(dir: &Path) -> Agent {
        let sock = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        // The socket exists from bind(); it answers only from listen() on
        // (ssh-add saw "Connection refused" in between on a loaded machine).
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, sock }
    }

    pub(crate) fn add(&self, key: &Path) {
        sh(Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &self.sock)
            .arg("-q")
            .arg(key));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn agent_key_is_used_and_identities_only_keeps_it_out() {
    let sshd = Sshd::start();
    let t = tempdir();
    let agent = Agent::start(t.path());
    let agent_key = t.path().join("agent_key");
    keygen(&agent_key);
    let fp = fingerprint(&pub_of(&agent_key));
    sshd.authorize(&sshd.robot_line(
        "127.0.0.1",
        fs::read_to_string(pub_of(&agent_key)).unwrap().trim(),
    ));
    agent.add(&agent_key);
    // The configured identity file is a key the server does not know.
    let stray = t.path().join("stray_key");
    keygen(&stray);
    let config = |only: &str| {
        let c = sshd
            .config_stanza("robot")
            .replace(
                &sshd.client_key.display().to_string(),
                &stray.display().to_string(),
            )
            .replace("IdentitiesOnly yes", &format!("IdentitiesOnly {only}"))
            .replace(
                "IdentityAgent none",
                &format!("IdentityAgent {}", agent.sock.display()),
            );
        let p = t.path().join(format!("ssh_config.{only}"));
        fs::write(&p, c).unwrap();
        p
    };
    let src = t.path().join("src");
    one_file_tree(&src);

    let dest = sshd.mkdir("d1");
    run(robosync_with(&config("no"), &t.path().join("s1"))
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    let log = sshd.log();
    assert!(
        log.lines()
            .any(|l| l.contains("Accepted publickey") && l.contains(&fp)),
        "{log}"
    );

    fs::write(&sshd.sshd_log, "").unwrap();
    let r = run(robosync_with(&config("yes"), &t.path().join("s2"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d2"))));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("permission denied"), "{}", r.stderr());
    let log = sshd.log();
    assert!(
        log.contains(&fingerprint(&pub_of(&stray))),
        "the configured key was tried: {log}"
    );
    assert!(
        !log.contains(&fp),
        "agent key offered despite IdentitiesOnly: {log}"
    );
}

/// An unrestricted sshd for jumping through, and its Host stanza.
fn bastion(name: &str) -> (Sshd, String) {
    let b = Sshd::builder()
        .robot(false)
        .config("AllowTcpForwarding yes")
        .start();
    let stanza = b.config_stanza(name);
    (b, stanza)
}

#[test]
fn proxy_jump_one_and_two_hops() {
    let sshd = Sshd::start();
    let (b1, s1) = bastion("bastion1");
    let (b2, s2) = bastion("bastion2");
    let t = tempdir();
    let src = t.path().join("src");
    one_file_tree(&src);

    let one = t.path().join("ssh_config.one");
    fs::write(
        &one,
        format!("{}  ProxyJump bastion1\n{s1}", sshd.config_stanza("robot")),
    )
    .unwrap();
    let dest = sshd.mkdir("d1");
    run(robosync_with(&one, &t.path().join("s1"))
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    assert!(b1.log().contains("Accepted publickey"), "{}", b1.log());

    let two = t.path().join("ssh_config.two");
    fs::write(
        &two,
        format!(
            "{}  ProxyJump bastion1,bastion2\n{s1}{s2}",
            sshd.config_stanza("robot")
        ),
    )
    .unwrap();
    fs::write(&b1.sshd_log, "").unwrap();
    let dest = sshd.mkdir("d2");
    run(robosync_with(&two, &t.path().join("s2"))
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    assert!(b1.log().contains("Accepted publickey"), "{}", b1.log());
    assert!(b2.log().contains("Accepted publickey"), "{}", b2.log());
}

fn push_with_known_hosts(sshd: &Sshd, t: &Path, name: &str, known_hosts: &str) -> Ran {
    fs::write(&sshd.known_hosts, known_hosts).unwrap();
    let src = t.join("src");
    if !src.exists() {
        one_file_tree(&src);
    }
    run(robosync(sshd, &t.join(format!("state-{name}")))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir(name))))
}

#[test]
fn host_keys_hashed_revoked_changed_unknown() {
    let sshd = Sshd::start();
    let t = tempdir();
    let host_pub = fs::read_to_string(&sshd.host_key_pub).unwrap();
    let host_pub = host_pub.trim();
    let plain = fs::read_to_string(&sshd.known_hosts).unwrap();

    // Hashed entry.
    sh(Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&sshd.known_hosts));
    let hashed = fs::read_to_string(&sshd.known_hosts).unwrap();
    assert!(hashed.starts_with("|1|"), "{hashed}");
    push_with_known_hosts(&sshd, t.path(), "hashed", &hashed).success();

    // Revoked, even though it is also listed as trusted.
    let r = push_with_known_hosts(
        &sshd,
        t.path(),
        "revoked",
        &format!("{plain}@revoked * {host_pub}\n"),
    );
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("revoked"), "{}", r.stderr());

    // Changed.
    let other = t.path().join("other_host_key");
    keygen(&other);
    let other_pub = fs::read_to_string(pub_of(&other)).unwrap();
    let r = push_with_known_hosts(
        &sshd,
        t.path(),
        "changed",
        &format!("[127.0.0.1]:{} {}", sshd.port, other_pub.trim()),
    );
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("CHANGED"), "{}", r.stderr());
    assert!(
        r.stderr().contains(&fingerprint(&pub_of(&other))),
        "{}",
        r.stderr()
    );

    // Unknown: refused, then recorded (hashed) with accept-new, then trusted.
    let r = push_with_known_hosts(&sshd, t.path(), "unknown", "");
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("accept-new"), "{}", r.stderr());
    let src = t.path().join("src");
    run(robosync(&sshd, &t.path().join("state-accept"))
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .args(["-o", "HashKnownHosts=yes"])
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("accept"))))
    .success();
    let recorded = fs::read_to_string(&sshd.known_hosts).unwrap();
    assert!(recorded.starts_with("|1|"), "{recorded}");
    assert!(recorded.contains(host_pub.split_whitespace().nth(1).unwrap()));
    run(robosync(&sshd, &t.path().join("state-after"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("after"))))
    .success();
}

#[test]
fn host_certificate_signed_by_known_ca_is_accepted() {
    let t = tempdir();
    let host_ca = t.path().join("host_ca");
    keygen(&host_ca);
    let sshd = Sshd::builder().host_certificate(&host_ca).start();
    let ca_pub = fs::read_to_string(pub_of(&host_ca)).unwrap();
    // Only the CA is known: the plain host key is not.
    let r = push_with_known_hosts(
        &sshd,
        t.path(),
        "ca",
        &format!("@cert-authority [127.0.0.1]:* {}\n", ca_pub.trim()),
    )
    .success();
    assert_same_tree(&t.path().join("src"), &sshd.dir.path().join("ca"));
    drop(r);
}

#[test]
fn ipv6_login_against_an_ipv4_from_pattern_explains_and_suggests_dash_4() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: ::1 is not available here; skipping the IPv6 test");
        return;
    }
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
    let src = t.path().join("src");
    one_file_tree(&src);
    let r = run(robosync_with(&cfg, &t.path().join("s"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d"))));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("IPv6"), "{}", r.stderr());
    assert!(r.stderr().contains("-4"), "{}", r.stderr());
}

/// An OpenSSH ControlMaster for `robot`, stopped with `ssh -O exit` on drop.
struct Master {
    config: PathBuf,
    sock: PathBuf,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = Command::new("ssh")
            .arg("-F")
            .arg(&self.config)
            .arg("-o")
            .arg(format!("ControlPath={}", self.sock.display()))
            .args(["-O", "exit", "robot"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn system_ssh_carrier_rides_one_controlmaster_login() {
    let sshd = Sshd::start();
    let t = tempdir();
    let sock = t.path().join("cm.sock");
    let config = t.path().join("ssh_config");
    fs::write(
        &config,
        format!(
            "{}  ControlPath {}\n  ControlMaster auto\n",
            sshd.config_stanza("robot"),
            sock.display()
        ),
    )
    .unwrap();
    let master_log = t.path().join("master.log");
    let status = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args([
            "-o",
            "ControlMaster=yes",
            "-o",
            "ControlPersist=60",
            "-N",
            "-f",
        ])
        .arg("-E")
        .arg(&master_log)
        .arg("robot")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let _master = Master {
        config: config.clone(),
        sock: sock.clone(),
    };
    assert!(
        status.success(),
        "master: {}",
        fs::read_to_string(&master_log).unwrap_or_default()
    );

    let src = t.path().join("src");
    sample_tree(&src);
    let dest = sshd.mkdir("dest");
    run(robosync_with(&config, &t.path().join("state"))
        .args([
            "--ssh-program",
            "ssh",
            "--connections",
            "2",
            "--channels",
            "3",
        ])
        .arg(contents(&src))
        .arg(remote(&dest)))
    .success();
    assert_same_tree(&src, &dest);
    let log = sshd.log();
    assert_eq!(
        log.matches("Accepted publickey").count(),
        1,
        "a second login happened: {log}"
    );
    // Several SFTP sessions ran, all over the master's one connection.
    assert!(
        sshd.wrapper_commands().len() >= 2,
        "{:?}",
        sshd.wrapper_commands()
    );
}

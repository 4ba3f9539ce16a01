//! Issue 17: connecting exactly as OpenSSH would. The user's algorithm policy
//! (ssh_config, `-o`, `Match`) is what the real sshd's log shows negotiated,
//! a policy robosync cannot meet is refused in one line, and keys come from
//! every place `ssh` takes them. Every test runs without a TTY.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

fn sh(cmd: &mut Command) -> String {
    robosync_testbed::run(cmd)
}

fn pub_of(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// An sshd with an ECDSA host key besides its Ed25519 one (both in the
/// client's known_hosts) and `extra` sshd_config lines.
fn two_host_key_sshd(t: &Path, extra: &[&str]) -> Sshd {
    let ecdsa = t.join("host_ecdsa");
    sh(Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&ecdsa));
    let mut b = Sshd::builder().config(&format!("HostKey {}", ecdsa.display()));
    for l in extra {
        b = b.config(l);
    }
    let sshd = b.start();
    let line = format!(
        "[127.0.0.1]:{} {}\n",
        sshd.port,
        fs::read_to_string(pub_of(&ecdsa)).unwrap().trim()
    );
    let mut kh = fs::read_to_string(&sshd.known_hosts).unwrap();
    kh += &line;
    fs::write(&sshd.known_hosts, kh).unwrap();
    sshd
}

/// What sshd logged as negotiated (LogLevel DEBUG1), one entry per key
/// exchange: (kex, host key algorithm, client->server cipher and MAC).
fn negotiated(log: &str) -> Vec<(String, String, String)> {
    let after = |l: &str, m: &str| {
        l.split_once(m)
            .map(|(_, r)| r.trim_end_matches(" [preauth]").trim().to_string())
    };
    let mut out = Vec::new();
    let (mut kex, mut hk) = (String::new(), String::new());
    for l in log.lines() {
        if let Some(v) = after(l, "kex: algorithm: ") {
            kex = v;
        } else if let Some(v) = after(l, "kex: host key algorithm: ") {
            hk = v;
        } else if let Some(v) = after(l, "kex: client->server cipher: ") {
            out.push((kex.clone(), hk.clone(), v));
        }
    }
    out
}

#[track_caller]
fn assert_negotiated(log: &str, kex: &str, hostkey: &str, cipher_mac: &str) {
    let n = negotiated(log);
    assert!(!n.is_empty(), "no key exchange in the sshd log: {log}");
    for (k, h, c) in &n {
        assert_eq!(k, kex, "{n:?}");
        assert_eq!(h, hostkey, "{n:?}");
        assert!(c.starts_with(cipher_mac), "{c} is not {cipher_mac}: {n:?}");
    }
}

fn push(sshd: &Sshd, config: &Path, state: &Path, src: &Path, dest: &str, opts: &[&str]) -> Ran {
    let mut c = robosync_with(config, state);
    for o in opts {
        c.arg("-o").arg(o);
    }
    run(c.arg(contents(src)).arg(remote(&sshd.mkdir(dest))))
}

#[test]
fn algorithm_policy_from_config_o_and_match_is_what_sshd_negotiates() {
    let t = tempdir();
    let sshd = two_host_key_sshd(t.path(), &[]);
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"policy\n");
    let stanza = sshd.config_stanza("robot");

    // A hardening guide's Host stanza.
    let cfg = t.path().join("config_host");
    fs::write(
        &cfg,
        format!(
            "{stanza}  KexAlgorithms ecdh-sha2-nistp256\n  Ciphers aes256-ctr\n  \
             MACs hmac-sha2-512\n  HostKeyAlgorithms ecdsa-sha2-nistp256\n"
        ),
    )
    .unwrap();
    fs::write(&sshd.sshd_log, "").unwrap();
    push(&sshd, &cfg, &t.path().join("s1"), &src, "d1", &[]).success();
    assert_negotiated(
        &sshd.log(),
        "ecdh-sha2-nistp256",
        "ecdsa-sha2-nistp256",
        "aes256-ctr MAC: hmac-sha2-512 ",
    );

    // -o with the - and + modifiers.
    fs::write(&sshd.sshd_log, "").unwrap();
    push(
        &sshd,
        &sshd.ssh_config,
        &t.path().join("s2"),
        &src,
        "d2",
        &[
            "KexAlgorithms=diffie-hellman-group14-sha256",
            "Ciphers=aes192-ctr",
            "MACs=hmac-sha2-256",
            "HostKeyAlgorithms=-ssh-ed25519*",
        ],
    )
    .success();
    assert_negotiated(
        &sshd.log(),
        "diffie-hellman-group14-sha256",
        "ecdsa-sha2-nistp256",
        "aes192-ctr MAC: hmac-sha2-256 ",
    );

    // A Match block, with ^ (put first).
    let cfg = t.path().join("config_match");
    fs::write(
        &cfg,
        format!(
            "Match originalhost robot\n  KexAlgorithms ^ecdh-sha2-nistp384\n  Ciphers aes128-ctr\n  \
             MACs ^hmac-sha2-256-etm@openssh.com\n  HostKeyAlgorithms ecdsa-sha2-nistp256,ssh-ed25519\n{stanza}"
        ),
    )
    .unwrap();
    fs::write(&sshd.sshd_log, "").unwrap();
    push(&sshd, &cfg, &t.path().join("s3"), &src, "d3", &[]).success();
    assert_negotiated(
        &sshd.log(),
        "ecdh-sha2-nistp384",
        "ecdsa-sha2-nistp256",
        "aes128-ctr MAC: hmac-sha2-256-etm@openssh.com ",
    );
}

#[test]
fn a_policy_robosync_or_the_server_cannot_meet_is_refused_in_one_line() {
    let t = tempdir();
    let sshd = Sshd::builder()
        .config("Ciphers aes128-ctr")
        .config("MACs hmac-sha2-256")
        .start();
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"policy\n");

    // Nothing robosync implements.
    for (opt, directive, offered) in [
        (
            "MACs=umac-128-etm@openssh.com",
            "MACs",
            "hmac-sha2-256-etm@openssh.com",
        ),
        (
            "KexAlgorithms=sntrup761x25519-sha512@openssh.com",
            "KexAlgorithms",
            "curve25519-sha256",
        ),
        (
            "HostKeyAlgorithms=sk-ssh-ed25519@openssh.com",
            "HostKeyAlgorithms",
            "ssh-ed25519",
        ),
    ] {
        let r = push(
            &sshd,
            &sshd.ssh_config,
            &t.path().join("s"),
            &src,
            "d",
            &[opt],
        );
        assert_eq!(r.code(), 10, "{opt}: {}", r.stderr());
        let err = r.stderr();
        let lines: Vec<&str> = err.lines().filter(|l| l.contains(directive)).collect();
        assert_eq!(lines.len(), 1, "{opt}: {}", r.stderr());
        assert!(lines[0].contains(offered), "{opt}: {}", lines[0]);
    }

    // Nothing the server accepts: the directive and both sides named.
    let r = push(
        &sshd,
        &sshd.ssh_config,
        &t.path().join("s"),
        &src,
        "d",
        &["Ciphers=aes256-gcm@openssh.com"],
    );
    assert_eq!(r.code(), 10, "{}", r.stderr());
    let err = r.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("Ciphers")).collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr());
    assert!(
        lines[0].contains("aes256-gcm@openssh.com") && lines[0].contains("aes128-ctr"),
        "{}",
        lines[0]
    );
    assert!(!sshd.log().contains("Accepted"), "{}", sshd.log());
}

#[test]
fn compression_yes_is_not_ignored_silently() {
    let t = tempdir();
    let sshd = Sshd::start();
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"zip\n");
    let r = push(
        &sshd,
        &sshd.ssh_config,
        &t.path().join("s"),
        &src,
        "d",
        &["Compression=yes"],
    )
    .success();
    assert!(r.stderr().contains("Compression"), "{}", r.stderr());
}

/// A foreground `ssh-agent` on a socket of our own, killed on drop.
struct Agent {
    child: Child,
    sock: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
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
        while !sock.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, sock }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config for `sshd` whose identity is `identity` and agent `agent`.
fn config_with(sshd: &Sshd, t: &Path, name: &str, identity: &Path, agent: &str) -> PathBuf {
    let c = sshd
        .config_stanza("robot")
        .replace(
            &format!("IdentityFile {}", sshd.client_key.display()),
            &format!("IdentityFile {}", identity.display()),
        )
        .replace("IdentityAgent none", &format!("IdentityAgent {agent}"));
    let p = t.join(name);
    fs::write(&p, c).unwrap();
    p
}

#[test]
fn agent_only_key_with_just_its_pub_on_disk_logs_in() {
    let sshd = Sshd::start();
    let t = tempdir();
    let agent = Agent::start(t.path());
    // The robot key goes into the agent; only its .pub stays on disk.
    let key = t.path().join("robot_key");
    fs::copy(&sshd.client_key, &key).unwrap();
    fs::copy(pub_of(&sshd.client_key), pub_of(&key)).unwrap();
    sh(Command::new("ssh-add")
        .env("SSH_AUTH_SOCK", &agent.sock)
        .arg("-q")
        .arg(&key));
    fs::remove_file(&key).unwrap();
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"agent\n");

    // IdentityFile naming the .pub, agent by path.
    let cfg = config_with(
        &sshd,
        t.path(),
        "c1",
        &pub_of(&key),
        &agent.sock.display().to_string(),
    );
    run(robosync_with(&cfg, &t.path().join("s1"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d1"))))
    .success();
    assert_same_tree(&src, &sshd.dir.path().join("d1"));

    // IdentityFile naming the absent private file, agent from SSH_AUTH_SOCK.
    let cfg = config_with(&sshd, t.path(), "c2", &key, "SSH_AUTH_SOCK");
    run(robosync_with(&cfg, &t.path().join("s2"))
        .env("SSH_AUTH_SOCK", &agent.sock)
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d2"))))
    .success();

    // IdentityAgent none: the key is out of reach, and the error says how to load it.
    let cfg = config_with(&sshd, t.path(), "c3", &key, "none");
    let r = run(robosync_with(&cfg, &t.path().join("s3"))
        .env("SSH_AUTH_SOCK", &agent.sock)
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d3"))));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("ssh-add"), "{}", r.stderr());
}

#[test]
fn encrypted_key_without_agent_says_ssh_add_and_no_from_hint() {
    let sshd = Sshd::start();
    let t = tempdir();
    let key = t.path().join("locked_key");
    fs::copy(&sshd.client_key, &key).unwrap();
    fs::copy(pub_of(&sshd.client_key), pub_of(&key)).unwrap();
    sh(Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "secret phrase", "-f"])
        .arg(&key));
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"locked\n");
    let cfg = config_with(&sshd, t.path(), "c", &key, "none");
    let r = run(robosync_with(&cfg, &t.path().join("s"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d"))));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    let err = r.stderr();
    assert!(err.contains("encrypted"), "{err}");
    assert!(
        err.contains("ssh-agent") && err.contains("ssh-add"),
        "{err}"
    );
    assert!(!err.contains("from="), "no key was refused: {err}");

    // A wrong user over IPv4 to an IPv4-only host: no from= hint either.
    let r = run(robosync_with(&sshd.ssh_config, &t.path().join("s2"))
        .args(["-o", "User=nobody-here"])
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d2"))));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(r.stderr().contains("permission denied"), "{}", r.stderr());
    assert!(!r.stderr().contains("from="), "{}", r.stderr());
}

#[test]
fn missing_certificate_file_is_named() {
    let sshd = Sshd::start();
    let t = tempdir();
    let stray = t.path().join("stray");
    robosync_testbed::keygen(&stray);
    let missing = t.path().join("gone-cert.pub");
    let cfg = t.path().join("c");
    fs::write(
        &cfg,
        sshd.config_stanza("robot").replace(
            &format!("IdentityFile {}", sshd.client_key.display()),
            &format!(
                "IdentityFile {}\n  CertificateFile {}",
                stray.display(),
                missing.display()
            ),
        ),
    )
    .unwrap();
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"cert\n");
    let r = run(robosync_with(&cfg, &t.path().join("s"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d"))));
    assert_eq!(r.code(), 255, "{}", r.stderr());
    assert!(
        r.stderr().contains(&missing.display().to_string()),
        "{}",
        r.stderr()
    );
}

/// Runs `argv` on a new pseudo-terminal (its controlling terminal, as for a
/// user at a shell) and types `answer` at every prompt containing `marker`
/// (`\x03` is Ctrl-C). Prints the terminal's output, then `ECHO=0|1 EXIT=code`: the
/// terminal's echo flag after the child is gone. Bounded: 60 s.
const PTY_DRIVER: &str = r#"
import fcntl, os, select, subprocess, sys, termios, time
marker = sys.argv[1].encode()
answer = sys.argv[2].encode().decode('unicode_escape').encode()
master, slave = os.openpty()
def ctty():
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
p = subprocess.Popen(sys.argv[3:], stdin=slave, stdout=slave, stderr=slave, preexec_fn=ctty)
out, prompts, deadline = b'', 0, time.time() + 60
while time.time() < deadline:
    r, _, _ = select.select([master], [], [], 0.2)
    if master in r:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        out += data
        n = out.count(marker)
        if n > prompts:
            prompts = n
            time.sleep(0.2)
            os.write(master, answer)
    elif p.poll() is not None:
        break
else:
    p.kill()
code = p.wait()
echo = 1 if termios.tcgetattr(slave)[3] & termios.ECHO else 0
sys.stdout.write(out.decode(errors='replace'))
sys.stdout.write('\nECHO=%d EXIT=%d\n' % (echo, code))
"#;

fn on_pty(marker: &str, answer: &str, cmd: &Command) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(PTY_DRIVER)
        .arg(marker)
        .arg(answer)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::null())
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An sshd whose robot key is encrypted, and a config without BatchMode.
fn locked_key_setup(t: &Path) -> (Sshd, PathBuf) {
    let sshd = Sshd::start();
    let key = t.join("locked_key");
    fs::copy(&sshd.client_key, &key).unwrap();
    fs::copy(pub_of(&sshd.client_key), pub_of(&key)).unwrap();
    sh(Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", "secret phrase", "-f"])
        .arg(&key));
    let cfg = config_with(&sshd, t, "c", &key, "none");
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace("  BatchMode yes\n", "");
    fs::write(&cfg, text).unwrap();
    (sshd, cfg)
}

#[test]
fn one_passphrase_prompt_for_all_connections_and_ctrl_c_restores_echo() {
    let t = tempdir();
    let (sshd, cfg) = locked_key_setup(t.path());
    let src = t.path().join("src");
    small_files(&src, 200);

    let mut cmd = robosync_with(&cfg, &t.path().join("s1"));
    cmd.args(["--connections", "3"])
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d1")));
    let out = on_pty("Enter passphrase", "secret phrase\\r", &cmd);
    assert!(out.contains("ECHO=1 EXIT=0"), "{out}");
    assert_eq!(out.matches("Enter passphrase").count(), 1, "{out}");
    assert_same_tree(&src, &sshd.dir.path().join("d1"));
    let logins = sshd.log().matches("Accepted publickey").count();
    assert!(
        logins >= 2,
        "one prompt should serve several logins, saw {logins}"
    );

    // Ctrl-C at the prompt: the run stops and the terminal echoes again.
    let mut cmd = robosync_with(&cfg, &t.path().join("s2"));
    cmd.arg(contents(&src)).arg(remote(&sshd.mkdir("d2")));
    let out = on_pty("Enter passphrase", "\\x03", &cmd);
    assert!(out.contains("ECHO=1"), "{out}");
    assert!(!out.contains("EXIT=0"), "{out}");
}

#[test]
fn hung_auth_command_times_out_and_a_waiting_run_says_so() {
    let sshd = Sshd::start();
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"hook\n");
    // No certificate: the hook runs every time, holding the lock meanwhile.
    let marker = t.path().join("hook-started");
    let hung = format!("touch {}; sleep 1000", marker.display());
    let mut first = robosync(&sshd, &t.path().join("s1"))
        .args(["--auth-timeout", "3s", "--auth-command", &hung])
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d1")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the hook never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second run needs the same lock: it says what it waits for, then
    // runs its own (working) hook once the first gives up.
    let second = run(robosync(&sshd, &t.path().join("s2"))
        .args(["--auth-timeout", "30s", "--auth-command", "true"])
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d2"))));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = first.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = first.kill();
            panic!("the hung hook was not stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(
        err.contains("--auth-timeout") && err.contains("3 s"),
        "{err}"
    );
    let second = second.success();
    assert!(
        second.stderr().contains("waiting for another robosync run"),
        "{}",
        second.stderr()
    );
}

#[test]
fn strict_no_and_accept_new_with_a_certificate_host_record_the_key() {
    let t = tempdir();
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"known\n");

    // StrictHostKeyChecking no, empty known_hosts: connects and records, as ssh does.
    let sshd = Sshd::start();
    fs::write(&sshd.known_hosts, "").unwrap();
    run(robosync(&sshd, &t.path().join("s1"))
        .args(["-o", "StrictHostKeyChecking=no"])
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d1"))))
    .success();
    let host_key = fs::read_to_string(&sshd.host_key_pub).unwrap();
    let key_b64 = host_key.split_whitespace().nth(1).unwrap();
    let kh = fs::read_to_string(&sshd.known_hosts).unwrap();
    assert!(
        kh.contains(&format!("[127.0.0.1]:{}", sshd.port)) && kh.contains(key_b64),
        "{kh}"
    );

    // accept-new, a host presenting a certificate from a CA nobody trusts
    // (another CA is trusted, so certificates are asked for): its plain
    // key is recorded, and the next run is trusted by it.
    let host_ca = t.path().join("host_ca");
    let other_ca = t.path().join("other_ca");
    robosync_testbed::keygen(&host_ca);
    robosync_testbed::keygen(&other_ca);
    let sshd = Sshd::builder().host_certificate(&host_ca).start();
    let other = fs::read_to_string(pub_of(&other_ca)).unwrap();
    fs::write(
        &sshd.known_hosts,
        format!("@cert-authority *.example {}\n", other.trim()),
    )
    .unwrap();
    for (i, mode) in ["accept-new", "yes"].into_iter().enumerate() {
        run(robosync(&sshd, &t.path().join(format!("c{i}")))
            .args(["-o", &format!("StrictHostKeyChecking={mode}")])
            .arg(contents(&src))
            .arg(remote(&sshd.mkdir(&format!("e{i}")))))
        .success();
    }
    let host_key = fs::read_to_string(&sshd.host_key_pub).unwrap();
    let kh = fs::read_to_string(&sshd.known_hosts).unwrap();
    assert!(
        kh.contains(host_key.split_whitespace().nth(1).unwrap()),
        "{kh}"
    );
}

#[test]
fn a_live_controlmaster_is_pointed_out_at_default_verbosity() {
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
    let ssh = |args: &[&str]| {
        Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .args(args)
            .arg("robot")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    };
    assert!(ssh(&[
        "-o",
        "ControlMaster=yes",
        "-o",
        "ControlPersist=60",
        "-N",
        "-f"
    ])
    .success());
    let src = t.path().join("src");
    write(&src.join("a.txt"), b"master\n");
    let r = run(robosync_with(&config, &t.path().join("s"))
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d"))));
    ssh(&["-O", "exit"]);
    let r = r.success();
    let err = r.stderr();
    assert!(
        err.contains(&sock.display().to_string()) && err.contains("--ssh-program ssh"),
        "{err}"
    );
}

#[test]
fn keyboard_interactive_second_factor_is_asked_once_per_run() {
    let t = tempdir();
    let sshd = Sshd::builder().second_factor("314159").start();
    // BatchMode off, so robosync may ask; the robot key is the first factor.
    let cfg = t.path().join("c");
    fs::write(
        &cfg,
        sshd.config_stanza("robot").replace("  BatchMode yes\n", ""),
    )
    .unwrap();
    let src = t.path().join("src");
    small_files(&src, 200);
    let mut cmd = robosync_with(&cfg, &t.path().join("s"));
    cmd.args(["--connections", "3"])
        .arg(contents(&src))
        .arg(remote(&sshd.mkdir("d")));
    let out = on_pty("assword", "314159\\r", &cmd);
    assert!(out.contains("EXIT=0"), "{out}\n{}", sshd.log());
    assert_same_tree(&src, &sshd.dir.path().join("d"));
    assert_eq!(out.matches("assword").count(), 1, "{out}");
    assert_eq!(
        sshd.mfa_log(),
        "314159\n",
        "one second-factor check per run"
    );
    let log = sshd.log();
    assert_eq!(
        log.matches("Accepted keyboard-interactive").count(),
        1,
        "{log}"
    );
}

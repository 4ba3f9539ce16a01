//! A real OpenSSH server per test, configured like a robot node.

use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{current_user, free_port, keygen, workspace_root};

const SFTP_SERVER_CANDIDATES: &[&str] = &[
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",
];

/// Options for [`Sshd`].
pub struct SshdBuilder {
    from: String,
    reject_sftp: bool,
    robot: bool,
    max_sessions: u32,
    listen: String,
    extra: Vec<String>,
    sftp_server: Option<PathBuf>,
    unprivileged: bool,
    host_ca: Option<PathBuf>,
    second_factor: Option<String>,
}

impl Default for SshdBuilder {
    fn default() -> Self {
        SshdBuilder {
            from: "127.0.0.1".into(),
            reject_sftp: false,
            robot: true,
            max_sessions: 20,
            listen: "127.0.0.1".into(),
            extra: Vec::new(),
            sftp_server: None,
            unprivileged: false,
            host_ca: None,
            second_factor: None,
        }
    }
}

impl SshdBuilder {
    /// The `from=` pattern on the robot key (default `127.0.0.1`).
    pub fn from_pattern(mut self, p: &str) -> Self {
        self.from = p.into();
        self
    }
    /// Make the wrapper refuse the SFTP server as well.
    pub fn reject_sftp(mut self, yes: bool) -> Self {
        self.reject_sftp = yes;
        self
    }
    /// `false`: a plain key without restrictions (e.g. a bastion).
    pub fn robot(mut self, yes: bool) -> Self {
        self.robot = yes;
        self
    }
    pub fn max_sessions(mut self, n: u32) -> Self {
        self.max_sessions = n;
        self
    }
    /// Also listen on `::1` (for address-family tests).
    pub fn listen_ipv6_too(mut self) -> Self {
        self.listen = "127.0.0.1 ::1".into();
        self
    }
    /// Extra sshd_config lines.
    pub fn config(mut self, line: &str) -> Self {
        self.extra.push(line.into());
        self
    }

    /// Serve SFTP with this program instead of OpenSSH's sftp-server (e.g. a
    /// hostile server from [`crate::hostile_sftp_server`]).
    pub fn sftp_server(mut self, path: &Path) -> Self {
        self.sftp_server = Some(path.to_path_buf());
        self
    }

    /// Run the SFTP server without root's power to ignore file modes
    /// (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FSETID dropped with `setpriv`), as
    /// a robot node's unprivileged login would: a 0444 file then refuses
    /// writes even though these tests run as root.
    pub fn unprivileged(mut self, yes: bool) -> Self {
        self.unprivileged = yes;
        self
    }

    /// Present a host certificate for `127.0.0.1` signed by the CA private key
    /// at `ca` (as `HostCertificate`), besides the plain host key.
    pub fn host_certificate(mut self, ca: &Path) -> Self {
        self.host_ca = Some(ca.to_path_buf());
        self
    }

    /// Require `publickey,keyboard-interactive`: after the key, PAM asks
    /// `Password:` and accepts `code` (pam_exec, standing in for an MFA
    /// service). sshd runs in a mount namespace of its own where a PAM
    /// file of ours is bound over /etc/pam.d/sshd; the machine's is
    /// untouched. Every answer checked is a line in [`Sshd::mfa_log`].
    pub fn second_factor(mut self, code: &str) -> Self {
        self.second_factor = Some(code.into());
        self
    }

    pub fn start(self) -> Sshd {
        Sshd::start_with(self)
    }
}

/// A running sshd; stopped (by pid) when dropped, even on panic.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Child,
    /// Client private key authorised as the robot key.
    pub client_key: PathBuf,
    /// ssh_config with `Host robot` pointing at this server.
    pub ssh_config: PathBuf,
    pub known_hosts: PathBuf,
    pub host_key_pub: PathBuf,
    pub authorized_keys: PathBuf,
    pub wrapper_conf: PathBuf,
    pub wrapper_log: PathBuf,
    pub sshd_log: PathBuf,
    pub sftp_server: PathBuf,
    pub user: String,
    /// How the daemon was started, to start it again ([`Sshd::restart`]).
    argv: Vec<PathBuf>,
}

impl Sshd {
    pub fn builder() -> SshdBuilder {
        SshdBuilder::default()
    }

    /// A robot-like sshd with default options.
    pub fn start() -> Sshd {
        SshdBuilder::default().start()
    }

    fn start_with(b: SshdBuilder) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("robosync-sshd-")
            .tempdir()
            .unwrap();
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        let host_key = d.join("host_ed25519");
        keygen(&host_key);
        let mut extra = b.extra.clone();
        if let Some(ca) = &b.host_ca {
            crate::run(
                Command::new("ssh-keygen")
                    .args(["-q", "-s"])
                    .arg(ca)
                    .args(["-h", "-I", "robosync-test-host", "-n", "127.0.0.1"])
                    .arg(host_key.with_extension("pub")),
            );
            extra.push(format!(
                "HostCertificate {}",
                d.join("host_ed25519-cert.pub").display()
            ));
        }
        let client_key = d.join("robot_ed25519");
        keygen(&client_key);
        let mut sftp_server = b.sftp_server.clone().unwrap_or_else(|| {
            SFTP_SERVER_CANDIDATES
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .expect("sftp-server not found: install openssh-sftp-server")
        });
        if b.unprivileged {
            let script = d.join("sftp-server-unprivileged");
            let server = sftp_server.display();
            fs::write(
                &script,
                format!(
                    "#!/bin/sh\nsetpriv --bounding-set -dac_override,-dac_read_search,-fsetid -- {server} \"$@\" \
                     || exec {server} \"$@\"\n"
                ),
            )
            .unwrap();
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
            sftp_server = script;
        }
        let wrapper_log = d.join("wrapper.log");
        let wrapper_conf = d.join("robot.conf");
        fs::write(&wrapper_log, "").unwrap();
        let sshd_log = d.join("sshd.log");
        let authorized_keys = d.join("authorized_keys");
        let port = free_port();
        let user = current_user();

        let s = Sshd {
            port,
            child: Command::new("true").spawn().unwrap(),
            client_key: client_key.clone(),
            ssh_config: d.join("ssh_config"),
            known_hosts: d.join("known_hosts"),
            host_key_pub: d.join("host_ed25519.pub"),
            authorized_keys: authorized_keys.clone(),
            wrapper_conf,
            wrapper_log,
            sshd_log: sshd_log.clone(),
            sftp_server,
            user,
            dir,
            argv: Vec::new(),
        };
        s.set_reject_sftp(b.reject_sftp);
        let pubkey = fs::read_to_string(client_key.with_extension("pub")).unwrap();
        let line = if b.robot {
            s.robot_line(&b.from, pubkey.trim())
        } else {
            pubkey.trim().to_string()
        };
        fs::write(&authorized_keys, format!("{line}\n")).unwrap();
        fs::set_permissions(&authorized_keys, fs::Permissions::from_mode(0o600)).unwrap();

        let listen: String = b
            .listen
            .split_whitespace()
            .map(|a| format!("ListenAddress {a}\n"))
            .collect();
        // The forced command runs as `$SHELL -c …`; Debian's bash then sources
        // the login user's ~/.bashrc (SSH_SOURCE_BASHRC). Here that is the
        // build machine's root dotfiles (measured: pyenv init, 121 ms of CPU
        // per channel), not a robot node's: bash skips ~/.bashrc when it is
        // not a top-level shell, which SHLVL=1 says. RHEL-family bash, as on
        // the Alliance's robot nodes, never sources it for ssh commands.
        const HERMETIC_SHELL: &str = "SetEnv SHLVL=1\n";
        let auth = if b.second_factor.is_some() {
            "UsePAM yes\nPasswordAuthentication no\nKbdInteractiveAuthentication yes\n\
             AuthenticationMethods publickey,keyboard-interactive\nPermitRootLogin yes\n"
        } else {
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             PermitRootLogin prohibit-password\n"
        };
        let config = format!(
            "Port {port}\n{listen}HostKey {hk}\nPidFile {pid}\nAuthorizedKeysFile {ak}\n\
             StrictModes no\n{auth}\
             PubkeyAuthentication yes\nLogLevel DEBUG1\n\
             MaxSessions {ms}\nMaxStartups 100:30:200\nSubsystem sftp {sftp}\n{hermetic}{extra}\n",
            hk = host_key.display(),
            pid = d.join("sshd.pid").display(),
            ak = authorized_keys.display(),
            ms = b.max_sessions,
            sftp = s.sftp_server.display(),
            extra = extra.join("\n"),
            hermetic = HERMETIC_SHELL,
        );
        let config_path = d.join("sshd_config");
        fs::write(&config_path, config).unwrap();
        let host_pub = fs::read_to_string(&s.host_key_pub).unwrap();
        fs::write(
            &s.known_hosts,
            format!("[127.0.0.1]:{port} {}\n", host_pub.trim()),
        )
        .unwrap();
        fs::write(&s.ssh_config, s.config_stanza("robot")).unwrap();

        // As root, sshd insists on its privilege-separation directory.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let _ = fs::create_dir_all("/run/sshd");
        }
        let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd"]
            .iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd not found: install openssh-server");
        let mut s = s;
        s.argv = vec![
            PathBuf::from(sshd),
            "-D".into(),
            "-f".into(),
            config_path,
            "-E".into(),
            sshd_log,
        ];
        if let Some(code) = &b.second_factor {
            let check = d.join("mfa-check.sh");
            fs::write(
                &check,
                format!(
                    "#!/bin/sh\ncode=$(tr -d '\\000')\necho \"$code\" >> {log}\n[ \"$code\" = '{code}' ]\n",
                    log = d.join("mfa.log").display()
                ),
            )
            .unwrap();
            fs::set_permissions(&check, fs::Permissions::from_mode(0o755)).unwrap();
            let pam = d.join("pam-sshd");
            fs::write(
                &pam,
                format!(
                    "auth required pam_exec.so expose_authtok quiet {}\nauth optional pam_permit.so\n\
                     account required pam_permit.so\nsession required pam_permit.so\n",
                    check.display()
                ),
            )
            .unwrap();
            // unshare and sh exec in turn: the daemon keeps the child's pid.
            let daemon: Vec<String> = s.argv.iter().map(|a| a.display().to_string()).collect();
            s.argv = vec![
                "unshare".into(),
                "-m".into(),
                "sh".into(),
                "-c".into(),
                format!(
                    "mount --bind {} /etc/pam.d/sshd && exec {}",
                    pam.display(),
                    daemon.join(" ")
                )
                .into(),
            ];
        }
        let child = s.spawn_daemon();
        let mut dummy = std::mem::replace(&mut s.child, child);
        let _ = dummy.wait();
        s.wait_ready();
        s
    }

    fn spawn_daemon(&self) -> Child {
        Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start sshd")
    }

    /// Pid of the listening daemon.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's descendants (session sshd processes, the wrapper,
    /// sftp-servers) as (pid, command name), found through /proc.
    pub fn descendants(&self) -> Vec<(i32, String)> {
        descendants_of(self.child.id() as i32)
    }

    /// Pids of the sftp-server processes serving current sessions.
    /// (Also the configured program's own process when it wraps one.)
    pub fn sftp_server_pids(&self) -> Vec<i32> {
        let name = self.sftp_server.file_name().map(|n| n.to_string_lossy());
        let name = name.as_deref().unwrap_or("sftp-server");
        // /proc/PID/comm holds at most 15 bytes of the name.
        let comm = &name[..name.len().min(15)];
        self.descendants()
            .into_iter()
            .filter(|(_, c)| c == comm || c == "sftp-server")
            .map(|(p, _)| p)
            .collect()
    }

    /// Pids of the per-connection sshd processes (not the listener).
    pub fn session_sshd_pids(&self) -> Vec<i32> {
        self.descendants()
            .into_iter()
            .filter(|(_, c)| c.starts_with("sshd"))
            .map(|(p, _)| p)
            .collect()
    }

    /// Stops the daemon and every session it serves (SIGKILL, like a node
    /// that reboots its sshd), then starts it again on the same port with
    /// the same keys and configuration.
    pub fn restart(&mut self) {
        self.kill_all();
        self.child = self.spawn_daemon();
        self.wait_ready();
    }

    fn kill_all(&mut self) {
        let pid = self.child.id() as i32;
        // Stop the listener first so it forks no new sessions meanwhile.
        // SAFETY: kill only sends a signal; pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        for (p, _) in descendants_of(pid) {
            // SAFETY: kill only sends a signal; an exited pid makes it fail harmlessly.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        // SAFETY: kill only sends a signal; pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "sshd exited ({status}): {}",
                    fs::read_to_string(&self.sshd_log).unwrap_or_default()
                );
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "sshd did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The authorized_keys line of a robot key for `pubkey`.
    pub fn robot_line(&self, from: &str, pubkey: &str) -> String {
        format!(
            "restrict,from=\"{from}\",command=\"{} {}\" {pubkey}",
            workspace_root()
                .join("fixtures/robot/transfer_commands.sh")
                .display(),
            self.wrapper_conf.display()
        )
    }

    /// A `Host NAME` stanza for this server (client key, known_hosts, no agent).
    pub fn config_stanza(&self, name: &str) -> String {
        format!(
            "Host {name}\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  \
             IdentityAgent none\n  BatchMode yes\n",
            self.port,
            self.user,
            self.client_key.display(),
            self.known_hosts.display()
        )
    }

    /// Toggles whether the wrapper refuses the SFTP server (on stdout, and
    /// exiting 0, as the Alliance's wrapper does).
    pub fn set_reject_sftp(&self, yes: bool) {
        self.write_wrapper_conf(if yes { "REJECT_SFTP=1\n" } else { "" });
    }

    /// Makes the wrapper refuse the SFTP server on stderr and exit 1, as
    /// other sites' wrappers do.
    pub fn set_reject_sftp_on_stderr(&self) {
        self.write_wrapper_conf("REJECT_SFTP=1\nREJECT_TO_STDERR=1\n");
    }

    fn write_wrapper_conf(&self, extra: &str) {
        fs::write(
            &self.wrapper_conf,
            format!(
                "SFTP_SERVER={}\nLOG={}\n{extra}",
                self.sftp_server.display(),
                self.wrapper_log.display(),
            ),
        )
        .unwrap();
    }

    /// Every command the forced-command wrapper saw, in order.
    pub fn wrapper_commands(&self) -> Vec<String> {
        fs::read_to_string(&self.wrapper_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The answers the second factor checked, one a line ([`SshdBuilder::second_factor`]).
    pub fn mfa_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mfa.log")).unwrap_or_default()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.sshd_log).unwrap_or_default()
    }

    /// Appends a line to authorized_keys.
    pub fn authorize(&self, line: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .unwrap();
        writeln!(f, "{line}").unwrap();
    }

    /// Path of a fresh directory inside the server's temp dir.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }
}

/// Every process below `root` (children, grandchildren…), from /proc.
fn descendants_of(root: i32) -> Vec<(i32, String)> {
    let mut procs = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            // stat: "pid (comm) state ppid …"; comm may hold spaces and parens.
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_string();
            let ppid = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(ppid) = ppid {
                procs.push((pid, ppid, comm));
            }
        }
    }
    let mut out: Vec<(i32, String)> = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, comm) in &procs {
            if *ppid == parent && !out.iter().any(|(p, _)| p == pid) {
                out.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    out
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal; the child is ours and not yet reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

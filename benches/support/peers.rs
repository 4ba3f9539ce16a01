//! The tools robosync is measured against, and how each is told to push,
//! pull, or repeat a push. Every peer goes through the same robot-key sshd
//! (scp, `sftp -b` and rclone via the SFTP subsystem, rsync via the
//! wrapper's `rsync --server`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::measure::{on_path, version_line};

/// One way to reach the test sshd: directly, or through a shaping proxy.
pub struct Link {
    /// ssh_config whose `Host robot` reaches the server this way.
    pub ssh_config: PathBuf,
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    /// Name of the rclone remote configured through environment variables.
    pub rclone_remote: String,
}

impl Link {
    fn rclone_env(&self, cmd: &mut Command) {
        let v = format!("RCLONE_CONFIG_{}_", self.rclone_remote.to_uppercase());
        cmd.env(format!("{v}TYPE"), "sftp")
            .env(format!("{v}HOST"), "127.0.0.1")
            .env(format!("{v}PORT"), self.port.to_string())
            .env(format!("{v}USER"), &self.user)
            .env(format!("{v}KEY_FILE"), &self.key)
            .env(format!("{v}KNOWN_HOSTS_FILE"), &self.known_hosts)
            // The robot wrapper refuses shell commands; don't probe for them.
            .env(format!("{v}SHELL_TYPE"), "none")
            .env(format!("{v}DISABLE_HASHCHECK"), "true");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Robosync,
    /// OpenSSH scp (SFTP protocol, the default since 9.0), optionally with `-c`.
    Scp(Option<&'static str>),
    Sftp,
    Rsync,
    Rclone,
}

pub struct Peer {
    pub name: String,
    pub tool: Tool,
    pub program: Option<PathBuf>,
    pub version: String,
    /// Extra robosync arguments (from `ROBOSYNC_BENCH_ARGS`).
    pub extra_args: Vec<String>,
}

/// Where a command runs: its scratch dir (robosync's state lives here too).
pub struct Job<'a> {
    pub link: &'a Link,
    pub state: &'a Path,
    pub scratch: &'a Path,
}

impl Peer {
    pub fn all(robosync: PathBuf, extra_args: Vec<String>) -> Vec<Peer> {
        let mut peers = vec![Peer {
            name: "robosync".into(),
            tool: Tool::Robosync,
            version: version_line(&robosync, &["--version"]),
            program: Some(robosync),
            extra_args,
        }];
        let others: [(&str, &str, Tool, &[&str]); 5] = [
            ("scp", "scp", Tool::Scp(None), &["-V"]),
            (
                "scp -c aes128-gcm",
                "scp",
                Tool::Scp(Some("aes128-gcm@openssh.com")),
                &["-V"],
            ),
            ("sftp -b", "sftp", Tool::Sftp, &["-V"]),
            ("rsync -a", "rsync", Tool::Rsync, &["--version"]),
            ("rclone", "rclone", Tool::Rclone, &["version"]),
        ];
        for (name, bin, tool, vargs) in others {
            let program = on_path(bin);
            let version = match &program {
                // scp/sftp have no version flag of their own; ask ssh.
                Some(_) if bin == "scp" || bin == "sftp" => version_line(Path::new("ssh"), &["-V"]),
                Some(p) => version_line(p, vargs),
                None => "not installed".into(),
            };
            peers.push(Peer {
                name: name.into(),
                tool,
                program,
                version,
                extra_args: Vec::new(),
            });
        }
        peers
    }

    /// Another robosync binary, with `like`'s extra arguments.
    pub fn robosync(name: &str, program: PathBuf, like: &Peer) -> Peer {
        Peer {
            name: name.into(),
            tool: Tool::Robosync,
            version: version_line(&program, &["--version"]),
            program: Some(program),
            extra_args: like.extra_args.clone(),
        }
    }

    pub fn installed(&self) -> bool {
        self.program.is_some()
    }

    /// scp and sftp have no notion of "only what changed".
    pub fn can_rerun(&self) -> bool {
        matches!(self.tool, Tool::Robosync | Tool::Rsync | Tool::Rclone)
    }

    /// Copies the local directory `src` so that its contents land in remote `dst`
    /// (`dst` does not exist yet; its parent does).
    pub fn push(&self, job: &Job, src: &Path, dst: &Path) -> Command {
        self.transfer(job, Side::Local(src), Side::Remote(dst))
    }

    /// Copies the remote directory `src` so that its contents land in local `dst`.
    pub fn pull(&self, job: &Job, src: &Path, dst: &Path) -> Command {
        self.transfer(job, Side::Remote(src), Side::Local(dst))
    }

    fn transfer(&self, job: &Job, from: Side, to: Side) -> Command {
        let program = self.program.as_ref().expect("peer is installed");
        let mut cmd = Command::new(program);
        let cfg = &job.link.ssh_config;
        match self.tool {
            Tool::Robosync => {
                cmd.arg("-F")
                    .arg(cfg)
                    .arg("--state-dir")
                    .arg(job.state)
                    .args(["--json", "--no-progress"])
                    .args(&self.extra_args)
                    .arg(from.ssh_contents())
                    .arg(to.ssh());
            }
            Tool::Scp(cipher) => {
                cmd.args(["-q", "-r", "-F"]).arg(cfg);
                if let Some(c) = cipher {
                    cmd.args(["-c", c]);
                }
                cmd.arg(from.ssh()).arg(to.ssh());
            }
            Tool::Sftp => {
                let verb = match from {
                    Side::Local(_) => "put",
                    Side::Remote(_) => "get",
                };
                // A pull fetches the directory's entries (the glob, outside
                // the quotes) into `dst`: `get -r DIR DST` with an existing
                // DST would nest the tree one level down, in DST/DIR.
                let glob = match from {
                    Side::Local(_) => "",
                    Side::Remote(_) => "/*",
                };
                let batch = job.scratch.join("sftp.batch");
                fs::write(
                    &batch,
                    format!(
                        "{verb} -r \"{}\"{glob} \"{}\"\n",
                        from.path().display(),
                        to.path().display()
                    ),
                )
                .expect("write sftp batch file");
                if let Side::Local(dst) = to {
                    // sftp's get -r wants the local directory to exist.
                    fs::create_dir_all(dst).expect("create pull destination");
                }
                cmd.args(["-q", "-F"])
                    .arg(cfg)
                    .arg("-b")
                    .arg(batch)
                    .arg("robot");
            }
            Tool::Rsync => {
                cmd.arg("-a")
                    .arg("-e")
                    .arg(format!("ssh -F {}", cfg.display()))
                    .arg(from.ssh_contents())
                    .arg(to.ssh_contents());
            }
            Tool::Rclone => {
                job.link.rclone_env(&mut cmd);
                cmd.env("RCLONE_CONFIG", job.scratch.join("rclone.conf"))
                    .args(["copy", "-q", "--transfers", "8"])
                    .arg(from.rclone(&job.link.rclone_remote))
                    .arg(to.rclone(&job.link.rclone_remote));
            }
        }
        cmd
    }
}

#[derive(Clone, Copy)]
enum Side<'a> {
    Local(&'a Path),
    Remote(&'a Path),
}

impl Side<'_> {
    fn path(&self) -> &Path {
        match self {
            Side::Local(p) | Side::Remote(p) => p,
        }
    }
    /// scp/robosync spelling: `robot:/abs/path` or the local path.
    fn ssh(&self) -> String {
        match self {
            Side::Local(p) => p.display().to_string(),
            Side::Remote(p) => format!("robot:{}", p.display()),
        }
    }
    /// rsync spelling with a trailing slash: the directory's contents.
    fn ssh_contents(&self) -> String {
        format!("{}/", self.ssh())
    }
    fn rclone(&self, remote: &str) -> String {
        match self {
            Side::Local(p) => p.display().to_string(),
            Side::Remote(p) => format!("{remote}:{}", p.display()),
        }
    }
}

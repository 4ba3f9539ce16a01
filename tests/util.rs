//! Helpers that make tests read like specifications.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use robosync_testbed::{Proxy, Sshd};

/// A robosync command aimed at `sshd` (its ssh_config via -F, a private state dir).
pub fn robosync(sshd: &Sshd, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_robosync"));
    c.arg("-F")
        .arg(&sshd.ssh_config)
        .arg("--state-dir")
        .arg(state);
    c.env_remove("SSH_AUTH_SOCK");
    c
}

pub struct Ran {
    pub out: Output,
}

impl Ran {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        // --json: stdout holds exactly one JSON document, nothing else.
        serde_json::from_str(&self.stdout()).unwrap_or_else(|e| {
            panic!(
                "no JSON summary ({e}): {}\n{}",
                self.stdout(),
                self.stderr()
            )
        })
    }
    #[track_caller]
    pub fn success(self) -> Ran {
        assert_eq!(
            self.code(),
            0,
            "robosync failed:\nstdout: {}\nstderr: {}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}

pub fn run(cmd: &mut Command) -> Ran {
    Ran {
        out: cmd.output().expect("cannot run robosync"),
    }
}

/// `host:path/` for the sshd's Host alias. The trailing slash means "the
/// contents of" when it is the source (rsync's rule) and nothing as the
/// destination, so every test says what it means either way.
pub fn remote(path: &Path) -> String {
    format!(
        "robot:{}/",
        path.display().to_string().trim_end_matches('/')
    )
}

/// A local source spelled `path/`: the directory's contents (rsync's rule;
/// without the slash the directory itself lands inside DEST).
pub fn contents(path: impl AsRef<Path>) -> String {
    format!(
        "{}/",
        path.as_ref().display().to_string().trim_end_matches('/')
    )
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
}

pub fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: c is NUL-terminated and times holds the two timespecs utimensat reads.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0);
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The acceptance tree of the foundation issue: nested and empty dirs, an
/// empty file, a 10 MiB file, a symlink, spaces, non-ASCII and non-UTF-8 names.
pub fn sample_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    write(&root.join("a/b/c/deep.txt"), b"deep\n");
    fs::create_dir_all(root.join("empty dir")).unwrap();
    write(&root.join("empty"), b"");
    write(&root.join("big.bin"), &bytes(10 << 20, 1));
    write(&root.join("name with spaces.txt"), b"spaces\n");
    write(&root.join("données/été.txt"), "non-ascii ✓\n".as_bytes());
    write(
        &root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9.txt")),
        b"not utf-8\n",
    );
    symlink("a/b/c/deep.txt", root.join("link")).unwrap();
    fs::set_permissions(
        root.join("name with spaces.txt"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    let exe = root.join("run.sh");
    write(&exe, b"#!/bin/sh\necho hi\n");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    set_mtime(&root.join("big.bin"), 1_500_000_000);
}

#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    File { hash: String, mode: u32, mtime: i64 },
    Dir { mode: u32 },
    Link(PathBuf),
}

/// Everything under `root` (except robosync's own `.robosync`), for comparing trees.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Item> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Item>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.as_os_str() == ".robosync" {
                continue;
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let item = if m.file_type().is_symlink() {
                Item::Link(fs::read_link(&p).unwrap())
            } else if m.is_dir() {
                walk(root, &p, out);
                Item::Dir {
                    mode: m.mode() & 0o7777,
                }
            } else {
                Item::File {
                    hash: blake3::hash(&fs::read(&p).unwrap()).to_hex().to_string(),
                    mode: m.mode() & 0o7777,
                    mtime: m.mtime(),
                }
            };
            out.insert(rel, item);
        }
    }
    walk(root, root, &mut out);
    out
}

#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let keys: Vec<_> = sa
        .keys()
        .chain(sb.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for k in keys {
        assert_eq!(sa.get(k), sb.get(k), "trees differ at {}", k.display());
    }
}

/// Names of files anywhere under `root` that look like robosync temp files.
pub fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            let n = name.as_bytes();
            if n.ends_with(b".part") && n.windows(5).any(|w| w == b".rbs-") {
                out.push(p.clone());
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(&p, out);
            }
        }
    }
    walk(root, &mut out);
    out
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("robosync-test-")
        .tempdir()
        .unwrap()
}

/// An ssh_config whose `robot` alias goes through `proxy` (same host key).
pub fn via_proxy(sshd: &Sshd, proxy: &Proxy) -> PathBuf {
    let stanza = sshd.config_stanza("robot").replace(
        &format!("Port {}", sshd.port),
        &format!("Port {}", proxy.port),
    );
    let host_pub = fs::read_to_string(&sshd.host_key_pub).unwrap();
    let mut kh = fs::read_to_string(&sshd.known_hosts).unwrap();
    kh.push_str(&format!("[127.0.0.1]:{} {}\n", proxy.port, host_pub.trim()));
    fs::write(&sshd.known_hosts, kh).unwrap();
    let path = sshd
        .dir
        .path()
        .join(format!("ssh_config.proxy{}", proxy.port));
    fs::write(&path, stanza).unwrap();
    path
}

/// A robosync command with an explicit ssh_config file.
pub fn robosync_with(config: &Path, state: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_robosync"));
    c.arg("-F").arg(config).arg("--state-dir").arg(state);
    c.env_remove("SSH_AUTH_SOCK");
    c
}

/// Many small files under `root/small/dNN/`.
pub fn small_files(root: &Path, n: usize) {
    for i in 0..n {
        let size = 512 + (i * 7919) % (16 << 10);
        write(
            &root.join(format!("small/d{:02}/f{i:05}", i % 20)),
            &bytes(size, i as u64 + 7),
        );
    }
}

pub fn total_size(root: &Path) -> u64 {
    snapshot(root)
        .keys()
        .map(|k| {
            fs::symlink_metadata(root.join(k))
                .map(|m| if m.is_file() { m.len() } else { 0 })
                .unwrap_or(0)
        })
        .sum()
}

/// Starts `cmd` (output discarded) and SIGKILLs it once `wire()` — a byte
/// count at the proxy — reaches `at`. Returns whether it was killed (false:
/// it finished first).
pub fn kill_when(cmd: &mut Command, wire: impl Fn() -> u64, at: u64) -> bool {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while wire() < at {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < deadline, "transfer stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

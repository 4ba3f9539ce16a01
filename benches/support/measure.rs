//! Running one transfer command: wall time, CPU of the client process tree,
//! a hard timeout, and what actually landed.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

/// How one command ended.
pub struct Ran {
    /// Exit code; `None` if killed by a signal (or by our timeout).
    pub code: Option<i32>,
    pub wall: Duration,
    /// User + system CPU of the client and every child it waited for
    /// (e.g. the `ssh` under scp/rsync); the server side is not included.
    pub cpu_user: Duration,
    pub cpu_sys: Duration,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// The first lines of stderr (or stdout), for a failure report.
    pub fn complaint(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut s = lines
            .iter()
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join(" / ");
        if s.len() > 300 {
            let mut cut = 300;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push('…');
        }
        s
    }
}

/// Runs `cmd` in its own process group, killing the whole group after `timeout`.
/// Output goes to files in `scratch` (no pipes to fill up).
pub fn run(cmd: &mut Command, scratch: &Path, timeout: Duration) -> Ran {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"))
        .env_remove("SSH_AUTH_SOCK")
        .process_group(0);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id() as libc::pid_t;
    // `child` is reaped by wait4 below, which also gives us its rusage.
    drop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: rusage is plain integers, for which all zeroes is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: status and usage are valid, writable, and outlive the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let _ = tx.send((r, status, usage, Instant::now()));
    });
    let (result, timed_out) = match rx.recv_timeout(timeout) {
        Ok(r) => (r, false),
        Err(_) => {
            // SAFETY: kill only sends a signal, to the group the child leads.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            (rx.recv().expect("wait4 thread"), true)
        }
    };
    let (r, status, usage, ended) = result;
    assert_eq!(r, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    // Helpers it left behind (an ssh stuck on a dead proxy) must not outlive the run.
    // SAFETY: kill only sends a signal, to the group the child led.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ran {
        code,
        wall: ended - started,
        cpu_user: tv(usage.ru_utime),
        cpu_sys: tv(usage.ru_stime),
        timed_out,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Regular files under `root`, their total size, and a digest of every
/// (path, content) pair, so a run that put the right bytes under the wrong
/// names, or the wrong bytes in files of the right sizes, does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    pub files: u64,
    pub bytes: u64,
    pub content: [u8; 32],
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files, {} bytes, content digest {:02x}{:02x}{:02x}{:02x}…",
            self.files,
            self.bytes,
            self.content[0],
            self.content[1],
            self.content[2],
            self.content[3]
        )
    }
}

/// robosync keeps a copy of its manifest at the destination, by design.
const ROBOSYNC_META: &str = ".robosync";

/// Payload under `root`: everything but robosync's own metadata directory.
pub fn tally(root: &Path) -> Tally {
    let mut t = Tally::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && e.file_name() != ROBOSYNC_META {
                stack.push(e.path());
            } else if ft.is_file() {
                t.files += 1;
                let data = fs::read(e.path()).unwrap_or_default();
                t.bytes += data.len() as u64;
                // Order-free: XOR of BLAKE3(relative path, BLAKE3(content)).
                let rel = e.path();
                let rel = rel.strip_prefix(root).unwrap_or(&rel);
                let mut pair = rel.as_os_str().as_encoded_bytes().to_vec();
                pair.push(0);
                pair.extend_from_slice(&robosync_scanner::hash_bytes(&data).whole);
                let h = robosync_scanner::hash_bytes(&pair).whole;
                for (acc, b) in t.content.iter_mut().zip(h) {
                    *acc ^= b;
                }
            }
        }
    }
    t
}

/// Up to `max` files under `dst` whose name no file under `src` has (what a
/// tool left behind besides the payload), relative to `dst`.
pub fn strangers(dst: &Path, src: &Path, max: usize) -> Vec<String> {
    let names: std::collections::HashSet<_> = files(src)
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_owned()))
        .collect();
    files(dst)
        .into_iter()
        .filter(|p| p.file_name().is_none_or(|n| !names.contains(n)))
        .take(max)
        .map(|p| p.strip_prefix(dst).unwrap_or(&p).display().to_string())
        .collect()
}

fn files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(ft) if ft.is_dir() && e.file_name() != ROBOSYNC_META => stack.push(e.path()),
                Ok(ft) if ft.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

/// Median of the samples (upper median for an even count).
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// `name` found on PATH.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// First line of `program args…` (stdout, else stderr), for version notes.
pub fn version_line(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

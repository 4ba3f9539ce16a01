//! robosync-testbed: real parts for tests and benchmarks, no mocks.
//!
//! [`Sshd`] starts OpenSSH's `sshd` on a free loopback port, configured like an
//! HPC automation ("robot") node: a throwaway client key restricted with
//! `restrict,from=…,command=…/fixtures/robot/transfer_commands.sh`. [`Proxy`] is
//! a TCP proxy that counts bytes and cuts connections on demand or at a byte
//! offset, to inject real network faults. Must not: talk to anything but loopback.

mod proxy;
mod sshd;

pub use proxy::{Proxy, ProxyStats, Shaping};
pub use sshd::{Sshd, SshdBuilder};

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (where `fixtures/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// Runs a command and panics with its stderr if it fails (harness set-up only).
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Generates an unencrypted ed25519 key pair at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "robosync-test", "-f"])
        .arg(path));
}

/// A TCP port that is free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Name of the user running the tests (sshd logs in as this user).
pub fn current_user() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    // SAFETY: getpwuid returns null or a pointer to static storage, read at once below (tests only: no other thread calls it meanwhile).
    let pw = unsafe { libc::getpwuid(uid) };
    assert!(!pw.is_null(), "no passwd entry for uid {uid}");
    // SAFETY: pw is not null (asserted), and pw_name is a NUL-terminated string in it.
    unsafe { std::ffi::CStr::from_ptr((*pw).pw_name) }
        .to_string_lossy()
        .into_owned()
}

/// Path of the hostile SFTP server (`src/bin/hostile_sftp.rs`), compiled with
/// a bare `rustc` on first use: it is std-only, so this takes a second and
/// works under any `cargo test` invocation, whichever packages it builds.
pub fn hostile_sftp_server() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let src = workspace_root().join("crates/testbed/src/bin/hostile_sftp.rs");
    let text = std::fs::read(&src).expect("hostile_sftp.rs");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    // Beside the build's other outputs, not left behind in /tmp.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dir = target.join("hostile-sftp");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join(format!("hostile_sftp-{:016x}", h.finish()));
    if !exe.exists() {
        let tmp = dir.join(format!("build-{}", std::process::id()));
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        run(Command::new(rustc)
            .args(["--edition", "2021", "-O", "-o"])
            .arg(&tmp)
            .arg(&src));
        std::fs::rename(&tmp, &exe).unwrap();
    }
    exe
}

//! Secrets typed by a human: key passphrases and keyboard-interactive answers.
//!
//! Read from `/dev/tty` (as `ssh` does), not stdin, with echo off and the
//! terminal's settings restored on every way out: Enter, Ctrl-C, Ctrl-D, an
//! error or a panic. Ctrl-C is read as a byte (ISIG off while prompting)
//! and re-raised as SIGINT once the terminal is restored, so no signal
//! handler ever races the restore.
//!
//! A key's passphrase is asked once per run: the decrypted key is kept for
//! every later connection, and connections that need it meanwhile wait for
//! the one prompt instead of opening their own.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use russh::keys::{load_secret_key, PrivateKey};

/// Keys unlocked this run, or why they could not be.
type Unlocked = HashMap<PathBuf, Result<Arc<PrivateKey>, String>>;
static UNLOCKED: LazyLock<tokio::sync::Mutex<Unlocked>> = LazyLock::new(Default::default);

/// Attempts at a passphrase, as OpenSSH's `NumberOfPasswordPrompts`.
const ATTEMPTS: usize = 3;

/// The encrypted key at `path`, decrypted with a passphrase asked on the
/// terminal at most once per run (whatever the number of connections).
pub(crate) async fn unlock(path: &Path) -> Result<Arc<PrivateKey>, String> {
    let mut unlocked = UNLOCKED.lock().await;
    if let Some(done) = unlocked.get(path) {
        return done.clone();
    }
    let owned = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        let prompt = format!("Enter passphrase for key '{}': ", owned.display());
        for _ in 0..ATTEMPTS {
            let pass = read_secret(&prompt).map_err(|e| format!("no passphrase read: {e}"))?;
            if pass.is_empty() {
                return Err("no passphrase given".to_string());
            }
            match load_secret_key(&owned, Some(&pass)) {
                Ok(k) => return Ok(Arc::new(k)),
                Err(russh::keys::Error::KeyIsEncrypted) => continue,
                Err(e) => return Err(format!("cannot decrypt: {e}")),
            }
        }
        Err(format!("wrong passphrase {ATTEMPTS} times"))
    })
    .await
    .unwrap_or_else(|e| Err(format!("prompt failed: {e}")));
    unlocked.insert(path.to_path_buf(), result.clone());
    result
}

/// Restores the terminal's settings when dropped.
struct Restore<'a> {
    tty: &'a File,
    saved: libc::termios,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        // SAFETY: a valid fd and a termios read from it by tcgetattr.
        unsafe { libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSAFLUSH, &self.saved) };
    }
}

/// Reads one line from `/dev/tty` without echo. Ctrl-C restores the
/// terminal and then interrupts the process as it would have.
pub(crate) fn read_secret(prompt: &str) -> std::io::Result<String> {
    let mut tty = File::options().read(true).write(true).open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ICANON | libc::ISIG);
    quiet.c_cc[libc::VMIN] = 1;
    quiet.c_cc[libc::VTIME] = 0;
    write!(tty, "{prompt}")?;
    tty.flush()?;
    let line = {
        let reader = tty.try_clone()?;
        let _restore = Restore {
            tty: &reader,
            saved,
        };
        // SAFETY: as above; `_restore` undoes this on every way out.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        read_line_raw(&reader)
    };
    let _ = writeln!(tty);
    match line {
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            // SAFETY: raising a signal at ourselves; the terminal is restored.
            unsafe { libc::raise(libc::SIGINT) };
            Err(e)
        }
        other => other,
    }
}

fn read_line_raw(mut tty: &File) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if tty.read(&mut byte)? == 0 {
            break;
        }
        match byte[0] {
            b'\n' | b'\r' => break,
            0x03 => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "interrupted (Ctrl-C)",
                ))
            }
            0x04 if line.is_empty() => break,
            0x7f | 0x08 => {
                line.pop();
            }
            0x15 => line.clear(),
            b => line.push(b),
        }
    }
    String::from_utf8(line)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

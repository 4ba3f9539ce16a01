//! What a full disk or an exhausted quota looks like, said in one place.
//!
//! SFTP v3 has no "no space" status: OpenSSH's sftp-server
//! (`errno_to_portable`) answers ENOSPC, EDQUOT and EFBIG with
//! SSH_FX_FAILURE and the message "Failure". A FAILURE on a WRITE, or on the
//! FSETSTAT or CLOSE that follow it, while sending a file is therefore read
//! as "probably out of space or over quota"; locally the OS says so exactly.

use std::io;

use robosync_transport::Error;

/// The words every disk-full message carries (tests and callers match on
/// the message only through this constant).
pub const REMOTE_HINT: &str = "the destination may be out of space or over quota";

/// Whether `e`, failing a file being sent, looks like a full disk or quota.
pub fn is_remote_space(e: &Error) -> bool {
    matches!(
        e,
        Error::Failure(s) if matches!(s.op, "write" | "fsetstat" | "close")
    )
}

/// One line for a file that could not be sent: `rel` and the server's
/// answer at `abs`, plus what to check when it looks like a full disk.
pub fn send_failed(rel: &str, abs: &[u8], e: Error) -> String {
    let e = e.at_path(abs);
    if is_remote_space(&e) {
        format!("{rel}: {e}: {REMOTE_HINT} (check df and quota on the server)")
    } else {
        format!("{rel}: {e}")
    }
}

/// The run's last word after a disk-full failure: what its temp files hold.
pub fn temps_held(bytes: u64, files: usize) -> String {
    format!(
        "{REMOTE_HINT}: {bytes} bytes in {files} robosync temp file(s) are there now \
         (a rerun resumes or removes them once it has room)"
    )
}

/// Bytes and count of robosync temp files now under the remote `root`
/// (listed afresh), or `None` if that cannot be found out.
pub async fn remote_temps(
    pool: &std::sync::Arc<robosync_transport::Pool>,
    root: &[u8],
) -> Option<(u64, usize)> {
    let listing = crate::remote::list(pool, root, crate::sync::MAX_REMOTE_ENTRIES, None)
        .await
        .ok()?;
    let s = pool.session().await.ok()?;
    let paths: Vec<Vec<u8>> = listing
        .temps
        .iter()
        .map(|t| crate::endpoint::join(root, t))
        .collect();
    let sizes = futures::future::join_all(paths.iter().map(|p| s.lstat(p))).await;
    let bytes = sizes.iter().flatten().filter_map(|a| a.size).sum();
    Some((bytes, listing.temps.len()))
}

/// `what: e` for a local failure, saying so when the disk or quota is full.
pub fn local_failed(what: &str, e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => format!("{what}: {e}: the local disk is full (check df)"),
        Some(libc::EDQUOT) => {
            format!("{what}: {e}: the local quota is exhausted (check quota)")
        }
        _ => format!("{what}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use robosync_transport::proto;

    fn status(op: &'static str, code: u32) -> Error {
        Error::from_status(op, b"", code, "Failure".into())
    }

    #[test]
    fn a_failed_write_names_the_file_and_suggests_space() {
        let m = send_failed("a/b", b"/dest/a/b", status("write", proto::FX_FAILURE));
        assert!(m.contains("/dest/a/b") && m.contains(REMOTE_HINT), "{m}");
        let m = send_failed("a/b", b"/dest/a/b", status("open", proto::FX_FAILURE));
        assert!(!m.contains(REMOTE_HINT), "{m}");
        let m = send_failed("a/b", b"/dest/a/b", status("write", 3));
        assert!(!m.contains(REMOTE_HINT), "{m}");
    }

    #[test]
    fn enospc_and_edquot_say_so_locally() {
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        assert!(local_failed("cannot write x", &full).contains("disk is full"));
        let quota = io::Error::from_raw_os_error(libc::EDQUOT);
        assert!(local_failed("cannot write x", &quota).contains("quota"));
    }
}

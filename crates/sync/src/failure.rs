//! How a run ends when it stops: the exit-code table (rsync's numbers where
//! the meaning matches, so cron wrappers written for rsync keep working),
//! [`Failure`], and the exit code of a transport error, decided by its
//! variant, never its text.

use robosync_transport::Error;

/// Usage or configuration error (as rsync 1).
pub const EXIT_USAGE: i32 = 1;

/// File selection error: a rules or list file that cannot be read (rsync 3).
pub const EXIT_SELECTION: i32 = 3;

/// The server would not start SFTP (rsync 5: error starting client-server protocol).
pub const EXIT_NO_SFTP: i32 = 5;

/// Could not connect: resolution, TCP, proxy (rsync 10: error in socket I/O).
pub const EXIT_CONNECT: i32 = 10;

/// The destination cannot be made: its parent is missing (rsync 11: error in file I/O).
pub const EXIT_FILE_IO: i32 = 11;

/// The server broke the SFTP protocol (rsync 12: error in protocol data stream).
pub const EXIT_PROTOCOL: i32 = 12;

/// Interrupted by SIGINT or SIGTERM; a rerun resumes (rsync 20).
pub const EXIT_INTERRUPTED: i32 = 20;

/// Some entries failed, the rest landed (rsync 23).
pub const EXIT_PARTIAL: i32 = 23;

/// Some source files vanished during the run, and nothing else failed (rsync 24).
pub const EXIT_VANISHED: i32 = 24;

/// A `--delete` guard stopped the deletions (rsync 25: --max-delete limit).
pub const EXIT_GUARD: i32 = 25;

/// Connection lost and not re-established within `--retry-for` (rsync 30: timeout).
pub const EXIT_LOST: i32 = 30;

/// A bug: the run's task failed (sysexits' EX_SOFTWARE).
pub const EXIT_INTERNAL: i32 = 70;

/// Another run holds this destination: sysexits' EX_TEMPFAIL ("try again
/// later"); rsync has no such code, and its 35 means a daemon timeout.
pub const EXIT_BUSY: i32 = 75;

/// Authentication refused or host key not accepted (as ssh's 255).
pub const EXIT_DENIED: i32 = 255;

/// What stopped a run: its exit code and what to tell the user.
#[derive(Debug)]
pub struct Failure {
    /// The exit code (see the `EXIT_` constants).
    pub code: i32,
    /// What happened, where, and what to do.
    pub message: String,
    /// Set when the run found the other side is not what the spelling
    /// assumed; the front-end runs it again in the right form.
    pub redo: Option<Redo>,
}

/// What a single-file run learns only from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redo {
    /// `a.txt host:x/NAME`: NAME is a directory, so the file goes into it.
    DestIsDir,
    /// `host:x/a.txt DEST`: the source is a file, not a tree.
    SourceIsFile,
}

/// A [`Failure`] with this exit code and message.
pub fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
        redo: None,
    }
}

/// A failure the front-end answers by running again as `redo` says.
pub fn redo(redo: Redo, message: impl Into<String>) -> Failure {
    Failure {
        redo: Some(redo),
        ..fail(EXIT_USAGE, message)
    }
}

/// The exit code for a transport error, decided by its variant, never its text.
pub fn exit_code(e: &Error) -> i32 {
    match e {
        Error::ConnectionLost { .. } | Error::Timeout { .. } => EXIT_LOST,
        Error::Unreachable(_) | Error::Connect(_) => EXIT_CONNECT,
        Error::Denied(_) => EXIT_DENIED,
        Error::Refused { .. } | Error::ChannelRefused { .. } => EXIT_NO_SFTP,
        Error::Protocol { .. } => EXIT_PROTOCOL,
        // A refusal about one path (e.g. the destination cannot be made).
        Error::NoSuchFile(_)
        | Error::PermissionDenied(_)
        | Error::Failure(_)
        | Error::Unsupported(_)
        | Error::BadMessage(_)
        | Error::Status(_) => EXIT_PARTIAL,
    }
}

/// A run-ending transport error, with its [`exit_code`].
pub fn transport_failure(e: Error) -> Failure {
    fail(exit_code(&e), e.to_string())
}

/// The ancestor of `root` that must exist when the run may create only its
/// last `creatable` components; `None` when that is the login directory or
/// `/` (which always exist) or nothing is required.
pub fn required_parent(root: &[u8], creatable: usize) -> Option<Vec<u8>> {
    let mut p = crate::trim_slashes(root).to_vec();
    for _ in 0..creatable {
        if p.is_empty() || p == b"/" || p == b"." {
            return None;
        }
        p = crate::parent_of(&p);
    }
    let p = crate::trim_slashes(&p).to_vec();
    (!p.is_empty() && p != b"/" && p != b".").then_some(p)
}

/// The failure for a destination whose `parent` is missing, as rsync's:
/// 11 when a directory could not be made, 3 when a file's directory is
/// missing (rsync's change_dir failure).
pub fn parent_missing(root: &[u8], parent: &[u8], creatable: usize) -> Failure {
    let (root, parent) = (
        String::from_utf8_lossy(root),
        String::from_utf8_lossy(parent),
    );
    fail(
        if creatable == 0 {
            EXIT_SELECTION
        } else {
            EXIT_FILE_IO
        },
        format!(
            "cannot create destination {root}: {parent} does not exist (robosync, like rsync, \
             makes only the destination itself, not its parents): create {parent} first, or \
             pass --mkpath"
        ),
    )
}

/// One entry that failed while the rest of the run went on (exit 23),
/// typed where it happened: which entry, doing what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryError {
    /// The entry, relative to the sync root (escaped as messages show it),
    /// when the failure is about one.
    pub path: Option<String>,
    /// What was being done.
    pub operation: Operation,
    /// The line shown to the user.
    pub message: String,
}

/// What a failed entry was being done to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Sending or fetching a file (or landing a hard link).
    Transfer,
    /// Making a directory.
    CreateDirectory,
    /// Making a symlink.
    Symlink,
    /// Setting mode and mtime.
    SetAttributes,
    /// Removing (or moving aside into `--backup-dir`).
    Delete,
    /// Listing a remote directory.
    List,
    /// Reading a local entry (the scan) or a remote file (`--checksum`).
    Read,
    /// Selecting the source: a `--files-from` path the source lacks.
    Select,
    /// Anything else (recording the manifest, a refused plan step, …).
    Other,
}

impl Operation {
    /// The operation of a plan's action.
    pub fn of(a: &robosync_planner::Action) -> Operation {
        use robosync_planner::Action;
        match a {
            Action::Mkdir { .. } => Operation::CreateDirectory,
            Action::Copy { .. } | Action::Delta { .. } => Operation::Transfer,
            Action::Symlink { .. } => Operation::Symlink,
            Action::SetAttrs { .. } => Operation::SetAttributes,
            Action::Delete { .. } => Operation::Delete,
        }
    }

    /// How the JSON report names it; `None` for [`Operation::Other`].
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Operation::Transfer => "transfer",
            Operation::CreateDirectory => "create directory",
            Operation::Symlink => "symlink",
            Operation::SetAttributes => "set attributes",
            Operation::Delete => "delete",
            Operation::List => "list",
            Operation::Read => "read",
            Operation::Select => "select",
            Operation::Other => return None,
        })
    }
}

impl EntryError {
    /// A failure about the entry `path` (relative to the sync root; the
    /// root itself, empty, is named by no path).
    pub fn at(path: &std::path::Path, operation: Operation, message: impl Into<String>) -> Self {
        EntryError {
            path: (!path.as_os_str().is_empty()).then(|| robosync_planner::escape(path)),
            operation,
            message: message.into(),
        }
    }
}

/// A failure that names no one entry.
impl From<String> for EntryError {
    fn from(message: String) -> Self {
        EntryError {
            path: None,
            operation: Operation::Other,
            message,
        }
    }
}

impl std::fmt::Display for EntryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_a_destination_needs_is_above_what_the_run_may_make() {
        let r = |root: &str, n| {
            required_parent(root.as_bytes(), n).map(|p| String::from_utf8(p).unwrap())
        };
        // DEST itself may be made: its parent must exist.
        assert_eq!(r("/p/x/dest", 1).as_deref(), Some("/p/x"));
        // DEST and the source's own name: DEST's parent.
        assert_eq!(r("/p/x/dest/data", 2).as_deref(), Some("/p/x"));
        // A file's directory is never made: the root itself must exist.
        assert_eq!(r("/p/x", 0).as_deref(), Some("/p/x"));
        // The login directory and / always exist.
        assert_eq!(r("dest", 1), None);
        assert_eq!(r("/dest", 1), None);
        assert_eq!(r("dest/", 1), None);
        // --mkpath.
        assert_eq!(r("/a/b/c/d", usize::MAX), None);
    }

    #[test]
    fn a_missing_parent_is_11_for_a_directory_and_3_for_a_file() {
        assert_eq!(parent_missing(b"/p/x/d", b"/p/x", 1).code, EXIT_FILE_IO);
        assert_eq!(parent_missing(b"/p/x", b"/p/x", 0).code, EXIT_SELECTION);
    }
}

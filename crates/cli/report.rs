//! The `--json` report: one object on stdout at the end of every run.
//!
//! Self-contained (serde only) so the integration tests read the output
//! back into this very struct. Bump [`SCHEMA_VERSION`] when a field changes
//! meaning or goes away; adding a field keeps the version.

use serde::{Deserialize, Serialize};

/// Version of [`Report`]'s layout.
pub const SCHEMA_VERSION: u32 = 1;

/// What one run did. Every field is always present.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`SCHEMA_VERSION`] of the program that wrote it.
    pub schema_version: u32,
    /// The process's exit code (see README "Exit codes").
    pub exit_code: i32,
    /// `-n`: nothing was changed; `planned` lists what a real run would do.
    pub dry_run: bool,
    /// Files (and symlinks) landed at the destination.
    pub files_transferred: u64,
    /// Payload bytes sent (push) or received (pull), resumed bytes excluded.
    pub bytes_transferred: u64,
    /// Files already identical at the destination.
    pub files_skipped: u64,
    /// Entries removed by `--delete`.
    pub deleted: u64,
    /// Files read back and compared (`--verify`).
    pub verified: u64,
    /// Bytes of interrupted transfers kept from an earlier run, not sent again.
    pub resumed_bytes: u64,
    /// Wall time of the whole run.
    pub elapsed_seconds: f64,
    /// `-n`: one rsync-style line per action a real run would take.
    pub planned: Vec<String>,
    /// Everything that failed; empty when `exit_code` is 0.
    pub errors: Vec<ErrorRecord>,
    /// Source entries that vanished during the run (exit 24 when nothing else failed).
    pub vanished: Vec<String>,
}

/// One failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorRecord {
    /// The entry concerned, relative to the transfer root, when there is one.
    pub path: Option<String>,
    /// What was being done ("create directory", "delete", "transfer", …), when known.
    pub operation: Option<String>,
    pub kind: ErrorKind,
    /// The message robosync printed on stderr.
    pub message: String,
}

/// Which kind of failure, matching the exit code it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// One entry failed; the rest went on (exit 23).
    Entry,
    /// Usage or configuration (exit 1).
    Usage,
    /// File selection: an unreadable rules file, a file where DEST must be a directory (exit 3).
    Selection,
    /// The server would not start SFTP (exit 5).
    NoSftp,
    /// Could not connect (exit 10).
    Connect,
    /// The destination could not be made: its parent is missing (exit 11).
    Destination,
    /// The server broke the protocol (exit 12).
    Protocol,
    /// The run was interrupted (exit 20).
    Interrupted,
    /// A delete guard stopped the deletions (exit 25).
    Guard,
    /// The connection was lost and not re-established (exit 30).
    ConnectionLost,
    /// Another run holds the destination (exit 75).
    Busy,
    /// Authentication or the host key was refused (exit 255).
    Denied,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The kind of a run-ending failure, from its exit code (README "Exit codes").
    pub fn of_exit(code: i32) -> ErrorKind {
        match code {
            1 => ErrorKind::Usage,
            3 => ErrorKind::Selection,
            5 => ErrorKind::NoSftp,
            10 => ErrorKind::Connect,
            11 => ErrorKind::Destination,
            12 => ErrorKind::Protocol,
            20 => ErrorKind::Interrupted,
            23 => ErrorKind::Entry,
            25 => ErrorKind::Guard,
            30 => ErrorKind::ConnectionLost,
            75 => ErrorKind::Busy,
            255 => ErrorKind::Denied,
            _ => ErrorKind::Other,
        }
    }
}

/// robosync's own message prefixes, `cannot OPERATION PATH: detail`.
const OPERATIONS: &[&str] = &[
    "create directory",
    "set attributes of",
    "delete",
    "read link",
    "read",
    "open",
    "stat",
    "rename",
];

impl ErrorRecord {
    /// Reads the path and operation out of robosync's message shapes:
    /// `cannot OPERATION PATH: detail`, and `PATH: detail` for an entry's
    /// transfer. Best effort (a path holding ": " is cut there); anything
    /// else keeps only the message.
    pub fn parse(message: &str, kind: ErrorKind) -> ErrorRecord {
        let (mut path, mut operation) = (None, None);
        let known = message.strip_prefix("cannot ").and_then(|rest| {
            OPERATIONS.iter().find_map(|op| {
                let p = rest.strip_prefix(op)?.strip_prefix(' ')?;
                Some((*op, p.split_once(": ")?.0))
            })
        });
        if let Some((op, p)) = known {
            operation = Some(op.to_string());
            path = Some(p.to_string());
        } else if kind == ErrorKind::Entry && !message.starts_with("cannot ") {
            if let Some((p, _)) = message.split_once(": ") {
                path = Some(p.to_string());
                operation = Some("transfer".into());
            }
        }
        ErrorRecord {
            path,
            operation,
            kind,
            message: message.to_string(),
        }
    }
}

//! The `--json` report: one document per command, the same for every
//! front-end, built from the engine's [`Report`](crate::Report).
//!
//! Self-contained (serde only) so a reader (the integration tests, a
//! pipeline) parses the output back into this very struct. Bump
//! [`SCHEMA_VERSION`] when a field changes meaning or goes away; adding a
//! field keeps the version.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::failure::*;

/// Version of [`Report`]'s layout.
pub const SCHEMA_VERSION: u32 = 1;

/// What one command did. Every field is always present.
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
    /// Wall time of the whole command.
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
    /// The entry concerned, relative to the transfer root, when there is one
    /// (as the engine typed it, never read back out of the message).
    pub path: Option<String>,
    /// What was being done, when the failure is an entry's: "transfer",
    /// "create directory", "symlink", "set attributes", "delete", "list",
    /// "read" or "select" ([`Operation`](crate::Operation)).
    pub operation: Option<String>,
    /// Which kind of failure.
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
    /// The kind of a run-ending failure, from its exit code.
    pub fn of_exit(code: i32) -> ErrorKind {
        match code {
            EXIT_USAGE => ErrorKind::Usage,
            EXIT_SELECTION => ErrorKind::Selection,
            EXIT_NO_SFTP => ErrorKind::NoSftp,
            EXIT_CONNECT => ErrorKind::Connect,
            EXIT_FILE_IO => ErrorKind::Destination,
            EXIT_PROTOCOL => ErrorKind::Protocol,
            EXIT_INTERRUPTED => ErrorKind::Interrupted,
            EXIT_PARTIAL => ErrorKind::Entry,
            EXIT_GUARD => ErrorKind::Guard,
            EXIT_LOST => ErrorKind::ConnectionLost,
            EXIT_BUSY => ErrorKind::Busy,
            EXIT_DENIED => ErrorKind::Denied,
            _ => ErrorKind::Other,
        }
    }
}

impl Report {
    /// The document for a finished command: the engine's counters and typed
    /// entry errors, then what stopped it, if something did.
    pub fn new(
        outcome: &crate::Report,
        dry_run: bool,
        elapsed: Duration,
        planned: Vec<String>,
    ) -> Report {
        let code = outcome.exit_code();
        let entries = outcome.errors.iter().map(|e| ErrorRecord {
            path: e.path.clone(),
            operation: e.operation.name().map(str::to_string),
            kind: ErrorKind::Entry,
            message: e.message.clone(),
        });
        let failure = outcome.failure.as_ref().map(|f| ErrorRecord {
            path: None,
            operation: None,
            kind: ErrorKind::of_exit(code),
            message: f.message.clone(),
        });
        let s = outcome.stats;
        Report {
            schema_version: SCHEMA_VERSION,
            exit_code: code,
            dry_run,
            files_transferred: s.files,
            bytes_transferred: s.bytes,
            files_skipped: s.skipped,
            deleted: s.deleted,
            verified: s.verified,
            resumed_bytes: s.resumed,
            elapsed_seconds: elapsed.as_secs_f64(),
            planned,
            errors: entries.chain(failure).collect(),
            vanished: outcome.vanished.clone(),
        }
    }

    /// `--stats`: rsync-like counters, one per line.
    pub fn stats_block(&self, average_rate: u64) -> String {
        format!(
            "Number of files transferred: {}\nTotal bytes sent: {}\nResumed bytes: {}\nUnchanged files: {}\nDeleted entries: {}\nVerified files: {}\nErrors: {}\nElapsed: {:.3} s\nAverage transfer rate: {} bytes/s\n",
            self.files_transferred,
            self.bytes_transferred,
            self.resumed_bytes,
            self.files_skipped,
            self.deleted,
            self.verified,
            self.errors.len(),
            self.elapsed_seconds,
            average_rate,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{fail, EntryError, Operation, Stats};

    #[test]
    fn entry_errors_then_the_failure_with_the_kind_of_its_code() {
        let outcome = crate::Report {
            stats: Stats {
                files: 2,
                ..Stats::default()
            },
            elapsed: Duration::ZERO,
            errors: vec![EntryError::at(
                std::path::Path::new("a/b"),
                Operation::Transfer,
                "denied",
            )],
            failure: Some(fail(EXIT_LOST, "gone")),
            vanished: vec![],
        };
        let r = Report::new(&outcome, false, Duration::from_secs(1), vec![]);
        assert_eq!(r.exit_code, EXIT_LOST);
        assert_eq!(r.files_transferred, 2);
        assert_eq!(r.errors.len(), 2);
        assert_eq!(r.errors[0].kind, ErrorKind::Entry);
        assert_eq!(r.errors[0].path.as_deref(), Some("a/b"));
        assert_eq!(r.errors[1].kind, ErrorKind::ConnectionLost);
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}

//! The one error type of this crate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Which kind of state file an error is about, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// A manifest (local state dir or `DEST/.robosync/manifest`).
    Manifest,
    /// A journal in the local state dir.
    Journal,
}

impl fmt::Display for StateFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateFile::Manifest => "manifest",
            StateFile::Journal => "journal",
        })
    }
}

/// Everything that can go wrong reading or writing a manifest or journal.
///
/// Every variant names the file and says what the user can do. Apart from
/// [`ManifestError::Io`], every variant means "this file cannot be trusted":
/// the safe fallback for a caller is to ignore it (rescan the remote and do a
/// full compare), never to guess.
///
/// Errors from [`crate::Manifest::decode`] carry the placeholder path
/// `<memory>`; use [`ManifestError::with_path`] to name the real origin (for
/// example the remote copy `DEST/.robosync/manifest`).
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// An operating-system error.
    #[error("cannot {op} {path}: {source}", path = .path.display())]
    Io {
        /// What was being done, e.g. "read manifest", "fsync journal".
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The file does not start with robosync's magic bytes.
    #[error(
        "{file} {path} is not a robosync {file} (bad magic bytes): remove it to force a full compare",
        path = .path.display()
    )]
    BadMagic {
        /// Which kind of state file.
        file: StateFile,
        /// Where it is.
        path: PathBuf,
    },
    /// The file was written by a newer robosync with a format this build
    /// cannot read.
    #[error(
        "{file} {path} is from a newer robosync (format {found}, this build reads {supported}): \
         upgrade robosync or remove it to force a full compare",
        path = .path.display()
    )]
    FutureVersion {
        /// Which kind of state file.
        file: StateFile,
        /// Where it is.
        path: PathBuf,
        /// The format version it carries.
        found: u32,
        /// The newest format this build reads.
        supported: u32,
    },
    /// The file ends before its header says it should.
    #[error(
        "{file} {path} is truncated ({found} of {expected} bytes): remove it to force a full compare",
        path = .path.display()
    )]
    Truncated {
        /// Which kind of state file.
        file: StateFile,
        /// Where it is.
        path: PathBuf,
        /// Bytes its header promises.
        expected: u64,
        /// Bytes there are.
        found: u64,
    },
    /// The file is damaged: checksum mismatch, undecodable body, trailing
    /// bytes, impossible header fields.
    #[error(
        "{file} {path} is corrupt ({detail}): remove it to force a full compare",
        path = .path.display()
    )]
    Corrupt {
        /// Which kind of state file.
        file: StateFile,
        /// Where it is.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// The path used for errors of data that did not come from a named file.
pub(crate) const IN_MEMORY: &str = "<memory>";

impl ManifestError {
    /// Replaces the path the error names (see the type's documentation).
    pub fn with_path(mut self, new: impl Into<PathBuf>) -> ManifestError {
        let new = new.into();
        match &mut self {
            ManifestError::Io { path, .. }
            | ManifestError::BadMagic { path, .. }
            | ManifestError::FutureVersion { path, .. }
            | ManifestError::Truncated { path, .. }
            | ManifestError::Corrupt { path, .. } => *path = new,
        }
        self
    }

    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ManifestError::Io { path, .. }
            | ManifestError::BadMagic { path, .. }
            | ManifestError::FutureVersion { path, .. }
            | ManifestError::Truncated { path, .. }
            | ManifestError::Corrupt { path, .. } => path,
        }
    }

    /// True when the file's content cannot be trusted (as opposed to an I/O
    /// failure): the caller should fall back to a full compare.
    pub fn is_untrusted_content(&self) -> bool {
        !matches!(self, ManifestError::Io { .. })
    }

    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> ManifestError {
        ManifestError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

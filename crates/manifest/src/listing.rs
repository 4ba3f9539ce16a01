//! The listing record: the destination's tree as a clean push left it, so
//! that the next push can confirm it with a stat per directory instead of
//! listing every one (see robosync-sync's `confirm` module).
//!
//! Local state only, beside the manifest (`dir/listing`); never stored at
//! the destination. It is valid for one manifest content
//! ([`Manifest::content_digest`]): a run that finds a different manifest
//! (local or at the destination) ignores it. Any damage, or a format this
//! build does not know, reads as "no record" (the run lists in full).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ManifestError;
use crate::manifest::{framed, Manifest};

const MAGIC: [u8; 8] = *b"RBSLIST\0";
/// Bump it when [`ListingRecord`]'s encoded shape changes (an older or newer
/// record then reads as none, which only costs a full listing).
pub const LISTING_VERSION: u32 = 2;

/// One destination entry as the record knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedEntry {
    /// Relative path bytes, '/'-separated; empty for the destination root.
    pub path: Vec<u8>,
    /// File, directory or symlink.
    pub kind: ListedKind,
    /// Bytes, as the server reported them.
    pub size: u64,
    /// Whole seconds, as SFTP v3 shows them.
    pub mtime: i64,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
}

/// What an entry is; a symlink with its target's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListedKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink, with its target's bytes.
    Symlink(Vec<u8>),
}

/// The destination's tree as of the end of a clean push.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingRecord {
    /// [`Manifest::content_digest`] of the manifest written with it.
    pub manifest_digest: [u8; 32],
    /// Runs since the last full listing that trusted this record instead.
    pub quick_runs: u32,
    /// When the destination was last listed in full (seconds since the epoch).
    pub full_at_unix: i64,
    /// When this record was written (seconds since the epoch): a directory
    /// whose mtime is this recent cannot be confirmed by its mtime.
    pub recorded_at_unix: i64,
    /// Every entry, the root (empty path) included.
    pub entries: Vec<ListedEntry>,
}

impl ListingRecord {
    /// The record's bytes: a framed header ([`LISTING_VERSION`], checksum), then the body.
    pub fn encode(&self) -> Vec<u8> {
        let body = postcard::to_allocvec(self).expect("postcard encoding into a Vec cannot fail");
        let mut out = framed(MAGIC, LISTING_VERSION, &body).to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// `None` for anything but an intact record of [`LISTING_VERSION`].
    pub fn decode(bytes: &[u8]) -> Option<ListingRecord> {
        let head = bytes.get(..crate::manifest::HEADER_LEN)?;
        let body = &bytes[crate::manifest::HEADER_LEN..];
        if framed(MAGIC, LISTING_VERSION, body)[..] != head[..] {
            return None;
        }
        match postcard::take_from_bytes::<ListingRecord>(body) {
            Ok((r, [])) => Some(r),
            _ => None,
        }
    }

    /// The record at `path`; `None` when absent or unusable.
    pub fn load(path: &Path) -> Option<ListingRecord> {
        ListingRecord::decode(&std::fs::read(path).ok()?)
    }

    /// Written atomically (temp, fsync, rename), as the manifest.
    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        crate::manifest::write_atomically(path, &self.encode())
    }

    /// Whether this record speaks of `manifest`'s content.
    pub fn matches(&self, manifest: &Manifest) -> bool {
        self.manifest_digest == manifest.content_digest()
    }
}

/// Removes the record at `path` (a run about to change the destination):
/// from then on only a clean end of that run writes a valid one again.
pub fn forget_listing(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

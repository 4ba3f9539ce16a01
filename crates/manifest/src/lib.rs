//! robosync's memory of what a destination holds: the **manifest** and the
//! **journal**.
//!
//! The destination runs nothing but `sftp-server`, so it cannot hash files
//! for us: what it holds is known only from robosync's own records plus what
//! SFTP `stat` says. This crate owns those records, their on-disk formats and
//! their crash safety. It must not do I/O over the network, plan transfers
//! or print: callers (the planner, the CLI) read and write the bytes of the
//! destination's copy of the manifest themselves, using [`Manifest::encode`]
//! and [`Manifest::decode`].
//!
//! # Brief overview
//!
//! - [`Manifest`]: per path ([`Record`]) size, mtime, mode, whole-file and
//!   per-block BLAKE3 as written, and the remote size/mtime seen after
//!   landing. [`Manifest::save`] is atomic (temp + fsync + rename + fsync
//!   dir); [`Manifest::load`] and [`Manifest::decode`] reject damaged or
//!   future-format files with a typed [`ManifestError`], never a panic.
//! - [`Journal`]: append-only log of [`JournalRecord`]s (files landed,
//!   blocks of in-progress files done, intents), made durable at checkpoints
//!   per [`JournalPolicy`] (every 2 s or 64 MiB of payload by default).
//! - [`replay`] reads a journal, ignoring a torn tail; [`compact`] folds it
//!   into the manifest at the start of a run and keeps only the records of
//!   transfers still in progress.
//! - [`ListingRecord`]: the destination's tree as a clean push left it, for
//!   the next push to confirm directory by directory instead of listing it.
//! - [`state_paths`] says where a (source, destination) pair keeps its
//!   state; [`pick_newer`] chooses between the local and remote manifest.
//!
//! A run, in short:
//!
//! ```no_run
//! use robosync_manifest::*;
//! # fn main() -> Result<(), ManifestError> {
//! # let (remote_copy, run_unix): (Option<Manifest>, i64) = (None, 0);
//! let paths = state_paths("/var/lib/robosync".as_ref(), "/data/run42", "robot01:/srv/mirror");
//! let start = compact(&paths.manifest, &paths.journal)?; // fold last run's journal
//! let (manifest, choice) = pick_newer(Some(start.manifest), remote_copy);
//! eprintln!("{choice}"); // with -v
//! let run_id = manifest.as_ref().map_or(0, |m| m.run_id) + 1;
//! let mut journal = Journal::open(&paths.journal)?;
//! journal.append(&JournalRecord::RunStarted { run_id, unix: run_unix })?;
//! // ... plan with `manifest` and `start.pending`, transfer, append records ...
//! journal.checkpoint()?;
//! # Ok(()) }
//! ```
//!
//! # Encoding
//!
//! Both files are a small fixed header (magic, [`FORMAT_VERSION`], and for
//! the manifest the body length and BLAKE3 of the body) followed by
//! [postcard](https://docs.rs/postcard). postcard rather than bincode 2:
//! its wire format is specified and frozen for all of 1.x (a manifest must
//! outlive upgrades of the library), and it is serde-native with varints.
//! [`Manifest::files`] uses a hand-written serde form (front-coded paths,
//! hashes as byte strings, remote size/mtime as deltas; see
//! `files_codec.rs`): a 1,000,000-entry manifest with 40-byte paths is
//! about 62 bytes per entry, encodes in ~0.1 s and decodes in ~0.2 s (release
//! build). Journal records are framed as
//! `u32` length + first 8 bytes of BLAKE3 + postcard payload, so a torn or
//! damaged record is detected and ends the replay.

#![deny(missing_docs)]

mod error;
mod files_codec;
#[doc(hidden)]
pub mod fuzzing;
mod journal;
mod listing;
mod manifest;
mod state;

pub use error::{ManifestError, StateFile};
pub use journal::{
    compact, replay, Compacted, Journal, JournalPolicy, JournalRecord, Replay, CHECKPOINT_BYTES,
    CHECKPOINT_INTERVAL,
};
pub use listing::{forget_listing, ListedEntry, ListedKind, ListingRecord, LISTING_VERSION};
pub use manifest::{Manifest, Record, FORMAT_VERSION};
pub use state::{open_private, pick_newer, private_dir, state_paths, Choice, StatePaths};

//! The manifest: what robosync knows the destination holds.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ManifestError, StateFile, IN_MEMORY};
use crate::journal::JournalRecord;

/// The manifest format this build writes and reads.
///
/// Bump it whenever the encoded shape of [`Manifest`], [`Record`] or
/// [`JournalRecord`] changes: an older robosync then refuses the file with
/// [`ManifestError::FutureVersion`] instead of misreading it.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: [u8; 8] = *b"RBSMFST\0";
/// magic (8) + version (u32) + flags (u32) + body length (u64) + BLAKE3 of body (32).
pub(crate) const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 32;

/// What robosync knows one destination file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Size in bytes of the content as written.
    pub size: u64,
    /// Source mtime (ns since the Unix epoch) of the content as written.
    pub mtime_ns: i64,
    /// Unix permission bits as set on the destination.
    pub mode: u32,
    /// BLAKE3 of the whole content.
    pub whole: [u8; 32],
    /// BLAKE3 of each block of [`Manifest::block_size`] bytes (the last one
    /// may be shorter). May be empty when the file has at most one block:
    /// then `whole` is the only block hash.
    pub blocks: Vec<[u8; 32]>,
    /// Size reported by `stat` on the destination right after landing.
    pub remote_size: u64,
    /// Mtime (seconds, SFTP v3 granularity) reported by `stat` on the
    /// destination right after landing.
    pub remote_mtime: i64,
}

/// What robosync knows a whole destination holds, as of one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Block size the [`Record::blocks`] hashes were computed with.
    pub block_size: u64,
    /// When this manifest's content was last known to be current (seconds
    /// since the Unix epoch); decides "newer wins" in [`crate::pick_newer`].
    pub written_at_unix: i64,
    /// Counter of the run that produced this content. Each run should use
    /// `max(local.run_id, remote.run_id) + 1`, so that it breaks ties of
    /// `written_at_unix` in [`crate::pick_newer`].
    pub run_id: u64,
    /// Key: path relative to the destination root, as raw Unix path bytes,
    /// '/'-separated, without a leading '/'.
    #[serde(with = "crate::files_codec")]
    pub files: BTreeMap<Vec<u8>, Record>,
}

impl Manifest {
    /// Encodes the manifest: header (magic, [`FORMAT_VERSION`], body length,
    /// BLAKE3 of the body) followed by the postcard-encoded body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 64 * self.files.len() + 64);
        out.resize(HEADER_LEN, 0);
        // Serializing into a growable Vec cannot fail for these types (no
        // fallible custom impls, no unsupported serde types).
        postcard::serialize_with_flavor(self, AppendTo(&mut out))
            .expect("postcard encoding into a Vec is infallible for Manifest");
        let head = header(&out[HEADER_LEN..]);
        out[..HEADER_LEN].copy_from_slice(&head);
        out
    }

    /// Decodes what [`Manifest::encode`] produced. Never panics: any damage
    /// gives a typed error naming the placeholder path `<memory>` (see
    /// [`ManifestError::with_path`]).
    pub fn decode(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let path = PathBuf::from(IN_MEMORY);
        let file = StateFile::Manifest;
        let corrupt = |detail: String| ManifestError::Corrupt {
            file,
            path: path.clone(),
            detail,
        };
        if bytes.len() < MAGIC.len() {
            // Too short to even hold the magic: a prefix of the magic is a
            // truncated manifest, anything else is not a manifest.
            if MAGIC.starts_with(bytes) {
                return Err(ManifestError::Truncated {
                    file,
                    path,
                    expected: HEADER_LEN as u64,
                    found: bytes.len() as u64,
                });
            }
            return Err(ManifestError::BadMagic { file, path });
        }
        if bytes[..8] != MAGIC {
            return Err(ManifestError::BadMagic { file, path });
        }
        if bytes.len() < HEADER_LEN {
            return Err(ManifestError::Truncated {
                file,
                path,
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version > FORMAT_VERSION {
            return Err(ManifestError::FutureVersion {
                file,
                path,
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format {version} was never written by robosync"
            )));
        }
        let flags = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        if flags != 0 {
            return Err(corrupt(format!("unknown header flags {flags:#x}")));
        }
        let body_len = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let expected = (HEADER_LEN as u64).saturating_add(body_len);
        let found = bytes.len() as u64;
        if found < expected {
            return Err(ManifestError::Truncated {
                file,
                path,
                expected,
                found,
            });
        }
        if found > expected {
            return Err(corrupt(format!(
                "{} unexpected bytes after the end",
                found - expected
            )));
        }
        let body = &bytes[HEADER_LEN..];
        if blake3::hash(body).as_bytes() != &bytes[24..56] {
            return Err(corrupt("checksum mismatch".into()));
        }
        let (manifest, rest) = postcard::take_from_bytes::<Manifest>(body)
            .map_err(|e| corrupt(format!("undecodable body: {e}")))?;
        if !rest.is_empty() {
            return Err(corrupt(format!(
                "{} unexpected bytes after the body",
                rest.len()
            )));
        }
        Ok(manifest)
    }

    /// BLAKE3 of what the manifest says the destination holds (its block
    /// size and records), whatever run wrote it and when: two manifests
    /// with equal digests describe the same destination.
    pub fn content_digest(&self) -> [u8; 32] {
        struct Files<'a>(&'a std::collections::BTreeMap<Vec<u8>, Record>);
        impl Serialize for Files<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                crate::files_codec::serialize(self.0, s)
            }
        }
        let mut body = Vec::with_capacity(64 * self.files.len() + 16);
        postcard::serialize_with_flavor(
            &(self.block_size, Files(&self.files)),
            AppendTo(&mut body),
        )
        .expect("postcard encoding into a Vec is infallible for Manifest");
        *blake3::hash(&body).as_bytes()
    }

    /// Reads and decodes the manifest at `path`; `Ok(None)` when there is
    /// no file there.
    pub fn load(path: &Path) -> Result<Option<Manifest>, ManifestError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ManifestError::io("read manifest", path, e)),
        };
        Manifest::decode(&bytes)
            .map(Some)
            .map_err(|e| e.with_path(path))
    }

    /// Writes the manifest atomically: to a temp file in the same directory
    /// (created if missing), fsync, rename over `path`, fsync the directory.
    /// A crash at any instant leaves either the old or the new manifest.
    pub fn save(&self, path: &Path) -> Result<(), ManifestError> {
        write_atomically(path, &self.encode())
    }

    /// Folds one journal record into the manifest: `FileLanded` inserts,
    /// `Deleted` removes, `RunStarted` raises `run_id` and
    /// `written_at_unix` to the run's (the content now reflects that run);
    /// records of in-progress transfers change nothing. Applying a journal
    /// twice gives the same manifest as applying it once.
    pub fn apply(&mut self, rec: &JournalRecord) {
        match rec {
            JournalRecord::RunStarted { run_id, unix } => {
                self.run_id = self.run_id.max(*run_id);
                self.written_at_unix = self.written_at_unix.max(*unix);
            }
            JournalRecord::FileLanded { path, record } => {
                self.files.insert(path.clone(), record.clone());
            }
            JournalRecord::Deleted { path } => {
                self.files.remove(path);
            }
            JournalRecord::BlockDone { .. }
            | JournalRecord::TransferStarted { .. }
            | JournalRecord::InplaceIntent { .. } => {}
        }
    }
}

/// The header that vouches for `body`: magic, version, flags, length, BLAKE3.
pub(crate) fn header(body: &[u8]) -> [u8; HEADER_LEN] {
    framed(MAGIC, FORMAT_VERSION, body)
}

/// The header of one of this crate's files: `magic`, `version`, flags,
/// length and BLAKE3 of `body`.
pub(crate) fn framed(magic: [u8; 8], version: u32, body: &[u8]) -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    out[0..8].copy_from_slice(&magic);
    out[8..12].copy_from_slice(&version.to_le_bytes());
    out[12..16].copy_from_slice(&0u32.to_le_bytes());
    out[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out[24..56].copy_from_slice(blake3::hash(body).as_bytes());
    out
}

/// Temp file + fsync + rename + fsync dir.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ManifestError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    crate::state::private_dir(dir)
        .map_err(|e| ManifestError::io("create state directory", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        let mut f = crate::state::open_private(&mut opts, &tmp)
            .map_err(|e| ManifestError::io("create temp", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| ManifestError::io("write temp", &tmp, e))?;
        f.sync_all()
            .map_err(|e| ManifestError::io("fsync temp", &tmp, e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| ManifestError::io("rename into place", path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ManifestError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ManifestError::io("fsync directory", dir, e))
}

/// A postcard output that appends to a `Vec` after our header, with
/// `extend_from_slice` for byte strings (postcard's `to_extend` goes byte
/// by byte).
pub(crate) struct AppendTo<'a>(pub(crate) &'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

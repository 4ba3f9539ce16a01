//! The compact serde form of [`Manifest::files`](crate::Manifest::files).
//!
//! The derived form spends most of a 1,000,000-entry manifest's time and
//! size on paths and hashes going through serde one byte at a time. Instead,
//! each entry is a flat struct where:
//! - the path is front-coded: the length of the prefix it shares with the
//!   previous (sorted) path, then the rest as one byte string, which halves
//!   the path bytes of a typical tree;
//! - hashes are byte strings (one length byte, then a memcpy), and block
//!   hashes one concatenated byte string;
//! - `remote_size`/`remote_mtime` are stored as differences from
//!   `size`/`mtime_ns` in seconds, a single byte when they agree.
//!
//! Decoding checks that paths strictly increase (no duplicates), so a
//! well-checksummed but malformed body is rejected, never misread.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::manifest::Record;

const NS_PER_SEC: i64 = 1_000_000_000;

/// A byte string for serde (like `serde_bytes`, without the dependency).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[derive(Serialize)]
struct EntryOut<'a> {
    shared: u64,
    suffix: Bytes<'a>,
    size: u64,
    mtime_ns: i64,
    mode: u32,
    whole: Bytes<'a>,
    blocks: Bytes<'a>,
    remote_size_delta: i64,
    remote_mtime_delta: i64,
}

#[derive(Deserialize)]
struct EntryIn<'a> {
    shared: u64,
    suffix: &'a [u8],
    size: u64,
    mtime_ns: i64,
    mode: u32,
    whole: &'a [u8],
    blocks: &'a [u8],
    remote_size_delta: i64,
    remote_mtime_delta: i64,
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

pub(crate) fn serialize<S: Serializer>(
    files: &BTreeMap<Vec<u8>, Record>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(files.len()))?;
    let mut prev: &[u8] = &[];
    for (path, r) in files {
        let shared = common_prefix(prev, path);
        seq.serialize_element(&EntryOut {
            shared: shared as u64,
            suffix: Bytes(&path[shared..]),
            size: r.size,
            mtime_ns: r.mtime_ns,
            mode: r.mode,
            whole: Bytes(&r.whole),
            blocks: Bytes(r.blocks.as_flattened()),
            remote_size_delta: r.size.wrapping_sub(r.remote_size) as i64,
            remote_mtime_delta: r
                .mtime_ns
                .div_euclid(NS_PER_SEC)
                .wrapping_sub(r.remote_mtime),
        })?;
        prev = path;
    }
    seq.end()
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<Vec<u8>, Record>, D::Error> {
    d.deserialize_seq(FilesVisitor)
}

struct FilesVisitor;

impl<'de> Visitor<'de> for FilesVisitor {
    type Value = BTreeMap<Vec<u8>, Record>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of front-coded manifest entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // The hint comes from the file: trust it only so far.
        let mut entries: Vec<(Vec<u8>, Record)> =
            Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(e) = seq.next_element::<EntryIn>()? {
            let prev: &[u8] = entries.last().map_or(&[], |(p, _)| p);
            let shared = usize::try_from(e.shared)
                .ok()
                .filter(|&n| n <= prev.len())
                .ok_or_else(|| de::Error::custom("path shares more than the previous path"))?;
            let mut path = Vec::with_capacity(shared + e.suffix.len());
            path.extend_from_slice(&prev[..shared]);
            path.extend_from_slice(e.suffix);
            if !entries.is_empty() && path.as_slice() <= prev {
                return Err(de::Error::custom("paths out of order or repeated"));
            }
            let whole: [u8; 32] = e
                .whole
                .try_into()
                .map_err(|_| de::Error::custom("whole-file hash is not 32 bytes"))?;
            if e.blocks.len() % 32 != 0 {
                return Err(de::Error::custom("block hashes are not 32 bytes each"));
            }
            let blocks = e
                .blocks
                .chunks_exact(32)
                .map(|c| c.try_into().expect("chunks of 32"))
                .collect();
            let record = Record {
                size: e.size,
                mtime_ns: e.mtime_ns,
                mode: e.mode,
                whole,
                blocks,
                remote_size: e.size.wrapping_sub(e.remote_size_delta as u64),
                remote_mtime: e
                    .mtime_ns
                    .div_euclid(NS_PER_SEC)
                    .wrapping_sub(e.remote_mtime_delta),
            };
            entries.push((path, record));
        }
        // Already sorted, so this is a linear bulk build.
        Ok(entries.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Files(#[serde(with = "super")] BTreeMap<Vec<u8>, Record>);

    fn entry<'a>(shared: u64, suffix: &'a [u8], whole: &'a [u8], blocks: &'a [u8]) -> EntryOut<'a> {
        EntryOut {
            shared,
            suffix: Bytes(suffix),
            size: 10,
            mtime_ns: 5_000_000_000,
            mode: 0o644,
            whole: Bytes(whole),
            blocks: Bytes(blocks),
            remote_size_delta: 0,
            remote_mtime_delta: 0,
        }
    }

    fn decode(entries: &[EntryOut]) -> postcard::Result<Files> {
        postcard::from_bytes(&postcard::to_allocvec(entries).unwrap())
    }

    #[test]
    fn front_coding_and_deltas_round_trip() {
        let got = decode(&[
            entry(0, b"a/b", &[1; 32], &[]),
            entry(2, b"c", &[2; 32], &[7; 64]),
        ])
        .unwrap();
        let keys: Vec<_> = got.0.keys().cloned().collect();
        assert_eq!(keys, vec![b"a/b".to_vec(), b"a/c".to_vec()]);
        let r = &got.0[&b"a/c".to_vec()];
        assert_eq!((r.remote_size, r.remote_mtime), (10, 5));
        assert_eq!(r.blocks, vec![[7u8; 32]; 2]);
        let again: Files = postcard::from_bytes(&postcard::to_allocvec(&got).unwrap()).unwrap();
        assert_eq!(again, got);
    }

    #[test]
    fn deltas_survive_extreme_values() {
        let mut files = BTreeMap::new();
        for (i, (size, remote_size, mtime_ns, remote_mtime)) in [
            (u64::MAX, 0, i64::MIN, i64::MAX),
            (0, u64::MAX, i64::MAX, i64::MIN),
            (7, 7, -1, -1),
        ]
        .into_iter()
        .enumerate()
        {
            files.insert(
                vec![b'a' + i as u8],
                Record {
                    size,
                    mtime_ns,
                    mode: 0,
                    whole: [0; 32],
                    blocks: Vec::new(),
                    remote_size,
                    remote_mtime,
                },
            );
        }
        let files = Files(files);
        let back: Files = postcard::from_bytes(&postcard::to_allocvec(&files).unwrap()).unwrap();
        assert_eq!(back, files);
    }

    #[test]
    fn malformed_entries_are_rejected() {
        let h = [0u8; 32];
        let cases: [&[EntryOut]; 5] = [
            &[entry(0, b"b", &h, &[]), entry(0, b"a", &h, &[])],
            &[entry(0, b"a", &h, &[]), entry(1, b"", &h, &[])],
            &[entry(0, b"a", &h, &[]), entry(2, b"x", &h, &[])],
            &[entry(0, b"a", &h[..31], &[])],
            &[entry(0, b"a", &h, &[0; 33])],
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(decode(case).is_err(), "case {i} decoded");
        }
    }
}

//! BLAKE3 of whole files and of their [`BLOCK_SIZE`] blocks, in one pass.
//!
//! A multi-block file is read block by block with `pread`, blocks in parallel on
//! the rayon pool. Each block is hashed once, as the chaining value of the
//! subtree it forms inside the whole file's BLAKE3 tree (`blake3::hazmat`); that
//! chaining value is the block hash the planner compares, and the chaining
//! values merge into the whole-file hash. One BLAKE3 pass per byte, as b3sum.
//! No mmap: a file truncated under an mmap kills the process with SIGBUS, while
//! a short `pread` is an ordinary error.

use std::cell::RefCell;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::FileExt;

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use rayon::prelude::*;

use crate::{Digest, BLOCK_SIZE};

const BLOCK: usize = BLOCK_SIZE as usize;

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; BLOCK]);
}

/// The hash of block `index` of a file of `file_size` bytes, as stored in
/// [`Digest::blocks`]: the chaining value of the block's subtree in the file's
/// BLAKE3 tree (it depends on the block's offset). For a file of at most one
/// block it is the plain BLAKE3 hash, equal to [`Digest::whole`].
pub fn hash_block(bytes: &[u8], index: u64, file_size: u64) -> [u8; 32] {
    if file_size <= BLOCK_SIZE {
        return *blake3::hash(bytes).as_bytes();
    }
    blake3::Hasher::new()
        .set_input_offset(index * BLOCK_SIZE)
        .update(bytes)
        .finalize_non_root()
}

/// The whole-file hash of a multi-block file, from its block hashes in order.
pub fn whole_from_blocks(blocks: &[[u8; 32]]) -> [u8; 32] {
    root_hash(blocks)
}

/// The [`Digest`] the scanner would record for a file holding `data`.
pub fn hash_bytes(data: &[u8]) -> Digest {
    let size = data.len() as u64;
    if data.len() <= BLOCK {
        return Digest {
            whole: hash_block(data, 0, size),
            blocks: Vec::new(),
        };
    }
    let blocks: Vec<[u8; 32]> = data
        .chunks(BLOCK)
        .enumerate()
        .map(|(i, c)| hash_block(c, i as u64, size))
        .collect();
    Digest {
        whole: root_hash(&blocks),
        blocks,
    }
}

/// Hashes `size` bytes of `file`. A short read (the file shrank) is an
/// `UnexpectedEof` error; growth is left to the caller's stat comparison.
pub(crate) fn hash_file(file: &File, size: u64) -> io::Result<Digest> {
    if size <= BLOCK_SIZE {
        return BUF.with(|buf| {
            let buf = &mut buf.borrow_mut()[..size as usize];
            file.read_exact_at(buf, 0)?;
            Ok(Digest {
                whole: hash_block(buf, 0, size),
                blocks: Vec::new(),
            })
        });
    }
    let count = size.div_ceil(BLOCK_SIZE);
    let blocks: Vec<ChainingValue> = (0..count)
        .into_par_iter()
        .map(|i| {
            let offset = i * BLOCK_SIZE;
            let len = (size - offset).min(BLOCK_SIZE) as usize;
            BUF.with(|buf| {
                let buf = &mut buf.borrow_mut()[..len];
                file.read_exact_at(buf, offset)?;
                Ok(hash_block(buf, i, size))
            })
        })
        .collect::<io::Result<_>>()?;
    Ok(Digest {
        whole: root_hash(&blocks),
        blocks,
    })
}

/// Merges the chaining values of two or more consecutive blocks into the root
/// hash. BLAKE3's tree is left-balanced: the left subtree holds the largest
/// power of two of chunks that is less than the total. Since a block is a
/// power-of-two number of chunks, that is the largest power of two of *blocks*
/// less than the block count (only the last block may be short).
fn root_hash(cvs: &[ChainingValue]) -> [u8; 32] {
    debug_assert!(cvs.len() >= 2);
    let split = left_len(cvs.len());
    let (left, right) = (subtree(&cvs[..split]), subtree(&cvs[split..]));
    *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
}

fn subtree(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let split = left_len(cvs.len());
    merge_subtrees_non_root(&subtree(&cvs[..split]), &subtree(&cvs[split..]), Mode::Hash)
}

/// The largest power of two strictly less than `n` (n >= 2).
fn left_len(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The parts of a stat that change when a file's content may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl StatKey {
    pub fn of(meta: &Metadata) -> StatKey {
        use std::os::unix::fs::MetadataExt;
        StatKey {
            size: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_len_is_largest_power_of_two_below() {
        let cases = [(2, 1), (3, 2), (4, 2), (5, 4), (8, 4), (9, 8), (1000, 512)];
        for (n, want) in cases {
            assert_eq!(left_len(n), want, "n = {n}");
        }
    }

    #[test]
    fn hash_bytes_matches_blake3() {
        let data: Vec<u8> = (0..3 * BLOCK + 7).map(|i| (i * 31 % 251) as u8).collect();
        let d = hash_bytes(&data);
        assert_eq!(d.whole, *blake3::hash(&data).as_bytes());
        assert_eq!(d.blocks.len(), 4);
        let last = blake3::Hasher::new()
            .set_input_offset(3 * BLOCK_SIZE)
            .update(&data[3 * BLOCK..])
            .finalize_non_root();
        assert_eq!(d.blocks[3], last);
        assert_eq!(whole_from_blocks(&d.blocks), d.whole);
        // One block or less: the block hash is the plain hash.
        assert_eq!(hash_block(b"abc", 0, 3), *blake3::hash(b"abc").as_bytes());
    }
}

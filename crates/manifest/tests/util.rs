//! Builders that keep the tests short.

use robosync_manifest::{Manifest, Record};

/// A record whose fields all derive from `n`, so that records differ.
pub fn record(n: u64) -> Record {
    let mut whole = [0u8; 32];
    whole[..8].copy_from_slice(&n.to_le_bytes());
    whole[31] = 0xa5;
    Record {
        size: n * 4096 + 17,
        mtime_ns: 1_700_000_000_000_000_000 + n as i64,
        mode: 0o100644,
        whole,
        blocks: Vec::new(),
        remote_size: n * 4096 + 17,
        remote_mtime: 1_700_000_000 + n as i64,
    }
}

/// A path of about 40 bytes, unique per `n`, like `data/run0042/cam3/frame_000123.tif`.
pub fn path(n: u64) -> Vec<u8> {
    format!("data/run{:04}/cam{}/frame_{:09}.tif", n / 10_000, n % 4, n).into_bytes()
}

/// A manifest of `n` entries with ~40-byte paths and no block hashes.
pub fn manifest(n: u64) -> Manifest {
    Manifest {
        block_size: 1 << 20,
        written_at_unix: 1_700_000_123,
        run_id: 7,
        files: (0..n).map(|i| (path(i), record(i))).collect(),
    }
}

/// A small manifest exercising every field: block hashes, non-UTF-8 and
/// nested paths, negative times.
pub fn small_manifest() -> Manifest {
    let mut m = manifest(3);
    let mut big = record(99);
    big.size = 3 << 20;
    big.blocks = vec![[1u8; 32], [2u8; 32], [3u8; 32]];
    m.files.insert(b"deep/dir/\xff\xfe-not-utf8".to_vec(), big);
    let mut old = record(5);
    old.mtime_ns = -1_500_000_000;
    old.remote_mtime = -2;
    m.files.insert(b"old".to_vec(), old);
    m
}

//! Entry point for the fuzz target (`fuzz/`, cargo-fuzz) and for the
//! corpus-replay tests that run on stable Rust: arbitrary bytes as a stat
//! cache file must load (or be refused) quickly and without panicking.

use crate::cache::StatCache;

/// Bytes as a stat cache file, then with a valid checksum appended (the
/// checksum is checked last, so most structure is reached either way).
pub fn stat_cache(data: &[u8]) {
    let _ = StatCache::from_bytes(data);
    let mut file = data.to_vec();
    file.extend_from_slice(blake3::hash(data).as_bytes());
    if let Ok(cache) = StatCache::from_bytes(&file) {
        let again = StatCache::from_bytes(&cache.to_bytes());
        assert!(
            again.is_ok_and(|a| a.len() == cache.len()),
            "stat cache round trip"
        );
    }
}

//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz) and for the
//! corpus-replay tests that run on stable Rust. Each takes arbitrary bytes
//! as a manifest or journal file and must return, quickly and without
//! panicking, whatever they are; what decodes must survive a round trip.

use crate::journal::{encode_frame, scan, FRAME_HEADER_LEN};
use crate::manifest::header;
use crate::{JournalRecord, Manifest};

/// Bytes as a manifest file, then as a manifest body under a valid header
/// (the checksum would otherwise stop almost every input at the header, and
/// a co-tenant can write `DEST/.robosync/manifest` with a valid one).
pub fn manifest(data: &[u8]) {
    let _ = Manifest::decode(data);
    let mut file = header(data).to_vec();
    file.extend_from_slice(data);
    if let Ok(m) = Manifest::decode(&file) {
        let again = Manifest::decode(&m.encode());
        assert!(again.is_ok_and(|a| a == m), "manifest round trip");
    }
}

/// Bytes as a journal file, then as a sequence of records with valid frames
/// (each frame's payload is the next `n` bytes, `n` read from one byte).
pub fn journal(data: &[u8]) {
    let _ = scan(data);
    let _ = postcard::from_bytes::<JournalRecord>(data);
    let mut file = scan_header();
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let (payload, next) = tail.split_at(usize::from(n).min(tail.len()));
        let start = file.len();
        file.extend_from_slice(&[0; FRAME_HEADER_LEN]);
        file.extend_from_slice(payload);
        let check = blake3::hash(payload);
        file[start..start + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        file[start + 4..start + FRAME_HEADER_LEN].copy_from_slice(&check.as_bytes()[..8]);
        rest = next;
    }
    if let Ok(s) = scan(&file) {
        let mut again = scan_header();
        for rec in &s.records {
            encode_frame(rec, &mut again);
        }
        let back = scan(&again).map(|b| b.records);
        assert!(back.is_ok_and(|b| b == s.records), "journal round trip");
    }
}

fn scan_header() -> Vec<u8> {
    crate::journal::header().to_vec()
}

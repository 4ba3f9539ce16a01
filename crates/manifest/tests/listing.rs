//! The listing record: round trip, damage read as "no record", and the
//! manifest digest it is tied to.

use robosync_manifest::{ListedEntry, ListedKind, ListingRecord, Manifest, Record};

fn record() -> ListingRecord {
    let entry = |path: &[u8], kind| ListedEntry {
        path: path.to_vec(),
        kind,
        size: 3,
        mtime: 1_700_000_000,
        mode: 0o755,
    };
    ListingRecord {
        manifest_digest: [9; 32],
        quick_runs: 4,
        full_at_unix: 1_700_000_123,
        recorded_at_unix: 1_700_000_456,
        entries: vec![
            entry(b"", ListedKind::Dir),
            entry(b"a", ListedKind::File),
            entry(b"d", ListedKind::Dir),
            entry(b"d/l", ListedKind::Symlink(b"../a\xff".to_vec())),
        ],
    }
}

#[test]
fn a_listing_record_reads_back_as_written() {
    let r = record();
    assert_eq!(ListingRecord::decode(&r.encode()), Some(r.clone()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("listing");
    assert_eq!(ListingRecord::load(&path), None);
    r.save(&path).unwrap();
    assert_eq!(ListingRecord::load(&path), Some(r));
    robosync_manifest::forget_listing(&path).unwrap();
    robosync_manifest::forget_listing(&path).unwrap();
    assert_eq!(ListingRecord::load(&path), None);
}

#[test]
fn a_damaged_or_foreign_listing_record_is_no_record() {
    let bytes = record().encode();
    for cut in [0, 7, 56, bytes.len() - 1] {
        assert_eq!(ListingRecord::decode(&bytes[..cut]), None, "cut at {cut}");
    }
    for at in [0, 9, 30, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[at] ^= 1;
        assert_eq!(ListingRecord::decode(&b), None, "flipped byte {at}");
    }
    // A manifest is not a listing record.
    assert_eq!(ListingRecord::decode(&Manifest::default().encode()), None);
}

#[test]
fn the_manifest_digest_depends_on_the_records_alone() {
    let mut m = Manifest {
        block_size: 256 << 10,
        run_id: 3,
        written_at_unix: 1_700_000_000,
        ..Default::default()
    };
    let rec = Record {
        size: 1,
        mtime_ns: 1,
        mode: 0o644,
        whole: [1; 32],
        blocks: Vec::new(),
        remote_size: 1,
        remote_mtime: 0,
    };
    m.files.insert(b"a".to_vec(), rec.clone());
    let later = Manifest {
        run_id: 4,
        written_at_unix: 1_700_000_999,
        ..m.clone()
    };
    assert_eq!(m.content_digest(), later.content_digest());
    let r = ListingRecord {
        manifest_digest: m.content_digest(),
        ..ListingRecord::default()
    };
    assert!(r.matches(&later));
    let mut changed = m.clone();
    changed
        .files
        .insert(b"a".to_vec(), Record { size: 2, ..rec });
    assert!(!r.matches(&changed));
    assert!(!r.matches(&Manifest::default()));
}

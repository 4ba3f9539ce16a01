use robosync_manifest::{JournalRecord, Manifest, ManifestError, StateFile, FORMAT_VERSION};

use crate::util::{manifest, path, record, small_manifest};

/// Header layout, as documented in the crate: magic 8, version 4, flags 4,
/// body length 8, BLAKE3 32.
const HEADER_LEN: usize = 56;

#[test]
fn round_trip_small() {
    let m = small_manifest();
    let bytes = m.encode();
    assert_eq!(&bytes[..8], b"RBSMFST\0");
    assert_eq!(Manifest::decode(&bytes).unwrap(), m);
}

#[test]
fn round_trip_empty() {
    let m = Manifest::default();
    assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
}

#[test]
fn round_trip_one_million_entries_through_a_file() {
    let m = manifest(1_000_000);
    assert_eq!(m.files.len(), 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("manifest");
    m.save(&p).unwrap();
    let back = Manifest::load(&p).unwrap().expect("saved manifest exists");
    assert_eq!(back.files.len(), 1_000_000);
    assert_eq!(back, m);
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let bytes = small_manifest().encode();
    for cut in 0..bytes.len() {
        match Manifest::decode(&bytes[..cut]) {
            Err(ManifestError::Truncated {
                expected, found, ..
            }) => {
                assert_eq!(found, cut as u64);
                assert!(expected > found, "cut {cut}: expected {expected}");
            }
            other => panic!("cut at {cut}: want Truncated, got {other:?}"),
        }
    }
}

#[test]
fn every_flipped_byte_is_an_error_and_body_flips_are_corrupt() {
    let bytes = small_manifest().encode();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = bytes.clone();
            bad[i] ^= mask;
            let got = Manifest::decode(&bad);
            assert!(got.is_err(), "flip {mask:#x} at {i} decoded: {got:?}");
            if i >= 24 {
                // Checksum or body: only the checksum can notice.
                assert!(
                    matches!(got, Err(ManifestError::Corrupt { ref detail, .. }) if detail == "checksum mismatch"),
                    "flip at {i}: {got:?}"
                );
            }
            if i < 8 {
                assert!(
                    matches!(got, Err(ManifestError::BadMagic { .. })),
                    "{got:?}"
                );
            }
        }
    }
}

#[test]
fn trailing_garbage_is_corrupt() {
    let mut bytes = small_manifest().encode();
    bytes.push(0);
    assert!(matches!(
        Manifest::decode(&bytes),
        Err(ManifestError::Corrupt { .. })
    ));
}

#[test]
fn future_version_is_refused_with_advice() {
    let mut bytes = small_manifest().encode();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 2).to_le_bytes());
    let err = Manifest::decode(&bytes).unwrap_err();
    match &err {
        ManifestError::FutureVersion {
            file,
            found,
            supported,
            ..
        } => {
            assert_eq!(*file, StateFile::Manifest);
            assert_eq!(*found, FORMAT_VERSION + 2);
            assert_eq!(*supported, FORMAT_VERSION);
        }
        other => panic!("want FutureVersion, got {other:?}"),
    }
    let msg = err.with_path("/x/manifest").to_string();
    assert_eq!(
        msg,
        format!(
            "manifest /x/manifest is from a newer robosync (format {}, this build reads {}): \
             upgrade robosync or remove it to force a full compare",
            FORMAT_VERSION + 2,
            FORMAT_VERSION
        )
    );
}

#[test]
fn version_zero_is_corrupt_not_future() {
    let mut bytes = small_manifest().encode();
    bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
    assert!(matches!(
        Manifest::decode(&bytes),
        Err(ManifestError::Corrupt { .. })
    ));
}

#[test]
fn not_a_manifest_is_bad_magic() {
    let err = Manifest::decode(b"{\"files\": {}} and more text than a header").unwrap_err();
    assert!(matches!(err, ManifestError::BadMagic { .. }), "{err:?}");
    assert!(err.is_untrusted_content());
    assert!(err.to_string().contains("not a robosync manifest"));
}

#[test]
fn load_missing_is_none_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("manifest");
    assert_eq!(Manifest::load(&p).unwrap(), None);

    let mut bytes = small_manifest().encode();
    bytes.truncate(HEADER_LEN + 3);
    std::fs::write(&p, &bytes).unwrap();
    let err = Manifest::load(&p).unwrap_err();
    assert!(matches!(err, ManifestError::Truncated { .. }), "{err:?}");
    assert_eq!(err.path(), p);
    assert!(err.to_string().contains(&p.display().to_string()));
}

#[test]
fn save_replaces_atomically_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sub/dir/manifest");
    small_manifest().save(&p).unwrap();
    let m2 = manifest(10);
    m2.save(&p).unwrap();
    assert_eq!(Manifest::load(&p).unwrap(), Some(m2));
    let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("manifest")]);
}

#[test]
fn apply_folds_landings_and_deletions_only() {
    let mut m = manifest(2);
    let before = m.clone();
    let in_progress = [
        JournalRecord::TransferStarted {
            path: path(9),
            temp: b".tmp".to_vec(),
            size: 1,
            mtime_ns: 2,
            whole: [0; 32],
        },
        JournalRecord::BlockDone {
            path: path(0),
            temp: b".tmp".to_vec(),
            index: 0,
            hash: [0; 32],
        },
        JournalRecord::InplaceIntent {
            path: path(1),
            blocks: vec![3],
        },
    ];
    for rec in &in_progress {
        m.apply(rec);
    }
    assert_eq!(m, before);

    m.apply(&JournalRecord::FileLanded {
        path: path(9),
        record: record(9),
    });
    assert_eq!(m.files.get(&path(9)), Some(&record(9)));
    m.apply(&JournalRecord::Deleted { path: path(0) });
    assert!(!m.files.contains_key(&path(0)));
    m.apply(&JournalRecord::RunStarted {
        run_id: 8,
        unix: 1_800_000_000,
    });
    assert_eq!((m.run_id, m.written_at_unix), (8, 1_800_000_000));
}

/// Measures the 1M-entry performance target. Run with
/// `cargo test --release -p robosync-manifest --test tests -- --ignored --nocapture timing`.
#[test]
#[ignore = "timing; run in release with --nocapture"]
fn timing_one_million_entries() {
    use std::time::Instant;
    let m = manifest(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("manifest");
    for round in 0..3 {
        let t = Instant::now();
        let bytes = m.encode();
        let encode = t.elapsed();
        m.save(&p).unwrap();
        let encode_save = t.elapsed();
        let t = Instant::now();
        let back = Manifest::decode(&bytes).unwrap();
        let decode = t.elapsed();
        let t = Instant::now();
        let loaded = Manifest::load(&p).unwrap().unwrap();
        let load_decode = t.elapsed();
        assert_eq!(back.files.len(), loaded.files.len());
        eprintln!(
            "round {round}: {} bytes; encode {encode:?}; encode+save {encode_save:?}; \
             decode {decode:?}; load+decode {load_decode:?}",
            bytes.len()
        );
    }
}

/// Damage that a checksum cannot see (a bug, or a deliberately forged
/// file) must still give an error or a manifest, never a panic.
#[test]
fn damaged_body_with_valid_checksum_never_panics() {
    let good = small_manifest().encode();
    let mut errors = 0;
    for i in HEADER_LEN..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x5a;
        let hash = blake3::hash(&bad[HEADER_LEN..]);
        bad[24..56].copy_from_slice(hash.as_bytes());
        if Manifest::decode(&bad).is_err() {
            errors += 1;
        }
    }
    // Most flips break the structure (lengths, order, hash sizes).
    assert!(errors > 0);
}

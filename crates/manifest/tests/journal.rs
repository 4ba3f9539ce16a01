use std::fs;
use std::path::Path;
use std::time::Duration;

use robosync_manifest::{
    compact, replay, Journal, JournalPolicy, JournalRecord, Manifest, ManifestError, StateFile,
    FORMAT_VERSION,
};

use crate::util::{path, record, small_manifest};

/// Journal header: magic 8 + version 4.
const HEADER_LEN: u64 = 12;

fn started(n: u64) -> JournalRecord {
    JournalRecord::TransferStarted {
        path: path(n),
        temp: format!(".robosync-tmp-{n}").into_bytes(),
        size: 3 << 20,
        mtime_ns: 42,
        whole: [n as u8; 32],
    }
}

fn block(n: u64, index: u64) -> JournalRecord {
    JournalRecord::BlockDone {
        path: path(n),
        temp: format!(".robosync-tmp-{n}").into_bytes(),
        index,
        hash: [index as u8; 32],
    }
}

fn landed(n: u64) -> JournalRecord {
    JournalRecord::FileLanded {
        path: path(n),
        record: record(n),
    }
}

/// One record of every kind.
fn every_kind() -> Vec<JournalRecord> {
    vec![
        JournalRecord::RunStarted {
            run_id: 3,
            unix: 1_750_000_000,
        },
        started(1),
        block(1, 0),
        block(1, 1),
        landed(1),
        JournalRecord::InplaceIntent {
            path: path(2),
            blocks: vec![0, 5, 9],
        },
        JournalRecord::Deleted { path: path(4) },
    ]
}

fn write_journal(p: &Path, recs: &[JournalRecord]) {
    let mut j = Journal::open(p).unwrap();
    for r in recs {
        j.append(r).unwrap();
    }
    j.checkpoint().unwrap();
}

#[test]
fn append_then_replay_round_trips_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("state/journal");
    write_journal(&p, &every_kind());
    let r = replay(&p).unwrap();
    assert_eq!(r.records, every_kind());
    assert!(!r.torn_tail);
    assert_eq!(r.dropped_bytes, 0);
}

#[test]
fn reopening_appends_after_existing_records() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    write_journal(&p, &every_kind()[..3]);
    write_journal(&p, &every_kind()[3..]);
    assert_eq!(replay(&p).unwrap().records, every_kind());
}

#[test]
fn missing_journal_replays_empty() {
    let dir = tempfile::tempdir().unwrap();
    let r = replay(&dir.path().join("journal")).unwrap();
    assert!(r.records.is_empty() && !r.torn_tail);
}

#[test]
fn torn_last_record_at_every_offset_keeps_the_complete_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    let recs = every_kind();
    write_journal(&p, &recs[..recs.len() - 1]);
    let before_last = fs::metadata(&p).unwrap().len();
    write_journal(&p, &recs[recs.len() - 1..]);
    let full = fs::read(&p).unwrap();
    assert!(full.len() as u64 > before_last);
    assert_eq!(replay(&p).unwrap().records, recs);

    for cut in before_last as usize + 1..full.len() {
        fs::write(&p, &full[..cut]).unwrap();
        let r = replay(&p).unwrap();
        assert_eq!(r.records, recs[..recs.len() - 1], "cut at {cut}");
        assert!(r.torn_tail, "cut at {cut}");
        assert_eq!(r.dropped_bytes, cut as u64 - before_last, "cut at {cut}");
    }
    // Cut exactly at a frame boundary: nothing torn.
    fs::write(&p, &full[..before_last as usize]).unwrap();
    let r = replay(&p).unwrap();
    assert_eq!(r.records.len(), recs.len() - 1);
    assert!(!r.torn_tail);
}

#[test]
fn damaged_record_ends_replay_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    let recs = every_kind();
    write_journal(&p, &recs[..2]);
    let good = fs::metadata(&p).unwrap().len();
    fs::remove_file(&p).unwrap();
    write_journal(&p, &recs);
    let full = fs::read(&p).unwrap();
    for i in good as usize..full.len() {
        let mut bad = full.clone();
        bad[i] ^= 0x40;
        fs::write(&p, &bad).unwrap();
        let r = replay(&p).unwrap();
        assert!(r.torn_tail, "flip at {i}");
        assert!(r.records.len() >= 2, "flip at {i}");
        assert_eq!(r.records[..], recs[..r.records.len()], "flip at {i}");
        assert!(r.records.len() < recs.len(), "flip at {i}");
    }
}

#[test]
fn torn_header_is_an_empty_journal() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    write_journal(&p, &[]);
    let full = fs::read(&p).unwrap();
    assert_eq!(full.len() as u64, HEADER_LEN);
    for cut in 0..full.len() {
        fs::write(&p, &full[..cut]).unwrap();
        let r = replay(&p).unwrap();
        assert!(r.records.is_empty());
        assert_eq!(r.torn_tail, cut > 0, "cut at {cut}");
    }
}

#[test]
fn open_cuts_a_torn_tail_so_new_records_replay() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    write_journal(&p, &[started(1), block(1, 0)]);
    let full = fs::read(&p).unwrap();
    fs::write(&p, &full[..full.len() - 3]).unwrap();
    write_journal(&p, &[block(1, 1)]);
    let r = replay(&p).unwrap();
    assert_eq!(r.records, vec![started(1), block(1, 1)]);
    assert!(!r.torn_tail);
}

#[test]
fn future_version_and_foreign_journals_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    write_journal(&p, &[started(1)]);
    let mut bytes = fs::read(&p).unwrap();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    fs::write(&p, &bytes).unwrap();
    let err = replay(&p).unwrap_err();
    assert!(
        matches!(err, ManifestError::FutureVersion { file: StateFile::Journal, found, .. } if found == FORMAT_VERSION + 1),
        "{err:?}"
    );
    assert!(err
        .to_string()
        .starts_with(&format!("journal {}", p.display())));
    assert!(matches!(
        Journal::open(&p),
        Err(ManifestError::FutureVersion { .. })
    ));
    // Refusing must not have touched the file.
    assert_eq!(fs::read(&p).unwrap(), bytes);

    fs::write(&p, b"hello, this is not a journal").unwrap();
    assert!(matches!(replay(&p), Err(ManifestError::BadMagic { .. })));
}

#[test]
fn checkpoints_follow_the_payload_policy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    let policy = JournalPolicy {
        interval: Duration::from_secs(3600),
        payload_bytes: 100,
        write_through: false,
    };
    let mut j = Journal::open_with(&p, policy).unwrap();
    j.append_for(&block(1, 0), 60).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), HEADER_LEN, "not due yet");
    j.append_for(&block(1, 1), 60).unwrap();
    assert_eq!(replay(&p).unwrap().records, vec![block(1, 0), block(1, 1)]);
    // FileLanded counts its file size.
    let mut small = record(1);
    small.size = 10;
    j.append(&JournalRecord::FileLanded {
        path: path(1),
        record: small.clone(),
    })
    .unwrap();
    assert_eq!(replay(&p).unwrap().records.len(), 2, "10 bytes: not due");
    drop(j);
    assert_eq!(replay(&p).unwrap().records.len(), 3, "drop checkpoints");
}

#[test]
fn checkpoints_follow_the_interval_policy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    let policy = JournalPolicy {
        interval: Duration::from_millis(50),
        payload_bytes: u64::MAX,
        write_through: false,
    };
    let mut j = Journal::open_with(&p, policy).unwrap();
    j.append(&started(1)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), HEADER_LEN);
    j.checkpoint_if_due().unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), HEADER_LEN, "not due yet");
    std::thread::sleep(Duration::from_millis(80));
    j.checkpoint_if_due().unwrap();
    assert_eq!(replay(&p).unwrap().records, vec![started(1)]);
    std::mem::forget(j); // no drop-time checkpoint: the record was already written
    assert_eq!(replay(&p).unwrap().records, vec![started(1)]);
}

#[test]
fn write_through_hands_records_to_the_kernel_immediately() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("journal");
    let mut j = Journal::open(&p).unwrap();
    j.append(&started(1)).unwrap();
    // Readable by another open file without a checkpoint: survives SIGKILL.
    assert_eq!(replay(&p).unwrap().records, vec![started(1)]);
    std::mem::forget(j);
}

#[test]
fn compaction_folds_landed_files_and_keeps_pending_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("manifest");
    let jp = dir.path().join("journal");
    let mut base = small_manifest();
    base.files.insert(path(4), record(4));
    base.save(&mp).unwrap();

    let recs = vec![
        JournalRecord::RunStarted {
            run_id: 8,
            unix: 1_800_000_000,
        },
        started(1),
        block(1, 0),
        started(2),
        block(2, 0),
        block(1, 1),
        landed(1), // 1 done: its progress records go
        block(2, 1),
        JournalRecord::InplaceIntent {
            path: path(3),
            blocks: vec![7],
        },
        JournalRecord::Deleted { path: path(4) },
        JournalRecord::InplaceIntent {
            path: path(5),
            blocks: vec![1],
        },
        landed(5),
    ];
    write_journal(&jp, &recs);
    // And a torn tail from a crash.
    let mut bytes = fs::read(&jp).unwrap();
    bytes.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
    fs::write(&jp, &bytes).unwrap();

    let c = compact(&mp, &jp).unwrap();
    let want_pending = vec![
        started(2),
        block(2, 0),
        block(2, 1),
        JournalRecord::InplaceIntent {
            path: path(3),
            blocks: vec![7],
        },
    ];
    assert_eq!(c.pending, want_pending);
    assert!(c.torn_tail);
    assert_eq!(c.dropped_bytes, 6);
    assert_eq!(c.folded, 4);

    let mut want = base.clone();
    want.files.insert(path(1), record(1));
    want.files.insert(path(5), record(5));
    want.files.remove(&path(4));
    want.run_id = 8;
    want.written_at_unix = 1_800_000_000;
    assert_eq!(c.manifest, want);
    assert_eq!(Manifest::load(&mp).unwrap(), Some(want.clone()));

    let r = replay(&jp).unwrap();
    assert_eq!(r.records, want_pending);
    assert!(!r.torn_tail);

    // Again: nothing left to fold, same result.
    let again = compact(&mp, &jp).unwrap();
    assert_eq!(again.manifest, want);
    assert_eq!(again.pending, want_pending);
    assert_eq!(again.folded, 0);
}

#[test]
fn compaction_interrupted_before_the_journal_shrank_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("manifest");
    let jp = dir.path().join("journal");
    let recs = vec![
        landed(1),
        JournalRecord::Deleted { path: path(1) },
        landed(2),
    ];
    write_journal(&jp, &recs);
    let journal_image = fs::read(&jp).unwrap();
    let first = compact(&mp, &jp).unwrap();
    assert_eq!(
        first.manifest.files.keys().collect::<Vec<_>>(),
        vec![&path(2)]
    );
    // Crash after saving the manifest, before rewriting the journal.
    fs::write(&jp, &journal_image).unwrap();
    let second = compact(&mp, &jp).unwrap();
    assert_eq!(second.manifest, first.manifest);
}

#[test]
fn compaction_of_a_damaged_manifest_is_an_error_not_a_guess() {
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path().join("manifest");
    let jp = dir.path().join("journal");
    let mut bytes = small_manifest().encode();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    fs::write(&mp, &bytes).unwrap();
    write_journal(&jp, &[landed(1)]);
    let err = compact(&mp, &jp).unwrap_err();
    assert!(matches!(err, ManifestError::Corrupt { .. }), "{err:?}");
    assert!(err.is_untrusted_content());
    assert_eq!(
        replay(&jp).unwrap().records,
        vec![landed(1)],
        "journal kept"
    );
}

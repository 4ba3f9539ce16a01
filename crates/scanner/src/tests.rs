//! Acceptance tests for the scanner (issue 3). They live inside the crate
//! because the modified-during-hash test needs the `during_hash` hook.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::*;

/// Files that the test hook appends to after their bytes were read and before
/// the scanner's second fstat: a deterministic "modified during the scan".
static MODIFY_DURING_HASH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

pub(crate) fn during_hash(abs: &Path) {
    let hit = MODIFY_DURING_HASH.lock().unwrap().iter().any(|p| p == abs);
    if hit {
        let mut file = fs::OpenOptions::new().append(true).open(abs).unwrap();
        file.write_all(b"more").unwrap();
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Deterministic, non-repeating-per-block content.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ seed)
        .collect()
}

/// An mtime well outside the racy window, so the stat cache keeps the file.
fn old_time(offset_s: u64) -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600) + Duration::from_secs(offset_s)
}

fn write_old(path: &Path, bytes: &[u8], offset_s: u64) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, bytes).unwrap();
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old_time(offset_s))
        .unwrap();
}

fn scan_plain(root: &Path, cache: &mut StatCache) -> Snapshot {
    scan(root, &ScanOptions::default(), cache).unwrap()
}

fn entry<'a>(snap: &'a Snapshot, path: &str) -> &'a Entry {
    snap.entries
        .iter()
        .find(|e| e.path == Path::new(path))
        .unwrap_or_else(|| panic!("no entry {path} in {:?}", paths(snap)))
}

fn paths(snap: &Snapshot) -> Vec<String> {
    snap.entries
        .iter()
        .map(|e| e.path.to_string_lossy().into_owned())
        .collect()
}

fn error_for<'a>(snap: &'a Snapshot, path: &str) -> &'a ScanError {
    snap.errors
        .iter()
        .find(|e| e.path == Path::new(path))
        .unwrap_or_else(|| panic!("no error for {path} in {:?}", snap.errors))
}

const B: usize = BLOCK_SIZE as usize;

#[test]
fn hashes_equal_blake3_and_blocks_cover_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0, 1, B - 1, B, B + 1, 2 * B, 8 * B, 37 * B + 5];
    for (i, &size) in sizes.iter().enumerate() {
        fs::write(dir.path().join(format!("f{size}")), data(size, i as u8)).unwrap();
    }
    let snap = scan_plain(dir.path(), &mut StatCache::default());
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    for (i, &size) in sizes.iter().enumerate() {
        let bytes = data(size, i as u8);
        let e = entry(&snap, &format!("f{size}"));
        assert_eq!(e.kind, EntryKind::File);
        assert_eq!(e.size, size as u64);
        let digest = e.digest.as_ref().unwrap();
        assert_eq!(
            digest.whole,
            *blake3::hash(&bytes).as_bytes(),
            "whole, size {size}"
        );
        if size <= B {
            assert!(
                digest.blocks.is_empty(),
                "size {size}: one block is stored as `whole` only"
            );
            assert_eq!(digest.block_hashes(), &[digest.whole]);
        } else {
            // Each block hash is its subtree's chaining value, computed
            // independently here with blake3's own hazmat API.
            let expected: Vec<[u8; 32]> = bytes
                .chunks(B)
                .enumerate()
                .map(|(i, c)| {
                    use blake3::hazmat::HasherExt;
                    blake3::Hasher::new()
                        .set_input_offset((i * B) as u64)
                        .update(c)
                        .finalize_non_root()
                })
                .collect();
            assert_eq!(
                digest.blocks.len(),
                size.div_ceil(B),
                "block count, size {size}"
            );
            assert_eq!(digest.blocks, expected, "blocks, size {size}");
        }
        assert_eq!(
            digest,
            &hash_bytes(&bytes),
            "hash_bytes agrees, size {size}"
        );
    }
    assert_eq!(snap.stats.files_hashed, sizes.len() as u64);
    assert_eq!(snap.stats.bytes_hashed, sizes.iter().sum::<usize>() as u64);
}

#[test]
fn entries_sorted_by_path_bytes_dirs_before_children() {
    let dir = tempfile::tempdir().unwrap();
    for p in ["a/b", "a-b", "a/c/d", "b", "A", "a/c/e"] {
        write_old(&dir.path().join(p), b"x", 0);
    }
    let snap = scan_plain(dir.path(), &mut StatCache::default());
    assert_eq!(
        paths(&snap),
        ["A", "a", "a-b", "a/b", "a/c", "a/c/d", "a/c/e", "b"]
    );
    assert_eq!(entry(&snap, "a/c").kind, EntryKind::Dir);
    assert_eq!(entry(&snap, "a/c").digest, None);
}

fn tree_of_files(root: &Path, n: usize) {
    for i in 0..n {
        let bytes = data(100 + i * 1000, i as u8);
        write_old(&root.join(format!("d{}/f{i}", i % 3)), &bytes, 0);
    }
    write_old(&root.join("big"), &data(3 * B + 1, 9), 0);
}

#[test]
fn second_scan_with_cache_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache_file = tempfile::tempdir().unwrap();
    let cache_path = cache_file.path().join("cache");
    tree_of_files(dir.path(), 10);
    let mut cache = StatCache::default();
    let first = scan_plain(dir.path(), &mut cache);
    assert_eq!(first.stats.files_hashed, 11);
    assert_eq!(cache.len(), 11);
    cache.save(&cache_path).unwrap();

    let mut cache = StatCache::load(&cache_path);
    assert_eq!(cache.len(), 11);
    let second = scan_plain(dir.path(), &mut cache);
    assert_eq!(second.stats.files_hashed, 0);
    assert_eq!(second.stats.bytes_hashed, 0);
    assert_eq!(second.stats.cache_hits, 11);
    assert_eq!(second.entries, first.entries);
    assert!(
        !first.stats.cache_unchanged,
        "the first scan filled the cache"
    );
    assert!(second.stats.cache_unchanged);

    let forced = scan(
        dir.path(),
        &ScanOptions {
            ignore_cache: true,
            ..Default::default()
        },
        &mut cache,
    )
    .unwrap();
    assert_eq!(
        forced.stats.files_hashed, 11,
        "ignore_cache rehashes everything"
    );
    assert_eq!(forced.entries, first.entries);
}

/// The issue's other observable ("files made unreadable after the first scan
/// still scan fine") cannot hold with ctime in the key: chmod moves the ctime,
/// so the cache must miss rather than trust a digest of a file whose inode
/// changed. `files_hashed` is the observable instead; this pins the ctime rule.
#[test]
fn metadata_change_invalidates_only_that_file() {
    let dir = tempfile::tempdir().unwrap();
    tree_of_files(dir.path(), 4);
    let mut cache = StatCache::default();
    assert_eq!(scan_plain(dir.path(), &mut cache).stats.files_hashed, 5);
    let chmodded = dir.path().join("d0/f3");
    fs::set_permissions(&chmodded, fs::Permissions::from_mode(0o600)).unwrap();
    let snap = scan_plain(dir.path(), &mut cache);
    assert_eq!(
        snap.stats.files_hashed, 1,
        "only the file whose ctime moved is read"
    );
    assert_eq!(snap.stats.cache_hits, 4);
    assert_eq!(entry(&snap, "d0/f3").mode, 0o600);
}

#[test]
fn touching_one_file_rehashes_only_that_file() {
    let dir = tempfile::tempdir().unwrap();
    tree_of_files(dir.path(), 10);
    let mut cache = StatCache::default();
    let first = scan_plain(dir.path(), &mut cache);
    assert_eq!(first.stats.files_hashed, 11);

    // Same size, new content and a new (old) mtime.
    let touched = dir.path().join("d1/f4");
    let new_bytes = data(fs::metadata(&touched).unwrap().len() as usize, 0xAA);
    write_old(&touched, &new_bytes, 60);
    let second = scan_plain(dir.path(), &mut cache);
    assert_eq!(second.stats.files_hashed, 1);
    assert_eq!(second.stats.cache_hits, 10);
    let e = entry(&second, "d1/f4");
    assert_eq!(
        e.digest.as_ref().unwrap().whole,
        *blake3::hash(&new_bytes).as_bytes()
    );
    assert_ne!(e.digest, entry(&first, "d1/f4").digest);

    assert!(!second.stats.cache_unchanged, "a record was replaced");
    let third = scan_plain(dir.path(), &mut cache);
    assert_eq!(third.stats.files_hashed, 0);
    assert!(third.stats.cache_unchanged);

    // A removal alone hashes nothing, yet leaves one record fewer.
    fs::remove_file(dir.path().join("d2/f5")).unwrap();
    let fourth = scan_plain(dir.path(), &mut cache);
    assert_eq!(fourth.stats.files_hashed, 0);
    assert!(!fourth.stats.cache_unchanged, "a record was dropped");
    assert_eq!(cache.len(), 10);
}

#[test]
fn racy_file_is_rehashed_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fresh");
    fs::write(&path, b"just written").unwrap(); // mtime = now: racy
    let mut cache = StatCache::default();
    assert_eq!(scan_plain(dir.path(), &mut cache).stats.files_hashed, 1);
    assert_eq!(cache.len(), 0, "a racy file is not remembered");
    assert_eq!(scan_plain(dir.path(), &mut cache).stats.files_hashed, 1);
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old_time(0))
        .unwrap();
    assert_eq!(scan_plain(dir.path(), &mut cache).stats.files_hashed, 1);
    assert_eq!(scan_plain(dir.path(), &mut cache).stats.files_hashed, 0);
}

#[test]
fn cache_file_roundtrip_and_damage() {
    let dir = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    tree_of_files(dir.path(), 5);
    let mut cache = StatCache::default();
    scan_plain(dir.path(), &mut cache);
    let path = store.path().join("cache");
    cache.save(&path).unwrap();
    assert_eq!(StatCache::load(&path).len(), 6);
    let names: Vec<_> = fs::read_dir(store.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["cache"], "no temporary file left behind");

    let good = fs::read(&path).unwrap();
    let damaged = [
        ("missing", None),
        ("empty", Some(Vec::new())),
        ("truncated", Some(good[..good.len() - 1].to_vec())),
        (
            "flipped",
            Some({
                let mut b = good.clone();
                b[40] ^= 1;
                b
            }),
        ),
        ("trailing", Some([good.as_slice(), b"x"].concat())),
        ("garbage", Some(data(5000, 3))),
        (
            "huge count",
            Some({
                let mut b = good.clone();
                b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
                b
            }),
        ),
    ];
    for (name, bytes) in damaged {
        let p = store.path().join(name);
        if let Some(bytes) = bytes {
            fs::write(&p, bytes).unwrap();
        }
        let mut loaded = StatCache::load(&p);
        assert!(loaded.is_empty(), "{name} cache must load empty");
        assert_eq!(
            scan_plain(dir.path(), &mut loaded).stats.files_hashed,
            6,
            "{name}"
        );
    }
}

#[test]
fn non_utf8_name_is_kept_as_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let name = OsStr::from_bytes(b"caf\xe9-\xff.txt");
    write_old(&dir.path().join("sub").join(name), b"latin-1", 0);
    let mut cache = StatCache::default();
    let snap = scan_plain(dir.path(), &mut cache);
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    let file = snap
        .entries
        .iter()
        .find(|e| e.kind == EntryKind::File)
        .unwrap();
    assert_eq!(file.path.as_os_str().as_bytes(), b"sub/caf\xe9-\xff.txt");
    assert_eq!(
        file.digest.as_ref().unwrap().whole,
        *blake3::hash(b"latin-1").as_bytes()
    );
    assert_eq!(
        scan_plain(dir.path(), &mut cache).stats.cache_hits,
        1,
        "cache keys are bytes too"
    );
}

#[test]
fn symlinks_are_recorded_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    write_old(&dir.path().join("real/inside"), b"data", 0);
    symlink("real", dir.path().join("link-to-dir")).unwrap();
    symlink("nowhere/at/all", dir.path().join("dangling")).unwrap();
    symlink("real/inside", dir.path().join("link-to-file")).unwrap();
    let snap = scan_plain(dir.path(), &mut StatCache::default());
    assert!(snap.errors.is_empty(), "{:?}", snap.errors);
    assert_eq!(
        paths(&snap),
        [
            "dangling",
            "link-to-dir",
            "link-to-file",
            "real",
            "real/inside"
        ]
    );
    let link = entry(&snap, "dangling");
    assert_eq!(
        link.kind,
        EntryKind::Symlink {
            target: "nowhere/at/all".into()
        }
    );
    assert_eq!(link.size, "nowhere/at/all".len() as u64);
    assert_eq!(link.digest, None);
    assert_eq!(
        entry(&snap, "link-to-dir").kind,
        EntryKind::Symlink {
            target: "real".into()
        }
    );
    assert_eq!(snap.stats.files_hashed, 1, "the link to a file is not read");
}

#[test]
fn fifo_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    write_old(&dir.path().join("plain"), b"p", 0);
    let fifo = dir.path().join("pipe");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: c_path is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let snap = scan_plain(dir.path(), &mut StatCache::default());
    assert_eq!(paths(&snap), ["plain"]);
    assert_eq!(
        snap.skipped,
        [Skipped {
            path: "pipe".into(),
            kind: SpecialKind::Fifo
        }]
    );
    assert!(
        snap.errors.is_empty(),
        "a special file is not an error: {:?}",
        snap.errors
    );
}

#[test]
fn unreadable_file_and_dir_are_errors_and_the_scan_goes_on() {
    if is_root() {
        eprintln!("skipped: root reads mode-000 files and directories");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_old(&dir.path().join("ok"), b"fine", 0);
    write_old(&dir.path().join("secret"), b"hidden", 0);
    write_old(&dir.path().join("locked/child"), b"hidden", 0);
    write_old(&dir.path().join("z/after"), b"fine", 0);
    fs::set_permissions(dir.path().join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(dir.path().join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
    let snap = scan_plain(dir.path(), &mut StatCache::default());
    fs::set_permissions(dir.path().join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(paths(&snap), ["locked", "ok", "z", "z/after"]);
    assert_eq!(snap.errors.len(), 2, "{:?}", snap.errors);
    assert!(error_for(&snap, "secret")
        .message
        .contains("Permission denied"));
    assert!(error_for(&snap, "locked")
        .message
        .contains("Permission denied"));
}

#[test]
fn file_modified_during_hashing_is_an_error_not_an_entry() {
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap();
    write_old(&root.join("steady"), b"steady", 0);
    write_old(&root.join("growing-small"), b"log line\n", 0);
    write_old(&root.join("growing-big"), &data(3 * B + 17, 1), 0);
    MODIFY_DURING_HASH
        .lock()
        .unwrap()
        .extend([root.join("growing-small"), root.join("growing-big")]);
    let mut cache = StatCache::default();
    let snap = scan_plain(&root, &mut cache);
    assert_eq!(paths(&snap), ["steady"]);
    assert_eq!(snap.errors.len(), 2, "{:?}", snap.errors);
    assert!(error_for(&snap, "growing-small")
        .message
        .contains("changed while being hashed"));
    assert!(error_for(&snap, "growing-big")
        .message
        .contains("changed while being hashed"));
    assert_eq!(cache.len(), 1, "a file that changed is not cached");
}

#[test]
fn root_that_is_missing_or_not_a_directory_fails() {
    let dir = tempfile::tempdir().unwrap();
    assert!(scan(
        &dir.path().join("absent"),
        &ScanOptions::default(),
        &mut StatCache::default()
    )
    .is_err());
    fs::write(dir.path().join("file"), b"").unwrap();
    assert!(scan(
        &dir.path().join("file"),
        &ScanOptions::default(),
        &mut StatCache::default()
    )
    .is_err());
    let empty = scan_plain(dir.path(), &mut StatCache::default());
    assert_eq!(paths(&empty), ["file"]);
}

fn inc(p: &str) -> Rule {
    Rule::include(p)
}

fn exc(p: &str) -> Rule {
    Rule::exclude(p)
}

#[test]
fn filter_rules_table() {
    let dir = tempfile::tempdir().unwrap();
    let tree = [
        "a.txt",
        "a.log",
        "src/main.rs",
        "src/a.log",
        "src/deep/x.tmp",
        "build/out.o",
        "build/keep.txt",
        "docs/build/index.html",
        "data/tmp",
        "tmp/inner",
    ];
    for p in tree {
        write_old(&dir.path().join(p), b"x", 0);
    }
    let all: BTreeSet<&str> = [
        "a.txt",
        "a.log",
        "src",
        "src/main.rs",
        "src/a.log",
        "src/deep",
        "src/deep/x.tmp",
        "build",
        "build/out.o",
        "build/keep.txt",
        "docs",
        "docs/build",
        "docs/build/index.html",
        "data",
        "data/tmp",
        "tmp",
        "tmp/inner",
    ]
    .into();
    let without = |gone: &[&str]| -> BTreeSet<&str> {
        all.iter().copied().filter(|p| !gone.contains(p)).collect()
    };
    let cases: Vec<(&str, Vec<Rule>, BTreeSet<&str>)> = vec![
        ("no rules", vec![], all.clone()),
        (
            "basename at any depth",
            vec![exc("*.log")],
            without(&["a.log", "src/a.log"]),
        ),
        (
            "* does not cross /",
            vec![exc("/src/*")],
            without(&["src/main.rs", "src/a.log", "src/deep", "src/deep/x.tmp"]),
        ),
        (
            "** crosses /",
            vec![exc("/src/**/*.tmp")],
            without(&["src/deep/x.tmp"]),
        ),
        (
            "dir/*** is the dir and its contents",
            vec![exc("/src/deep/***")],
            without(&["src/deep", "src/deep/x.tmp"]),
        ),
        (
            "a/**/b needs a directory between, as rsync",
            vec![exc("/src/**/main.rs"), exc("src/**/x.tmp")],
            without(&["src/deep/x.tmp"]),
        ),
        (
            "anchored /**/b needs a directory before b, as rsync",
            vec![exc("/**/a.log")],
            without(&["src/a.log"]),
        ),
        (
            "x/*** matches x only as a directory, as rsync",
            vec![exc("tmp/***")],
            without(&["tmp", "tmp/inner"]), // data/tmp is a file: kept
        ),
        (
            "**/ prefix",
            vec![exc("**/x.tmp")],
            without(&["src/deep/x.tmp"]),
        ),
        (
            "excluded dir is pruned at any depth",
            vec![exc("build/")],
            without(&[
                "build",
                "build/out.o",
                "build/keep.txt",
                "docs/build",
                "docs/build/index.html",
            ]),
        ),
        (
            "leading / anchors at the root",
            vec![exc("/build")],
            without(&["build", "build/out.o", "build/keep.txt"]),
        ),
        (
            "trailing / matches dirs only",
            vec![exc("tmp/")],
            without(&["tmp", "tmp/inner"]), // data/tmp is a file: kept
        ),
        (
            "include after exclude of parent cannot rescue (dir not descended)",
            vec![exc("build/"), inc("build/keep.txt")],
            without(&[
                "build",
                "build/out.o",
                "build/keep.txt",
                "docs/build",
                "docs/build/index.html",
            ]),
        ),
        (
            "first match wins: include before exclude",
            vec![inc("keep.txt"), exc("/build/*")],
            without(&["build/out.o"]),
        ),
        (
            "first match wins: exclude before include",
            vec![exc("/build/*"), inc("keep.txt")],
            without(&["build/out.o", "build/keep.txt"]),
        ),
        (
            "include some, exclude the rest",
            vec![inc("*/"), inc("*.rs"), exc("*")],
            [
                "src",
                "src/main.rs",
                "src/deep",
                "build",
                "docs",
                "docs/build",
                "data",
                "tmp",
            ]
            .into(),
        ),
        (
            "pattern with / matches the end of the path",
            vec![exc("build/index.html")],
            without(&["docs/build/index.html"]),
        ),
        (
            "character class",
            vec![exc("a.[lt][ox][gt]")],
            without(&["a.log", "a.txt", "src/a.log"]),
        ),
    ];
    for (name, rules, expected) in cases {
        let filter = Filter::new(&rules).unwrap();
        let opts = ScanOptions {
            filter,
            ignore_cache: false,
            progress: None,
        };
        let snap = scan(dir.path(), &opts, &mut StatCache::default()).unwrap();
        let got: BTreeSet<&str> = snap
            .entries
            .iter()
            .map(|e| e.path.to_str().unwrap())
            .collect();
        assert_eq!(got, expected, "case: {name}");
    }
}

#[test]
fn excluded_directories_are_not_descended() {
    if is_root() {
        eprintln!("skipped: root can list a mode-000 directory");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_old(&dir.path().join("private/x"), b"x", 0);
    fs::set_permissions(
        dir.path().join("private"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let filter = Filter::new(&[exc("private/")]).unwrap();
    let snap = scan(
        dir.path(),
        &ScanOptions {
            filter,
            ignore_cache: false,
            progress: None,
        },
        &mut StatCache::default(),
    )
    .unwrap();
    fs::set_permissions(
        dir.path().join("private"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert!(
        snap.errors.is_empty(),
        "an excluded directory is never opened: {:?}",
        snap.errors
    );
    assert!(snap.entries.is_empty());
}

#[test]
fn filter_includes_table() {
    let filter = Filter::new(&[inc("/keep/**"), exc("*.o"), exc("cache/"), exc("/top")]).unwrap();
    let cases = [
        ("main.o", false, false),
        ("deep/in/main.o", false, false),
        ("keep/main.o", false, true),
        ("cache", true, false),
        ("cache", false, true),
        ("x/cache", true, false),
        ("top", false, false),
        ("x/top", false, true),
        ("main.c", false, true),
    ];
    for (path, is_dir, want) in cases {
        assert_eq!(
            filter.includes(Path::new(path), is_dir),
            want,
            "{path} dir={is_dir}"
        );
    }
    let bytes = Path::new(OsStr::from_bytes(b"d/\xff.o"));
    assert!(!filter.includes(bytes, false), "non-UTF-8 paths match too");
}

#[test]
fn bad_patterns_are_errors() {
    for bad in ["", "/", "a[", "a{b", "src/**.tmp", "a**/b"] {
        assert!(
            Filter::new(&[exc(bad)]).is_err(),
            "{bad:?} should be rejected"
        );
    }
}

#[test]
fn exclude_from_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules");
    fs::write(
        &path,
        "# comment\n; comment\n\n*.o\n+ keep.o\n- /build/\ncache/\n",
    )
    .unwrap();
    let mut rules = Rules::default();
    rules.pattern_file(&path, false).unwrap();
    assert_eq!(
        rules.into_vec(),
        [exc("*.o"), inc("keep.o"), exc("/build/"), exc("cache/")]
    );
    assert!(matches!(
        Rules::default().pattern_file(&dir.path().join("absent"), false),
        Err(FilterError::Read { .. })
    ));
}

fn sided(include: bool, p: &str, side: Side) -> Rule {
    Rule {
        include,
        pattern: p.into(),
        side,
    }
}

#[test]
fn filter_rule_syntax() {
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged");
    fs::write(&merged, "# comment\n+ keep.o\n- *.o\nP /cache/\n").unwrap();
    let mut rules = Rules::default();
    for text in [
        "- *.tmp",
        "+_x",
        "exclude,s y",
        "-r z",
        "P prot",
        "protect p2",
        "R risky",
        "H hidden",
        "hide h2",
        "S shown",
        "include i",
        "-sr both",
    ] {
        rules.filter(text).unwrap();
    }
    rules
        .filter(&format!("merge {}", merged.display()))
        .unwrap();
    assert_eq!(
        rules.clone().into_vec(),
        [
            exc("*.tmp"),
            inc("x"),
            sided(false, "y", Side::Sender),
            sided(false, "z", Side::Receiver),
            sided(false, "prot", Side::Receiver),
            sided(false, "p2", Side::Receiver),
            sided(true, "risky", Side::Receiver),
            sided(false, "hidden", Side::Sender),
            sided(false, "h2", Side::Sender),
            sided(true, "shown", Side::Sender),
            inc("i"),
            sided(false, "both", Side::SenderAndReceiver),
            inc("keep.o"),
            exc("*.o"),
            sided(false, "/cache/", Side::Receiver),
        ]
    );
    rules.filter("!").unwrap();
    rules.pattern("+ a", false).unwrap();
    rules.pattern("- b", true).unwrap();
    rules.pattern("c", true).unwrap();
    assert_eq!(rules.clone().into_vec(), [inc("a"), exc("b"), inc("c")]);
    rules.pattern("!", false).unwrap();
    assert!(rules.into_vec().is_empty());
    for bad in [
        ": .rsync-filter",
        "dir-merge .x",
        "-p x",
        "P",
        "? x",
        "! x",
        "merge /nonexistent/robosync/rules",
    ] {
        let e = Rules::default().filter(bad);
        assert!(e.is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn sides_and_delete_excluded() {
    let rules = [
        sided(false, "sr", Side::SenderAndReceiver),
        sided(false, "prot", Side::Receiver),
        sided(false, "hid", Side::Sender),
        exc("plain"),
    ];
    let f = Filters::new(&rules, false).unwrap();
    let p = |s: &str| PathBuf::from(s);
    assert!(f.sender.includes(&p("prot"), false));
    assert!(!f.receiver.includes(&p("prot"), false));
    assert!(!f.sender.includes(&p("hid"), false));
    assert!(f.receiver.includes(&p("hid"), false));
    assert!(!f.sender.includes(&p("plain"), false));
    assert!(!f.receiver.includes(&p("plain"), false));
    assert!(!f.same);
    // --delete-excluded: plain rules stop protecting; P still does.
    let f = Filters::new(&rules, true).unwrap();
    assert!(!f.sender.includes(&p("plain"), false));
    assert!(f.receiver.includes(&p("plain"), false));
    assert!(!f.receiver.includes(&p("prot"), false));
    assert!(!f.receiver.includes(&p("sr"), false));
    assert!(Filters::new(&[exc("x")], false).unwrap().same);
}

/// rsync's wildcards count bytes: `?` is one byte, so it never matches a
/// two-byte `é`; a `*` or a class matches non-UTF-8 names too.
#[test]
fn wildcards_match_bytes_as_rsync() {
    let f = Filter::new(&[exc("?.txt")]).unwrap();
    assert!(f.includes(Path::new("é.txt"), false));
    assert!(!f.includes(Path::new("a.txt"), false));
    let f = Filter::new(&[exc("*t?.txt")]).unwrap();
    assert!(!f.includes(Path::new(OsStr::from_bytes(b"\xe9t\xe9.txt")), false));
    let f = Filter::new(&[exc("??.txt")]).unwrap();
    assert!(!f.includes(Path::new("é.txt"), false));
}

/// `--files-from` as rsync reads it: comments and blank lines skipped, `/`
/// and `./` dropped, implied directories, a listed directory's contents only
/// when recursive, `..` refused; and it narrows the rules rather than
/// replacing them.
#[test]
fn files_from_lists_paths_and_their_directories() {
    let text = b"# c\n; c\n\n/a/b/f.txt\n./d\nraw\xff\r\n";
    let p = |s: &str| PathBuf::from(s);
    let plain = FileList::parse(text, false).unwrap();
    assert_eq!(
        plain.paths(),
        [
            Path::new("a/b/f.txt"),
            Path::new("d"),
            Path::new(OsStr::from_bytes(b"raw\xff"))
        ]
    );
    assert!(plain.selects(&p("a"), true));
    assert!(plain.selects(&p("a/b"), true));
    assert!(!plain.selects(&p("a/b"), false));
    assert!(plain.selects(&p("a/b/f.txt"), false));
    assert!(!plain.selects(&p("a/b/g.txt"), false));
    assert!(plain.selects(&p("d"), true));
    assert!(!plain.selects(&p("d/x"), false));
    assert!(!plain.selects(&p("#"), false));
    let deep = FileList::parse(text, true).unwrap();
    assert!(deep.selects(&p("d/x/y"), false));
    assert!(!deep.selects(&p("a/b/g.txt"), false));
    assert!(matches!(
        FileList::parse(b"a/../../etc\n", false),
        Err(FilterError::Pattern { .. })
    ));
    let f = Filters::new(&[exc("*.txt")], false)
        .unwrap()
        .with_list(Some(plain));
    assert!(!f.sender.includes(&p("a/b/f.txt"), false));
    assert!(!f.receiver.includes(&p("other"), false));
    assert!(f.sender.includes(&p("d"), true));
    assert!(!f.sender.is_empty());
}

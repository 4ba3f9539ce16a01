//! Whole runs, push and pull, against in-memory SFTP servers
//! (robosync-transport's `testing::MemDialer` over robosync-sftp's
//! `MemServer`): the executors and the run, in milliseconds, without sshd.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use robosync_scanner::Filters;
use robosync_sftp::testing::{Change, Hostile, MemFs, Node, ServerOptions};
use robosync_transport::testing::MemDialer;
use robosync_transport::{Error, SessionOptions};

use crate::{
    Dialer, Direction, Job, Observer, Options, Phase, PoolEvent, Report, ScanProgress, EXIT_LOST,
};

/// The destination's lease is one per process (`lease::HELD`): one run at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What a run showed.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<PoolEvent>>,
    warnings: Mutex<Vec<String>>,
}

impl Observer for Seen {
    fn phase(&self, _: Phase, _: Duration) {}
    fn scanning(&self, _: Arc<ScanProgress>) {}
    fn itemize(&self, _: &str) {}
    fn planned(&self, _: &str) {}
    fn note(&self, _: &str) {}
    fn notice(&self, _: &str) {}
    fn warn(&self, msg: &str) {
        self.warnings.lock().unwrap().push(msg.to_string());
    }
    fn total(&self, _: u64, _: u64) {}
    fn bytes(&self, _: u64) {}
    fn resumed(&self, _: u64) {}
    fn file_done(&self) {}
    fn vanished(&self, _: &str) {}
    fn connection(&self, event: &PoolEvent) {
        self.events.lock().unwrap().push(event.clone());
    }
}

impl Seen {
    fn reconnected(&self) -> bool {
        self.events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, PoolEvent::Reconnected { .. }))
    }
}

fn options(state: &Path) -> Options {
    Options {
        dry_run: false,
        delete: false,
        max_delete: None,
        backup_dir: None,
        checksum: false,
        verify: false,
        inplace: false,
        sparse: false,
        fsync: false,
        connections: Some(2),
        channels: Some(4),
        retry_for: Duration::from_secs(20),
        state_dir: Some(state.to_path_buf()),
        verbose: 1,
        files_list: None,
        hard_links: false,
        bwlimit: None,
        full_listing: false,
    }
}

/// A local tree, its state directory, and the runs made from it.
struct Bench {
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Bench {
        Bench {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The local root (a push's source, a pull's destination).
    fn local(&self) -> PathBuf {
        self.dir.path().join("local")
    }

    fn options(&self) -> Options {
        options(&self.dir.path().join("state"))
    }

    async fn run(
        &self,
        direction: Direction,
        remote: &[u8],
        dialer: MemDialer,
        options: Options,
    ) -> (Report, Arc<Seen>) {
        let _one = SERIAL.lock().await;
        let seen = Arc::new(Seen::default());
        let dialer: Arc<dyn Dialer> = Arc::new(dialer);
        let job = Job {
            direction,
            local: self.local(),
            remote: remote.to_vec(),
            filters: Filters::new(&[], false).unwrap(),
            label: format!("memory:{}", String::from_utf8_lossy(remote)),
            dialer,
            options,
            rename: None,
            creatable: usize::MAX,
        };
        // A guard, not a measurement: a hung run fails here instead of
        // hanging the suite.
        let run = crate::run(job, seen.clone());
        let report = tokio::time::timeout(Duration::from_secs(120), run)
            .await
            .expect("the run ended");
        (report, seen)
    }

    /// Writes `files` (relative path → content) under the local root.
    fn write(&self, files: &BTreeMap<PathBuf, Vec<u8>>) {
        for (rel, data) in files {
            let p = self.local().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
    }

    /// Every file under the local root, by relative path.
    fn read(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let root = self.local();
        if !root.exists() {
            return out;
        }
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let t = e.file_type().unwrap();
                let rel = e.path().strip_prefix(&root).unwrap().to_path_buf();
                if rel.starts_with(".robosync") {
                    continue;
                }
                if t.is_dir() {
                    stack.push(e.path());
                } else {
                    out.insert(rel, std::fs::read(e.path()).unwrap());
                }
            }
        }
        out
    }
}

/// `n` files of a few bytes in `dirs` directories, one name not UTF-8.
fn tree(n: usize, dirs: usize) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..n {
        let rel = PathBuf::from(format!("d{}/f{i}.txt", i % dirs));
        files.insert(rel, format!("file {i}\n").repeat(i % 7 + 1).into_bytes());
    }
    let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"d0/caf\xe9 \xff.bin"));
    files.insert(odd, b"latin-1, not UTF-8".to_vec());
    files
}

/// The files under `root` in `fs` (robosync's own state left out).
fn remote_files(fs: &MemFs, root: &[u8]) -> BTreeMap<PathBuf, Vec<u8>> {
    let prefix = [root, b"/"].concat();
    fs.paths()
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&prefix[..])?.to_vec();
            if rel.starts_with(b".robosync") {
                return None;
            }
            match fs.get(&p) {
                Some(Node::File(data)) => {
                    Some((PathBuf::from(std::ffi::OsStr::from_bytes(&rel)), data))
                }
                _ => None,
            }
        })
        .collect()
}

fn put_remote(fs: &MemFs, root: &[u8], files: &BTreeMap<PathBuf, Vec<u8>>) {
    for (rel, data) in files {
        fs.add_file(&[root, b"/", rel.as_os_str().as_bytes()].concat(), data);
    }
}

fn is_temp(path: &[u8]) -> bool {
    let name = path.rsplit(|b| *b == b'/').next().unwrap_or(path);
    crate::remote::is_temp_name(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_lands_every_file_after_its_directory_and_renames_it_into_place_last() {
    let bench = Bench::new();
    let files = tree(60, 6);
    bench.write(&files);
    let fs = MemFs::new();
    let dialer = MemDialer::honest(fs.clone(), ServerOptions::default());
    let (report, seen) = bench
        .run(Direction::Push, b"/dest", dialer, bench.options())
        .await;
    assert_eq!(report.exit_code(), 0, "{report:?}");
    assert_eq!(remote_files(&fs, b"/dest"), files);
    let changes = fs.changes();
    let at = |c: &Change| changes.iter().position(|x| x == c);
    for rel in files.keys() {
        let path = [b"/dest/", rel.as_os_str().as_bytes()].concat();
        let dir = crate::parent_of(&path);
        // The rename that put it in place, and the temp it came from.
        let (i, temp) = changes
            .iter()
            .enumerate()
            .find_map(|(i, c)| match c {
                Change::Renamed(from, to) if *to == path => Some((i, from.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{rel:?} was renamed into place"));
        assert!(is_temp(&temp), "{rel:?} landed from {temp:?}");
        assert_eq!(crate::parent_of(&temp), dir, "the temp is beside its file");
        // Its directory first, then the temp, its bytes, then the rename.
        let made_dir = at(&Change::Created(dir.clone())).expect("directory made");
        let made_temp = at(&Change::Created(temp.clone())).expect("temp made");
        assert!(
            made_dir < made_temp,
            "{rel:?}: the directory before the file"
        );
        let last_write = changes
            .iter()
            .rposition(|c| *c == Change::Written(temp.clone()));
        assert!(
            last_write.is_none_or(|w| w < i),
            "{rel:?}: written, then renamed"
        );
        // Nothing ever wrote under the final name.
        assert!(!changes.contains(&Change::Written(path.clone())), "{rel:?}");
        assert!(!changes.contains(&Change::Created(path.clone())), "{rel:?}");
    }
    assert!(fs.paths().iter().all(|p| !is_temp(p)), "no temp is left");
    let events = seen.events.lock().unwrap();
    assert!(
        matches!(
            events.first(),
            Some(PoolEvent::Connected {
                number: 1,
                channels: 1
            })
        ),
        "{events:?}"
    );
}

/// Both ways: the source tree is `files` (local for a push, `/src` on the
/// server for a pull); the remote root of the run.
fn source(
    bench: &Bench,
    fs: &MemFs,
    way: Direction,
    files: &BTreeMap<PathBuf, Vec<u8>>,
) -> &'static [u8] {
    match way {
        Direction::Push => {
            bench.write(files);
            b"/dest"
        }
        Direction::Pull => {
            put_remote(fs, b"/src", files);
            b"/src"
        }
    }
}

/// The files at the destination (the server's `/dest`, or the local root).
fn landed(bench: &Bench, fs: &MemFs, way: Direction) -> BTreeMap<PathBuf, Vec<u8>> {
    match way {
        Direction::Push => remote_files(fs, b"/dest"),
        Direction::Pull => bench.read(),
    }
}

const WAYS: [Direction; 2] = [Direction::Push, Direction::Pull];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_files_keep_within_a_server_allowing_8_handles_both_ways() {
    // A pull used to open a file on whichever session came next while the
    // others were still joining: 23 of 300 OPENs failed past the limit.
    for way in WAYS {
        let (bench, fs, files) = (Bench::new(), MemFs::new(), tree(300, 10));
        let root = source(&bench, &fs, way, &files);
        let opts = ServerOptions {
            max_handles: 8,
            ..Default::default()
        };
        let dialer = MemDialer::honest(fs.clone(), opts);
        let (report, _) = bench.run(way, root, dialer, bench.options()).await;
        assert_eq!(
            report.exit_code(),
            0,
            "{way:?}: {:?}",
            report.errors.first()
        );
        assert_eq!(landed(&bench, &fs, way), files, "{way:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_files_are_in_flight_at_once_both_ways() {
    // Servers allowing 1,000 handles each: a push keeps hundreds of files
    // open at once; the pull back lands them all.
    let bench = Bench::new();
    let files = tree(1000, 20);
    bench.write(&files);
    let fs = MemFs::new();
    let opts = ServerOptions {
        max_handles: 1000,
        ..Default::default()
    };
    let dialer = MemDialer::honest(fs.clone(), opts.clone());
    let (report, _) = bench
        .run(Direction::Push, b"/dest", dialer, bench.options())
        .await;
    assert_eq!(report.exit_code(), 0, "{:?}", report.errors.first());
    assert_eq!(remote_files(&fs, b"/dest"), files);
    // Temps existing at once: files in flight together.
    let (mut now, mut most) = (0, 0);
    for c in fs.changes() {
        match c {
            Change::Created(p) if is_temp(&p) => now += 1,
            Change::Renamed(p, _) if is_temp(&p) => now -= 1,
            _ => {}
        }
        most = most.max(now);
    }
    assert!(most >= 300, "{most} files in flight at most");

    let back = Bench::new();
    let dialer = MemDialer::honest(fs.clone(), opts);
    let (report, _) = back
        .run(Direction::Pull, b"/dest", dialer, back.options())
        .await;
    assert_eq!(report.exit_code(), 0, "{:?}", report.errors.first());
    assert_eq!(back.read(), files);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_repaired_and_the_run_finishes_both_ways() {
    for way in WAYS {
        let (bench, fs, files) = (Bench::new(), MemFs::new(), tree(200, 4));
        let root = source(&bench, &fs, way, &files);
        // The first connection hangs up on each session's 40th request
        // (mid-transfer); every later one is honest.
        let dialer = MemDialer::new(fs.clone(), SessionOptions::default(), |n| {
            Ok(ServerOptions {
                hostile: (n == 0).then_some(Hostile::DropCarrier),
                honest: 40,
                ..Default::default()
            })
        });
        let (report, seen) = bench.run(way, root, dialer, bench.options()).await;
        assert_eq!(report.exit_code(), 0, "{way:?}: {report:?}");
        assert_eq!(landed(&bench, &fs, way), files, "{way:?}");
        assert!(seen.reconnected(), "{way:?}");
        let events = seen.events.lock().unwrap();
        let lost = |e: &PoolEvent| matches!(e, PoolEvent::ConnectionLost { number: 1, .. });
        assert!(events.iter().any(lost), "{way:?}: {events:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_retry_for_a_run_ends_connection_lost_with_no_partial_file_in_place() {
    for way in WAYS {
        let (bench, fs, files) = (Bench::new(), MemFs::new(), tree(200, 4));
        let root = source(&bench, &fs, way, &files);
        // The first connection drops mid-transfer; later logins are refused.
        let dialer = MemDialer::new(fs.clone(), SessionOptions::default(), |n| match n {
            0 => Ok(ServerOptions {
                hostile: Some(Hostile::DropCarrier),
                honest: 40,
                ..Default::default()
            }),
            _ => Err(Error::ConnectionLost {
                peer: "memory".into(),
                detail: "connection refused".into(),
            }),
        });
        let mut o = bench.options();
        o.retry_for = Duration::from_secs(1);
        let (report, _) = bench.run(way, root, dialer, o).await;
        assert_eq!(report.exit_code(), EXIT_LOST, "{way:?}: {report:?}");
        let landed = landed(&bench, &fs, way);
        assert!(
            landed.len() < files.len(),
            "{way:?}: the drop came mid-transfer"
        );
        for (rel, data) in &landed {
            if !is_temp(rel.as_os_str().as_bytes()) {
                assert_eq!(
                    Some(data),
                    files.get(rel),
                    "{way:?}: {rel:?} under its final name"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_ends_the_run_with_a_typed_error() {
    // Before, each login restarted the outage's --retry-for deadline: a
    // server that logs in and then answers nothing kept the run forever.
    for way in WAYS {
        let (bench, fs, files) = (Bench::new(), MemFs::new(), tree(50, 2));
        let root = source(&bench, &fs, way, &files);
        // The first connection goes silent after its first requests; later
        // ones log in and open their sessions, then answer nothing.
        let session = SessionOptions {
            request_timeout: Duration::from_millis(300),
            ..Default::default()
        };
        let dialer = MemDialer::new(fs.clone(), session, |n| {
            Ok(ServerOptions {
                hostile: Some(Hostile::Silent),
                honest: if n == 0 { 6 } else { 1 },
                ..Default::default()
            })
        });
        let mut o = bench.options();
        o.retry_for = Duration::from_secs(1);
        let (report, _) = bench.run(way, root, dialer, o).await;
        assert_eq!(report.exit_code(), EXIT_LOST, "{way:?}: {report:?}");
    }
}

/// A pull from a server that lies: nothing lands outside the local root,
/// nothing panics, and what it lied about is refused.
async fn pull_from_hostile(hostile: Hostile) -> (Report, Bench) {
    let bench = Bench::new();
    let files = tree(20, 2);
    let fs = MemFs::new();
    put_remote(&fs, b"/src", &files);
    let session = SessionOptions {
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let dialer = MemDialer::new(fs.clone(), session, move |_| {
        Ok(ServerOptions {
            hostile: Some(hostile),
            honest: 1,
            ..Default::default()
        })
    });
    let mut o = bench.options();
    o.retry_for = Duration::from_secs(1);
    let (report, _) = bench.run(Direction::Pull, b"/src", dialer, o).await;
    (report, bench)
}

/// Everything in `dir` besides `local` and `state`, robosync's own.
fn strays(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with("local") && !p.ends_with("state"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_refuses_a_server_lying_about_sizes() {
    let (report, bench) = pull_from_hostile(Hostile::LyingSizes).await;
    assert_ne!(report.exit_code(), 0, "{report:?}");
    // Nothing landed with bytes it should not have: a file lands whole or not at all.
    let files = tree(20, 2);
    for (rel, data) in bench.read() {
        assert_eq!(Some(&data), files.get(&rel), "{rel:?}");
    }
    assert_eq!(strays(bench.dir.path()), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_refuses_names_that_leave_the_directory() {
    let (report, bench) = pull_from_hostile(Hostile::TraversalNames).await;
    assert_eq!(strays(bench.dir.path()), Vec::<PathBuf>::new());
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.operation == crate::Operation::List),
        "the escaping names are reported: {report:?}"
    );
    // The real files still land.
    assert_eq!(bench.read(), tree(20, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_refuses_oversized_and_garbage_replies() {
    for hostile in [Hostile::Oversized, Hostile::Garbage, Hostile::WrongIds] {
        let (report, bench) = pull_from_hostile(hostile).await;
        assert_ne!(report.exit_code(), 0, "{hostile:?}: {report:?}");
        assert_eq!(strays(bench.dir.path()), Vec::<PathBuf>::new());
        assert!(bench.read().is_empty() || bench.local().exists());
    }
}

//! Scanner benchmark (issue 3): robosync-scanner against `b3sum` and `find`.
//!
//! ```text
//! cargo bench --bench scan                                # full scale
//! ROBOSYNC_BENCH_SCALE=0.1 cargo bench --bench scan       # quick run
//! ```
//!
//! Environment: `ROBOSYNC_BENCH_SCALE` (default 1) scales every data set;
//! `ROBOSYNC_BENCH_REPS` (default 5) repetitions per figure, median reported;
//! `B3SUM` path of the b3sum binary (else `b3sum` on PATH or in ~/.cargo/bin);
//! `ROBOSYNC_BENCH_DIR` where to generate data (default: a temporary directory).
//!
//! All figures are with a warm page cache (each command runs once untimed
//! first), so they compare CPU and syscall cost, not the disk. Peak RSS is
//! measured by re-running this binary as a child (`--scan-child`) and reading
//! its high-water RSS (`VmHWM`).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use robosync_scanner::{scan, ScanOptions, StatCache};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--scan-child") {
        scan_child(Path::new(&args[i + 1]), Path::new(&args[i + 2]));
        return;
    }
    let scale: f64 = env_or("ROBOSYNC_BENCH_SCALE", 1.0);
    let reps: usize = env_or("ROBOSYNC_BENCH_REPS", 5);
    let base = match std::env::var_os("ROBOSYNC_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("create benchmark directory");
    let b3sum = find_b3sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# robosync scanner benchmark");
    println!();
    println!("scale {scale}, {reps} repetitions (median), {cores} cores, warm page cache");
    match &b3sum {
        Some(path) => println!("b3sum: {}", version(path)),
        None => println!(
            "b3sum: not found (install with `cargo install b3sum` or set B3SUM); its rows are skipped"
        ),
    }
    println!();
    let mut rows = Vec::new();

    // 1. One large file.
    let big_dir = base.path().join("big");
    let big_size = ((GIB as f64 * scale) as u64).max(MIB);
    fs::create_dir(&big_dir).unwrap();
    write_file(&big_dir.join("big.bin"), big_size, 1);
    let ours = median(reps, || time(|| rescan_no_cache(&big_dir)));
    let peer = b3sum.as_ref().map(|b3| {
        median(reps, || {
            time_command(
                Command::new(b3)
                    .arg("--no-names")
                    .arg(big_dir.join("big.bin")),
            )
        })
    });
    rows.push(Row::throughput(
        format!("1 file of {} MiB, hash (GB/s)", big_size / MIB),
        "b3sum",
        big_size,
        ours,
        peer,
        "≥ 1.0×",
    ));
    fs::remove_dir_all(&big_dir).unwrap();

    // 2. Many small files.
    let small_dir = base.path().join("small");
    let small_count = ((10_000.0 * scale) as usize).max(100);
    let (names, small_bytes) = small_tree(&small_dir, small_count);
    let ours = median(reps, || time(|| rescan_no_cache(&small_dir)));
    let peer = b3sum.as_ref().map(|b3| {
        median(reps, || {
            time_command(
                Command::new(b3)
                    .arg("--no-names")
                    .args(&names)
                    .current_dir(&small_dir),
            )
        })
    });
    rows.push(Row::throughput(
        format!("{small_count} files of 0.5–64 KiB, hash (GB/s)"),
        "b3sum",
        small_bytes,
        ours,
        peer,
        "≥ 2×",
    ));
    fs::remove_dir_all(&small_dir).unwrap();

    // 3. Warm-cache rescan of a large tree, and 4. its peak memory.
    let tree_dir = base.path().join("tree");
    let tree_count = ((100_000.0 * scale) as usize).max(1000);
    let dir_count = tree(&tree_dir, tree_count);
    let cache_path = base.path().join("tree.statcache");
    // Let every mtime leave the racy window, or the warm scan would rehash.
    std::thread::sleep(Duration::from_nanos(
        robosync_scanner::RACY_WINDOW_NS as u64 + 100_000_000,
    ));
    let cold = time(|| {
        let mut cache = StatCache::default();
        let snap = scan(&tree_dir, &ScanOptions::default(), &mut cache).unwrap();
        assert_eq!(snap.stats.files_hashed as usize, tree_count);
        cache.save(&cache_path).unwrap();
    });
    let mut saves = Vec::new();
    let ours = median(reps, || {
        let t = Instant::now();
        let mut cache = StatCache::load(&cache_path);
        let snap = scan(&tree_dir, &ScanOptions::default(), &mut cache).unwrap();
        let elapsed = t.elapsed();
        assert_eq!(
            snap.stats.files_hashed, 0,
            "warm rescan must not read files"
        );
        assert_eq!(snap.stats.cache_hits as usize, tree_count);
        saves.push(time(|| cache.save(&cache_path).unwrap()));
        elapsed
    });
    let find = median(reps, || {
        time_command(
            Command::new("find")
                .args([".", "-type", "f", "-printf", "%s %T@\\n"])
                .current_dir(&tree_dir),
        )
    });
    rows.push(Row::time(
        format!("rescan {tree_count} files, warm stat cache (load + scan)"),
        "find -printf",
        ours,
        Some(find),
        "≤ 1.5×",
    ));
    rows.push(Row::time(
        format!(
            "  same tree, first scan (hash all, save cache; {} MiB cache)",
            file_mib(&cache_path)
        ),
        "",
        cold,
        None,
        "",
    ));
    rows.push(Row::time(
        "  same tree, saving the cache".into(),
        "",
        median_of(saves),
        None,
        "",
    ));

    let empty = base.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let baseline = child_scan(&empty, &base.path().join("none"));
    let warm_rss = child_scan(&tree_dir, &cache_path);
    let cold_rss = child_scan(&tree_dir, &base.path().join("absent.statcache"));
    let entries = (tree_count + dir_count) as u64;
    for (what, rss) in [("warm", warm_rss), ("cold", cold_rss)] {
        rows.push(Row {
            what: format!("peak RSS, {tree_count}-file scan, {what} cache"),
            ours: format!("{:.1} MiB", rss as f64 / MIB as f64),
            peer_name: "empty-tree baseline".into(),
            peer: format!("{:.1} MiB", baseline as f64 / MIB as f64),
            ratio: format!("{} B/entry", rss.saturating_sub(baseline) / entries),
            goal: "≤ ~300 B/entry".into(),
        });
    }

    println!("| measurement | robosync | peer | peer value | ratio | goal |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what, r.ours, r.peer_name, r.peer, r.ratio, r.goal
        );
    }
    println!();
    println!(
        "Ratios: throughput rows are robosync / peer throughput (higher is better); \
         the rescan row is robosync time / find time (lower is better)."
    );
}

/// `--scan-child ROOT CACHE`: one warm (or cold) scan, as the CLI would do it;
/// prints the peak RSS in bytes. Read from `/proc/self/status` (`VmHWM`)
/// because `ru_maxrss` after fork + exec still counts the parent's pages.
fn scan_child(root: &Path, cache_path: &Path) {
    let mut cache = StatCache::load(cache_path);
    let snap = scan(root, &ScanOptions::default(), &mut cache).unwrap();
    assert!(snap.errors.is_empty());
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    println!("{}", kib * KIB);
}

/// Runs `--scan-child`; returns its peak RSS in bytes.
fn child_scan(root: &Path, cache: &Path) -> u64 {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .arg("--scan-child")
        .arg(root)
        .arg(cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scan child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn rescan_no_cache(root: &Path) {
    let opts = ScanOptions {
        ignore_cache: true,
        ..Default::default()
    };
    let snap = scan(root, &opts, &mut StatCache::default()).unwrap();
    assert!(snap.errors.is_empty());
}

struct Row {
    what: String,
    ours: String,
    peer_name: String,
    peer: String,
    ratio: String,
    goal: String,
}

impl Row {
    fn throughput(
        what: String,
        peer_name: &str,
        bytes: u64,
        ours: Duration,
        peer: Option<Duration>,
        goal: &str,
    ) -> Row {
        let gbs = |d: Duration| format!("{:.2}", bytes as f64 / d.as_secs_f64() / 1e9);
        Row {
            what,
            ours: format!("{} ({})", gbs(ours), ms(ours)),
            peer_name: peer_name.into(),
            peer: peer.map_or("skipped".into(), |p| format!("{} ({})", gbs(p), ms(p))),
            ratio: peer.map_or("-".into(), |p| {
                format!("{:.2}×", p.as_secs_f64() / ours.as_secs_f64())
            }),
            goal: goal.into(),
        }
    }

    fn time(
        what: String,
        peer_name: &str,
        ours: Duration,
        peer: Option<Duration>,
        goal: &str,
    ) -> Row {
        Row {
            what,
            ours: ms(ours),
            peer_name: peer_name.into(),
            peer: peer.map_or("".into(), ms),
            ratio: peer.map_or("".into(), |p| {
                format!("{:.2}×", ours.as_secs_f64() / p.as_secs_f64())
            }),
            goal: goal.into(),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// One untimed warm-up, then `reps` timed runs; the median.
fn median(reps: usize, mut run: impl FnMut() -> Duration) -> Duration {
    run();
    median_of((0..reps).map(|_| run()).collect())
}

fn median_of(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(run: impl FnOnce()) -> Duration {
    let start = Instant::now();
    run();
    start.elapsed()
}

fn time_command(cmd: &mut Command) -> Duration {
    let start = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .expect("run peer command");
    let elapsed = start.elapsed();
    assert!(status.success(), "{cmd:?} failed");
    elapsed
}

/// Writes `size` pseudo-random bytes (xorshift; content does not change BLAKE3's speed).
fn write_file(path: &Path, size: u64, seed: u64) {
    let mut out = std::io::BufWriter::with_capacity(MIB as usize, fs::File::create(path).unwrap());
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; (64 * KIB) as usize];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        out.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
}

/// `count` files of 0.5–64 KiB in 100-file directories; returns their relative names and total size.
fn small_tree(root: &Path, count: usize) -> (Vec<PathBuf>, u64) {
    let mut names = Vec::with_capacity(count);
    let mut total = 0;
    for i in 0..count {
        let size = 512 + (i as u64).wrapping_mul(2_654_435_761) % (64 * KIB - 512 + 1);
        let name = PathBuf::from(format!("d{:03}/f{i:05}.dat", i / 100));
        if i % 100 == 0 {
            fs::create_dir_all(root.join(name.parent().unwrap())).unwrap();
        }
        write_file(&root.join(&name), size, i as u64);
        names.push(name);
        total += size;
    }
    (names, total)
}

/// `count` files of 0–4 KiB, 100 per directory, directories 10 wide per level.
/// Returns the number of directories.
fn tree(root: &Path, count: usize) -> usize {
    let mut dirs = std::collections::BTreeSet::new();
    for i in 0..count {
        let leaf = i / 100;
        let dir = root.join(format!("a{}/b{}/c{leaf}", leaf / 100, leaf / 10 % 10));
        if i % 100 == 0 {
            fs::create_dir_all(&dir).unwrap();
            for d in dir
                .strip_prefix(root)
                .unwrap()
                .ancestors()
                .filter(|d| !d.as_os_str().is_empty())
            {
                dirs.insert(d.to_owned());
            }
        }
        fs::write(dir.join(format!("file-{i:06}.txt")), vec![b'x'; i % 4096]).unwrap();
    }
    dirs.len()
}

fn file_mib(path: &Path) -> String {
    format!(
        "{:.1}",
        fs::metadata(path).map_or(0, |m| m.len()) as f64 / MIB as f64
    )
}

fn find_b3sum() -> Option<PathBuf> {
    let candidates = std::env::var_os("B3SUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin")))
                .map(|dir| dir.join("b3sum")),
        );
    candidates.into_iter().find(|p| p.is_file())
}

fn version(b3sum: &Path) -> String {
    Command::new(b3sum)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| format!("{} ({e})", b3sum.display()))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

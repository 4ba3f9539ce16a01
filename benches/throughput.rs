//! Throughput benchmark (issue 5): robosync against scp, `sftp -b`, `rsync -a`
//! and rclone, all through the same robot-node sshd on loopback.
//!
//! ```text
//! cargo bench --bench throughput                                     # full scale
//! ROBOSYNC_BENCH_SCALE=0.25 ROBOSYNC_BENCH_ONLY=P1,P2 cargo bench --bench throughput
//! ```
//!
//! Scenarios: P1 push one 1 GiB file (fresh); P2 push 10,000 files of
//! 0.5–64 KiB in 100 directories (fresh); P3 no-change rerun of P2; P8 pull of
//! P1's and P2's data; P5 P1 and P2 through a shaping proxy at 50 ms RTT, plus
//! P1 at 50 ms RTT and 50 MB/s per connection, and P5-3 P1 at 100 ms RTT
//! (issue 19: ≥ 10× scp's throughput). Issue 19's trees of tiny
//! files (100,000 of 64 B in 1,000 directories): P2b push on loopback, P5-4
//! push at 50 ms RTT, P8-3 pull at 50 ms RTT, P3b no-change rerun at 50 ms.
//!
//! Environment: `ROBOSYNC_BENCH_SCALE` (default 1) scales both data sets;
//! `ROBOSYNC_BENCH_REPS` (default 3) timed repetitions, median reported;
//! `ROBOSYNC_BENCH_ONLY` comma-separated scenario ids or groups (`P1,P5`);
//! `ROBOSYNC_BENCH_TIMEOUT` seconds before one run is killed (default 300);
//! `ROBOSYNC_BENCH_ARGS` extra robosync arguments (e.g. `--connections 4`);
//! `ROBOSYNC_BENCH_TINY_FILES` files in the tiny-file tree (default 100000,
//! for quick local measurements; the scale does not apply to it);
//! `ROBOSYNC_BENCH_PEERS` comma-separated tool names to run (default all);
//! `ROBOSYNC_BENCH_BASELINE` another robosync binary (say, main's) run as
//! one more peer, "robosync (baseline)", interleaved with the rest, so a
//! change is measured before and after in the same run;
//! `ROBOSYNC_BENCH_DIR` where to put data (default: `/dev/shm` when it has
//! 12 GiB free, else a temporary directory; see [`roomy_tmpfs`]).
//!
//! Every run lands in a fresh destination (deleted, untimed, between runs)
//! and counts only if it exited 0 and the destination holds exactly the
//! source's files and bytes; anything else is reported as a failure with the
//! tool's own words. Results: a markdown table on stdout and in
//! `<target>/bench-results/throughput.md`, and a chart `throughput.png`
//! (python3 + matplotlib, if available).

#[path = "support/measure.rs"]
mod measure;
#[path = "support/peers.rs"]
mod peers;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use robosync_testbed::{workspace_root, Proxy, Shaping, Sshd};

use measure::{median, tally, Tally};
use peers::{Job, Link, Peer, Tool};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const MB: f64 = 1e6;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Push,
    Pull,
    /// Push again onto an up-to-date destination.
    Rerun,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Data {
    Big,
    Small,
    /// Issue 19: many files of 64 B.
    Tiny,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Net {
    Loopback,
    /// 25 ms each way.
    Wan,
    /// 25 ms each way and 50 MB/s per connection and direction.
    WanCapped,
    /// 50 ms each way.
    Far,
}

struct Scenario {
    id: &'static str,
    op: Op,
    data: Data,
    net: Net,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        id: "P1",
        op: Op::Push,
        data: Data::Big,
        net: Net::Loopback,
    },
    Scenario {
        id: "P2",
        op: Op::Push,
        data: Data::Small,
        net: Net::Loopback,
    },
    Scenario {
        id: "P3",
        op: Op::Rerun,
        data: Data::Small,
        net: Net::Loopback,
    },
    Scenario {
        id: "P8-1",
        op: Op::Pull,
        data: Data::Big,
        net: Net::Loopback,
    },
    Scenario {
        id: "P8-2",
        op: Op::Pull,
        data: Data::Small,
        net: Net::Loopback,
    },
    Scenario {
        id: "P5-1",
        op: Op::Push,
        data: Data::Big,
        net: Net::Wan,
    },
    Scenario {
        id: "P5-2",
        op: Op::Push,
        data: Data::Small,
        net: Net::Wan,
    },
    Scenario {
        id: "P5-1cap",
        op: Op::Push,
        data: Data::Big,
        net: Net::WanCapped,
    },
    Scenario {
        id: "P5-3",
        op: Op::Push,
        data: Data::Big,
        net: Net::Far,
    },
    Scenario {
        id: "P2b",
        op: Op::Push,
        data: Data::Tiny,
        net: Net::Loopback,
    },
    Scenario {
        id: "P5-4",
        op: Op::Push,
        data: Data::Tiny,
        net: Net::Wan,
    },
    Scenario {
        id: "P8-3",
        op: Op::Pull,
        data: Data::Tiny,
        net: Net::Wan,
    },
    Scenario {
        id: "P3b",
        op: Op::Rerun,
        data: Data::Tiny,
        net: Net::Wan,
    },
];

/// Goals of issue 5 as "robosync's time ÷ this peer's time ≤ max".
const GOALS: &[(&str, &str, f64, &str)] = &[
    ("P1", "scp", 0.5, "≤ 0.5× time"),
    ("P1", "rclone", 0.8, "≤ 0.8× time"),
    ("P2", "rsync -a", 0.6, "≤ 0.6× time"),
    ("P3", "rsync -a", 0.5, "≤ 0.5× time"),
    ("P5-1", "scp", 0.25, "≥ 4× throughput"),
    ("P5-2", "rsync -a", 1.0 / 1.5, "≥ 1.5× throughput"),
    ("P5-3", "scp", 0.1, "≥ 10× throughput"),
    // Issue 19.
    ("P2b", "rsync -a", 1.0, "≤ 1.0× time"),
    ("P5-4", "rsync -a", 0.7, "≤ 0.7× time"),
    ("P8-3", "rsync -a", 0.5, "≤ 0.5× time"),
    ("P3b", "rsync -a", 0.2, "≤ 0.2× time"),
];

impl Scenario {
    fn selected(&self, only: &Option<Vec<String>>) -> bool {
        let group = self.id.split('-').next().unwrap_or(self.id);
        only.as_ref().is_none_or(|ids| {
            ids.iter()
                .any(|s| s.eq_ignore_ascii_case(self.id) || s.eq_ignore_ascii_case(group))
        })
    }

    fn describe(&self, sets: &DataSets) -> String {
        let data = match self.data {
            Data::Big => format!("1 file of {} MiB", sets.big.tally.bytes / MIB),
            Data::Small => format!(
                "{} files ({} MiB) in {} dirs",
                sets.small.tally.files,
                sets.small.tally.bytes / MIB,
                sets.small_dirs
            ),
            Data::Tiny => match &sets.tiny {
                Some(t) => format!(
                    "{} files of 64 B in {} dirs",
                    t.tally.files,
                    t.tally.files.div_ceil(TINY_PER_DIR)
                ),
                None => "tiny files (not generated)".into(),
            },
        };
        let op = match self.op {
            Op::Push => "push",
            Op::Pull => "pull",
            Op::Rerun => "no-change rerun of push",
        };
        let net = match self.net {
            Net::Loopback => "",
            Net::Wan => ", 50 ms RTT",
            Net::WanCapped => ", 50 ms RTT + 50 MB/s per conn",
            Net::Far => ", 100 ms RTT",
        };
        format!("{} {op}, {data}{net}", self.id)
    }
}

struct DataSet {
    dir: PathBuf,
    tally: Tally,
}

struct DataSets {
    big: DataSet,
    small: DataSet,
    small_dirs: usize,
    /// Generated only when a scenario uses it.
    tiny: Option<DataSet>,
}

/// Files per directory of the tiny-file tree (100 000 files in 1 000 dirs).
const TINY_PER_DIR: u64 = 100;

/// What one peer did in one scenario.
enum Outcome {
    Measured {
        /// Median wall seconds.
        wall: f64,
        /// Median client CPU seconds (user, system).
        user: f64,
        sys: f64,
        note: Option<String>,
    },
    Failed(String),
    /// Killed after this many seconds.
    TimedOut(f64),
    NotApplicable(&'static str),
    NotInstalled,
}

impl Outcome {
    fn wall(&self) -> Option<f64> {
        match self {
            Outcome::Measured { wall, .. } => Some(*wall),
            _ => None,
        }
    }
}

struct Settings {
    scale: f64,
    reps: usize,
    only: Option<Vec<String>>,
    timeout: Duration,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let settings = Settings {
        scale: env_or("ROBOSYNC_BENCH_SCALE", 1.0),
        reps: env_or("ROBOSYNC_BENCH_REPS", 3usize).max(1),
        only: std::env::var("ROBOSYNC_BENCH_ONLY").ok().map(|s| {
            s.split(',')
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
                .collect()
        }),
        timeout: Duration::from_secs_f64(env_or("ROBOSYNC_BENCH_TIMEOUT", 300.0)),
    };
    let extra_args: Vec<String> = std::env::var("ROBOSYNC_BENCH_ARGS")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let base = match std::env::var_os("ROBOSYNC_BENCH_DIR").or_else(roomy_tmpfs) {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("create benchmark directory");
    let base = base.path();
    let scenarios: Vec<&Scenario> = SCENARIOS
        .iter()
        .filter(|s| s.selected(&settings.only))
        .collect();
    assert!(
        !scenarios.is_empty(),
        "ROBOSYNC_BENCH_ONLY selects no scenario (ids: P1 P2 P3 P8 P8-1 P8-2 P5 P5-1 P5-2 P5-1cap P5-3 P2b P5-4 P8-3 P3b)"
    );

    let tiny = scenarios
        .iter()
        .any(|s| s.data == Data::Tiny)
        .then(|| env_or("ROBOSYNC_BENCH_TINY_FILES", 100_000u64));
    let sets = generate(base, settings.scale, tiny);
    let sshd = Sshd::start();
    let mut peers = Peer::all(PathBuf::from(env!("CARGO_BIN_EXE_robosync")), extra_args);
    if let Some(bin) = std::env::var_os("ROBOSYNC_BENCH_BASELINE") {
        let baseline = Peer::robosync("robosync (baseline)", PathBuf::from(bin), &peers[0]);
        peers.insert(1, baseline);
    }
    if let Ok(names) = std::env::var("ROBOSYNC_BENCH_PEERS") {
        let names: Vec<&str> = names.split(',').map(str::trim).collect();
        // robosync stays first: ratios are taken against it.
        peers.retain(|p| p.tool == Tool::Robosync || names.contains(&p.name.as_str()));
    }
    fs::write(base.join("rclone.conf"), "").unwrap();

    let mut head = String::new();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = writeln!(head, "# robosync throughput benchmark\n");
    let _ = writeln!(
        head,
        "scale {}, {} repetitions (median), {cores} cores, loadavg at start {}, data in {}, loopback sshd (robot key, forced command)\n",
        settings.scale,
        settings.reps,
        loadavg(),
        base.display()
    );
    for p in &peers {
        let args = if p.extra_args.is_empty() {
            String::new()
        } else {
            format!(" (extra args: {})", p.extra_args.join(" "))
        };
        let _ = writeln!(head, "- {}: {}{args}", p.name, p.version);
    }
    print!("{head}");
    println!();

    let mut proxies: HashMap<Net, (Proxy, Link)> = HashMap::new();
    let direct = Link {
        ssh_config: sshd.ssh_config.clone(),
        port: sshd.port,
        user: sshd.user.clone(),
        key: sshd.client_key.clone(),
        known_hosts: sshd.known_hosts.clone(),
        rclone_remote: "bench".into(),
    };
    let mut log = SshdLog::new(&sshd.sshd_log);
    let mut ciphers: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut results: Vec<(String, Vec<Outcome>)> = Vec::new();
    for sc in &scenarios {
        let title = sc.describe(&sets);
        eprintln!("== {title}");
        let link = match sc.net {
            Net::Loopback => &direct,
            net => {
                &proxies
                    .entry(net)
                    .or_insert_with(|| shaped_link(&sshd, base, net))
                    .1
            }
        };
        let data = match sc.data {
            Data::Big => &sets.big,
            Data::Small => &sets.small,
            Data::Tiny => sets.tiny.as_ref().expect("tiny tree generated"),
        };
        let ctx = Ctx {
            settings: &settings,
            link,
            data,
            work: base.join("runs").join(sc.id),
        };
        let outcomes = run_scenario(sc, &ctx, &peers, &mut log, &mut ciphers);
        results.push((title, outcomes));
    }
    drop(proxies);

    let table = report(&scenarios, &results, &peers, &sets);
    let cipher_notes: String = peers
        .iter()
        .filter_map(|p| {
            ciphers.get(&p.name).map(|c| {
                format!(
                    "- {}: {}\n",
                    p.name,
                    c.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        })
        .collect();
    let notes = format!(
        "\nCiphers negotiated (from the sshd log):\n{cipher_notes}\n\
         Ratios are robosync's median time ÷ the peer's (< 1 means robosync is faster). \
         CPU is the client process tree only (user+sys), not sshd/sftp-server. \
         The 50 MB/s cap is per TCP connection, so tools that open several connections get several caps. \
         scp is OpenSSH's default (SFTP protocol); `-c aes128-gcm` is a second row.\n"
    );
    println!("\n{table}{notes}");
    let out = results_dir();
    fs::create_dir_all(&out).unwrap();
    let md = out.join("throughput.md");
    fs::write(&md, format!("{head}\n{table}{notes}")).unwrap();
    println!("written: {}", md.display());
    chart(&out, &results, &peers);
}

/// Everything one scenario's runs share.
struct Ctx<'a> {
    settings: &'a Settings,
    link: &'a Link,
    data: &'a DataSet,
    work: PathBuf,
}

/// Runs every peer `reps` times, interleaved (rep-major) so machine noise
/// spreads over all of them alike.
fn run_scenario(
    sc: &Scenario,
    ctx: &Ctx,
    peers: &[Peer],
    log: &mut SshdLog,
    ciphers: &mut HashMap<String, BTreeSet<String>>,
) -> Vec<Outcome> {
    let mut done: Vec<Option<Outcome>> = peers
        .iter()
        .map(|p| {
            if !p.installed() {
                Some(Outcome::NotInstalled)
            } else if sc.op == Op::Rerun && !p.can_rerun() {
                Some(Outcome::NotApplicable("no rerun notion"))
            } else {
                None
            }
        })
        .collect();
    let mut samples: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); peers.len()];
    let mut notes: Vec<Option<String>> = vec![None; peers.len()];

    if sc.op == Op::Rerun {
        // One untimed fresh push per peer; the timed runs repeat it.
        for (i, p) in peers.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let dir = ctx.work.join(format!("{i}-seed"));
            let r = attempt(p, Op::Push, ctx, &dir, log);
            if let Err(o) = r {
                done[i] = Some(o);
            }
        }
    }
    if sc.op != Op::Rerun {
        warm_up(ctx);
    }
    for rep in 0..ctx.settings.reps {
        for (i, p) in peers.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let dir = if sc.op == Op::Rerun {
                ctx.work.join(format!("{i}-seed"))
            } else {
                ctx.work.join(format!("{i}-{rep}"))
            };
            eprint!("   {} rep {}: ", p.name, rep + 1);
            match attempt(p, sc.op, ctx, &dir, log) {
                Ok(a) => {
                    eprintln!("{:.2} s", a.wall);
                    samples[i].push((a.wall, a.user, a.sys));
                    if a.note.is_some() {
                        notes[i] = a.note;
                    }
                    if !a.ciphers.is_empty() && sc.net == Net::Loopback {
                        ciphers.entry(p.name.clone()).or_default().extend(a.ciphers);
                    }
                }
                Err(o) => {
                    match &o {
                        Outcome::Failed(why) => eprintln!("FAILED: {why}"),
                        Outcome::TimedOut(t) => eprintln!("timed out after {t:.0} s"),
                        _ => eprintln!(),
                    }
                    done[i] = Some(o);
                }
            }
            if sc.op != Op::Rerun {
                let _ = fs::remove_dir_all(&dir);
            }
            // Flush the last run's dirty pages before the next is timed.
            // SAFETY: sync has no preconditions and cannot fail.
            unsafe { libc::sync() };
        }
    }
    let _ = fs::remove_dir_all(&ctx.work);
    done.into_iter()
        .zip(samples)
        .zip(notes)
        .map(|((d, s), note)| match d {
            Some(o) => o,
            None => Outcome::Measured {
                wall: median(s.iter().map(|x| x.0).collect()),
                user: median(s.iter().map(|x| x.1).collect()),
                sys: median(s.iter().map(|x| x.2).collect()),
                note,
            },
        })
        .collect()
}

/// Copies the data set once, untimed, and deletes the copy, so the first
/// timed run does not also pay for first touches of memory and caches.
/// Measured without it, the first 1 GiB push of a run took 2.64 s and the
/// next ones 1.71 and 1.77 s. With it the first run can still be slow
/// (3.49 s, then 2.17–2.76 s, in a later run): the cause is not only this,
/// which is why results are medians and peers are interleaved.
fn warm_up(ctx: &Ctx) {
    let copy = ctx.work.join("warm-up");
    let _ = fs::create_dir_all(&ctx.work);
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(&ctx.data.dir)
        .arg(&copy)
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("   (warm-up copy failed; the first run may be slow)");
    }
    let _ = fs::remove_dir_all(&copy);
    // SAFETY: sync has no preconditions and cannot fail.
    unsafe { libc::sync() };
}

struct Attempt {
    wall: f64,
    user: f64,
    sys: f64,
    note: Option<String>,
    ciphers: BTreeSet<String>,
}

/// One run of `peer` in `dir` (destination `dir/t`), checked.
fn attempt(
    peer: &Peer,
    op: Op,
    ctx: &Ctx,
    dir: &Path,
    log: &mut SshdLog,
) -> Result<Attempt, Outcome> {
    let scratch = dir.join("scratch");
    let state = dir.join("state");
    fs::create_dir_all(&scratch).unwrap();
    let dst = dir.join("t");
    let job = Job {
        link: ctx.link,
        state: &state,
        scratch: &scratch,
    };
    let mut cmd = match op {
        Op::Push | Op::Rerun => peer.push(&job, &ctx.data.dir, &dst),
        Op::Pull => peer.pull(&job, &ctx.data.dir, &dst),
    };
    if peer.tool == Tool::Rclone {
        // An empty config file, so a user's ~/.config/rclone never leaks in.
        fs::write(scratch.join("rclone.conf"), "").unwrap();
    }
    log.skip_to_end();
    let ran = measure::run(&mut cmd, &scratch, ctx.settings.timeout);
    let ciphers = log.new_ciphers();
    if ran.timed_out {
        return Err(Outcome::TimedOut(ran.wall.as_secs_f64()));
    }
    if ran.code != Some(0) {
        return Err(Outcome::Failed(format!(
            "exit {}: {}",
            ran.code.map_or("by signal".to_string(), |c| c.to_string()),
            ran.complaint()
        )));
    }
    let got = tally(&dst);
    if got != ctx.data.tally {
        let extra = measure::strangers(&dst, &ctx.data.dir, 3);
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(" (unexpected: {})", extra.join(", "))
        };
        return Err(Outcome::Failed(format!(
            "exit 0 but the destination holds {got}, expected {}{extra}",
            ctx.data.tally
        )));
    }
    let mut note = None;
    if peer.tool == Tool::Robosync {
        let summary: Option<serde_json::Value> = ran
            .stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok());
        match summary {
            None => note = Some("no JSON summary".into()),
            Some(s) if op == Op::Rerun && s["files_transferred"].as_u64() != Some(0) => {
                note = Some(format!(
                    "rerun transferred {} files",
                    s["files_transferred"]
                ))
            }
            Some(_) => {}
        }
    }
    Ok(Attempt {
        wall: ran.wall.as_secs_f64(),
        user: ran.cpu_user.as_secs_f64(),
        sys: ran.cpu_sys.as_secs_f64(),
        note,
        ciphers,
    })
}

/// A shaping proxy in front of the sshd and the client files that reach it.
fn shaped_link(sshd: &Sshd, base: &Path, net: Net) -> (Proxy, Link) {
    let (name, rate, one_way) = match net {
        Net::Wan => ("wan", 0, 25),
        Net::WanCapped => ("wancap", 50_000_000, 25),
        Net::Far => ("far", 0, 50),
        Net::Loopback => unreachable!("loopback needs no proxy"),
    };
    let proxy = Proxy::with_shaping(
        sshd.port,
        Shaping {
            one_way_delay: Duration::from_millis(one_way),
            rate,
        },
    );
    let dir = base.join(format!("link-{name}"));
    fs::create_dir_all(&dir).unwrap();
    let known_hosts = dir.join("known_hosts");
    let kh = fs::read_to_string(&sshd.known_hosts)
        .unwrap()
        .replace(&format!("]:{} ", sshd.port), &format!("]:{} ", proxy.port));
    fs::write(&known_hosts, kh).unwrap();
    let ssh_config = dir.join("ssh_config");
    let stanza = sshd
        .config_stanza("robot")
        .replace(
            &format!("Port {}\n", sshd.port),
            &format!("Port {}\n", proxy.port),
        )
        .replace(
            &sshd.known_hosts.display().to_string(),
            &known_hosts.display().to_string(),
        );
    fs::write(&ssh_config, stanza).unwrap();
    let link = Link {
        ssh_config,
        port: proxy.port,
        user: sshd.user.clone(),
        key: sshd.client_key.clone(),
        known_hosts,
        rclone_remote: name.into(),
    };
    (proxy, link)
}

/// Reads what sshd logged since the last look (for negotiated ciphers).
struct SshdLog {
    path: PathBuf,
    offset: u64,
}

impl SshdLog {
    fn new(path: &Path) -> SshdLog {
        let mut l = SshdLog {
            path: path.to_path_buf(),
            offset: 0,
        };
        l.skip_to_end();
        l
    }
    fn skip_to_end(&mut self) {
        self.offset = fs::metadata(&self.path).map_or(0, |m| m.len());
    }
    fn new_ciphers(&mut self) -> BTreeSet<String> {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(&self.path) {
            let _ = f.seek(SeekFrom::Start(self.offset));
            let _ = f.read_to_string(&mut text);
        }
        self.skip_to_end();
        text.lines()
            .filter_map(|l| l.split("kex: client->server cipher: ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .collect()
    }
}

fn generate(base: &Path, scale: f64, tiny: Option<u64>) -> DataSets {
    let started = std::time::Instant::now();
    let big_dir = base.join("data/big");
    fs::create_dir_all(&big_dir).unwrap();
    let big_size = ((GIB as f64 * scale) as u64).max(MIB);
    write_random(&big_dir.join("big.bin"), big_size, 1);

    let small_dir = base.join("data/small");
    let files = ((10_000.0 * scale) as usize).max(10);
    let dirs = ((100.0 * scale) as usize).clamp(1, files);
    let mut rng = Rng::new(7);
    for i in 0..files {
        let d = small_dir.join(format!("d{:03}", i % dirs));
        if i < dirs {
            fs::create_dir_all(&d).unwrap();
        }
        let size = 512 + rng.next() % (64 * KIB - 512 + 1);
        write_random(&d.join(format!("f{i:05}.bin")), size, i as u64 + 2);
    }
    let tiny = tiny.map(|n| {
        let dir = base.join("data/tiny");
        let mut rng = Rng::new(11);
        for i in 0..n.max(1) {
            let d = dir.join(format!("d{:04}", i / TINY_PER_DIR));
            if i % TINY_PER_DIR == 0 {
                fs::create_dir_all(&d).unwrap();
            }
            let bytes: Vec<u8> = (0..8).flat_map(|_| rng.next().to_le_bytes()).collect();
            fs::write(d.join(format!("f{i:06}")), bytes).unwrap();
        }
        DataSet {
            tally: tally(&dir),
            dir,
        }
    });
    let sets = DataSets {
        big: DataSet {
            tally: tally(&big_dir),
            dir: big_dir,
        },
        small: DataSet {
            tally: tally(&small_dir),
            dir: small_dir,
        },
        small_dirs: dirs,
        tiny,
    };
    eprintln!(
        "generated data in {:.1} s: big {}, small {}{}",
        started.elapsed().as_secs_f64(),
        sets.big.tally,
        sets.small.tally,
        sets.tiny
            .as_ref()
            .map_or(String::new(), |t| format!(", tiny {}", t.tally))
    );
    sets
}

/// xorshift64*: incompressible enough, fast to generate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn write_random(path: &Path, size: u64, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut f = std::io::BufWriter::with_capacity(MIB as usize, fs::File::create(path).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// `/dev/shm` when it has room for the data: the benchmark compares transfer
/// engines, not this VM's disk. (On its journal-less ext4, creating a file
/// scans past every inode deleted in the last 30 s, so each small-file run
/// paid for the previous run's cleanup: perf showed `find_inode_bit` and
/// `recently_deleted` taking over 40% of the CPU for every tool.)
/// `ROBOSYNC_BENCH_DIR` overrides it.
fn roomy_tmpfs() -> Option<std::ffi::OsString> {
    let dir = c"/dev/shm";
    // SAFETY: statvfs is plain integers, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: dir is NUL-terminated and st is valid and writable.
    let ok = unsafe { libc::statvfs(dir.as_ptr(), &mut st) } == 0;
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    (ok && free >= 12 << 30).then(|| "/dev/shm".into())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn results_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("bench-results")
}

/// The markdown table: one row per scenario and tool, ratios against robosync.
fn report(
    scenarios: &[&Scenario],
    results: &[(String, Vec<Outcome>)],
    peers: &[Peer],
    sets: &DataSets,
) -> String {
    let mut t = String::new();
    t.push_str("| Scenario | Tool | Median s | MB/s | Client CPU s (user+sys) | robosync ÷ tool (time) | Goal |\n");
    t.push_str("|---|---|---:|---:|---:|---:|---|\n");
    for (sc, (title, outcomes)) in scenarios.iter().zip(results) {
        let ours = outcomes[0].wall();
        let bytes = match sc.data {
            Data::Big => sets.big.tally.bytes,
            Data::Small => sets.small.tally.bytes,
            Data::Tiny => sets.tiny.as_ref().map_or(0, |t| t.tally.bytes),
        };
        for (p, o) in peers.iter().zip(outcomes) {
            let goal = GOALS
                .iter()
                .find(|g| g.0 == sc.id && g.1 == p.name)
                .map(|g| (g.2, g.3));
            let (secs, mbps, cpu, ratio, goal_cell) = match o {
                Outcome::Measured {
                    wall,
                    user,
                    sys,
                    note,
                } => {
                    let ratio = ours.map(|r| r / wall);
                    let goal_cell = match (goal, ratio) {
                        (Some((max, text)), Some(r)) => {
                            format!("{text}: {}", if r <= max { "✓" } else { "✗" })
                        }
                        (Some((_, text)), None) => format!("{text}: —"),
                        _ => String::new(),
                    };
                    let size = (sc.op != Op::Rerun).then_some(bytes);
                    let mut secs = format!("{wall:.2}");
                    if let Some(n) = note {
                        secs.push_str(&format!(" ({n})"));
                    }
                    (
                        secs,
                        size.map_or("—".into(), |b| format!("{:.0}", b as f64 / MB / wall)),
                        format!("{:.2} + {:.2}", user, sys),
                        if std::ptr::eq(p, &peers[0]) {
                            "1.00".into()
                        } else {
                            ratio.map_or("—".into(), |r| format!("{r:.2}"))
                        },
                        goal_cell,
                    )
                }
                Outcome::TimedOut(limit) => (
                    format!("> {limit:.0} (timeout)"),
                    "—".into(),
                    "—".into(),
                    ours.map_or("—".into(), |r| format!("< {:.2}", r / limit)),
                    goal.map_or(String::new(), |(max, text)| match ours {
                        Some(r) if r / limit <= max => format!("{text}: ✓"),
                        _ => format!("{text}: ?"),
                    }),
                ),
                Outcome::Failed(why) => (
                    format!("FAILED: {}", why.replace('|', "\\|")),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    goal.map_or(String::new(), |(_, text)| format!("{text}: —")),
                ),
                Outcome::NotApplicable(why) => (
                    format!("n/a ({why})"),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    String::new(),
                ),
                Outcome::NotInstalled => (
                    "not installed".into(),
                    "—".into(),
                    "—".into(),
                    "—".into(),
                    String::new(),
                ),
            };
            let _ = writeln!(
                t,
                "| {title} | {} | {secs} | {mbps} | {cpu} | {ratio} | {goal_cell} |",
                p.name
            );
        }
    }
    t
}

/// A grouped bar chart of median times (log scale), via python3 + matplotlib.
fn chart(out: &Path, results: &[(String, Vec<Outcome>)], peers: &[Peer]) {
    let csv = out.join("throughput.csv");
    let mut text = String::from("scenario,tool,seconds\n");
    for (title, outcomes) in results {
        let id = title.split(' ').next().unwrap_or(title);
        for (p, o) in peers.iter().zip(outcomes) {
            if let Some(w) = o.wall() {
                let _ = writeln!(text, "{id},{},{w}", p.name);
            }
        }
    }
    fs::write(&csv, text).unwrap();
    let png = out.join("throughput.png");
    let script = out.join("throughput_chart.py");
    fs::write(&script, CHART_PY).unwrap();
    let python = measure::on_path("python3");
    let made = python.is_some_and(|py| {
        std::process::Command::new(py)
            .arg(&script)
            .arg(&csv)
            .arg(&png)
            .status()
            .is_ok_and(|s| s.success())
    });
    if made {
        println!("written: {}", png.display());
    } else {
        println!(
            "chart skipped: needs python3 with matplotlib (`pip install matplotlib`); data in {}",
            csv.display()
        );
    }
}

const CHART_PY: &str = r#"
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
tools = list(dict.fromkeys(r["tool"] for r in rows))
val = {(r["scenario"], r["tool"]): float(r["seconds"]) for r in rows}
w = 0.8 / max(len(tools), 1)
fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(scenarios)), 5))
for i, t in enumerate(tools):
    xs = [j + i * w for j, s in enumerate(scenarios) if (s, t) in val]
    ys = [val[(s, t)] for s in scenarios if (s, t) in val]
    ax.bar(xs, ys, w, label=t)
ax.set_xticks([j + 0.4 - w / 2 for j in range(len(scenarios))])
ax.set_xticklabels(scenarios)
ax.set_yscale("log")
ax.set_ylabel("median wall time, s (log; lower is better)")
ax.set_title("robosync vs peers over SFTP/SSH on loopback")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=120)
"#;

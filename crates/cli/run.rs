//! State shared by one run: options, counters, the journal, and what the
//! user sees. Reporting goes through event methods ([`Run::phase`],
//! [`Run::file_done`], [`Run::itemize`], [`Run::summary`], …), never
//! through prints elsewhere.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};
use robosync_manifest::{Journal, JournalRecord};
use robosync_scanner::ScanProgress;

use crate::report::{ErrorKind, ErrorRecord, Report, SCHEMA_VERSION};

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub verbose: u8,
    pub quiet: bool,
    pub fsync: bool,
    pub inplace: bool,
    pub verify: bool,
    pub backup_dir: Option<PathBuf>,
    pub progress: bool,
    /// `-S`: holes in the source are not sent (the destination gets holes).
    pub sparse: bool,
    /// `--json`: stdout holds the report alone; itemised lines go to stderr.
    pub json: bool,
    /// `--itemize-changes`: one line per action, as `-v` gives.
    pub itemize: bool,
    /// `--stats`: a block of counters at the end.
    pub stats: bool,
    /// `--bwlimit`: bytes per second across all connections.
    pub bwlimit: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub skipped: AtomicU64,
    pub deleted: AtomicU64,
    pub verified: AtomicU64,
    /// Bytes an interrupted transfer had landed before, not sent again.
    pub resumed: AtomicU64,
}

/// What the run is doing, shown on the progress line (and timed with `-vv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    Scanning,
    Listing,
    Planning,
    Transferring,
    Recording,
    Closing,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::Scanning => "scanning",
            Phase::Listing => "listing the destination",
            Phase::Planning => "planning",
            Phase::Transferring => "transferring",
            Phase::Recording => "recording",
            Phase::Closing => "closing",
        }
    }
}

pub struct Run {
    pub opts: RunOptions,
    pub stats: Stats,
    pub started: Instant,
    journal: Mutex<Option<Journal>>,
    journal_error: Mutex<Option<String>>,
    bar: Option<ProgressBar>,
    notes_shown: Mutex<std::collections::HashSet<String>>,
    vanished: Mutex<Vec<String>>,
    phase: Mutex<Phase>,
    scan: Mutex<Option<Arc<ScanProgress>>>,
    files_total: AtomicU64,
    transfer: Mutex<Option<(Instant, Option<Instant>)>>,
    planned: Mutex<Vec<String>>,
    log: Mutex<Option<File>>,
    bucket: Mutex<Bucket>,
}

/// `--bwlimit`'s token bucket: `tokens` bytes may go now; it refills at the
/// limit's rate up to one second's worth.
struct Bucket {
    tokens: f64,
    at: Instant,
}

const TRANSFER_TEMPLATE: &str =
    "{spinner} {msg} {bytes}/{total_bytes} ({percent}%) {binary_bytes_per_sec} eta {eta} {prefix}";

impl Run {
    pub fn new(opts: RunOptions) -> Run {
        let tty = std::io::stderr().is_terminal();
        let bar = (opts.progress && tty && !opts.quiet && !opts.json).then(|| {
            let b = ProgressBar::new(0);
            b.set_style(ProgressStyle::with_template("{spinner} {msg}").unwrap());
            b.set_message(Phase::Connecting.label());
            b.enable_steady_tick(Duration::from_millis(150));
            b
        });
        Run {
            opts,
            stats: Stats::default(),
            started: Instant::now(),
            journal: Mutex::new(None),
            journal_error: Mutex::new(None),
            bar,
            notes_shown: Mutex::new(Default::default()),
            vanished: Mutex::new(Vec::new()),
            phase: Mutex::new(Phase::Connecting),
            scan: Mutex::new(None),
            files_total: AtomicU64::new(0),
            transfer: Mutex::new(None),
            planned: Mutex::new(Vec::new()),
            log: Mutex::new(None),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }

    /// `--log-file`: itemised actions and errors, each with a UTC timestamp.
    pub fn set_log(&self, f: File) {
        *self.log.lock().unwrap() = Some(f);
    }

    fn log(&self, line: &str) {
        if let Some(f) = self.log.lock().unwrap().as_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let stamp = robosync_transport::connect::unix_to_utc(now);
            let _ = writeln!(f, "{stamp} {line}");
        }
    }

    /// The scan's counters, shown on the phase line while it runs.
    pub fn scanning(&self, p: Arc<ScanProgress>) {
        *self.scan.lock().unwrap() = Some(p);
    }

    /// A new phase begins. On a terminal the line says what is going on;
    /// `-vv` prints when each phase started, to see where the time goes.
    pub fn phase(&self, p: Phase) {
        *self.phase.lock().unwrap() = p;
        if self.opts.verbose > 1 {
            self.eprintln(&format!(
                "[{:7.3} s] {}",
                self.started.elapsed().as_secs_f64(),
                p.label()
            ));
        }
        match p {
            Phase::Transferring => self.transfer_begins(),
            Phase::Recording | Phase::Closing => self.transfer_ends(),
            _ => {}
        }
        self.refresh();
    }

    /// Redraws the phase line from the counters (called on a timer: the
    /// scan's counters move without telling anyone).
    pub fn refresh(&self) {
        let Some(b) = &self.bar else { return };
        let phase = *self.phase.lock().unwrap();
        if phase == Phase::Transferring {
            b.set_prefix(self.files_line());
            return;
        }
        let mut msg = phase.label().to_string();
        if let Some(s) = self.scan.lock().unwrap().as_ref() {
            if matches!(phase, Phase::Connecting | Phase::Scanning) {
                msg = format!(
                    "{msg} · scanned {} entries, hashed {}",
                    s.entries.load(Ordering::Relaxed),
                    HumanBytes(s.bytes_hashed.load(Ordering::Relaxed))
                );
            }
        }
        b.set_message(msg);
    }

    fn files_line(&self) -> String {
        format!(
            "files {}/{}",
            self.stats.files.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed)
        )
    }

    /// The rate and ETA are measured from here, not from the start of the
    /// process (a passphrase prompt or a long scan would drag them down).
    fn transfer_begins(&self) {
        *self.transfer.lock().unwrap() = Some((Instant::now(), None));
        self.bucket.lock().unwrap().at = Instant::now();
        if let Some(b) = &self.bar {
            b.set_style(
                ProgressStyle::with_template(TRANSFER_TEMPLATE)
                    .unwrap()
                    .progress_chars("=> "),
            );
            b.reset();
            b.set_position(0);
            b.set_message(Phase::Transferring.label());
            b.set_prefix(self.files_line());
        }
    }

    fn transfer_ends(&self) {
        if let Some((_, end @ None)) = self.transfer.lock().unwrap().as_mut() {
            *end = Some(Instant::now());
        }
        if let Some(b) = &self.bar {
            b.set_style(ProgressStyle::with_template("{spinner} {msg}").unwrap());
        }
    }
    pub fn set_journal(&self, j: Journal) {
        *self.journal.lock().unwrap() = Some(j);
    }

    pub fn take_journal(&self) -> Option<Journal> {
        self.journal.lock().unwrap().take()
    }

    pub fn journal(&self, rec: &JournalRecord) {
        self.journal_for(rec, rec.payload_bytes());
    }

    pub fn journal_for(&self, rec: &JournalRecord, bytes: u64) {
        if let Some(j) = self.journal.lock().unwrap().as_mut() {
            if let Err(e) = j.append_for(rec, bytes) {
                self.journal_error
                    .lock()
                    .unwrap()
                    .get_or_insert(e.to_string());
            }
        }
    }

    pub fn checkpoint(&self) {
        if let Some(j) = self.journal.lock().unwrap().as_mut() {
            let _ = j.checkpoint_if_due();
        }
    }

    pub fn journal_error(&self) -> Option<String> {
        self.journal_error.lock().unwrap().clone()
    }

    /// What the transfer will move: bytes and files, for the percentage
    /// and the files done/total.
    pub fn set_total(&self, bytes: u64, files: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
    }

    pub fn add_bytes(&self, n: u64) {
        self.stats.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Bytes an earlier run landed that this one keeps.
    pub fn resumed(&self, n: u64) {
        self.stats.resumed.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// A file (or link) landed.
    pub fn file_done(&self) {
        self.stats.files.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_prefix(self.files_line());
        }
    }

    /// `--bwlimit`: waits until `n` more bytes may go. One bucket for the
    /// whole run, so the limit is the total over every connection.
    pub async fn throttle(&self, n: u64) {
        let Some(rate) = self.opts.bwlimit else {
            return;
        };
        let rate = rate as f64;
        let wait = {
            let mut b = self.bucket.lock().unwrap();
            let now = Instant::now();
            // A second's worth at most, so an idle spell buys no burst beyond it.
            b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(rate);
            b.at = now;
            b.tokens -= n as f64;
            // In debt: wait until the debt is repaid at the limit's rate.
            (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / rate))
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }

    /// One line per action (rsync `-i` style) with `-v` or
    /// `--itemize-changes`: on stdout, so `robosync -v … > list.txt`
    /// keeps it, or on stderr under `--json`; and in the log file.
    pub fn itemize(&self, line: &str) {
        self.log(line);
        if self.opts.verbose > 0 || self.opts.itemize {
            self.item_out(line);
        }
    }

    /// A dry run's action: always listed (in the report under `--json`).
    pub fn planned(&self, line: String) {
        self.log(&line);
        if self.opts.json {
            self.planned.lock().unwrap().push(line);
        } else {
            self.item_out(&line);
        }
    }

    fn item_out(&self, line: &str) {
        if self.opts.json {
            self.eprintln(line);
            return;
        }
        match &self.bar {
            Some(b) => b.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    pub fn note(&self, msg: String) {
        if self.opts.verbose > 0 {
            self.eprintln(&msg);
        }
    }

    /// A warning: shown unless `-q`, once.
    pub fn note_once(&self, msg: String) {
        if !self.opts.quiet && self.notes_shown.lock().unwrap().insert(msg.clone()) {
            self.eprintln(&format!("robosync: {msg}"));
        }
    }

    pub fn warn(&self, msg: &str) {
        self.log(&format!("warning: {msg}"));
        if !self.opts.quiet {
            self.eprintln(&format!("robosync: warning: {msg}"));
        }
    }

    /// A source entry that was listed and is gone when opened (rsync's
    /// wording): not a failure, but the run exits 24 if nothing else failed.
    pub fn vanished(&self, path: &str) {
        self.warn(&format!("file has vanished: {path}"));
        self.vanished.lock().unwrap().push(path.to_string());
    }

    /// The source entries that vanished during the run.
    pub fn vanished_list(&self) -> Vec<String> {
        self.vanished.lock().unwrap().clone()
    }

    pub fn error(&self, msg: &str) {
        self.log(&format!("error: {msg}"));
        self.eprintln(&format!("robosync: error: {msg}"));
    }

    fn eprintln(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// The end of the run: the bar goes, and what was done is said once —
    /// the `--json` report on stdout, a closing line on a terminal (or with
    /// `-v`), `--stats`' counters, and on failure how many things failed.
    pub fn summary(&self, code: i32, dry_run: bool, errors: &[String], vanished: &[String]) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let r = self.report(code, dry_run, errors, vanished);
        self.log(&format!(
            "done: exit {code}, {} files, {} bytes sent, {} unchanged, {} deleted, {} failed",
            r.files_transferred,
            r.bytes_transferred,
            r.files_skipped,
            r.deleted,
            errors.len()
        ));
        if code == crate::sync::EXIT_PARTIAL && errors.len() > 1 {
            eprintln!(
                "robosync: error: {} entries failed (listed above); everything else landed: rerun to retry them",
                errors.len()
            );
        }
        if self.opts.stats {
            let block = self.stats_block(&r);
            if self.opts.json {
                eprint!("{block}");
            } else {
                print!("{block}");
            }
        }
        if self.opts.json {
            println!(
                "{}",
                serde_json::to_string(&r).expect("the report serializes")
            );
            return;
        }
        let on_tty = self.opts.progress && std::io::stderr().is_terminal();
        let show = !self.opts.quiet && !dry_run && (self.opts.verbose > 0 || on_tty);
        if show
            && matches!(
                code,
                0 | crate::sync::EXIT_PARTIAL | crate::sync::EXIT_VANISHED
            )
        {
            eprintln!("robosync: {}", self.closing_line(&r, errors.len()));
        }
    }

    /// `sent 12 files (1.2 GiB), 5 unchanged, 0 deleted, 0 failed in 3s (400 MiB/s); resumed 0 B`
    fn closing_line(&self, r: &Report, failed: usize) -> String {
        let mut line = format!(
            "sent {} files ({}), {} unchanged, {} deleted, {} failed in {}",
            r.files_transferred,
            HumanBytes(r.bytes_transferred),
            r.files_skipped,
            r.deleted,
            failed,
            HumanDuration(Duration::from_secs_f64(r.elapsed_seconds)),
        );
        if let Some(rate) = self.average_rate() {
            line += &format!(" ({}/s)", HumanBytes(rate));
        }
        if r.resumed_bytes > 0 {
            line += &format!("; resumed {}", HumanBytes(r.resumed_bytes));
        }
        line
    }

    /// Bytes per second over the transfer phase alone.
    fn average_rate(&self) -> Option<u64> {
        let (start, end) = (*self.transfer.lock().unwrap())?;
        let secs = end
            .unwrap_or_else(Instant::now)
            .duration_since(start)
            .as_secs_f64();
        let bytes = self.stats.bytes.load(Ordering::Relaxed);
        (secs > 0.0 && bytes > 0).then(|| (bytes as f64 / secs) as u64)
    }

    fn stats_block(&self, r: &Report) -> String {
        format!(
            "Number of files transferred: {}\nTotal bytes sent: {}\nResumed bytes: {}\nUnchanged files: {}\nDeleted entries: {}\nVerified files: {}\nErrors: {}\nElapsed: {:.3} s\nAverage transfer rate: {} bytes/s\n",
            r.files_transferred,
            r.bytes_transferred,
            r.resumed_bytes,
            r.files_skipped,
            r.deleted,
            r.verified,
            r.errors.len(),
            r.elapsed_seconds,
            self.average_rate().unwrap_or(0),
        )
    }

    fn report(&self, code: i32, dry_run: bool, errors: &[String], vanished: &[String]) -> Report {
        let s = &self.stats;
        let kind = ErrorKind::of_exit(code);
        // Entry errors shown before a run-ending failure keep their kind.
        let last = errors.len().saturating_sub(1);
        let errors = errors
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let k = if code == crate::sync::EXIT_PARTIAL || i < last {
                    ErrorKind::Entry
                } else {
                    kind
                };
                ErrorRecord::parse(e, k)
            })
            .collect();
        Report {
            schema_version: SCHEMA_VERSION,
            exit_code: code,
            dry_run,
            files_transferred: s.files.load(Ordering::Relaxed),
            bytes_transferred: s.bytes.load(Ordering::Relaxed),
            files_skipped: s.skipped.load(Ordering::Relaxed),
            deleted: s.deleted.load(Ordering::Relaxed),
            verified: s.verified.load(Ordering::Relaxed),
            resumed_bytes: s.resumed.load(Ordering::Relaxed),
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            planned: std::mem::take(&mut self.planned.lock().unwrap()),
            errors,
            vanished: vanished.to_vec(),
        }
    }
}

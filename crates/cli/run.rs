//! What the user sees: the binary's [`Observer`] of the engine's runs. It
//! draws the progress line, itemises, writes the log file, and at the end
//! prints the summary, `--stats` and the `--json` report. The engine never
//! prints; everything shown goes through here.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressStyle};
use robosync_sync::json::Report;
use robosync_sync::{Observer, Phase, PoolEvent, ScanProgress, EXIT_PARTIAL, EXIT_VANISHED};

/// How much to show, and where.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub verbose: u8,
    pub quiet: bool,
    pub progress: bool,
    /// `--json`: stdout holds the report alone; itemised lines go to stderr.
    pub json: bool,
    /// `--itemize-changes`: one line per action, as `-v` gives.
    pub itemize: bool,
    /// `--stats`: a block of counters at the end.
    pub stats: bool,
}

pub struct Run {
    pub opts: RunOptions,
    started: Instant,
    /// Files landed, bytes moved: this command's, for the progress line.
    files_done: AtomicU64,
    bytes_done: AtomicU64,
    bar: Option<ProgressBar>,
    phase: Mutex<Phase>,
    scan: Mutex<Option<Arc<ScanProgress>>>,
    files_total: AtomicU64,
    transfer: Mutex<Option<(Instant, Option<Instant>)>>,
    planned: Mutex<Vec<String>>,
    log: Mutex<Option<File>>,
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
            started: Instant::now(),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bar,
            phase: Mutex::new(Phase::Connecting),
            scan: Mutex::new(None),
            files_total: AtomicU64::new(0),
            transfer: Mutex::new(None),
            planned: Mutex::new(Vec::new()),
            log: Mutex::new(None),
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
            self.files_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed)
        )
    }

    /// The rate and ETA are measured from here, not from the start of the
    /// process (a passphrase prompt or a long scan would drag them down).
    fn transfer_begins(&self) {
        *self.transfer.lock().unwrap() = Some((Instant::now(), None));
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

    /// The end of the command: the bar goes, and what was done is said
    /// once: the `--json` report on stdout, a closing line on a terminal
    /// (or with `-v`), `--stats`' counters, and on failure how many things
    /// failed.
    pub fn summary(&self, outcome: &robosync_sync::Report, dry_run: bool) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        let planned = std::mem::take(&mut *self.planned.lock().unwrap());
        let r = Report::new(outcome, dry_run, self.started.elapsed(), planned);
        let code = r.exit_code;
        self.log(&format!(
            "done: exit {code}, {} files, {} bytes sent, {} unchanged, {} deleted, {} failed",
            r.files_transferred,
            r.bytes_transferred,
            r.files_skipped,
            r.deleted,
            r.errors.len()
        ));
        if code == EXIT_PARTIAL && r.errors.len() > 1 {
            eprintln!(
                "robosync: error: {} entries failed (listed above); everything else landed: rerun to retry them",
                r.errors.len()
            );
        }
        if self.opts.stats {
            let block = r.stats_block(self.average_rate().unwrap_or(0));
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
        if show && matches!(code, 0 | EXIT_PARTIAL | EXIT_VANISHED) {
            eprintln!("robosync: {}", self.closing_line(&r, r.errors.len()));
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

    /// The report of a command stopped by a signal: what the progress
    /// counters saw land, and "rerun to resume" (exit 20).
    pub fn interrupted(&self) -> robosync_sync::Report {
        let stats = robosync_sync::Stats {
            files: self.files_done.load(Ordering::Relaxed),
            bytes: self.bytes_done.load(Ordering::Relaxed),
            ..Default::default()
        };
        robosync_sync::Report::interrupted(stats, self.started.elapsed())
    }

    /// Bytes per second over the transfer phase alone.
    fn average_rate(&self) -> Option<u64> {
        let (start, end) = (*self.transfer.lock().unwrap())?;
        let secs = end
            .unwrap_or_else(Instant::now)
            .duration_since(start)
            .as_secs_f64();
        let bytes = self.bytes_done.load(Ordering::Relaxed);
        (secs > 0.0 && bytes > 0).then(|| (bytes as f64 / secs) as u64)
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
}

impl Observer for Run {
    /// On a terminal the line says what is going on; `-vv` prints when
    /// each phase started (since the command started), to see where the
    /// time goes.
    fn phase(&self, p: Phase, _since_run_start: Duration) {
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

    fn scanning(&self, p: Arc<ScanProgress>) {
        *self.scan.lock().unwrap() = Some(p);
    }

    /// With `-v` or `--itemize-changes`: on stdout, so `robosync -v … >
    /// list.txt` keeps it, or on stderr under `--json`; and in the log file.
    fn itemize(&self, line: &str) {
        self.log(line);
        if self.opts.verbose > 0 || self.opts.itemize {
            self.item_out(line);
        }
    }

    /// Always listed (in the report under `--json`).
    fn planned(&self, line: &str) {
        self.log(line);
        if self.opts.json {
            self.planned.lock().unwrap().push(line.to_string());
        } else {
            self.item_out(line);
        }
    }

    fn note(&self, msg: &str) {
        if self.opts.verbose > 0 {
            self.eprintln(msg);
        }
    }

    /// Shown unless `-q` (the engine says each once).
    fn notice(&self, msg: &str) {
        if !self.opts.quiet {
            self.eprintln(&format!("robosync: {msg}"));
        }
    }

    fn warn(&self, msg: &str) {
        self.log(&format!("warning: {msg}"));
        if !self.opts.quiet {
            self.eprintln(&format!("robosync: warning: {msg}"));
        }
    }

    /// Warnings as warnings; `-v` shows the rest, one line per connection
    /// and per channels added.
    fn connection(&self, event: &PoolEvent) {
        match event {
            PoolEvent::Warning(w) => self.warn(w),
            e => self.note(&e.to_string()),
        }
    }

    /// For the percentage and the files done/total.
    fn total(&self, bytes: u64, files: u64) {
        self.files_total.store(files, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
    }

    fn bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn resumed(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn file_done(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_prefix(self.files_line());
        }
    }

    fn vanished(&self, path: &str) {
        self.warn(&format!("file has vanished: {path}"));
    }
}

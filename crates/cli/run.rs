//! State shared by one run: options, counters, the journal, and what the user sees.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use robosync_manifest::{Journal, JournalRecord};

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
}

#[derive(Debug, Default)]
pub struct Stats {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub skipped: AtomicU64,
    pub deleted: AtomicU64,
    pub verified: AtomicU64,
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
}

impl Run {
    pub fn new(opts: RunOptions) -> Run {
        let bar = (opts.progress && std::io::stderr().is_terminal() && !opts.quiet).then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
                )
                .unwrap(),
            );
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

    pub fn set_total(&self, bytes: u64) {
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

    /// One line per action with `-v` (rsync `-i` style), on stdout.
    pub fn itemize(&self, line: &str) {
        if self.opts.verbose > 0 {
            self.println(line);
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => println!("{line}"),
        }
    }

    /// A message for `-v` users, on stderr.
    /// `-vv`: when each phase of the run ended, to see where the time goes.
    pub fn phase(&self, what: &str) {
        if self.opts.verbose > 1 {
            self.eprintln(&format!(
                "[{:7.3} s] {what}",
                self.started.elapsed().as_secs_f64()
            ));
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
        self.eprintln(&format!("robosync: error: {msg}"));
    }

    fn eprintln(&self, line: &str) {
        match &self.bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish_progress(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

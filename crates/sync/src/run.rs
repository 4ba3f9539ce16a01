//! State shared by the tasks of one run: options, counters, the journal, and
//! the [`Observer`] that shows what happens.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use robosync_manifest::{Journal, JournalRecord};

use crate::{Observer, Options, Stats};

/// Counters the executors bump as they go (a [`Stats`] when read).
#[derive(Debug, Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub skipped: AtomicU64,
    pub deleted: AtomicU64,
    pub verified: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            files: get(&self.files),
            bytes: get(&self.bytes),
            skipped: get(&self.skipped),
            deleted: get(&self.deleted),
            verified: get(&self.verified),
        }
    }
}

pub struct Run {
    pub opts: Options,
    pub stats: Counters,
    pub started: Instant,
    journal: Mutex<Option<Journal>>,
    journal_error: Mutex<Option<String>>,
    observer: Arc<dyn Observer>,
    notes_shown: Mutex<HashSet<String>>,
    /// Entry errors of a run that then stopped (its [`crate::Failure`] says why).
    kept_errors: Mutex<Vec<String>>,
}

impl Run {
    pub fn new(opts: Options, observer: Arc<dyn Observer>) -> Run {
        Run {
            opts,
            stats: Counters::default(),
            started: Instant::now(),
            journal: Mutex::new(None),
            journal_error: Mutex::new(None),
            observer,
            notes_shown: Mutex::new(HashSet::new()),
            kept_errors: Mutex::new(Vec::new()),
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
        self.observer.total_bytes(bytes);
    }

    pub fn add_bytes(&self, n: u64) {
        self.stats.bytes.fetch_add(n, Ordering::Relaxed);
        self.observer.bytes(n);
    }

    /// One line per action (rsync `-i` style).
    pub fn itemize(&self, line: &str) {
        self.observer.itemize(line);
    }

    /// A phase of the run ended (push and pull name the same phases).
    pub fn phase(&self, what: &str) {
        self.observer.phase(what, self.started.elapsed());
    }

    pub fn note(&self, msg: String) {
        self.observer.note(&msg);
    }

    /// A notice shown once however often it happens (e.g. reconnecting).
    pub fn note_once(&self, msg: String) {
        if self.notes_shown.lock().unwrap().insert(msg.clone()) {
            self.observer.notice(&msg);
        }
    }

    pub fn warn(&self, msg: &str) {
        self.observer.warn(msg);
    }

    /// One action a real run would take (a dry run's output).
    pub fn planned(&self, line: &str) {
        self.observer.planned(line);
    }

    /// Keeps the entry errors of a run about to stop for another reason.
    pub fn keep_errors(&self, errors: Vec<String>) {
        self.kept_errors.lock().unwrap().extend(errors);
    }

    pub fn kept_errors(&self) -> Vec<String> {
        std::mem::take(&mut self.kept_errors.lock().unwrap())
    }
}

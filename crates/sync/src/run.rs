//! State shared by the tasks of one run: options, counters, the journal, and
//! the [`Observer`] that shows what happens.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use robosync_manifest::{Journal, JournalRecord};

use robosync_scanner::ScanProgress;

use crate::failure::EntryError;
use crate::{Observer, Options, Phase, Stats};

/// Counters the executors bump as they go (a [`Stats`] when read).
#[derive(Debug, Default)]
pub struct Counters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub skipped: AtomicU64,
    pub deleted: AtomicU64,
    pub verified: AtomicU64,
    pub resumed: AtomicU64,
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
            resumed: get(&self.resumed),
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
    kept_errors: Mutex<Vec<EntryError>>,
    vanished: Mutex<Vec<String>>,
    bucket: Mutex<Bucket>,
}

/// `--bwlimit`'s RATE in bytes per second: `500K`, `10M`, `1G`, `4096B`;
/// a bare number is KiB per second, as rsync reads it.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches("/s");
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| t.split_at(i))
        .unwrap_or((t, "K"));
    let mult: f64 = match unit.to_ascii_uppercase().trim_end_matches("IB") {
        "B" => 1.0,
        "K" | "KB" => 1024.0,
        "M" | "MB" => 1024.0 * 1024.0,
        "G" | "GB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("{s:?} is not a rate (e.g. 500K, 10M, 1G)")),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("{s:?} is not a rate above zero (e.g. 500K, 10M, 1G)"))?;
    let rate = n * mult;
    if rate < 1024.0 {
        return Err(format!("--bwlimit {s} is below 1 KiB/s, which cannot work"));
    }
    Ok(rate as u64)
}

/// `--bwlimit`'s token bucket: `tokens` bytes may go now; it refills at the
/// limit's rate up to one second's worth.
struct Bucket {
    tokens: f64,
    at: Instant,
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
            vanished: Mutex::new(Vec::new()),
            bucket: Mutex::new(Bucket {
                tokens: 0.0,
                at: Instant::now(),
            }),
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

    /// What the transfer will move: bytes and files.
    pub fn set_total(&self, bytes: u64, files: u64) {
        self.observer.total(bytes, files);
    }

    pub fn add_bytes(&self, n: u64) {
        self.stats.bytes.fetch_add(n, Ordering::Relaxed);
        self.observer.bytes(n);
    }

    /// Bytes an earlier run landed that this one keeps.
    pub fn resumed(&self, n: u64) {
        self.stats.resumed.fetch_add(n, Ordering::Relaxed);
        self.observer.resumed(n);
    }

    /// A file (or link) landed.
    pub fn file_done(&self) {
        self.stats.files.fetch_add(1, Ordering::Relaxed);
        self.observer.file_done();
    }

    /// The local scan's counters, for the observer to show.
    pub fn scanning(&self, p: Arc<ScanProgress>) {
        self.observer.scanning(p);
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

    /// A source entry that was listed and is gone when opened (rsync's
    /// wording): not a failure, but the run exits 24 if nothing else failed.
    pub fn vanished(&self, path: &str) {
        self.observer.vanished(path);
        self.vanished.lock().unwrap().push(path.to_string());
    }

    /// The source entries that vanished during the run.
    pub fn vanished_list(&self) -> Vec<String> {
        self.vanished.lock().unwrap().clone()
    }

    /// One line per action (rsync `-i` style).
    pub fn itemize(&self, line: &str) {
        self.observer.itemize(line);
    }

    /// A phase begins (push and pull go through the same ones).
    pub fn phase(&self, p: Phase) {
        if p == Phase::Transferring {
            // The rate is the limit's from here, not from the start.
            self.bucket.lock().unwrap().at = Instant::now();
        }
        self.observer.phase(p, self.started.elapsed());
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
    pub fn keep_errors(&self, errors: Vec<EntryError>) {
        self.kept_errors.lock().unwrap().extend(errors);
    }

    pub fn kept_errors(&self) -> Vec<EntryError> {
        std::mem::take(&mut self.kept_errors.lock().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500").unwrap(), 500 * 1024);
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert_eq!(parse_rate("1GiB/s").unwrap(), 1 << 30);
        assert_eq!(parse_rate("4096B").unwrap(), 4096);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10B").is_err());
    }
}

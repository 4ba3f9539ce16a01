//! `--json-progress`: the run's progress as JSON lines, for pipeline tools
//! (a dashboard, a workflow engine) that cannot read a progress bar.
//!
//! [`JsonProgress`] is an [`Observer`] of the counters alone: a line when a
//! phase begins, a line per [`JsonProgress::tick`] while something moved (at
//! most one per [`MIN_INTERVAL`]), and a last line from
//! [`JsonProgress::finish`] with the final counters. Each line is one
//! [`ProgressLine`] object. Another observer shows everything else
//! ([`Tee`] sends the events to both).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::{Observer, Phase, PoolEvent, ScanProgress};

/// The [`ProgressLine`] shape: raised when a field changes meaning or goes
/// away (new fields may be added without raising it).
pub const PROGRESS_SCHEMA_VERSION: u32 = 1;
/// The shortest time between two `progress` lines.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// The current rate is over this much of the recent transfer.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// One line of `--json-progress` (README "JSON progress").
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProgressLine {
    /// [`PROGRESS_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// `phase` (a phase began), `progress` (periodic) or `end` (the last line).
    pub event: &'static str,
    /// The phase now ([`Phase::name`]).
    pub phase: &'static str,
    /// Seconds since the command started.
    pub elapsed_seconds: f64,
    /// Bytes sent, plus those an interrupted run had landed and this one
    /// kept (`bytes_resumed`): reaches `bytes_total` when all is done.
    pub bytes_done: u64,
    /// Bytes the plan will move (an estimate for delta updates).
    pub bytes_total: u64,
    /// Of `bytes_done`, those kept from an interrupted run.
    pub bytes_resumed: u64,
    /// Files and links landed.
    pub files_done: u64,
    /// Files and links the plan will land.
    pub files_total: u64,
    /// Bytes per second over the last few seconds of the transfer (0 before it).
    pub bytes_per_second: u64,
    /// Local entries scanned so far.
    pub scanned_entries: u64,
    /// Local bytes hashed so far.
    pub hashed_bytes: u64,
}

struct Moving {
    phase: Phase,
    /// (when, bytes_done) of recent ticks while transferring.
    samples: VecDeque<(Instant, u64)>,
    last_line: Option<(Instant, [u64; 3])>,
}

/// Writes [`ProgressLine`]s to a writer (the binary's stderr).
pub struct JsonProgress {
    out: Mutex<Box<dyn Write + Send>>,
    started: Instant,
    bytes: AtomicU64,
    resumed: AtomicU64,
    bytes_total: AtomicU64,
    files: AtomicU64,
    files_total: AtomicU64,
    scan: Mutex<Option<Arc<ScanProgress>>>,
    moving: Mutex<Moving>,
}

impl JsonProgress {
    /// Lines go to `out`, each written whole and flushed.
    pub fn new(out: Box<dyn Write + Send>) -> JsonProgress {
        JsonProgress {
            out: Mutex::new(out),
            started: Instant::now(),
            bytes: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            bytes_total: AtomicU64::new(0),
            files: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            scan: Mutex::new(None),
            moving: Mutex::new(Moving {
                phase: Phase::Connecting,
                samples: VecDeque::new(),
                last_line: None,
            }),
        }
    }

    fn counters(&self) -> [u64; 3] {
        let done = self.bytes.load(Ordering::Relaxed) + self.resumed.load(Ordering::Relaxed);
        let scanned = self.scan.lock().unwrap().as_ref().map_or(0, |s| {
            s.entries.load(Ordering::Relaxed) + s.bytes_hashed.load(Ordering::Relaxed)
        });
        [done, self.files.load(Ordering::Relaxed), scanned]
    }

    fn line(&self, event: &'static str, m: &Moving) -> ProgressLine {
        let (scanned_entries, hashed_bytes) =
            self.scan.lock().unwrap().as_ref().map_or((0, 0), |s| {
                (
                    s.entries.load(Ordering::Relaxed),
                    s.bytes_hashed.load(Ordering::Relaxed),
                )
            });
        let rate = match (m.samples.front(), m.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()) as u64
            }
            _ => 0,
        };
        ProgressLine {
            schema_version: PROGRESS_SCHEMA_VERSION,
            event,
            phase: m.phase.name(),
            elapsed_seconds: self.started.elapsed().as_secs_f64(),
            bytes_done: self.bytes.load(Ordering::Relaxed) + self.resumed.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_resumed: self.resumed.load(Ordering::Relaxed),
            files_done: self.files.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            bytes_per_second: rate,
            scanned_entries,
            hashed_bytes,
        }
    }

    fn emit(&self, event: &'static str, m: &mut Moving) {
        let line = self.line(event, m);
        m.last_line = Some((Instant::now(), self.counters()));
        let mut text = serde_json::to_string(&line).expect("a ProgressLine serializes");
        text.push('\n');
        let mut out = self.out.lock().unwrap();
        // A closed pipe must not stop the run: the lines are a courtesy.
        let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    }

    /// Call on a timer (a few times a second): a `progress` line when the
    /// counters moved and [`MIN_INTERVAL`] passed since the last line.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut m = self.moving.lock().unwrap();
        if m.phase == Phase::Transferring {
            let done = self.counters()[0];
            m.samples.push_back((now, done));
            while m
                .samples
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW)
            {
                m.samples.pop_front();
            }
        }
        let due = match m.last_line {
            None => true,
            Some((t, c)) => now.duration_since(t) >= MIN_INTERVAL && c != self.counters(),
        };
        if due {
            self.emit("progress", &mut m);
        }
    }

    /// The last line: `end`, with the final counters.
    pub fn finish(&self) {
        let mut m = self.moving.lock().unwrap();
        self.emit("end", &mut m);
    }
}

impl Observer for JsonProgress {
    fn phase(&self, phase: Phase, _elapsed: Duration) {
        let mut m = self.moving.lock().unwrap();
        if phase == Phase::Transferring {
            m.samples.clear();
            m.samples.push_back((Instant::now(), self.counters()[0]));
        }
        m.phase = phase;
        self.emit("phase", &mut m);
    }
    fn scanning(&self, progress: Arc<ScanProgress>) {
        *self.scan.lock().unwrap() = Some(progress);
    }
    fn itemize(&self, _: &str) {}
    fn planned(&self, _: &str) {}
    fn note(&self, _: &str) {}
    fn notice(&self, _: &str) {}
    fn warn(&self, _: &str) {}
    fn connection(&self, _: &PoolEvent) {}
    /// Added up: one run per source, one command.
    fn total(&self, bytes: u64, files: u64) {
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
        self.files_total.fetch_add(files, Ordering::Relaxed);
    }
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    fn resumed(&self, n: u64) {
        self.resumed.fetch_add(n, Ordering::Relaxed);
    }
    fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
    }
    fn vanished(&self, _: &str) {}
}

/// Two observers as one: every event goes to both, the first first.
pub struct Tee(pub Arc<dyn Observer>, pub Arc<dyn Observer>);

impl Observer for Tee {
    fn phase(&self, phase: Phase, elapsed: Duration) {
        self.0.phase(phase, elapsed);
        self.1.phase(phase, elapsed);
    }
    fn scanning(&self, progress: Arc<ScanProgress>) {
        self.0.scanning(progress.clone());
        self.1.scanning(progress);
    }
    fn itemize(&self, line: &str) {
        self.0.itemize(line);
        self.1.itemize(line);
    }
    fn planned(&self, line: &str) {
        self.0.planned(line);
        self.1.planned(line);
    }
    fn note(&self, msg: &str) {
        self.0.note(msg);
        self.1.note(msg);
    }
    fn notice(&self, msg: &str) {
        self.0.notice(msg);
        self.1.notice(msg);
    }
    fn warn(&self, msg: &str) {
        self.0.warn(msg);
        self.1.warn(msg);
    }
    fn connection(&self, event: &PoolEvent) {
        self.0.connection(event);
        self.1.connection(event);
    }
    fn total(&self, bytes: u64, files: u64) {
        self.0.total(bytes, files);
        self.1.total(bytes, files);
    }
    fn bytes(&self, n: u64) {
        self.0.bytes(n);
        self.1.bytes(n);
    }
    fn resumed(&self, n: u64) {
        self.0.resumed(n);
        self.1.resumed(n);
    }
    fn file_done(&self) {
        self.0.file_done();
        self.1.file_done();
    }
    fn vanished(&self, path: &str) {
        self.0.vanished(path);
        self.1.vanished(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes the test keeps.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(s: &Shared) -> Vec<serde_json::Value> {
        String::from_utf8(s.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn phases_counters_and_an_end_line_equal_to_the_totals() {
        let buf = Shared::default();
        let p = JsonProgress::new(Box::new(buf.clone()));
        p.phase(Phase::Connecting, Duration::ZERO);
        p.total(300, 2);
        p.phase(Phase::Transferring, Duration::ZERO);
        p.bytes(100);
        // A phase line was just written: a progress line waits its turn.
        std::thread::sleep(MIN_INTERVAL);
        p.tick();
        p.bytes(100);
        p.resumed(100);
        p.file_done();
        p.file_done();
        p.phase(Phase::Recording, Duration::ZERO);
        p.finish();
        let l = lines(&buf);
        let events: Vec<_> = l
            .iter()
            .map(|v| format!("{}:{}", v["event"], v["phase"]))
            .collect();
        assert_eq!(
            events,
            [
                r#""phase":"connecting""#,
                r#""phase":"transferring""#,
                r#""progress":"transferring""#,
                r#""phase":"recording""#,
                r#""end":"recording""#
            ]
        );
        let end = l.last().unwrap();
        assert_eq!(end["schema_version"], PROGRESS_SCHEMA_VERSION);
        assert_eq!(end["bytes_done"], 300);
        assert_eq!(end["bytes_total"], 300);
        assert_eq!(end["bytes_resumed"], 100);
        assert_eq!(end["files_done"], 2);
        assert_eq!(end["files_total"], 2);
        assert_eq!(l[2]["bytes_done"], 100);
    }
}

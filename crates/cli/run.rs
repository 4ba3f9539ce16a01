//! What the user sees of a run: the progress bar, itemised actions, notes,
//! warnings and errors, as the engine's [`Observer`].

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use robosync_sync::Observer;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub verbose: u8,
    pub quiet: bool,
    pub progress: bool,
}

pub struct Run {
    pub opts: RunOptions,
    pub started: Instant,
    bar: Option<ProgressBar>,
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
            started: Instant::now(),
            bar,
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => println!("{line}"),
        }
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

impl Observer for Run {
    /// `-vv`: when each phase of the run ended, to see where the time goes.
    fn phase(&self, what: &str, elapsed: Duration) {
        if self.opts.verbose > 1 {
            self.eprintln(&format!("[{:7.3} s] {what}", elapsed.as_secs_f64()));
        }
    }

    /// One line per action with `-v` (rsync `-i` style), on stdout.
    fn itemize(&self, line: &str) {
        if self.opts.verbose > 0 {
            self.println(line);
        }
    }

    /// A dry run's actions, on stdout whatever the verbosity.
    fn planned(&self, line: &str) {
        self.println(line);
    }

    /// A message for `-v` users, on stderr.
    fn note(&self, msg: &str) {
        if self.opts.verbose > 0 {
            self.eprintln(msg);
        }
    }

    fn notice(&self, msg: &str) {
        if !self.opts.quiet {
            self.eprintln(&format!("robosync: {msg}"));
        }
    }

    fn warn(&self, msg: &str) {
        if !self.opts.quiet {
            self.eprintln(&format!("robosync: warning: {msg}"));
        }
    }

    fn total_bytes(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.set_length(bytes);
        }
    }

    fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
}

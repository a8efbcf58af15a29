//! Progress of long runs: a one-line bar on the terminal, nothing otherwise.
//!
//! A bar is drawn on standard error when it is a terminal, at most five times a second, and
//! erased when the run ends, so logs, CI output and `cargo test`'s captured output stay clean.
//! `ROBUST_PROGRESS=always` draws it even when standard error is not a terminal (one line per
//! update then), `ROBUST_PROGRESS=never` never draws it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Environment variable that overrides when progress is shown: `auto` (default), `always`,
/// `never`.
pub const PROGRESS_VAR: &str = crate::env::PROGRESS.name;

const REDRAW: Duration = Duration::from_millis(200);
const WIDTH: usize = 24;

/// A progress bar over `total` samples. Drawing never fails a run: write errors are ignored.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: usize,
    done: usize,
    started: Instant,
    last_draw: Option<Instant>,
    mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Off,
    Terminal,
    Lines,
}

impl Progress {
    /// A bar labelled `label` (the test's name) over `total` samples.
    pub fn new(label: &str, total: usize) -> Self {
        let mode = match crate::env::get(crate::env::PROGRESS) {
            Some("never") | Some("0") => Mode::Off,
            Some("always") | Some("1") => {
                if std::io::stderr().is_terminal() {
                    Mode::Terminal
                } else {
                    Mode::Lines
                }
            }
            _ if std::io::stderr().is_terminal() => Mode::Terminal,
            _ => Mode::Off,
        };
        Progress {
            label: label.to_string(),
            total,
            done: 0,
            started: Instant::now(),
            last_draw: None,
            mode,
        }
    }

    /// Whether anything is drawn.
    pub fn is_visible(&self) -> bool {
        self.mode != Mode::Off
    }

    /// `samples` more are done.
    pub fn advance(&mut self, samples: usize) {
        self.done = (self.done + samples).min(self.total);
        if self.mode == Mode::Off {
            return;
        }
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|last| now - last < REDRAW && self.done < self.total)
        {
            return;
        }
        self.last_draw = Some(now);
        let line = self.line(now - self.started);
        let mut err = std::io::stderr().lock();
        let _ = match self.mode {
            Mode::Terminal => write!(err, "\r\x1b[2K{line}"),
            _ => writeln!(err, "{line}"),
        };
        let _ = err.flush();
    }

    /// The run is over: erase the bar.
    pub fn finish(&mut self) {
        if self.mode == Mode::Terminal && self.last_draw.is_some() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.last_draw = None;
    }

    /// `label [#########-----------] 400/1000 samples, 12 s, ~18 s left`.
    fn line(&self, elapsed: Duration) -> String {
        let share = if self.total == 0 {
            1.0
        } else {
            self.done as f64 / self.total as f64
        };
        let filled = ((share * WIDTH as f64).round() as usize).min(WIDTH);
        let left = if self.done > 0 && self.done < self.total {
            let rest = elapsed.as_secs_f64() * (self.total - self.done) as f64 / self.done as f64;
            format!(", ~{rest:.0} s left")
        } else {
            String::new()
        };
        format!(
            "{} [{}{}] {}/{} samples, {:.0} s{left}",
            self.label,
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            self.done,
            self.total,
            elapsed.as_secs_f64()
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A run that returns early with an error must not leave a half-drawn bar behind.
        self.finish();
    }
}

#[cfg(test)]
mod should {
    use super::*;

    #[test]
    fn draw_a_bar_with_the_share_done_and_the_time_left() {
        let mut p = Progress {
            label: "mnist_cnn::pgd".into(),
            total: 1000,
            done: 0,
            started: Instant::now(),
            last_draw: None,
            mode: Mode::Off,
        };
        p.advance(250);
        assert_eq!(
            p.line(Duration::from_secs(10)),
            "mnist_cnn::pgd [######------------------] 250/1000 samples, 10 s, ~30 s left"
        );
        p.advance(10_000);
        assert_eq!(
            p.line(Duration::from_secs(40)),
            "mnist_cnn::pgd [########################] 1000/1000 samples, 40 s"
        );
    }
}

//! The logger: every event at `log.level` to `log.file` (the seed's
//! `app.log`), and what `log.stderr` asks for to stderr (by default the
//! startup line, warnings and errors), behind slog-async so a request
//! never waits on a write.
//!
//! A record goes through three stages:
//! - `queue`, on the thread that logs: records no output wants stop
//!   here, before anything is copied; the rest go to the async queue
//!   (when it is full they are dropped and counted, never waited for);
//! - [`line`], on the logging thread: the record is formatted once, into
//!   one plain-text line, and the same bytes go to each output that
//!   wants it;
//! - [`file`]: a buffered, size-rotated (`rotate`) file that survives
//!   write errors.
//!
//! A lost record (queue full, a failed write) is counted in
//! [`Logs::dropped`]; logging goes on. [`Logs`] must be kept alive until
//! exit; [`Logs::flush`] writes out everything queued. [`ContentLog`]
//! writes the content lines (user messages, AI responses), capped.

mod content;
mod file;
mod line;
mod queue;
mod rotate;
mod time;

pub use content::ContentLog;

use std::io::{self, IsTerminal};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slog::{o, Level as SlogLevel, Logger};
use slog_async::{AsyncCore, AsyncGuard};

use crate::config::{Config, Level};
use file::{FileSink, Opener};
use line::{LineDrain, Stderr, StderrOut};
use queue::Queue;

/// Records queued for the writer thread before new ones are dropped.
const CHANNEL_SIZE: usize = 65_536;

/// How often buffered log lines are written to the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The tag of records meant for the operator whatever `log.stderr`'s level
/// (unless it is `"off"`): the startup and stop lines. Log them with
/// `info!(log, #logging::ANNOUNCE, "listening"; …)`; `app.log` still takes
/// them only at `log.level`.
pub const ANNOUNCE: &str = "announce";

/// The root logger and the guard that flushes it.
pub struct Logs {
    /// The root logger.
    pub logger: Logger,
    guard: Option<AsyncGuard>,
    file: Option<FileSink>,
    drops: Arc<AtomicU64>,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("flushing", &self.guard.is_some())
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl Logs {
    /// A logger that discards everything (for embedding and tests).
    pub fn discard() -> Logs {
        Logs {
            logger: Logger::root(slog::Discard, o!()),
            guard: None,
            file: None,
            drops: Arc::default(),
        }
    }

    /// Records lost so far, one per output that did not get one: dropped
    /// because the queue was full, or because a write failed.
    pub fn dropped(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }

    /// The dropped-record count itself, for whoever reports it later
    /// (`/metrics`).
    pub fn dropped_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.drops)
    }

    /// Writes out every queued record and stops the logging thread (what
    /// dropping does too; this names the intent at the call site).
    pub fn flush(self) {
        drop(self);
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        // Order matters: the async thread drains its queue into the file
        // when its guard drops; then the file buffer goes to disk.
        drop(self.guard.take());
        if let Some(file) = self.file.take() {
            file.sync();
        }
    }
}

fn level(l: Level) -> SlogLevel {
    match l {
        Level::Error => SlogLevel::Error,
        Level::Warning => SlogLevel::Warning,
        Level::Info => SlogLevel::Info,
        Level::Debug => SlogLevel::Debug,
    }
}

/// Opens `log.file` (appending, creating its directory), deletes rotated
/// files past `log.keep` or older than `session.retention`, and builds
/// the logger.
///
/// # Errors
/// When the log file cannot be opened.
pub fn build(config: &Config) -> io::Result<Logs> {
    let stderr = config.log.stderr.level().map(|min| Stderr {
        min: level(min),
        out: Mutex::new(Box::new(io::stderr()) as StderrOut),
        colour: io::stderr().is_terminal(),
    });
    assemble(
        config,
        Box::new(file::open_append),
        file::RETRY_EVERY,
        stderr,
    )
}

/// [`build`] with the seams tests need: how the file is opened, how soon
/// a failed file is retried, and where stderr lines go.
fn assemble(
    config: &Config,
    open: Opener,
    retry_every: Duration,
    stderr: Option<Stderr>,
) -> io::Result<Logs> {
    let log = &config.log;
    if let Some(dir) = log.file.parent().filter(|d| !d.as_os_str().is_empty()) {
        file::create_private_dir(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create log directory {}: {e}", dir.display()),
            )
        })?;
    }
    let drops = Arc::new(AtomicU64::new(0));
    let policy = rotate::Policy {
        max_size: log.max_size.bytes(),
        keep: log.keep,
        retention: config.session.retention,
    };
    let file = FileSink::open(&log.file, open, policy, retry_every, Arc::clone(&drops))?;
    let file_min = level(log.level);
    let min = match &stderr {
        Some(s) if !s.min.is_at_least(file_min) => s.min,
        _ => file_min,
    };
    let announce = stderr.is_some();
    let lines = LineDrain {
        file: file.clone(),
        file_min,
        stderr,
        drops: Arc::clone(&drops),
    };
    let (core, guard) = AsyncCore::custom(lines)
        .chan_size(CHANNEL_SIZE)
        .thread_name("chatgate-log".into())
        .build_with_guard();
    let queue = Queue {
        core,
        min,
        announce,
        drops: Arc::clone(&drops),
        unreported: AtomicU64::new(0),
    };
    Ok(Logs {
        logger: Logger::root(queue, o!()),
        guard: Some(guard),
        file: Some(file),
        drops,
    })
}

#[cfg(test)]
mod tests;

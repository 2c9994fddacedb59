//! The logger: plain text to `log.file` (the seed's `app.log`) and, when
//! `log.stderr` is on, slog-term to stderr; both behind slog-async so a
//! request never waits on a write.
//!
//! If the async channel overflows, records are dropped and slog-async
//! reports how many (a counted, not silent, overflow). [`Logs`] must be
//! kept alive until exit; [`Logs::flush`] writes out everything queued.
//!
//! The file side is [`file`]: a lean drain writing slog-term's plain format
//! into a buffered file that is flushed every [`FLUSH_EVERY`], when its
//! buffer fills, and at shutdown.

mod file;

pub use file::{BufferedFile, FileDrain};

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::Duration;

use slog::{o, Drain, Level as SlogLevel, Logger};
use slog_async::{Async, AsyncGuard, OverflowStrategy};

use crate::config::{Level, LogConfig};

/// Records queued for the writer thread before new ones are dropped.
const CHANNEL_SIZE: usize = 65_536;

/// How often buffered log lines are written to the file.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// The root logger and the guard that flushes it.
pub struct Logs {
    /// The root logger.
    pub logger: Logger,
    guard: Option<AsyncGuard>,
    file: Option<BufferedFile>,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs")
            .field("flushing", &self.guard.is_some())
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
        }
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
            let _ = file.sync();
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

/// Opens `log.file` (appending) and builds the logger.
///
/// # Errors
/// When the log file cannot be opened.
pub fn build(config: &LogConfig) -> io::Result<Logs> {
    let file = BufferedFile::new(open(&config.file)?);
    let file_drain = FileDrain::new(file.clone()).fuse();
    let min = level(config.level);
    let (drain, guard) = if config.stderr {
        let term = slog_term::FullFormat::new(slog_term::TermDecorator::new().stderr().build())
            .use_custom_timestamp(file::rfc3339)
            .build()
            .fuse();
        Async::new(slog::Duplicate::new(file_drain, term).fuse())
            .chan_size(CHANNEL_SIZE)
            .overflow_strategy(OverflowStrategy::DropAndReport)
            .thread_name("chatgate-log".into())
            .build_with_guard()
    } else {
        Async::new(file_drain)
            .chan_size(CHANNEL_SIZE)
            .overflow_strategy(OverflowStrategy::DropAndReport)
            .thread_name("chatgate-log".into())
            .build_with_guard()
    };
    let logger = Logger::root(drain.filter_level(min).fuse(), o!());
    Ok(Logs {
        logger,
        guard: Some(guard),
        file: Some(file),
    })
}

fn open(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", path.display()),
            )
        })
}

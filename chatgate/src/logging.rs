//! The logger: plain text to `log.file` (the seed's `app.log`) and, when
//! `log.stderr` is on, slog-term to stderr; both behind slog-async so a
//! request never waits on a write.
//!
//! If the async channel overflows, records are dropped and slog-async
//! reports how many (a counted, not silent, overflow). [`Logs`] must be
//! kept alive until exit; dropping it flushes everything queued.

use std::fs::OpenOptions;
use std::io::{self, BufWriter};
use std::path::Path;

use slog::{o, Drain, Level as SlogLevel, Logger};
use slog_async::{Async, AsyncGuard, OverflowStrategy};

use crate::config::{Level, LogConfig};

/// Records queued for the writer thread before new ones are dropped.
const CHANNEL_SIZE: usize = 65_536;

/// The root logger and the guard that flushes it.
pub struct Logs {
    /// The root logger.
    pub logger: Logger,
    guard: Option<AsyncGuard>,
}

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logs").field("flushing", &self.guard.is_some()).finish()
    }
}

impl Logs {
    /// A logger that discards everything (for embedding and tests).
    pub fn discard() -> Logs {
        Logs {
            logger: Logger::root(slog::Discard, o!()),
            guard: None,
        }
    }

    /// Flushes queued records and stops the writer thread.
    pub fn flush(mut self) {
        drop(self.guard.take());
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
    let file = open(&config.file)?;
    let file_drain = slog_term::FullFormat::new(slog_term::PlainDecorator::new(BufWriter::new(file)))
        .use_utc_timestamp()
        .build()
        .fuse();
    let min = level(config.level);
    let (drain, guard) = if config.stderr {
        let term = slog_term::FullFormat::new(slog_term::TermDecorator::new().stderr().build())
            .use_utc_timestamp()
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
    })
}

fn open(path: &Path) -> io::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open log file {}: {e}", path.display())))
}

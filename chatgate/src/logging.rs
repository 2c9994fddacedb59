//! The logger: plain text to `log.file` (the seed's `app.log`) and, when
//! `log.stderr` is on, slog-term to stderr; both behind slog-async so a
//! request never waits on a write.
//!
//! If the async channel overflows, records are dropped and slog-async
//! reports how many (a counted, not silent, overflow). [`Logs`] must be
//! kept alive until exit; [`Logs::flush`] writes out everything queued.
//!
//! slog-term flushes its writer after every record, which would cost one
//! `write(2)` per line on the hot path's logging thread. The file writer
//! here ([`BufferedFile`]) turns those per-record flushes into no-ops and
//! is flushed for real every [`FLUSH_EVERY`] by a small thread, when its
//! buffer fills, and at shutdown: at most that long of log is ever only in
//! memory.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
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

/// A log file shared by the logging thread and the flusher: writes go to
/// a 64 KiB buffer; `flush` is deferred to the flusher (see the module doc).
#[derive(Clone, Debug)]
pub struct BufferedFile {
    inner: Arc<Mutex<BufWriter<File>>>,
}

impl BufferedFile {
    fn new(file: File) -> Self {
        let inner = Arc::new(Mutex::new(BufWriter::with_capacity(64 * 1024, file)));
        let weak: Weak<Mutex<BufWriter<File>>> = Arc::downgrade(&inner);
        // The flusher ends by itself once the last handle is gone.
        let _ = std::thread::Builder::new()
            .name("chatgate-log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(file) = weak.upgrade() else { return };
                let _ = file.lock().unwrap_or_else(|p| p.into_inner()).flush();
            });
        BufferedFile { inner }
    }

    /// Writes everything buffered to the file now.
    pub fn sync(&self) -> io::Result<()> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

impl Write for BufferedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // deferred: see the module doc
    }
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
    let file_drain = slog_term::FullFormat::new(slog_term::PlainDecorator::new(file.clone()))
        .use_custom_timestamp(rfc3339)
        .build()
        .fuse();
    let min = level(config.level);
    let (drain, guard) = if config.stderr {
        let term = slog_term::FullFormat::new(slog_term::TermDecorator::new().stderr().build())
            .use_custom_timestamp(rfc3339)
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

/// Log timestamps: RFC 3339, UTC, microseconds
/// (`2026-11-24T05:04:55.067123Z`). The date-and-time part changes once a
/// second, so it is formatted once a second and reused (per thread).
fn rfc3339(w: &mut dyn io::Write) -> io::Result<()> {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(i64, String)> = const { RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    let secs = now.timestamp();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            c.1 = now.format("%Y-%m-%dT%H:%M:%S").to_string();
            c.0 = secs;
        }
        write!(w, "{}.{:06}Z", c.1, now.timestamp_subsec_micros())
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

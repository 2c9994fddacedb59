//! The file side of the logger: [`FileDrain`] formats each record as one
//! line, in slog-term's plain format (`<time> <LEVEL> <msg>, key: value,
//! …`), into a [`BufferedFile`].
//!
//! Why not slog-term's `FullFormat` here: it flushes its writer after every
//! record (one `write(2)` per line), and its decorator machinery cost the
//! logging thread measurably under load. This drain formats into a reused
//! per-thread buffer and appends the whole line with one lock; the file is
//! written out every [`FLUSH_EVERY`](super::FLUSH_EVERY) by a small thread,
//! when the 64 KiB buffer fills, and at shutdown.

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::sync::{Arc, Mutex, Weak};

use slog::{Drain, OwnedKVList, Record, KV};

use super::FLUSH_EVERY;

/// A log file shared by the logging thread and the flusher: writes go to
/// a 64 KiB buffer; `flush` is deferred to the flusher (see the module doc).
#[derive(Clone, Debug)]
pub struct BufferedFile {
    inner: Arc<Mutex<BufWriter<File>>>,
}

impl BufferedFile {
    pub(super) fn new(file: File) -> Self {
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

impl BufferedFile {
    /// Appends `bytes` (one or more whole lines).
    fn append(&self, bytes: &[u8]) -> io::Result<()> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(bytes)
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

/// Writes each record as one line into a [`BufferedFile`].
#[derive(Debug, Clone)]
pub struct FileDrain {
    out: BufferedFile,
}

impl FileDrain {
    /// A drain writing to `out`.
    pub fn new(out: BufferedFile) -> Self {
        FileDrain { out }
    }
}

impl Drain for FileDrain {
    type Ok = ();
    type Err = io::Error;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> io::Result<()> {
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        LINE.with(|line| {
            let mut line = line.borrow_mut();
            line.clear();
            rfc3339(&mut *line)?;
            write!(line, " {} {}", record.level().as_short_str(), record.msg())?;
            let mut ser = LineSerializer(&mut line);
            record
                .kv()
                .serialize(record, &mut ser)
                .and_then(|()| values.serialize(record, &mut ser))
                .map_err(io::Error::other)?;
            line.push(b'\n');
            self.out.append(&line)?;
            // A line can be long (a long message); don't keep a huge buffer.
            if line.capacity() > 64 * 1024 {
                *line = Vec::new();
            }
            Ok(())
        })
    }
}

/// Appends `, key: value` for each field.
struct LineSerializer<'a>(&'a mut Vec<u8>);

impl slog::Serializer for LineSerializer<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        write!(self.0, ", {key}: {val}")?;
        Ok(())
    }

    fn emit_str(&mut self, key: slog::Key, val: &str) -> slog::Result {
        write!(self.0, ", {key}: ")?;
        self.0.extend_from_slice(val.as_bytes());
        Ok(())
    }
}

/// Log timestamps: RFC 3339, UTC, microseconds
/// (`2026-11-24T05:04:55.067123Z`). The date-and-time part changes once a
/// second, so it is formatted once a second and reused (per thread).
pub(super) fn rfc3339(w: &mut dyn io::Write) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use slog::{info, o, Logger};

    #[test]
    fn one_line_per_record_in_plain_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let file = BufferedFile::new(File::create(&path).unwrap());
        let log = Logger::root(
            FileDrain::new(file.clone()).fuse(),
            o!("component" => "test"),
        );
        info!(log, "request"; "status" => 200, "path" => "/chat/");
        info!(log, "user message"; "content" => ?"two\nlines");
        file.sync().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(" INFO request, path: /chat/, status: 200, component: test"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].as_bytes()[..27].ends_with(b"Z"),
            "RFC 3339 UTC time first: {}",
            lines[0]
        );
        assert!(
            lines[1].contains(r#"content: "two\nlines""#),
            "{}",
            lines[1]
        );
    }
}

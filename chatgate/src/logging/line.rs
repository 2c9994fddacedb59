//! One record, one line, formatted once: [`LineDrain`] runs on the logging
//! thread, decides which outputs a record is for (`app.log` at `log.level`,
//! stderr at `log.stderr`), formats it only if one wants it, and hands the
//! same bytes to each.
//!
//! The format is slog-term's plain one: `<time> <LEVEL> <msg>, key: value,
//! …`, the record's own fields first, then the logger's. Why not slog-term
//! itself: it formats per output (twice for a record on both), flushes its
//! writer after every record, and its decorator machinery cost the logging
//! thread measurably under load. This formats into a reused per-thread
//! buffer instead. On a terminal, stderr shows the same line with the level
//! coloured. Line breaks inside a message or a field are escaped, so an
//! event is always exactly one line.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use slog::{Drain, Level, OwnedKVList, Record, KV};

use super::file::FileSink;
use super::time::rfc3339;
use super::ANNOUNCE;

/// Where stderr lines go: the process's stderr, or a test's writer.
pub(super) type StderrOut = Box<dyn Write + Send>;

/// The stderr side: a threshold and a writer.
pub(super) struct Stderr {
    pub(super) min: Level,
    pub(super) out: Mutex<StderrOut>,
    /// Colour the level (stderr is a terminal).
    pub(super) colour: bool,
}

/// The drain behind the async queue: see the module doc.
pub(super) struct LineDrain {
    pub(super) file: FileSink,
    pub(super) file_min: Level,
    pub(super) stderr: Option<Stderr>,
    pub(super) drops: Arc<AtomicU64>,
}

impl Drain for LineDrain {
    type Ok = ();
    type Err = slog::Never;

    /// Never fails and never panics: a write error is counted in `drops`
    /// (one per output that lost the record), and the logging thread goes
    /// on with the next record.
    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let to_file = record.level().is_at_least(self.file_min);
        let stderr = self
            .stderr
            .as_ref()
            .filter(|s| record.level().is_at_least(s.min) || record.tag() == ANNOUNCE);
        if !to_file && stderr.is_none() {
            return Ok(());
        }
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                // Only reachable if writing logged through this very
                // drain on this thread; losing that record beats a panic.
                self.drops.fetch_add(1, Ordering::Relaxed);
                return;
            };
            line.clear();
            let level = format(record, values, &mut line);
            if to_file {
                self.file.write_line(&line);
            }
            if let Some(stderr) = stderr {
                if stderr.write_line(&line, level).is_err() {
                    self.drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            // A line can be long (a long message): don't keep a huge buffer.
            if line.capacity() > 64 * 1024 {
                *line = Vec::new();
            }
        });
        Ok(())
    }
}

impl Stderr {
    pub(super) fn write_line(&self, line: &[u8], level: Range<usize>) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        if !self.colour {
            return out.write_all(line);
        }
        let colour = match &line[level.clone()] {
            b"CRIT" => "\x1b[35m",
            b"ERRO" => "\x1b[31m",
            b"WARN" => "\x1b[33m",
            b"INFO" => "\x1b[32m",
            b"DEBG" => "\x1b[36m",
            _ => "\x1b[34m",
        };
        // Copied into one buffer so the line is one write: lines from
        // other processes sharing the terminal cannot split it.
        let mut coloured = Vec::with_capacity(line.len() + 9);
        coloured.extend_from_slice(&line[..level.start]);
        coloured.extend_from_slice(colour.as_bytes());
        coloured.extend_from_slice(&line[level.clone()]);
        coloured.extend_from_slice(b"\x1b[0m");
        coloured.extend_from_slice(&line[level.end..]);
        out.write_all(&coloured)
    }
}

/// Appends the record's line (with its `\n`) to `line` and returns where
/// the level word sits in it.
pub(super) fn format(
    record: &Record<'_>,
    values: &OwnedKVList,
    line: &mut Vec<u8>,
) -> Range<usize> {
    // Writing into a Vec cannot fail; a field whose own formatting fails
    // leaves what it wrote, and the line still ends.
    let _ = rfc3339(line);
    line.push(b' ');
    let start = line.len();
    line.extend_from_slice(record.level().as_short_str().as_bytes());
    let level = start..line.len();
    line.push(b' ');
    let msg = line.len();
    let _ = write!(line, "{}", record.msg());
    escape_breaks(line, msg);
    let mut ser = LineSerializer(line);
    let _ = record
        .kv()
        .serialize(record, &mut ser)
        .and_then(|()| values.serialize(record, &mut ser));
    line.push(b'\n');
    level
}

/// Appends `, key: value` for each field.
struct LineSerializer<'a>(&'a mut Vec<u8>);

impl slog::Serializer for LineSerializer<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        write!(self.0, ", {key}: ")?;
        let start = self.0.len();
        write!(self.0, "{val}")?;
        escape_breaks(self.0, start);
        Ok(())
    }

    fn emit_str(&mut self, key: slog::Key, val: &str) -> slog::Result {
        write!(self.0, ", {key}: ")?;
        let start = self.0.len();
        self.0.extend_from_slice(val.as_bytes());
        escape_breaks(self.0, start);
        Ok(())
    }
}

/// Writes the line breaks in `line[start..]` as `\n` and `\r`, so a value
/// that holds some (a multi-line SQL statement, an upstream error body)
/// cannot split its event over several lines or forge one. Content is
/// already escaped (it is logged in Debug form); this covers the rest.
fn escape_breaks(line: &mut Vec<u8>, start: usize) {
    if !line[start..].iter().any(|b| matches!(b, b'\n' | b'\r')) {
        return;
    }
    let tail = line.split_off(start);
    for b in tail {
        match b {
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            _ => line.push(b),
        }
    }
}

//! The logger's outputs end to end, with injected writers: which records
//! reach which output, in what form; rotation; and survival of failing
//! writes (counted, never a panic, resumed once writing works again).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slog::{error, info, o, warn, Logger};

use super::file::{self as file_mod, FileSink, Opener};
use super::line::{LineDrain, Stderr, StderrOut};
use super::rotate::{numbered, Policy};
use super::*;
use crate::config::StderrLevel;

/// A writer whose bytes a test can read, and make fail on demand.
#[derive(Clone, Default)]
struct Shared {
    bytes: Arc<Mutex<Vec<u8>>>,
    broken: Arc<AtomicBool>,
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
    }
}

/// The real file, through an opener that fails (to open and to write)
/// while `broken` is set: a disk that fills up and frees again.
fn flaky_opener(broken: Arc<AtomicBool>) -> Opener {
    struct Flaky {
        file: Box<dyn Write + Send>,
        broken: Arc<AtomicBool>,
    }
    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(io::Error::other("No space left on device"));
            }
            self.file.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.file.flush()
        }
    }
    Box::new(move |path: &Path| {
        if broken.load(Ordering::SeqCst) {
            return Err(io::Error::other("No space left on device"));
        }
        let file = file_mod::open_append(path)?;
        Ok(Box::new(Flaky {
            file,
            broken: Arc::clone(&broken),
        }) as Box<dyn Write + Send>)
    })
}

fn policy(max_size: u64, keep: usize) -> Policy {
    Policy {
        max_size,
        keep,
        retention: Duration::from_secs(86_400),
    }
}

/// A synchronous logger (no async queue) over a file sink and a captured
/// stderr, so a test decides exactly when lines are written.
struct Direct {
    log: Logger,
    file: FileSink,
    stderr: Shared,
    drops: Arc<AtomicU64>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn direct(open: Opener, policy: Policy, stderr_min: Option<SlogLevel>) -> Direct {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let drops = Arc::new(AtomicU64::new(0));
    let file = FileSink::open(
        &path,
        open,
        policy,
        Duration::from_millis(50),
        Arc::clone(&drops),
    )
    .unwrap();
    let stderr = Shared::default();
    let lines = LineDrain {
        file: file.clone(),
        file_min: SlogLevel::Info,
        stderr: stderr_min.map(|min| Stderr {
            min,
            out: Mutex::new(Box::new(stderr.clone()) as StderrOut),
            colour: false,
        }),
        drops: Arc::clone(&drops),
    };
    Direct {
        log: Logger::root(lines, o!("component" => "test")),
        file,
        stderr,
        drops,
        path,
        _dir: dir,
    }
}

impl Direct {
    fn file_text(&self) -> String {
        self.file.sync();
        fs::read_to_string(&self.path).unwrap()
    }
}

#[test]
fn one_line_per_record_in_plain_format() {
    let d = direct(Box::new(file_mod::open_append), policy(1 << 20, 5), None);
    info!(d.log, "request"; "status" => 200, "path" => "/chat/");
    info!(d.log, "user message"; "content" => ?"two\nlines");
    let text = d.file_text();
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

#[test]
fn line_breaks_in_messages_and_fields_are_escaped() {
    let d = direct(Box::new(file_mod::open_append), policy(1 << 20, 5), None);
    let sql = "CREATE TABLE t (\n  id INTEGER\n);";
    info!(d.log, "sql"; "statement" => sql);
    info!(d.log, "two\r\nlines"; "error" => %format_args!("a\nb"));
    let text = d.file_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].ends_with(r"statement: CREATE TABLE t (\n  id INTEGER\n);, component: test"),
        "{text}"
    );
    assert!(
        lines[1].contains(r"INFO two\r\nlines, error: a\nb"),
        "{text}"
    );
}

#[test]
fn stderr_takes_its_level_and_announcements_the_file_takes_its_own() {
    let d = direct(
        Box::new(file_mod::open_append),
        policy(1 << 20, 5),
        Some(SlogLevel::Warning),
    );
    info!(d.log, "request"; "status" => 200);
    info!(d.log, #ANNOUNCE, "listening"; "addr" => "127.0.0.1:1");
    warn!(d.log, "retrying upstream"; "attempt" => 1);
    slog::debug!(d.log, "detail");
    let file = d.file_text();
    let stderr = d.stderr.text();
    assert_eq!(file.lines().count(), 3, "{file}");
    assert!(
        file.contains(" INFO request") && !file.contains("detail"),
        "{file}"
    );
    let err_lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(err_lines.len(), 2, "{stderr}");
    assert!(
        err_lines[0].contains(" INFO listening, addr: 127.0.0.1:1"),
        "{stderr}"
    );
    // The very bytes of the file's line: formatted once, for both.
    for l in &err_lines {
        assert!(file.lines().any(|f| f == *l), "{l} is not the file's line");
    }
}

#[test]
fn coloured_stderr_wraps_only_the_level() {
    let out = Shared::default();
    let s = Stderr {
        min: SlogLevel::Warning,
        out: Mutex::new(Box::new(out.clone()) as StderrOut),
        colour: true,
    };
    let line = b"2026-01-01T00:00:00.000000Z WARN slow, ms: 3\n";
    s.write_line(line, 28..32).unwrap();
    assert_eq!(
        out.text(),
        "2026-01-01T00:00:00.000000Z \x1b[33mWARN\x1b[0m slow, ms: 3\n"
    );
}

#[test]
fn a_failing_file_counts_drops_and_resumes_when_writing_works() {
    let broken = Arc::new(AtomicBool::new(false));
    let d = direct(flaky_opener(Arc::clone(&broken)), policy(1 << 20, 5), None);
    info!(d.log, "before"; "n" => 1);
    assert!(d.file_text().contains("before"));
    broken.store(true, Ordering::SeqCst);
    for n in 0..10 {
        info!(d.log, "lost"; "n" => n);
    }
    d.file.sync();
    assert_eq!(d.drops.load(Ordering::Relaxed), 10);
    // Still failing after the retry interval: the reopen fails, still counted.
    std::thread::sleep(Duration::from_millis(60));
    info!(d.log, "lost"; "n" => 10);
    assert_eq!(d.drops.load(Ordering::Relaxed), 11);
    broken.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(60));
    info!(d.log, "after"; "n" => 2);
    let text = d.file_text();
    assert!(!text.contains("lost"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].contains("WARN log file reopened, dropped: 11, error: No space left on device"),
        "{text}"
    );
    assert!(lines[2].contains("INFO after, n: 2"), "{text}");
    assert_eq!(d.drops.load(Ordering::Relaxed), 11);
}

#[test]
fn a_failing_stderr_is_counted_and_the_file_still_gets_every_line() {
    let d = direct(
        Box::new(file_mod::open_append),
        policy(1 << 20, 5),
        Some(SlogLevel::Warning),
    );
    d.stderr.broken.store(true, Ordering::SeqCst);
    error!(d.log, "one");
    error!(d.log, "two");
    assert_eq!(d.drops.load(Ordering::Relaxed), 2);
    d.stderr.broken.store(false, Ordering::SeqCst);
    error!(d.log, "three");
    assert_eq!(d.stderr.text().lines().count(), 1);
    assert_eq!(d.file_text().lines().count(), 3);
}

#[test]
fn the_file_rotates_before_it_would_pass_max_size() {
    let d = direct(Box::new(file_mod::open_append), policy(4096, 2), None);
    let pad = "x".repeat(100);
    for n in 0..200 {
        info!(d.log, "line"; "n" => n, "pad" => &pad);
    }
    d.file.sync();
    let files = [d.path.clone(), numbered(&d.path, 1), numbered(&d.path, 2)];
    let mut seen = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let text = fs::read_to_string(f).unwrap();
        assert!(
            text.len() <= 4096,
            "{} is {} bytes",
            f.display(),
            text.len()
        );
        // A rotated file was full: the next line would not have fitted.
        if i > 0 {
            assert!(
                text.len() > 4096 - 200,
                "{} rotated early: {} bytes",
                f.display(),
                text.len()
            );
        }
        seen.push(text);
    }
    assert!(!numbered(&d.path, 3).exists(), "keep = 2 is honoured");
    // Newest in app.log, oldest in .2; the last line written is last.
    assert!(seen[0].trim_end().ends_with("n: 199, component: test"));
    let first_n = |t: &str| -> u64 {
        let l = t.lines().next().unwrap();
        l.split("n: ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(first_n(&seen[2]) < first_n(&seen[1]) && first_n(&seen[1]) < first_n(&seen[0]));
    #[cfg(unix)]
    for f in &files[..2] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
}

#[cfg(unix)]
#[test]
fn a_deleted_file_is_created_again() {
    let d = direct(Box::new(file_mod::open_append), policy(1 << 20, 5), None);
    info!(d.log, "first");
    assert!(d.file_text().contains("first"));
    fs::remove_file(&d.path).unwrap();
    info!(d.log, "second");
    let text = d.file_text();
    assert!(text.contains("second") && !text.contains("first"), "{text}");
    assert_eq!(d.drops.load(Ordering::Relaxed), 0);
}

#[test]
fn the_whole_logger_flushes_on_drop_and_filters_before_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.log.file = dir.path().join("logs/app.log");
    config.log.level = Level::Warning;
    config.log.stderr = StderrLevel::Error;
    let stderr = Shared::default();
    let logs = assemble(
        &config,
        Box::new(file_mod::open_append),
        file_mod::RETRY_EVERY,
        Some(Stderr {
            min: SlogLevel::Error,
            out: Mutex::new(Box::new(stderr.clone()) as StderrOut),
            colour: false,
        }),
    )
    .unwrap();
    info!(logs.logger, "not wanted by either output");
    info!(logs.logger, #ANNOUNCE, "listening");
    warn!(logs.logger, "file only");
    error!(logs.logger, "both");
    assert_eq!(logs.dropped(), 0);
    logs.flush();
    let file = fs::read_to_string(&config.log.file).unwrap();
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(lines.len(), 2, "{file}");
    assert!(
        lines[0].ends_with("WARN file only") && lines[1].ends_with("ERRO both"),
        "{file}"
    );
    let err = stderr.text();
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(
        err.contains("INFO listening") && err.contains("ERRO both"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn app_log_is_owner_only_and_never_followed_through_a_link() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();

    // Missing directories are made 0700.
    let logs = dir.path().join("var/log/chatgate");
    file_mod::create_private_dir(&logs).unwrap();
    assert_eq!(mode(&logs), 0o700);
    assert_eq!(mode(&dir.path().join("var")), 0o700);

    // An existing app.log others could read is brought to 0600.
    let path = logs.join("app.log");
    fs::write(&path, "old line\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let mut out = file_mod::open_append(&path).unwrap();
    out.write_all(b"new line\n").unwrap();
    drop(out);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read_to_string(&path).unwrap(), "old line\nnew line\n");

    // A link to a file where app.log should be is refused; its target is
    // untouched.
    let target = dir.path().join("elsewhere");
    fs::write(&target, "precious\n").unwrap();
    let link = logs.join("linked.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(file_mod::open_append(&link).is_err());
    assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");

    // A link to a device (`/dev/stdout` in a container) is used as it is,
    // and the device keeps its mode.
    let null = logs.join("null.log");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    let before = mode(Path::new("/dev/null"));
    let mut out = file_mod::open_append(&null).unwrap();
    out.write_all(b"gone\n").unwrap();
    drop(out);
    assert_eq!(mode(Path::new("/dev/null")), before);
    let mut out = file_mod::open_append(Path::new("/dev/null")).unwrap();
    out.write_all(b"gone\n").unwrap();
    drop(out);
    assert_eq!(
        mode(Path::new("/dev/null")),
        before,
        "a device is not chmodded"
    );
}

//! The file side of the logger: [`FileSink`] appends whole lines to
//! `log.file` through a 64 KiB buffer, rotates the file before it would
//! pass `log.max_size`, and survives write errors.
//!
//! The buffer is written out every [`FLUSH_EVERY`](super::FLUSH_EVERY) by
//! a small thread, when it fills, before a rotation and at shutdown: one
//! `write(2)` per batch, not per line.
//!
//! A failed write (disk full, the directory gone) never panics and never
//! stops the logging thread: the lines it held are counted as dropped,
//! the file is closed, and the next record reopens it, at most once per
//! [`RETRY_EVERY`]; records in between are dropped (and counted). The
//! first line after recovery says how many were lost. A file deleted or
//! moved away by someone else is noticed at the next flush and a new one
//! is created, instead of writing on into a file nobody can see.
//!
//! Files are created owner-only (`0600`) on unix: the log holds
//! conversations.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::rotate::{self, Policy};
use super::FLUSH_EVERY;

/// After a failure, how long before the file is opened again.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How often rotated files are checked against `session.retention` when
/// no rotation happens (a quiet gateway).
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

const BUFFER: usize = 64 * 1024;

/// Opens the file for appending: [`open_append`], or a test's double.
pub(super) type Opener = Box<dyn FnMut(&Path) -> io::Result<Box<dyn Write + Send>> + Send>;

/// Where the logging thread and the flusher write `app.log`.
#[derive(Clone)]
pub(super) struct FileSink {
    state: Arc<Mutex<State>>,
}

struct State {
    path: PathBuf,
    open: Opener,
    out: Option<Box<dyn Write + Send>>,
    /// The identity of the file `out` writes, to notice it was replaced.
    id: Option<FileId>,
    buf: Vec<u8>,
    /// Records in `buf`: what a failed flush loses.
    pending: u64,
    /// Bytes in the current file, buffered ones included.
    size: u64,
    policy: Policy,
    retry_every: Duration,
    /// When writing last failed, while it is failing.
    failed_at: Option<Instant>,
    /// Why, and how many records were lost since.
    failure: Option<(String, u64)>,
    /// A failed rotation is not retried before this.
    rotate_after: Option<Instant>,
    last_sweep: Instant,
    drops: Arc<AtomicU64>,
}

impl FileSink {
    /// Opens `path` (creating its directory) and starts the flusher;
    /// deletes rotated files the policy no longer keeps.
    ///
    /// # Errors
    /// When the file cannot be opened at all: a gateway that cannot log
    /// at start is misconfigured.
    pub(super) fn open(
        path: &Path,
        mut open: Opener,
        policy: Policy,
        retry_every: Duration,
        drops: Arc<AtomicU64>,
    ) -> io::Result<FileSink> {
        let out = open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open log file {}: {e}", path.display()),
            )
        })?;
        rotate::sweep(path, &policy);
        let state = State {
            path: path.to_owned(),
            open,
            out: Some(out),
            id: file_id(path),
            buf: Vec::with_capacity(BUFFER),
            pending: 0,
            size: fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            policy,
            retry_every,
            failed_at: None,
            failure: None,
            rotate_after: None,
            last_sweep: Instant::now(),
            drops,
        };
        let state = Arc::new(Mutex::new(state));
        let weak = Arc::downgrade(&state);
        // The flusher ends by itself once the last handle is gone.
        std::thread::Builder::new()
            .name("chatgate-log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                let Some(state) = weak.upgrade() else { return };
                let mut state = lock(&state);
                state.flush();
                if state.last_sweep.elapsed() >= SWEEP_EVERY {
                    state.last_sweep = Instant::now();
                    rotate::sweep(&state.path, &state.policy);
                }
            })?;
        Ok(FileSink { state })
    }

    /// Appends one whole line (or counts it dropped).
    pub(super) fn write_line(&self, line: &[u8]) {
        lock(&self.state).write_line(line);
    }

    /// Writes everything buffered to the file now.
    pub(super) fn sync(&self) {
        lock(&self.state).flush();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Nothing in State is left half-updated by a panic that matters more
    // than losing the log; carry on.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn write_line(&mut self, line: &[u8]) {
        if self.out.is_none() && !self.reopen() {
            self.drop_records(1);
            return;
        }
        let len = line.len() as u64;
        if self.size > 0
            && self.size + len > self.policy.max_size
            && self.rotate_after.is_none_or(|t| Instant::now() >= t)
        {
            self.rotate();
            if self.out.is_none() {
                self.drop_records(1);
                return;
            }
        }
        self.buf.extend_from_slice(line);
        self.pending += 1;
        self.size += len;
        if self.buf.len() >= BUFFER {
            self.flush();
        }
    }

    /// Writes the buffer out; on failure counts its records as dropped
    /// and closes the file.
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.out.is_some() && self.replaced() {
            self.out = None;
            self.failed_at = None;
            if self.reopen() {
                // The buffered lines go to the new file.
                self.size += self.buf.len() as u64;
            }
        }
        let result = match self.out.as_mut() {
            Some(out) => out.write_all(&self.buf).and_then(|()| out.flush()),
            None => Err(io::Error::other("log file closed")),
        };
        let lost = std::mem::take(&mut self.pending);
        self.buf.clear();
        if let Err(e) = result {
            self.fail(&e);
            self.drop_records(lost);
        }
    }

    /// Whether the file at `path` is no longer the one being written
    /// (deleted, or moved away by an outside rotation).
    fn replaced(&self) -> bool {
        match (self.id, file_id(&self.path)) {
            (Some(open), Some(now)) => open != now,
            (Some(_), None) => !self.path.exists(),
            _ => false,
        }
    }

    fn fail(&mut self, e: &io::Error) {
        self.out = None;
        self.failed_at = Some(Instant::now());
        if self.failure.is_none() {
            self.failure = Some((e.to_string(), 0));
        }
    }

    fn drop_records(&mut self, n: u64) {
        self.drops.fetch_add(n, Ordering::Relaxed);
        if let Some((_, lost)) = &mut self.failure {
            *lost += n;
        }
    }

    /// Opens the file again unless the last failure is too recent; after
    /// a failure, starts the file with a line saying what was lost.
    fn reopen(&mut self) -> bool {
        if self
            .failed_at
            .is_some_and(|t| t.elapsed() < self.retry_every)
        {
            return false;
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = create_private_dir(dir);
        }
        match (self.open)(&self.path) {
            Ok(out) => {
                self.out = Some(out);
                self.id = file_id(&self.path);
                self.size = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
                self.failed_at = None;
                if let Some((error, lost)) = self.failure.take() {
                    let _ = super::time::rfc3339(&mut self.buf);
                    let _ = writeln!(
                        self.buf,
                        " WARN log file reopened, dropped: {lost}, error: {error}"
                    );
                    self.size += self.buf.len() as u64;
                }
                true
            }
            Err(e) => {
                self.fail(&e);
                false
            }
        }
    }

    /// Flushes, moves the file to `.1` (and the older ones up), deletes
    /// what the policy no longer keeps, and opens a new file. If the move
    /// fails, keeps appending to the old file and tries again after
    /// `retry_every`: a log that grows past its size beats lost lines.
    fn rotate(&mut self) {
        self.flush();
        self.out = None;
        match rotate::shift(&self.path, self.policy.keep) {
            Ok(()) => self.rotate_after = None,
            Err(_) => self.rotate_after = Some(Instant::now() + self.retry_every),
        }
        rotate::sweep(&self.path, &self.policy);
        self.last_sweep = Instant::now();
        self.reopen();
    }
}

/// Opens `path` for appending, owner-only (`0600`) on unix: the log holds
/// conversations, as the database does. An existing regular file that
/// others could read is brought to `0600` too (a log shipper runs as the
/// gateway's user, or reads stderr). A symbolic link at `path` that leads
/// to a regular file is refused rather than followed, so nobody who can
/// write the directory can point the log at another file; one that leads
/// to a device or a pipe (`/dev/stdout` in a container) is opened as it is.
pub(super) fn open_append(path: &Path) -> io::Result<Box<dyn Write + Send>> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let linked = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
        if linked {
            if fs::metadata(path).is_ok_and(|m| m.is_file()) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "it is a symbolic link to a regular file; name the file itself",
                ));
            }
            return Ok(Box::new(options.open(path)?));
        }
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
        let file = options.open(path)?;
        let meta = file.metadata()?;
        if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
            // Best effort: a file the gateway may write but not chmod (not
            // its own) is still a log.
            let _ = file.set_permissions(fs::Permissions::from_mode(0o600));
        }
        Ok(Box::new(file))
    }
    #[cfg(not(unix))]
    Ok(Box::new(options.open(path)?))
}

/// Creates `dir` and its missing parents, owner-only (`0700`) on unix. A
/// directory that exists keeps its mode: it may be shared on purpose.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Device and inode: what names a file on unix whatever its path.
type FileId = (u64, u64);

#[cfg(unix)]
fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<FileId> {
    None
}

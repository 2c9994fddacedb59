//! Rotation of `app.log` by size, and the deletion of rotated files past
//! `log.keep` or older than `session.retention`, so the log keeps no
//! conversation longer than the database does.
//!
//! `app.log` becomes `app.log.1`, `.1` becomes `.2`, and so on up to
//! `.<keep>`; what would become `.<keep + 1>` is overwritten (renames
//! replace their target). Which files to delete is a pure function of
//! their numbers and times ([`doomed`]) so it can be tested without
//! waiting months.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// What rotation keeps.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    /// Rotate before the file grows past this many bytes.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: usize,
    /// Rotated files last written longer ago than this are deleted.
    pub retention: Duration,
}

/// A rotated file: `app.log.<n>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rotated {
    pub n: u64,
    pub path: PathBuf,
    /// Last written; `None` where the platform cannot say (kept then).
    pub modified: Option<SystemTime>,
}

/// `path.<n>`.
pub(super) fn numbered(path: &Path, n: u64) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Moves `path` to `path.1`, shifting the older ones up and dropping the
/// one past `keep` (with `keep` 0, `path` itself is deleted). A missing
/// file in the chain is skipped, so an interrupted rotation finishes on
/// the next one.
///
/// # Errors
/// When `path` cannot be moved away (the caller then keeps appending to it).
pub(super) fn shift(path: &Path, keep: usize) -> io::Result<()> {
    if keep == 0 {
        return ignore_missing(fs::remove_file(path));
    }
    for n in (1..keep as u64).rev() {
        // A gap or a failure here loses at most that one old file.
        let _ = ignore_missing(fs::rename(numbered(path, n), numbered(path, n + 1)));
    }
    ignore_missing(fs::rename(path, numbered(path, 1)))
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The rotated files of `path` that exist now (`path.<digits>`), in any order.
pub(super) fn list(path: &Path) -> Vec<Rotated> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let file_name = e.file_name();
            let suffix = file_name.to_str()?.strip_prefix(&prefix)?;
            if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(Rotated {
                n: suffix.parse().ok()?,
                path: e.path(),
                modified: e.metadata().and_then(|m| m.modified()).ok(),
            })
        })
        .collect()
}

/// Which rotated files to delete: those numbered past `keep` (left over
/// from a larger `keep`) and those last written before `now - retention`.
pub(super) fn doomed(
    files: &[Rotated],
    keep: usize,
    now: SystemTime,
    retention: Duration,
) -> Vec<&Path> {
    let cutoff = now.checked_sub(retention);
    files
        .iter()
        .filter(|f| {
            let expired = match (f.modified, cutoff) {
                (Some(m), Some(cutoff)) => m < cutoff,
                _ => false,
            };
            f.n > keep as u64 || expired
        })
        .map(|f| f.path.as_path())
        .collect()
}

/// Deletes the rotated files of `path` that [`doomed`] picks, now.
pub(super) fn sweep(path: &Path, policy: &Policy) {
    let files = list(path);
    for doomed in doomed(&files, policy.keep, SystemTime::now(), policy.retention) {
        // One that cannot be deleted now is tried again at the next sweep.
        let _ = fs::remove_file(doomed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn rotated(n: u64, age: Option<Duration>, now: SystemTime) -> Rotated {
        Rotated {
            n,
            path: PathBuf::from(format!("app.log.{n}")),
            modified: age.map(|a| now - a),
        }
    }

    #[test]
    fn doomed_are_those_past_keep_or_older_than_retention() {
        let now = SystemTime::UNIX_EPOCH + 400 * DAY;
        let files = [
            rotated(1, Some(DAY), now),
            rotated(2, Some(182 * DAY), now),
            rotated(3, Some(184 * DAY), now),
            rotated(4, None, now),
            rotated(7, Some(DAY), now),
        ];
        let names: Vec<String> = doomed(&files, 5, now, 183 * DAY)
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(names, ["app.log.3", "app.log.7"]);
        // A retention longer than the clock has run deletes nothing by age.
        assert!(doomed(&files[..4], 5, SystemTime::UNIX_EPOCH + DAY, 183 * DAY).is_empty());
        assert_eq!(doomed(&files, 0, now, 1000 * DAY).len(), 5);
    }

    #[test]
    fn shift_moves_each_file_up_one_and_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        for (path, text) in [
            (log.clone(), "0"),
            (numbered(&log, 1), "1"),
            (numbered(&log, 2), "2"),
        ] {
            fs::write(path, text).unwrap();
        }
        shift(&log, 2).unwrap();
        assert!(!log.exists());
        assert_eq!(fs::read_to_string(numbered(&log, 1)).unwrap(), "0");
        assert_eq!(fs::read_to_string(numbered(&log, 2)).unwrap(), "1");
        assert!(!numbered(&log, 3).exists());
        let mut found: Vec<u64> = list(&log).iter().map(|r| r.n).collect();
        found.sort_unstable();
        assert_eq!(found, [1, 2]);
        // keep = 0: the file is simply deleted; nothing to move is fine.
        fs::write(&log, "x").unwrap();
        shift(&log, 0).unwrap();
        assert!(!log.exists());
        shift(&log, 3).unwrap();
    }

    #[test]
    fn list_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        for name in [
            "app.log",
            "app.log.1",
            "app.log.x",
            "app.log.",
            "app.log.2.gz",
            "other.log.3",
        ] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let found: Vec<u64> = list(&log).iter().map(|r| r.n).collect();
        assert_eq!(found, [1]);
    }
}

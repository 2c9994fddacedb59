//! The `[log]` section and the value types only it uses: [`Level`] for
//! `log.level`, [`StderrLevel`] for `log.stderr` (a level or `"off"`, old
//! booleans still read) and [`ByteSize`] for `log.max_size` (`"50MiB"`,
//! `"10MB"`, or a number of bytes).

use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// A log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// The default: requests, messages, SQL, warnings, errors.
    Info,
    /// Everything, including debugging detail.
    Debug,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The plain-text log file.
    pub file: PathBuf,
    /// Minimum level written to the file.
    pub level: Level,
    /// Log user messages and AI responses.
    pub content: bool,
    /// Log SQL statements: those that save data at info, reads at debug.
    pub sql: bool,
    /// Minimum level shown on stderr, or off. The startup line is shown
    /// at any level but off.
    pub stderr: StderrLevel,
    /// A logged message or reply is cut to this many bytes.
    pub max_content_bytes: NonZeroUsize,
    /// The file is rotated before it would grow past this.
    pub max_size: ByteSize,
    /// Rotated files kept (`app.log.1` … `app.log.<keep>`).
    pub keep: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            file: PathBuf::from("app.log"),
            level: Level::Info,
            content: true,
            sql: true,
            stderr: StderrLevel::Warning,
            max_content_bytes: NonZeroUsize::new(2048).expect("nonzero"),
            max_size: ByteSize(50 * MIB),
            keep: 5,
        }
    }
}

/// Below this a file would hold a handful of lines and rotation would
/// throw history away almost as fast as it is written.
pub const MIN_LOG_SIZE: ByteSize = ByteSize(4 * KIB);

/// More rotated files than this is a misconfiguration (each rotation
/// renames every one of them).
pub const MAX_KEEP: usize = 1000;

impl LogConfig {
    /// What the types cannot say.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.file.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "log.file",
                expected: "a file path for the log".into(),
            });
        }
        if self.max_size < MIN_LOG_SIZE {
            return Err(ConfigError::Invalid {
                key: "log.max_size",
                expected: format!("at least {MIN_LOG_SIZE}, got {}", self.max_size),
            });
        }
        if self.keep > MAX_KEEP {
            return Err(ConfigError::Invalid {
                key: "log.keep",
                expected: format!("at most {MAX_KEEP} rotated files, got {}", self.keep),
            });
        }
        Ok(())
    }
}

/// `log.stderr`: the minimum level shown on stderr, or nothing at all.
///
/// Also reads the booleans of earlier versions, so existing configs and
/// `CHATGATE_LOG__STDERR=false` keep working: `true` is `"info"` (what it
/// showed then), `false` is `"off"`. Written back as the level's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrLevel {
    /// Nothing on stderr.
    Off,
    /// Errors (and the startup line).
    Error,
    /// The default: warnings, errors and the startup line.
    Warning,
    /// Also every request, message and SQL statement.
    Info,
    /// Everything.
    Debug,
}

impl StderrLevel {
    /// The minimum level shown, `None` when off.
    pub fn level(self) -> Option<Level> {
        match self {
            StderrLevel::Off => None,
            StderrLevel::Error => Some(Level::Error),
            StderrLevel::Warning => Some(Level::Warning),
            StderrLevel::Info => Some(Level::Info),
            StderrLevel::Debug => Some(Level::Debug),
        }
    }

    fn name(self) -> &'static str {
        match self {
            StderrLevel::Off => "off",
            StderrLevel::Error => "error",
            StderrLevel::Warning => "warning",
            StderrLevel::Info => "info",
            StderrLevel::Debug => "debug",
        }
    }
}

impl Serialize for StderrLevel {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for StderrLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StderrLevel;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""off", "error", "warning", "info" or "debug""#)
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<StderrLevel, E> {
                Ok(if v {
                    StderrLevel::Info
                } else {
                    StderrLevel::Off
                })
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<StderrLevel, E> {
                Ok(match v {
                    "off" => StderrLevel::Off,
                    "error" => StderrLevel::Error,
                    "warning" => StderrLevel::Warning,
                    "info" => StderrLevel::Info,
                    "debug" => StderrLevel::Debug,
                    // The old boolean form, as an environment variable
                    // (which arrives as a string) carries it.
                    "false" => StderrLevel::Off,
                    "true" => StderrLevel::Info,
                    _ => return Err(E::invalid_value(Unexpected::Str(v), &self)),
                })
            }
        }
        d.deserialize_any(V)
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// A size in bytes, read from an integer or a string with a unit: `B`,
/// `KB`/`MB`/`GB` (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024),
/// in any case, with or without a space (`"50MiB"`, `"10 MB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides it exactly, so a configured
    /// `"50MiB"` reads back as written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, size) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if n >= size && n.is_multiple_of(size) {
                return write!(f, "{}{unit}", n / size);
            }
        }
        write!(f, "{n}B")
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "a size such as \"50MiB\", \"10MB\", \"512KiB\" or a number of bytes, got {s:?}"
            )
        };
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let scale = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "mb" => 1000 * 1000,
            "gb" => 1000 * 1000 * 1000,
            "kib" => KIB,
            "mib" => MIB,
            "gib" => GIB,
            _ => return Err(bad()),
        };
        n.checked_mul(scale).map(ByteSize).ok_or_else(bad)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size such as "50MiB", "10MB", "512KiB" or a number of bytes"#)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::tests::sources;
    use crate::config::Config;

    #[test]
    fn sizes_read_with_units_and_write_back_as_read() {
        for (text, bytes) in [
            ("50MiB", 50 * MIB),
            ("10MB", 10_000_000),
            ("512KiB", 512 * KIB),
            ("512 kib", 512 * KIB),
            ("2GiB", 2 * GIB),
            ("1gb", 1_000_000_000),
            ("4096", 4096),
            ("4096B", 4096),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "MiB", "-5MiB", "1.5MiB", "50 parsecs", "99999999999GiB"] {
            let e = bad.parse::<ByteSize>().unwrap_err();
            assert!(e.contains("50MiB"), "{bad}: {e}");
        }
        for s in ["50MiB", "3GiB", "12KiB", "1000B"] {
            assert_eq!(s.parse::<ByteSize>().unwrap().to_string(), s);
        }
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        stderr: StderrLevel,
        size: ByteSize,
    }

    fn doc(toml: &str) -> Result<Doc, String> {
        toml::from_str(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn stderr_takes_a_level_off_or_an_old_boolean() {
        for (v, want) in [
            (r#""off""#, StderrLevel::Off),
            (r#""error""#, StderrLevel::Error),
            (r#""warning""#, StderrLevel::Warning),
            (r#""info""#, StderrLevel::Info),
            (r#""debug""#, StderrLevel::Debug),
            ("true", StderrLevel::Info),
            ("false", StderrLevel::Off),
        ] {
            let d = doc(&format!("stderr = {v}\nsize = 4096")).unwrap();
            assert_eq!(d.stderr, want, "{v}");
        }
        let e = doc("stderr = \"loud\"\nsize = 4096").unwrap_err();
        assert!(
            e.contains(r#""off", "error", "warning", "info" or "debug""#),
            "{e}"
        );
        let e = doc("stderr = 3\nsize = 4096").unwrap_err();
        assert!(e.contains("\"warning\""), "{e}");
    }

    #[test]
    fn sizes_deserialize_from_integers_and_strings() {
        assert_eq!(
            doc("stderr = \"off\"\nsize = 8192").unwrap().size,
            ByteSize(8192)
        );
        let d = doc("stderr = \"off\"\nsize = \"1MiB\"").unwrap();
        assert_eq!(d.size, ByteSize(MIB));
        let e = doc("stderr = \"off\"\nsize = -1").unwrap_err();
        assert!(e.contains("50MiB"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = LogConfig::default();
        assert!(c.validate().is_ok());
        c.max_size = ByteSize(100);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("log.max_size") && e.contains("4KiB"), "{e}");
        c = LogConfig {
            keep: MAX_KEEP + 1,
            ..LogConfig::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("log.keep"));
    }

    #[test]
    fn log_keys_read_from_env_and_name_themselves_when_bad() {
        let (_d, s) = sources(
            None,
            &[
                ("CHATGATE_LOG__STDERR", "false"),
                ("CHATGATE_LOG__MAX_SIZE", "10MB"),
                ("CHATGATE_LOG__KEEP", "2"),
            ],
        );
        let c = Config::load(&s).unwrap().config;
        assert_eq!(c.log.stderr, StderrLevel::Off);
        assert_eq!(c.log.max_size, ByteSize(10_000_000));
        assert_eq!(c.log.keep, 2);
        for (key, value, named) in [
            ("CHATGATE_LOG__STDERR", "loud", "log.stderr"),
            ("CHATGATE_LOG__MAX_SIZE", "lots", "log.max_size"),
            ("CHATGATE_LOG__MAX_SIZE", "1KiB", "log.max_size"),
            (
                "CHATGATE_LOG__MAX_CONTENT_BYTES",
                "0",
                "log.max_content_bytes",
            ),
            ("CHATGATE_LOG__KEEP", "-1", "log.keep"),
        ] {
            let (_d, s) = sources(None, &[(key, value)]);
            let e = Config::load(&s).unwrap_err().to_string();
            assert!(e.contains(named), "{key}={value}: {e}");
        }
    }
}

//! Reading the raw sources: figment errors turned into messages that name
//! the key (and the variable, for a value from the environment), and the
//! `.env` file (secrets only).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{env, ConfigError, Warning};

/// The variables read from `.env`; anything else there is ignored.
const DOTENV_SECRETS: [&str; 2] = ["OPENAI_API_KEY", "SECRET_KEY"];

/// figment's errors as one message, each naming its key and where the
/// value came from. `env_vars` maps a key path to the variable that set it.
pub(super) fn describe(e: figment::Error, env_vars: &BTreeMap<String, String>) -> String {
    let mut out = Vec::new();
    for err in e {
        let key = err.path.join(".");
        let mut msg = err.kind.to_string();
        if !key.is_empty() {
            msg = format!("invalid value for `{key}`: {msg}");
        }
        match &err.metadata {
            Some(m) if m.name == env::NAME => {
                if let Some(var) = env_vars.get(&key) {
                    msg.push_str(&format!(" (environment variable {var})"));
                }
            }
            Some(m) => {
                if let Some(src) = &m.source {
                    msg.push_str(&format!(" (in {src})"));
                }
            }
            None => {}
        }
        out.push(msg);
    }
    out.join("; ")
}

/// The secrets in the `.env` file at `path`, if it exists (`OPENAI_API_KEY`,
/// `SECRET_KEY`, and the variables `upstreams` name), and a warning naming
/// the other variables it sets (by name only: their values may be
/// secrets of some other program).
///
/// # Errors
/// [`ConfigError::Dotenv`] when the file cannot be read or a line cannot be
/// parsed. The message gives the line number and never the line's text:
/// dotenvy's own message quotes the line, and that line may hold the key.
pub(super) fn read_dotenv(
    path: Option<&Path>,
    upstream_keys: &[&str],
) -> Result<(HashMap<String, String>, Option<Warning>), ConfigError> {
    let Some(path) = path.filter(|p| p.exists()) else {
        return Ok((HashMap::new(), None));
    };
    let fail = |reason: String| ConfigError::Dotenv {
        path: path.to_path_buf(),
        reason,
    };
    // Read whole (a `.env` is small) so a failing line can be found again
    // to number it; dotenvy's error carries its text but no number.
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut secrets = HashMap::new();
    let mut ignored = Vec::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        let (name, value) = item.map_err(|e| fail(locate(text, e)))?;
        if DOTENV_SECRETS.contains(&name.as_str()) || upstream_keys.contains(&name.as_str()) {
            secrets.insert(name, value);
        } else if !ignored.contains(&name) {
            ignored.push(name);
        }
    }
    let warning = (!ignored.is_empty()).then(|| Warning::IgnoredDotenv {
        file: path.to_path_buf(),
        vars: ignored,
    });
    Ok((secrets, warning))
}

/// A dotenvy error as `line N: …`, without the line's text.
fn locate(text: &str, e: dotenvy::Error) -> String {
    let dotenvy::Error::LineParse(logical, _) = e else {
        // An I/O error (invalid UTF-8, say): its message quotes no content.
        return e.to_string();
    };
    // dotenvy parses logical lines (a quoted value may span several), each
    // a run of whole physical lines: the first physical line that starts
    // one equal to the failing line is where it begins.
    let mut start = 0;
    let mut number = 1;
    for line in text.split_inclusive('\n') {
        if text[start..].starts_with(&logical) {
            break;
        }
        start += line.len();
        number += 1;
    }
    if logical.contains('\n') {
        format!("line {number}: a quoted value that opens on this line is not closed")
    } else {
        format!("line {number}: expected NAME=value (or a # comment)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dotenv(text: &str) -> Result<(HashMap<String, String>, Option<Warning>), ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, text).unwrap();
        read_dotenv(Some(&path), &[])
    }

    #[test]
    fn only_the_secrets_are_read_and_the_rest_is_named() {
        let (secrets, warning) = dotenv(
            "# comment\nOPENAI_API_KEY=sk-1\nexport SECRET_KEY='s 2'\nDATABASE_URL=postgres://u:hunter2@db\nDEBUG=1\n",
        )
        .unwrap();
        assert_eq!(secrets["OPENAI_API_KEY"], "sk-1");
        assert_eq!(secrets["SECRET_KEY"], "s 2");
        assert_eq!(secrets.len(), 2);
        let w = warning.unwrap().to_string();
        assert!(w.contains("DATABASE_URL") && w.contains("DEBUG"), "{w}");
        assert!(!w.contains("hunter2"), "{w}");
        assert!(dotenv("OPENAI_API_KEY=sk-1\n").unwrap().1.is_none());
    }

    #[test]
    fn a_bad_line_is_numbered_and_not_quoted() {
        let cases = [
            ("OPENAI_API_KEY=sk-1\n\n# c\nsk-leaked-Zq7V oops\n", 4),
            ("A=1\nB=\"sk-leaked-Zq7V\nC=2\n", 2),
            ("\u{feff}sk-leaked-Zq7V\n", 1),
            ("A=1\r\nB C sk-leaked-Zq7V\r\n", 2),
        ];
        for (text, line) in cases {
            let e = dotenv(text).unwrap_err().to_string();
            assert!(e.contains(&format!("line {line}:")), "{text:?}: {e}");
            assert!(!e.contains("sk-leaked"), "{e}");
        }
    }
}

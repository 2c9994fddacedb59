//! The secrets: read from the environment or `.env`, never from the file,
//! and never printed.

use std::fmt;

/// A secret string: `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; use only where it is sent, never where it is shown.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `OPENAI_API_KEY`, `SECRET_KEY`, and the keys `[upstreams]` name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// Each upstream's key, by upstream name, read from the variable its
    /// `api_key_env` names.
    pub upstream_keys: std::collections::BTreeMap<String, Secret>,
    /// Sent upstream as `Authorization: Bearer` (the `[openai]` upstream).
    pub openai_api_key: Option<Secret>,
    /// Signs and verifies session tokens and JWTs; needed by any
    /// `auth.mode` but `none`.
    pub secret_key: Option<Secret>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_shown_nowhere() {
        let s = Secret::new("sk-s3cret");
        assert_eq!(s.expose(), "sk-s3cret");
        for shown in [format!("{s}"), format!("{s:?}")] {
            assert_eq!(shown, "<redacted>");
        }
    }
}

//! `[openai]`: the upstream (any OpenAI-compatible server), the models
//! clients may name, and what the gateway sends and refuses on their
//! behalf. `Debug` shows `base_url` through [`redact_url`].

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{human, redact_url, ConfigError, DurationKey, Secrets};

/// `[openai]`. `Debug` shows `base_url` through [`redact_url`].
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenAiSection {
    /// Any OpenAI-compatible base URL.
    pub base_url: String,
    /// Model name.
    pub model: String,
    /// Total deadline per turn's upstream call, retries included; for a
    /// stream, the deadline for its first byte.
    #[serde(with = "human::duration")]
    pub timeout: Duration,
    /// For a stream, the longest gap between two upstream chunks.
    #[serde(with = "human::duration")]
    pub stream_idle_timeout: Duration,
    /// The models clients may name on `/v1`; empty means `[model]`.
    pub models: Vec<String>,
    /// The most tokens any reply may have (0: no cap of ours).
    pub max_tokens: u32,
    /// `/v1` request fields removed before the request goes upstream
    /// (for an upstream that refuses a field clients send).
    pub drop_params: Vec<String>,
    /// `/v1` request fields refused (400 naming the field).
    pub deny_params: Vec<String>,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Sampling temperature, 0 to 2.
    #[serde(serialize_with = "human::shortest_f32")]
    pub temperature: f32,
    /// Default system prompt; empty for none.
    pub system_prompt: String,
    /// Token budget for prompt + history + message.
    pub context_tokens: NonZeroUsize,
    /// The largest reply held from an upstream, whole or streamed; past it
    /// the call fails (a stream with its `error` event) and nothing is
    /// stored.
    pub max_reply_bytes: NonZeroUsize,
}

impl OpenAiSection {
    /// The models clients may name: `models`, or `[model]` when it is empty.
    pub fn allowed_models(&self) -> Vec<String> {
        if self.models.is_empty() {
            vec![self.model.clone()]
        } else {
            self.models.clone()
        }
    }
}

impl fmt::Debug for OpenAiSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiSection")
            .field("base_url", &redact_url(&self.base_url))
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("stream_idle_timeout", &self.stream_idle_timeout)
            .field("models", &self.models)
            .field("max_tokens", &self.max_tokens)
            .field("drop_params", &self.drop_params)
            .field("deny_params", &self.deny_params)
            .field("max_retries", &self.max_retries)
            .field("temperature", &self.temperature)
            .field("system_prompt", &self.system_prompt)
            .field("context_tokens", &self.context_tokens)
            .field("max_reply_bytes", &self.max_reply_bytes)
            .finish()
    }
}

impl Default for OpenAiSection {
    fn default() -> Self {
        // The library's defaults are the gateway's.
        let adapter = chatcore::OpenAiConfig::default();
        OpenAiSection {
            base_url: adapter.base_url,
            model: adapter.model,
            timeout: adapter.timeout,
            stream_idle_timeout: adapter.stream_idle_timeout,
            models: Vec::new(),
            max_tokens: 0,
            drop_params: Vec::new(),
            deny_params: Vec::new(),
            max_retries: adapter.max_retries,
            temperature: 0.7,
            system_prompt: String::new(),
            context_tokens: NonZeroUsize::new(chatcore::ChatCoreBuilder::DEFAULT_CONTEXT_TOKENS)
                .expect("nonzero"),
            max_reply_bytes: NonZeroUsize::new(adapter.max_reply_bytes).expect("nonzero"),
        }
    }
}

impl OpenAiSection {
    /// Its durations, for the bounds every duration shares.
    pub(super) fn durations(&self) -> [DurationKey; 2] {
        [
            DurationKey::positive("openai.timeout", self.timeout),
            DurationKey::positive("openai.stream_idle_timeout", self.stream_idle_timeout),
        ]
    }

    /// What the types cannot say, besides the bounds of its durations.
    /// `secrets` because OpenAI's own endpoint is useless without a key.
    /// `alone`: no `[upstreams]`, so this section is the one upstream and
    /// its `base_url` (and key) are used.
    pub(super) fn validate(&self, secrets: &Secrets, alone: bool) -> Result<(), ConfigError> {
        if alone {
            self.validate_base_url(secrets)?;
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(ConfigError::Invalid {
                key: "openai.temperature",
                expected: format!("a number from 0 to 2, got {}", self.temperature),
            });
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::Invalid {
                key: "openai.timeout",
                expected: "a positive duration such as \"60s\"".into(),
            });
        }
        if self.model.trim().is_empty() {
            return Err(ConfigError::Invalid {
                key: "openai.model",
                expected: "a model name".into(),
            });
        }
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err(ConfigError::Invalid {
                key: "openai.models",
                expected: "a list of model names, none empty".into(),
            });
        }
        for (key, params) in [
            ("openai.drop_params", &self.drop_params),
            ("openai.deny_params", &self.deny_params),
        ] {
            // The gateway's own members cannot be dropped or refused.
            if let Some(p) = params
                .iter()
                .find(|p| p.trim().is_empty() || ["model", "messages"].contains(&p.as_str()))
            {
                return Err(ConfigError::Invalid {
                    key,
                    expected: format!(
                        "a list of request field names other than model and messages, got {p:?}"
                    ),
                });
            }
        }
        Ok(())
    }

    /// An http(s) URL with a host, and a key for OpenAI's own endpoint.
    /// Errors show the URL only through [`redact_url`].
    fn validate_base_url(&self, secrets: &Secrets) -> Result<(), ConfigError> {
        let base = self.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ConfigError::Invalid {
                key: "openai.base_url",
                expected: format!(
                    "an http:// or https:// URL, got {:?}",
                    redact_url(&self.base_url)
                ),
            });
        }
        match base.parse::<hyper::Uri>() {
            Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {}
            _ => {
                return Err(ConfigError::Invalid {
                    key: "openai.base_url",
                    expected: format!(
                        "a URL with a host, such as http://127.0.0.1:8080/v1, got {:?}",
                        redact_url(&self.base_url)
                    ),
                })
            }
        }
        if base == chatcore::OPENAI_BASE_URL && secrets.openai_api_key.is_none() {
            return Err(ConfigError::Invalid {
                key: "openai.base_url",
                expected:
                    "OPENAI_API_KEY must be set (environment or .env) to use api.openai.com; \
                           set it, or point openai.base_url at another OpenAI-compatible server"
                        .into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::tests::sources;
    use crate::config::Config;

    #[test]
    fn base_url_credentials_are_shown_nowhere() {
        let url = "http://bob:hunter2@127.0.0.1:9/v1?api-key=k3y";
        let (_d, s) = sources(None, &[("CHATGATE_OPENAI__BASE_URL", url)]);
        let c = Config::load(&s).unwrap().config;
        assert_eq!(c.openai.base_url, url, "the real URL is still used");
        for shown in [c.to_toml(), format!("{c:?}")] {
            assert!(
                shown.contains("http://***@127.0.0.1:9/v1?api-key=***"),
                "{shown}"
            );
            assert!(
                !shown.contains("hunter2") && !shown.contains("k3y"),
                "{shown}"
            );
        }
    }

    #[test]
    fn the_gateway_s_own_fields_cannot_be_dropped_or_denied() {
        let secrets = Secrets::default();
        let local = || OpenAiSection {
            base_url: "http://127.0.0.1:8080/v1".into(),
            ..OpenAiSection::default()
        };
        assert!(local().validate(&secrets, true).is_ok());
        for (drop, deny, key) in [
            (vec!["messages"], vec![], "openai.drop_params"),
            (vec!["seed"], vec!["model"], "openai.deny_params"),
            (vec![], vec![" "], "openai.deny_params"),
        ] {
            let o = OpenAiSection {
                drop_params: drop.into_iter().map(String::from).collect(),
                deny_params: deny.into_iter().map(String::from).collect(),
                ..local()
            };
            let e = o.validate(&secrets, true).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}

//! `[upstreams.NAME]`, `[models."NAME"]` and `[routing]`: several
//! upstreams, the model names clients use and where their calls go, and
//! how failures move a call on. With no `[upstreams]`, `[openai]` is the
//! one upstream (named `openai`) and its `model` (and `models`) the
//! routes, as before routing existed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{human, redact_url, Config, ConfigError, Secret};

/// The upstream `[openai]` becomes when there is no `[upstreams]`.
pub const IMPLICIT_UPSTREAM: &str = "openai";

/// How an upstream takes its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// `Authorization: Bearer <key>`.
    #[default]
    Bearer,
    /// `api-key: <key>` (Azure OpenAI).
    ApiKey,
    /// No key is sent.
    None,
}

/// `[upstreams.NAME]`: one OpenAI-compatible server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSection {
    /// Its base URL; `/chat/completions` is appended (a query, such as
    /// Azure's `?api-version=`, is kept).
    pub base_url: String,
    /// The environment variable that holds its key (the key itself is
    /// never in the file). Empty: no key.
    pub api_key_env: String,
    /// How the key is sent.
    pub auth: UpstreamAuth,
    /// Other headers sent with every request.
    pub headers: BTreeMap<String, String>,
    /// Its deadline for one call; 0 takes `openai.timeout`.
    #[serde(with = "human::duration")]
    pub timeout: Duration,
    /// Further attempts on it once a call's every candidate has failed
    /// (after a backoff, inside the deadline); unset takes
    /// `openai.max_retries`.
    pub max_retries: Option<u32>,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            base_url: String::new(),
            api_key_env: String::new(),
            auth: UpstreamAuth::Bearer,
            headers: BTreeMap::new(),
            timeout: Duration::ZERO,
            max_retries: None,
        }
    }
}

/// One target of a model: an upstream and the model name it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// The upstream's name (a key of `[upstreams]`).
    pub upstream: String,
    /// The model name sent to it.
    pub model: String,
    /// Its share of the model's calls among the targets (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `[models."NAME"]`: a name clients use, and where its calls go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Chosen among by weight.
    pub targets: Vec<TargetSection>,
    /// Tried in order once every target has failed.
    pub fallbacks: Vec<TargetSection>,
}

/// `[routing]`: how failures move a call on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoutingConfig {
    /// Consecutive failures that eject an upstream.
    pub upstream_failures: u32,
    /// The first cool-down of an ejected upstream; it doubles while its
    /// trials fail.
    #[serde(with = "human::duration")]
    pub cooldown: Duration,
    /// The longest cool-down.
    #[serde(with = "human::duration")]
    pub max_cooldown: Duration,
    /// Keep a session's turns on the target that answered its last one.
    pub affinity: bool,
    /// Send `prompt_cache_key`, derived from the session, with a
    /// session's requests.
    pub prompt_cache_key: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        let d = chatcore::RouterConfig::default();
        RoutingConfig {
            upstream_failures: d.upstream_failures,
            cooldown: d.cooldown,
            max_cooldown: d.max_cooldown,
            affinity: d.affinity,
            prompt_cache_key: d.prompt_cache_key,
        }
    }
}

impl RoutingConfig {
    pub(super) fn durations(&self) -> [super::DurationKey; 2] {
        [
            super::DurationKey::positive("routing.cooldown", self.cooldown),
            super::DurationKey::positive("routing.max_cooldown", self.max_cooldown),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.upstream_failures == 0 {
            return Err(invalid(
                "routing.upstream_failures",
                "at least 1".to_owned(),
            ));
        }
        if self.max_cooldown < self.cooldown {
            return Err(invalid(
                "routing.max_cooldown",
                "at least routing.cooldown".to_owned(),
            ));
        }
        Ok(())
    }
}

fn invalid(key: &str, expected: String) -> ConfigError {
    ConfigError::InvalidAt {
        key: key.to_owned(),
        expected,
    }
}

impl Config {
    /// Checks `[upstreams]` and `[models]` against each other and
    /// `openai.model`.
    pub(super) fn validate_routing(&self) -> Result<(), ConfigError> {
        for (name, u) in &self.upstreams {
            // A target is written `upstream:model`, so a name holds no `:`.
            if name.is_empty() || name.contains(':') {
                return Err(invalid(
                    "upstreams",
                    format!("names without a \":\", got {name:?}"),
                ));
            }
            let key = format!("upstreams.{name}.base_url");
            let base = u.base_url.trim_end_matches('/');
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return Err(invalid(
                    &key,
                    format!(
                        "an http:// or https:// URL, got {:?}",
                        redact_url(&u.base_url)
                    ),
                ));
            }
            match base.parse::<hyper::Uri>() {
                Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => {}
                _ => {
                    return Err(invalid(
                        &key,
                        format!(
                            "a URL with a host, such as http://127.0.0.1:8001/v1, got {:?}",
                            redact_url(&u.base_url)
                        ),
                    ))
                }
            }
            for (header, value) in &u.headers {
                let name_ok = hyper::header::HeaderName::from_bytes(header.as_bytes()).is_ok();
                if !name_ok || hyper::header::HeaderValue::from_str(value).is_err() {
                    // The value is not shown: a header may carry a credential.
                    return Err(invalid(
                        &format!("upstreams.{name}.headers"),
                        format!("header names and values HTTP can carry; {header:?} is not one"),
                    ));
                }
            }
            if u.auth == UpstreamAuth::ApiKey && u.api_key_env.is_empty() {
                return Err(invalid(
                    &format!("upstreams.{name}.api_key_env"),
                    "the variable holding the key, since auth is \"api-key\"".to_owned(),
                ));
            }
            if u.timeout > super::DurationKey::MAX {
                return Err(invalid(
                    &format!("upstreams.{name}.timeout"),
                    "at most a century".to_owned(),
                ));
            }
        }
        if self.models.is_empty() {
            if !self.upstreams.is_empty() {
                return Err(invalid(
                    "models",
                    "a [models.\"NAME\"] table naming its targets, since [upstreams] is set"
                        .to_owned(),
                ));
            }
            return Ok(());
        }
        let known = |u: &str| {
            if self.upstreams.is_empty() {
                u == IMPLICIT_UPSTREAM
            } else {
                self.upstreams.contains_key(u)
            }
        };
        for (model, m) in &self.models {
            if m.targets.is_empty() {
                return Err(invalid(
                    &format!("models.\"{model}\".targets"),
                    "at least one target".to_owned(),
                ));
            }
            for (list, targets) in [("targets", &m.targets), ("fallbacks", &m.fallbacks)] {
                for t in targets {
                    if !known(&t.upstream) {
                        return Err(invalid(
                            &format!("models.\"{model}\".{list}"),
                            format!(
                                "upstreams that are configured; {:?} is not (see [upstreams])",
                                t.upstream
                            ),
                        ));
                    }
                    if t.model.is_empty() {
                        return Err(invalid(
                            &format!("models.\"{model}\".{list}"),
                            "a model name for every target".to_owned(),
                        ));
                    }
                    if list == "targets" && t.weight == 0 {
                        return Err(invalid(
                            &format!("models.\"{model}\".targets"),
                            "a weight of at least 1 for every target".to_owned(),
                        ));
                    }
                }
            }
            if m.targets.len() + m.fallbacks.len() > 16 {
                return Err(invalid(
                    &format!("models.\"{model}\""),
                    "at most 16 targets and fallbacks together".to_owned(),
                ));
            }
        }
        if !self.models.contains_key(&self.openai.model) {
            return Err(invalid(
                "openai.model",
                format!(
                    "a name from [models] (the model /chat/ and sessions that name none use), got {:?}",
                    self.openai.model
                ),
            ));
        }
        Ok(())
    }

    /// The routing as chatcore runs it: the upstreams with their keys,
    /// the routes, the default route and the `[routing]` rules.
    pub fn router_config(&self) -> chatcore::RouterConfig {
        let o = &self.openai;
        let adapter = |base_url: &str, key: Option<&Secret>, u: Option<&UpstreamSection>| {
            chatcore::OpenAiConfig {
                base_url: base_url.to_owned(),
                model: o.model.clone(),
                // The seed API's turns carry `openai.temperature` in their
                // options; `/v1` requests go upstream with none added.
                temperature: None,
                api_key: key.map(|k| k.expose().to_owned()),
                key_header: match u.map(|u| u.auth) {
                    Some(UpstreamAuth::ApiKey) => chatcore::KeyHeader::ApiKey,
                    _ => chatcore::KeyHeader::Bearer,
                },
                headers: u.map_or_else(Vec::new, |u| {
                    u.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                }),
                timeout: u
                    .map(|u| u.timeout)
                    .filter(|t| !t.is_zero())
                    .unwrap_or(o.timeout),
                stream_idle_timeout: o.stream_idle_timeout,
                connect_timeout: o.timeout.min(Duration::from_secs(5)),
                max_retries: u.and_then(|u| u.max_retries).unwrap_or(o.max_retries),
                max_reply_bytes: o.max_reply_bytes.get(),
                ..chatcore::OpenAiConfig::default()
            }
        };
        let upstreams: Vec<chatcore::UpstreamConfig> = if self.upstreams.is_empty() {
            vec![chatcore::UpstreamConfig {
                name: IMPLICIT_UPSTREAM.to_owned(),
                openai: adapter(&o.base_url, self.secrets.openai_api_key.as_ref(), None),
            }]
        } else {
            self.upstreams
                .iter()
                .map(|(name, u)| chatcore::UpstreamConfig {
                    name: name.clone(),
                    openai: adapter(
                        &u.base_url,
                        self.secrets
                            .upstream_keys
                            .get(name)
                            .filter(|_| u.auth != UpstreamAuth::None),
                        Some(u),
                    ),
                })
                .collect()
        };
        let target = |t: &TargetSection| chatcore::TargetConfig {
            upstream: t.upstream.clone(),
            model: t.model.clone(),
            weight: t.weight,
        };
        let routes = if self.models.is_empty() {
            let mut names = o.allowed_models();
            // `/chat/` turns use `openai.model` even when clients may not
            // name it on `/v1` (it is not among `openai.models`).
            if !names.contains(&o.model) {
                names.push(o.model.clone());
            }
            names
                .into_iter()
                .map(|name| chatcore::RouteConfig {
                    targets: vec![chatcore::TargetConfig {
                        upstream: IMPLICIT_UPSTREAM.to_owned(),
                        model: name.clone(),
                        weight: 1,
                    }],
                    fallbacks: Vec::new(),
                    name,
                })
                .collect()
        } else {
            self.models
                .iter()
                .map(|(name, m)| chatcore::RouteConfig {
                    name: name.clone(),
                    targets: m.targets.iter().map(target).collect(),
                    fallbacks: m.fallbacks.iter().map(target).collect(),
                })
                .collect()
        };
        let r = &self.routing;
        chatcore::RouterConfig {
            upstreams,
            routes,
            default_route: o.model.clone(),
            timeout: o.timeout,
            upstream_failures: r.upstream_failures,
            cooldown: r.cooldown,
            max_cooldown: r.max_cooldown,
            affinity: r.affinity,
            prompt_cache_key: r.prompt_cache_key,
            ..chatcore::RouterConfig::default()
        }
    }

    /// The routing table as `check-config` prints it: each model a client
    /// may name, its targets (weights) and fallbacks, each upstream's
    /// base URL with credentials hidden.
    pub fn routing_table(&self) -> String {
        let rc = self.router_config();
        let mut out = String::from("# routing\n");
        for u in &rc.upstreams {
            out.push_str(&format!(
                "#   upstream {}: {}\n",
                u.name,
                redact_url(&u.openai.base_url)
            ));
        }
        for r in &rc.routes {
            let default = if r.name == rc.default_route {
                " (default)"
            } else {
                ""
            };
            let targets: Vec<String> = r
                .targets
                .iter()
                .map(|t| format!("{}:{} x{}", t.upstream, t.model, t.weight))
                .collect();
            out.push_str(&format!(
                "#   model {}{default} -> {}",
                r.name,
                targets.join(", ")
            ));
            if !r.fallbacks.is_empty() {
                let fallbacks: Vec<String> = r
                    .fallbacks
                    .iter()
                    .map(|t| format!("{}:{}", t.upstream, t.model))
                    .collect();
                out.push_str(&format!("; then {}", fallbacks.join(", ")));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::tests::sources;

    const TWO: &str = r#"
[openai]
model = "gpt-4o-mini"

[upstreams.openai]
base_url = "https://api.openai.com/v1"
api_key_env = "MY_OPENAI_KEY"

[upstreams.azure]
base_url = "https://x.openai.azure.com/openai/deployments/mini?api-version=2024-02-01"
api_key_env = "AZURE_KEY"
auth = "api-key"
headers = { x-team = "research" }
timeout = "10s"

[upstreams.local]
base_url = "http://127.0.0.1:8001/v1"
auth = "none"

[models."gpt-4o-mini"]
targets = [{ upstream = "openai", model = "gpt-4o-mini", weight = 3 },
           { upstream = "azure", model = "mini" }]
fallbacks = [{ upstream = "local", model = "qwen2.5-7b" }]

[routing]
cooldown = "10s"
"#;

    #[test]
    fn upstreams_models_and_keys_resolve_into_a_router_config() {
        let (_d, s) = sources(
            Some(TWO),
            &[
                ("MY_OPENAI_KEY", "sk-openai-s3cret"),
                ("AZURE_KEY", "az-s3cret"),
            ],
        );
        let c = Config::load(&s).unwrap().config;
        let rc = c.router_config();
        assert_eq!(rc.default_route, "gpt-4o-mini");
        assert_eq!(rc.cooldown, Duration::from_secs(10));
        let names: Vec<&str> = rc.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["azure", "local", "openai"]);
        let azure = &rc.upstreams[0].openai;
        assert_eq!(azure.api_key.as_deref(), Some("az-s3cret"));
        assert_eq!(azure.key_header, chatcore::KeyHeader::ApiKey);
        assert_eq!(
            azure.headers,
            [("x-team".to_owned(), "research".to_owned())]
        );
        assert_eq!(azure.timeout, Duration::from_secs(10));
        let local = &rc.upstreams[1].openai;
        assert_eq!(local.api_key, None);
        assert_eq!(local.timeout, c.openai.timeout, "[openai]'s by default");
        let route = &rc.routes[0];
        assert_eq!(route.targets[0].weight, 3);
        assert_eq!(route.targets[1].weight, 1, "weight defaults to 1");
        assert_eq!(route.fallbacks[0].model, "qwen2.5-7b");
        // check-config shows the table, never a key or header value.
        let shown = c.to_toml();
        assert!(shown.contains("#   model gpt-4o-mini (default) -> openai:gpt-4o-mini x3, azure:mini x1; then local:qwen2.5-7b"), "{shown}");
        assert!(
            shown.contains("# AZURE_KEY (upstreams.azure): (set)"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("research"),
            "{shown}"
        );
    }

    #[test]
    fn a_missing_key_variable_is_named_never_its_value() {
        let (_d, s) = sources(Some(TWO), &[("MY_OPENAI_KEY", "sk-openai-s3cret")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(
            e.contains("AZURE_KEY") && e.contains("upstreams.azure.api_key_env"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn routes_are_checked_against_the_upstreams() {
        for (extra, key) in [
            (
                "[models.\"other\"]\ntargets = [{ upstream = \"nowhere\", model = \"x\" }]\n",
                "models.\"other\".targets",
            ),
            (
                "[models.\"other\"]\ntargets = []\n",
                "models.\"other\".targets",
            ),
            (
                "[models.\"other\"]\ntargets = [{ upstream = \"local\", model = \"x\", weight = 0 }]\n",
                "models.\"other\".targets",
            ),
            ("[upstreams.\"a:b\"]\nbase_url = \"http://h/v1\"\n", "upstreams"),
            ("[upstreams.ftp]\nbase_url = \"ftp://h\"\n", "upstreams.ftp.base_url"),
            ("[upstreams.nohost]\nbase_url = \"http:///v1\"\n", "upstreams.nohost.base_url"),
            (
                "[upstreams.bad]\nbase_url = \"http://h/v1\"\nheaders = { \"x y\" = \"1\" }\n",
                "upstreams.bad.headers",
            ),
        ] {
            let toml = format!("{TWO}\n{extra}");
            let (_d, s) = sources(
                Some(&toml),
                &[("MY_OPENAI_KEY", "k"), ("AZURE_KEY", "k")],
            );
            let e = Config::load(&s).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let toml = TWO.replace(
            "cooldown = \"10s\"",
            "cooldown = \"10s\"\nupstream_failures = 0",
        );
        let (_d, s) = sources(Some(&toml), &[("MY_OPENAI_KEY", "k"), ("AZURE_KEY", "k")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("routing.upstream_failures"), "{e}");
        // openai.model must be a [models] name once there are some.
        let toml = TWO.replace(
            "model = \"gpt-4o-mini\"\n\n[upstreams",
            "model = \"gpt-4\"\n\n[upstreams",
        );
        let (_d, s) = sources(Some(&toml), &[("MY_OPENAI_KEY", "k"), ("AZURE_KEY", "k")]);
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("openai.model"), "{e}");
    }

    #[test]
    fn environment_variables_reach_the_tables() {
        let (_d, s) = sources(
            Some(TWO),
            &[
                ("MY_OPENAI_KEY", "k"),
                ("AZURE_KEY", "k"),
                (
                    "CHATGATE_UPSTREAMS__LOCAL__BASE_URL",
                    "http://127.0.0.1:9999/v1",
                ),
                ("CHATGATE_UPSTREAMS__LOCAL__MAX_RETRIES", "5"),
                ("CHATGATE_UPSTREAMS__LOCAL__HEADERS__X_ORG", "acme"),
                (
                    "CHATGATE_MODELS__GPT-4O-MINI__FALLBACKS",
                    r#"[{"upstream": "local", "model": "llama"}]"#,
                ),
                ("CHATGATE_ROUTING__AFFINITY", "false"),
            ],
        );
        let c = Config::load(&s).unwrap().config;
        let local = &c.upstreams["local"];
        assert_eq!(local.base_url, "http://127.0.0.1:9999/v1");
        assert_eq!(local.max_retries, Some(5));
        assert_eq!(local.headers["x_org"], "acme");
        assert_eq!(c.models["gpt-4o-mini"].fallbacks[0].model, "llama");
        assert!(!c.routing.affinity);
        let (_d, s) = sources(
            Some(TWO),
            &[
                ("MY_OPENAI_KEY", "k"),
                ("AZURE_KEY", "k"),
                ("CHATGATE_UPSTREAMS__LOCAL__NOPE", "1"),
            ],
        );
        let e = Config::load(&s).unwrap_err().to_string();
        assert!(e.contains("CHATGATE_UPSTREAMS__LOCAL__NOPE"), "{e}");
    }

    #[test]
    fn without_upstreams_the_openai_section_is_the_one_upstream() {
        let (_d, s) = sources(Some("[openai]\nmodels = [\"a\", \"b\"]\n"), &[]);
        let c = Config::load(&s).unwrap().config;
        let rc = c.router_config();
        assert_eq!(rc.upstreams.len(), 1);
        assert_eq!(rc.upstreams[0].name, IMPLICIT_UPSTREAM);
        assert_eq!(rc.upstreams[0].openai.api_key.as_deref(), Some("sk-test"));
        let names: Vec<&str> = rc.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "gpt-3.5-turbo"]);
        assert!(rc.routes.iter().all(|r| r.targets[0].model == r.name));
    }
}

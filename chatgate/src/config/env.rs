//! The `CHATGATE_*` layer: each variable becomes the key its name spells
//! (`CHATGATE_SERVER__BIND` → `server.bind`), its value read as the type
//! that key expects rather than guessed from how it looks: a model named
//! `2024-05-13` stays a string, `*` is a one-origin list.
//!
//! The expected type comes from the default configuration serialized to a
//! TOML tree, so a new key needs no entry in a second table here. Variables
//! whose first segment is not a section are not ours (Kubernetes injects
//! `CHATGATE_PORT=tcp://…` when a Service is named chatgate): they are
//! returned for a warning instead of stopping the gateway.

use std::collections::{BTreeMap, HashMap};

use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

use super::{Config, ConfigError, Warning};

const PREFIX: &str = "CHATGATE_";

/// The name figment errors carry for values from this layer.
pub(super) const NAME: &str = "CHATGATE_* environment variables";

/// The typed overrides, ready to merge over the file.
#[derive(Debug)]
pub(super) struct EnvLayer {
    table: toml::Table,
    /// `server.bind` → `CHATGATE_SERVER__BIND`, to name the variable when
    /// a later check refuses its value.
    pub(super) vars: BTreeMap<String, String>,
    /// Names the variables whose first segment is no section, if any.
    pub(super) warning: Option<Warning>,
}

/// How a key's value is written in the environment.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Taken verbatim: names, paths, addresses, URLs, durations, enums.
    Text,
    Integer,
    Float,
    Bool,
    /// Of strings: `a,b` or a TOML/JSON array `["a","b"]`.
    List,
}

impl Kind {
    fn of(default: &toml::Value) -> Option<Kind> {
        Some(match default {
            toml::Value::String(_) | toml::Value::Datetime(_) => Kind::Text,
            toml::Value::Integer(_) => Kind::Integer,
            toml::Value::Float(_) => Kind::Float,
            toml::Value::Boolean(_) => Kind::Bool,
            toml::Value::Array(_) => Kind::List,
            toml::Value::Table(_) => return None,
        })
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Text => "a string",
            Kind::Integer => "an integer",
            Kind::Float => "a number",
            Kind::Bool => "true or false",
            Kind::List => "a comma-separated list or an array such as [\"a\",\"b\"]",
        }
    }

    fn parse(self, raw: &str) -> Option<toml::Value> {
        let trimmed = raw.trim();
        Some(match self {
            Kind::Text => toml::Value::String(raw.to_owned()),
            Kind::Integer => toml::Value::Integer(trimmed.parse().ok()?),
            Kind::Float => toml::Value::Float(trimmed.parse().ok()?),
            Kind::Bool => toml::Value::Boolean(trimmed.parse().ok()?),
            Kind::List if trimmed.starts_with('[') => parse_array(trimmed)?,
            // Empty pieces are dropped so `a,b,` and an empty value (the
            // empty list) both mean what they look like.
            Kind::List => toml::Value::Array(
                trimmed
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
        })
    }
}

/// A TOML inline array (`['a', "b"]`) or, failing that, a JSON one (whose
/// escapes, such as `\/`, TOML does not all share).
fn parse_array(text: &str) -> Option<toml::Value> {
    let from_toml = format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"));
    if let Some(v @ toml::Value::Array(_)) = from_toml {
        return Some(v);
    }
    let json: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
    toml::Value::try_from(json).ok()
}

impl EnvLayer {
    /// Reads every `CHATGATE_*` variable of `env`.
    ///
    /// # Errors
    /// A variable under a known section that names no key, a section, or a
    /// value that is not of its key's type: a [`ConfigError::Env`] naming
    /// the variable and the key.
    pub(super) fn read(env: &HashMap<String, String>) -> Result<EnvLayer, ConfigError> {
        let defaults = toml::Table::try_from(Config::default())
            .expect("the default config serializes to a TOML table");
        let mut names: Vec<&String> = env.keys().filter(|k| k.starts_with(PREFIX)).collect();
        names.sort();
        let mut layer = EnvLayer {
            table: toml::Table::new(),
            vars: BTreeMap::new(),
            warning: None,
        };
        let mut ignored = Vec::new();
        for name in names {
            let path: Vec<String> = name[PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if !matches!(defaults.get(&path[0]), Some(toml::Value::Table(_))) {
                ignored.push(name.clone());
                continue;
            }
            let key = path.join(".");
            let err = |message: String| ConfigError::Env {
                var: name.clone(),
                message,
            };
            let kind = entry_kind(&path)
                .unwrap_or_else(|| lookup(&defaults, &path))
                .map_err(err)?;
            let raw = &env[name];
            let value = kind.parse(raw).ok_or_else(|| {
                err(format!(
                    "invalid value for `{key}`: expected {}, got {raw:?}",
                    kind.expected()
                ))
            })?;
            insert(&mut layer.table, &path, value);
            layer.vars.insert(key, name.clone());
        }
        if !ignored.is_empty() {
            let sections = defaults
                .into_iter()
                .filter(|(_, v)| v.is_table())
                .map(|(k, _)| k)
                .collect();
            layer.warning = Some(Warning::IgnoredEnv {
                vars: ignored,
                sections,
            });
        }
        Ok(layer)
    }
}

/// The kind of a key under a table of named entries (`[upstreams.NAME]`,
/// `[models."NAME"]`): the name is the operator's (lowercase, as every
/// segment of a variable's name is read), the keys those of a default
/// entry. `None` for a path under an ordinary section.
fn entry_kind(path: &[String]) -> Option<Result<Kind, String>> {
    let template = super::entry_template(&path[0])?;
    if path.len() < 3 {
        let section = path.join("__").to_ascii_uppercase();
        return Some(Err(format!(
            "`{}` names no key: set one of an entry's, as in CHATGATE_{section}{}__KEY",
            path.join("."),
            if path.len() == 1 { "__NAME" } else { "" }
        )));
    }
    if path[0] == "upstreams" && path[2] == "headers" && path.len() == 4 {
        return Some(Ok(Kind::Text));
    }
    Some(lookup(&template, &path[2..]).map_err(|e| format!("{e} in {}.{}", path[0], path[1])))
}

/// The kind of the key at `path`, whose first segment is a section.
fn lookup(defaults: &toml::Table, path: &[String]) -> Result<Kind, String> {
    let mut table = defaults;
    for (i, part) in path.iter().enumerate() {
        let so_far = path[..=i].join(".");
        match table.get(part) {
            Some(toml::Value::Table(t)) if i + 1 < path.len() => table = t,
            Some(toml::Value::Table(_)) => {
                return Err(format!(
                    "`{so_far}` is a section, not a key: set one of its keys, \
                     as in CHATGATE_{}__KEY",
                    so_far.replace('.', "__").to_ascii_uppercase()
                ))
            }
            Some(value) if i + 1 == path.len() => {
                return Ok(Kind::of(value).expect("tables are matched above"))
            }
            Some(_) => return Err(format!("`{so_far}` is a key, not a section")),
            None => return Err(format!("unknown key `{so_far}`")),
        }
    }
    unreachable!("the loop returns at the last segment")
}

fn insert(root: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, sections) = path.split_last().expect("a path has a segment");
    let mut table = root;
    for part in sections {
        table = match table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => t,
            _ => unreachable!("lookup checked that every segment but the last is a section"),
        };
    }
    table.insert(last.clone(), value);
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        Metadata::named(NAME)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = Value::serialize(&self.table)?
            .into_dict()
            .expect("a TOML table serializes to a dict");
        Ok(Profile::Default.collect(dict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(vars: &[(&str, &str)]) -> Result<EnvLayer, ConfigError> {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        EnvLayer::read(&env)
    }

    fn value(l: &EnvLayer, section: &str, key: &str) -> toml::Value {
        l.table[section][key].clone()
    }

    #[test]
    fn values_take_the_type_of_their_key() {
        let l = layer(&[
            ("CHATGATE_OPENAI__MODEL", "2024-05-13"),
            ("CHATGATE_OPENAI__SYSTEM_PROMPT", "\"quoted\" stays quoted"),
            ("CHATGATE_OPENAI__TEMPERATURE", "1"),
            ("CHATGATE_OPENAI__MAX_RETRIES", " 4 "),
            ("CHATGATE_LOG__SQL", "false"),
            ("CHATGATE_SESSION__IDLE_TIMEOUT", "5m"),
            ("CHATGATE_SERVER__CORS_ORIGINS", "*"),
            ("CHATGATE_OPENAI__MODELS", "a, b,"),
        ])
        .unwrap();
        assert_eq!(value(&l, "openai", "model").as_str(), Some("2024-05-13"));
        assert_eq!(
            value(&l, "openai", "system_prompt").as_str(),
            Some("\"quoted\" stays quoted")
        );
        assert_eq!(value(&l, "openai", "temperature").as_float(), Some(1.0));
        assert_eq!(value(&l, "openai", "max_retries").as_integer(), Some(4));
        assert_eq!(value(&l, "log", "sql").as_bool(), Some(false));
        assert_eq!(value(&l, "session", "idle_timeout").as_str(), Some("5m"));
        assert_eq!(
            value(&l, "server", "cors_origins"),
            toml::Value::from(vec!["*"])
        );
        assert_eq!(
            value(&l, "openai", "models"),
            toml::Value::from(vec!["a", "b"])
        );
        assert_eq!(l.vars["openai.model"], "CHATGATE_OPENAI__MODEL");
    }

    #[test]
    fn lists_take_toml_and_json_arrays() {
        for raw in [
            r#"["https://a.example", "https://b.example"]"#,
            r#"['https://a.example','https://b.example']"#,
            r#"["https:\/\/a.example","https://b.example"]"#,
            "https://a.example,https://b.example",
        ] {
            let l = layer(&[("CHATGATE_SERVER__CORS_ORIGINS", raw)]).unwrap();
            assert_eq!(
                value(&l, "server", "cors_origins"),
                toml::Value::from(vec!["https://a.example", "https://b.example"]),
                "{raw}"
            );
        }
        let l = layer(&[("CHATGATE_SERVER__CORS_ORIGINS", "")]).unwrap();
        assert_eq!(
            value(&l, "server", "cors_origins"),
            toml::Value::Array(vec![])
        );
    }

    #[test]
    fn foreign_variables_are_set_aside() {
        let l = layer(&[
            ("CHATGATE_PORT", "tcp://10.0.0.1:8000"),
            ("CHATGATE_SERVICE_HOST", "10.0.0.1"),
            ("CHATGATE_PORT_8000_TCP_ADDR", "10.0.0.1"),
            ("CHATGATE_SERVER__BIND", "127.0.0.1:9000"),
            ("OTHER", "x"),
        ])
        .unwrap();
        let Some(Warning::IgnoredEnv { vars, sections }) = &l.warning else {
            panic!("no warning: {:?}", l.warning);
        };
        assert_eq!(
            vars,
            &[
                "CHATGATE_PORT",
                "CHATGATE_PORT_8000_TCP_ADDR",
                "CHATGATE_SERVICE_HOST"
            ]
        );
        for s in [
            "server",
            "storage",
            "session",
            "rate_limit",
            "openai",
            "log",
        ] {
            assert!(sections.iter().any(|x| x == s), "{s} missing: {sections:?}");
        }
        assert_eq!(l.vars.len(), 1);
        assert!(layer(&[("CHATGATE_LOG__SQL", "true")])
            .unwrap()
            .warning
            .is_none());
    }

    #[test]
    fn mistakes_under_a_section_name_the_variable_and_the_key() {
        let cases = [
            (
                "CHATGATE_SERVER__MAX_BODY_BYTES",
                "abc",
                "`server.max_body_bytes`: expected an integer",
            ),
            (
                "CHATGATE_LOG__SQL",
                "no",
                "`log.sql`: expected true or false",
            ),
            (
                "CHATGATE_OPENAI__TEMPERATURE",
                "warm",
                "`openai.temperature`: expected a number",
            ),
            (
                "CHATGATE_SERVER__CORS_ORIGINS",
                "[oops",
                "`server.cors_origins`: expected a comma",
            ),
            ("CHATGATE_SERVER__BND", "x", "unknown key `server.bnd`"),
            ("CHATGATE_SERVER", "x", "`server` is a section"),
            ("CHATGATE_SERVER__BIND__PORT", "1", "`server.bind` is a key"),
            ("CHATGATE_SERVER____BIND", "1", "unknown key `server.`"),
        ];
        for (var, raw, words) in cases {
            let e = layer(&[(var, raw)]).unwrap_err().to_string();
            assert!(e.contains(words) && e.contains(var), "{var}: {e}");
        }
    }
}

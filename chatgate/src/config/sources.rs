//! Reading the raw sources: `CHATGATE_*` variables turned into a TOML
//! document, figment errors turned into messages that name the key, and the
//! `.env` file (secrets only).

use std::collections::HashMap;
use std::path::Path;

use super::ConfigError;

const ENV_PREFIX: &str = "CHATGATE_";

/// Turns `CHATGATE_SERVER__BIND=…` variables into a TOML document
/// (`[server] bind = …`). Values that parse as TOML (numbers, booleans,
/// arrays, quoted strings) keep their type; anything else is a string.
pub(super) fn env_overrides(env: &HashMap<String, String>) -> Result<String, ConfigError> {
    let mut vars: Vec<(&String, &String)> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    let mut root = toml::Table::new();
    for (name, value) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Parse(format!(
                "environment variable {name}: expected CHATGATE_SECTION__KEY"
            )));
        }
        // Parse the value as the right-hand side of a TOML assignment (a
        // bare `["a"]` would read as a table header as a document).
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let mut table = &mut root;
        for part in &path[..path.len() - 1] {
            let entry = table
                .entry(part.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = match entry {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(ConfigError::Parse(format!(
                        "environment variable {name}: `{part}` is not a section"
                    )))
                }
            };
        }
        table.insert(path[path.len() - 1].clone(), parsed);
    }
    Ok(toml::to_string(&root).unwrap_or_default())
}

pub(super) fn describe(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let key = err.path.join(".");
        let mut msg = err.kind.to_string();
        if !key.is_empty() {
            msg = format!("invalid value for `{key}`: {msg}");
        }
        if let Some(src) = &err.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            msg.push_str(&format!(" (in {src})"));
        }
        out.push(msg);
    }
    out.join("; ")
}

pub(super) fn read_dotenv(path: Option<&Path>) -> Result<HashMap<String, String>, ConfigError> {
    let Some(path) = path.filter(|p| p.exists()) else {
        return Ok(HashMap::new());
    };
    let iter = dotenvy::from_path_iter(path).map_err(|e| ConfigError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut out = HashMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| ConfigError::Unreadable {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        out.insert(k, v);
    }
    Ok(out)
}

//! Reading the raw sources: figment errors turned into messages that name
//! the key (and the variable, for a value from the environment), and the
//! `.env` file (secrets only).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::{env, ConfigError};

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

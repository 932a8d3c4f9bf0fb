//! Errors of configuration loading. Every one is fatal: the service must not start on a
//! configuration it does not fully understand.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {origin} is not valid TOML: {}", message.trim_end())]
    Syntax { origin: String, message: String },
    #[error("configuration key `{key}`{from_env}: {}", message.trim_end())]
    Key {
        /// Dotted path of the offending key, e.g. `database.batch_max_rows`.
        key: String,
        /// ` (set by FLEETAGG__…)` when the value came from the environment.
        from_env: String,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

impl ConfigError {
    pub(crate) fn key(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Key { key: key.into(), from_env: String::new(), message: message.into() }
    }
}

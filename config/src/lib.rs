//! Typed configuration of fleetagg.
//!
//! A configuration is read from a TOML file, then every key can be overridden by an
//! environment variable `FLEETAGG__SECTION__KEY`. Unknown keys are refused with an
//! error naming the key, durations are strings (`"5s"`, `"10m"`), and the result is
//! validated as a whole before any actor sees it. Nothing here does network I/O.

mod broker_urls;
mod de;
mod duration;
mod error;
mod load;
mod secret;
mod sections;

pub use error::ConfigError;
pub use load::{load, load_from_str, ENV_PREFIX};
pub use secret::{PasswordConfig, SecretSourceKind, AWS_CURRENT};
pub use sections::{
    AggregationConfig, Config, DatabaseConfig, DatabaseTlsConfig, EpochUnit, JournalConfig, JournalSync,
    MetricsConfig, MqttConfig, RejectsConfig, ServiceConfig, Statements, ThreadPlacement, TlsMode,
};

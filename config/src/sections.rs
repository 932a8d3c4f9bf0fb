//! The configuration sections, their defaults and their validation.
//!
//! Field docs say why each key exists; `config/fleetagg.example.toml` documents them for
//! operators and must list every key here.

use crate::duration::{human, human_or_off};
use crate::{ConfigError, PasswordConfig};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration of one fleetagg process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub aggregation: AggregationConfig,
    pub database: DatabaseConfig,
    pub rejects: RejectsConfig,
    pub journal: JournalConfig,
    pub service: ServiceConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker address, or the addresses of a clustered broker's nodes: tried in order at
    /// start-up and at every reconnect, so that an instance whose node dies moves to a
    /// live one. `mqtt://` and `mqtts://` are accepted as aliases of paho's `tcp://` and
    /// `ssl://`.
    #[serde(with = "crate::broker_urls")]
    pub url: Vec<String>,
    /// Fixed so that the broker recognises the persistent session across restarts and
    /// keeps queuing messages while the service is down.
    pub client_id: String,
    pub topics: Vec<String>,
    pub qos: i32,
    /// Larger payloads are rejected as `too_large` before any parsing, so one huge message
    /// cannot cost more than a copy.
    pub max_payload_bytes: usize,
    /// Messages handed over by the MQTT client but not yet routed. When full, the client's
    /// callback blocks, so back-pressure reaches the TCP connection instead of dropping.
    pub inbound_capacity: usize,
    #[serde(with = "human")]
    pub keep_alive: Duration,
    /// Connected but no message for this long: logged as a warning and reported by
    /// `/readyz` (the "connected but silently stopped" failure). `"off"` disables.
    #[serde(with = "human_or_off")]
    pub idle_alert: Option<Duration>,
    /// Subscribe as `$share/<group>/<topic>`: instances with the same group split the
    /// stream between them (minute parts merge exactly in the database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_group: Option<String>,
    /// TLS: the CA bundle that signs the broker's certificate (for `ssl://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// TLS client authentication: certificate and private key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The broker password comes from a secret source, like the database's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordConfig>,
}

impl MqttConfig {
    /// The topic filters as subscribed: prefixed with `$share/<group>/` when shared.
    pub fn subscriptions(&self) -> Vec<String> {
        match &self.shared_group {
            Some(group) => self.topics.iter().map(|topic| format!("$share/{group}/{topic}")).collect(),
            None => self.topics.clone(),
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: vec!["tcp://127.0.0.1:1883".into()],
            client_id: "fleetagg".into(),
            topics: vec!["machines/+/telemetry".into()],
            qos: 1,
            max_payload_bytes: 65_536,
            inbound_capacity: 8_192,
            keep_alive: Duration::from_secs(60),
            idle_alert: Some(Duration::from_secs(300)),
            shared_group: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }
}

impl MqttConfig {
    /// The broker URLs in the scheme paho understands (`tcp://`, `ssl://`, `ws://`,
    /// `wss://`), in the order they are tried.
    pub fn paho_urls(&self) -> Vec<String> {
        self.url.iter().map(|url| crate::broker_urls::paho_url(url)).collect()
    }

    /// Whether the connection is TLS: an `ssl://`/`wss://` URL or a CA file given.
    pub fn uses_tls(&self) -> bool {
        self.ca_file.is_some()
            || self.paho_urls().iter().any(|url| url.starts_with("ssl://") || url.starts_with("wss://"))
    }
}

/// How a numeric `ts` is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EpochUnit {
    /// Unix epoch seconds, fractions allowed.
    #[default]
    S,
    /// Unix epoch milliseconds, fractions allowed.
    Ms,
}

/// `[journal]`: every message is appended here before it is processed, and replayed at
/// start-up until the minutes it fed are committed, so a crash (kill -9, a panic, an OOM
/// kill) loses nothing paho acknowledged to the broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Off, a crash loses what the service held in memory (up to a minute + grace of the
    /// whole fleet): the broker does not resend what paho acknowledged.
    pub enabled: bool,
    /// Relative paths are under the working directory; the systemd unit in
    /// docs/operations.md uses `StateDirectory=`. One instance per directory (a lock).
    pub dir: PathBuf,
    pub sync: JournalSync,
    /// With `sync = "fsync"`: how often appended records are flushed to the disk (one
    /// `fdatasync` for everything appended meanwhile). A power loss loses at most this
    /// much of the stream.
    #[serde(with = "human")]
    pub sync_interval: Duration,
    /// A segment file is closed at this size and removed once every minute it fed is
    /// committed.
    pub segment_bytes: u64,
}

/// What a journal record survives once appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalSync {
    /// Written to the operating system before the message is processed: survives the
    /// process's crash, not the machine's.
    #[default]
    Os,
    /// Also `fdatasync`ed every `sync_interval`, and before each batch is written to
    /// PostgreSQL: survives a power loss, except the last `sync_interval` of messages.
    Fsync,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: true,
            dir: PathBuf::from("fleetagg-journal"),
            sync: JournalSync::Os,
            sync_interval: Duration::from_millis(100),
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregationConfig {
    /// How long after a minute's end its messages may still arrive before it is closed;
    /// covers clock skew and transport delay between machines and the broker.
    #[serde(with = "human")]
    pub grace: Duration,
    /// The longest an aggregator sleeps between looks at its open minutes. Each minute
    /// closes at its end + grace (a timer set for that moment); this only bounds how late
    /// a close can be when the wall clock is stepped forward. It also caps how long a
    /// minute reopened by late messages waits for more of them (50 ms to 5 s of quiet,
    /// after the machine's pace, at most 5 s).
    #[serde(with = "human")]
    pub tick: Duration,
    /// Older messages are rejected as `too_late`; newer ones for an already written minute
    /// are merged into its row by the upsert.
    #[serde(with = "human")]
    pub max_lateness: Duration,
    /// Messages further in the future are rejected as `future_ts`; `"off"` disables.
    #[serde(with = "human_or_off")]
    pub future_tolerance: Option<Duration>,
    /// Zone for timestamps written without an offset.
    #[serde(with = "iana_zone")]
    pub default_timezone: Tz,
    pub epoch_unit: EpochUnit,
}

impl Default for AggregationConfig {
    fn default() -> Self {
        AggregationConfig {
            grace: Duration::from_secs(5),
            tick: Duration::from_secs(15),
            max_lateness: Duration::from_secs(600),
            future_tolerance: Some(Duration::from_secs(5)),
            default_timezone: Tz::UTC,
            epoch_unit: EpochUnit::S,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// libpq-style URL or key/value string, without a password: passwords come from a
    /// secret source so that they never sit in a file that is copied around.
    pub url: String,
    /// Most minute rows per statement. Twice this many rows waiting for the writer is
    /// also where due minutes stop closing until it takes them (at most `tick` later):
    /// when every machine's minute is due at once, the rows reach the writer as fast as
    /// it writes them instead of all at once (docs/architecture.md, "Where back-pressure
    /// acts").
    pub batch_max_rows: usize,
    /// Closed minutes are written 10 ms after they reach an idle writer, or at once when
    /// `batch_max_rows` are waiting; this is how often the writer looks again besides
    /// that: retries after a failure (no sooner than their back-off), pings of an idle
    /// connection, a changed secret.
    #[serde(with = "human")]
    pub flush_interval: Duration,
    /// Closed minutes held while PostgreSQL is unavailable. When full, the writer stops
    /// taking more, and back-pressure reaches the MQTT connection (the broker keeps
    /// queuing for the persistent session): nothing is dropped.
    pub max_buffered_rows: usize,
    /// How statements are sent: see [`Statements`].
    pub statements: Statements,
    /// TLS to PostgreSQL, with libpq's modes.
    pub tls: DatabaseTlsConfig,
    /// Where the password comes from; absent means none (trust or peer authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<PasswordConfig>,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://fleetagg@127.0.0.1:5432/fleetagg".into(),
            batch_max_rows: 5_000,
            flush_interval: Duration::from_secs(1),
            max_buffered_rows: 1_000_000,
            statements: Statements::Auto,
            tls: DatabaseTlsConfig::default(),
            password: None,
        }
    }
}

/// `[database.tls]`: TLS to PostgreSQL. The files are read again at every connection,
/// so they can be rotated without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseTlsConfig {
    pub mode: TlsMode,
    /// CA certificates (PEM) the server's certificate must chain to; without it,
    /// `verify-ca` and `verify-full` use the system's trust store, and `require` does not
    /// verify (as libpq does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate (PEM) and its key, for `cert` authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<std::path::PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
}

/// libpq's `sslmode`, with its meanings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext (logged as a warning); the
    /// certificate is not verified.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is verified against `ca_file` when one is given.
    Require,
    /// TLS, and the server's certificate must chain to a trusted CA.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

/// How the writer sends its statements (`database.statements`).
///
/// A transaction pooler (PgBouncer in `pool_mode = transaction`, RDS Proxy, Supavisor)
/// hands each transaction whichever server connection is free, so a statement prepared
/// on one is unknown on the next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Statements {
    /// Prepared and cached per connection, until PostgreSQL says a prepared statement
    /// does not exist (26000) or already exists (42P05): then unnamed for the life of the
    /// process, logged once.
    #[default]
    Auto,
    /// Prepared once per connection and cached by SQL text: the fastest, directly on
    /// PostgreSQL or behind a session pooler.
    Prepared,
    /// Each statement sent unnamed in one round trip: works behind any pooler.
    Unnamed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RejectsConfig {
    /// Rejected messages stored per second; beyond it they are only counted, so a flood of
    /// garbage cannot overload the database.
    pub max_per_second: u32,
    /// Rejected messages held in memory while PostgreSQL is unavailable; beyond it they
    /// are only counted (`rejects_not_stored`), so a flood of hostile messages during an
    /// outage cannot exhaust memory (each holds at most 12 KiB: topic, detail, payload).
    pub max_buffered: usize,
}

impl Default for RejectsConfig {
    fn default() -> Self {
        RejectsConfig { max_per_second: 1_000, max_buffered: 10_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// How long a stop may take to flush open minutes and drain the writer. Past it the
    /// process exits non-zero and says how many rows were not written.
    #[serde(with = "human")]
    pub shutdown_timeout: Duration,
    /// Where the threads run: see [`ThreadPlacement`].
    pub thread_placement: ThreadPlacement,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            shutdown_timeout: Duration::from_secs(30),
            thread_placement: ThreadPlacement::default(),
        }
    }
}

/// Where the service's threads run (`service.thread_placement`).
///
/// The MQTT client's receive thread takes every message off the socket, acknowledges it
/// and appends it to the journal: it is the stage a backlog drains through, one message
/// at a time. Left to the scheduler, the actors' threads, woken by that thread's own
/// hand-offs, kept landing on its CPU and taking it away (docs/benchmarks.md, session 18).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadPlacement {
    /// The MQTT intake on a CPU of its own (the highest-numbered one the process may
    /// use), every other thread on the rest, and one aggregator shard per CPU of the
    /// rest; the same as `os` when the process may use a single CPU.
    #[default]
    Split,
    /// Every thread on any CPU the process may use, placed by the operating system.
    Os,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the HTTP listener for `/metrics`, `/healthz` and `/readyz`; `"off"`
    /// disables it. Loopback by default: expose it deliberately.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { listen: "127.0.0.1:9464".into() }
    }
}

impl MetricsConfig {
    /// The socket address to listen on, or `None` when disabled.
    pub fn address(&self) -> Option<std::net::SocketAddr> {
        if self.listen.trim().eq_ignore_ascii_case("off") {
            return None;
        }
        self.listen.trim().parse().ok()
    }
}

impl Config {
    /// The effective configuration as TOML, for `check-config`. Secrets never sit in a
    /// `Config` (passwords come from secret sources), so there is nothing to redact yet;
    /// this is the one place that will have to.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|err| format!("# cannot print the configuration: {err}\n"))
    }

    /// Checks the rules that types alone cannot express. Like every configuration error,
    /// these name the key and the rule, never the value (see `crate::de`): a value in the
    /// wrong key may be a secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mqtt = &self.mqtt;
        let scheme_ok = |url: &String| {
            ["tcp://", "ssl://", "ws://", "wss://", "mqtt://", "mqtts://"]
                .iter()
                .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len())
        };
        if mqtt.url.is_empty() || !mqtt.url.iter().all(scheme_ok) {
            // Not echoed: a URL can carry credentials (`tcp://user:password@host`).
            return Err(ConfigError::key(
                "mqtt.url",
                "each URL must start with tcp://, mqtt://, ssl://, mqtts://, ws:// or wss:// and name a host",
            ));
        }
        let carries_credentials = |url: &String| {
            let authority = url.split_once("://").map_or("", |(_, rest)| rest);
            authority.split('/').next().unwrap_or("").contains('@')
        };
        if mqtt.url.iter().any(carries_credentials) {
            // Not echoed, for the same reason; and not accepted: the URL is logged (which
            // broker the instance is on), a password in it would be too.
            return Err(ConfigError::key(
                "mqtt.url",
                "carries credentials (user@ or user:password@); give them as mqtt.username and \
                 [mqtt.password] instead",
            ));
        }
        if mqtt.client_id.trim().is_empty() {
            return Err(ConfigError::key("mqtt.client_id", "must not be empty"));
        }
        if mqtt.topics.is_empty() || mqtt.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::key("mqtt.topics", "needs at least one non-empty topic filter"));
        }
        if !(0..=2).contains(&mqtt.qos) {
            return Err(ConfigError::key("mqtt.qos", "must be 0, 1 or 2"));
        }
        positive("mqtt.max_payload_bytes", mqtt.max_payload_bytes)?;
        if let Some(group) = &mqtt.shared_group {
            if group.is_empty() || group.contains(['/', '+', '#']) {
                return Err(ConfigError::key(
                    "mqtt.shared_group",
                    "must be a non-empty name without '/', '+' or '#'",
                ));
            }
        }
        if mqtt.cert_file.is_some() != mqtt.key_file.is_some() {
            return Err(ConfigError::key("mqtt.cert_file", "and mqtt.key_file go together"));
        }
        if mqtt.password.is_some() && mqtt.username.is_none() {
            return Err(ConfigError::key("mqtt.password", "needs mqtt.username"));
        }
        if let Some(password) = &mqtt.password {
            password.validate_as("mqtt.password")?;
        }
        positive("mqtt.inbound_capacity", mqtt.inbound_capacity)?;

        let listen = self.metrics.listen.trim();
        if !listen.eq_ignore_ascii_case("off") && listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::key("metrics.listen", "must be host:port or \"off\""));
        }
        let aggregation = &self.aggregation;
        if aggregation.tick.is_zero() {
            return Err(ConfigError::key("aggregation.tick", "must be longer than zero"));
        }

        let tls = &self.database.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(ConfigError::key("database.tls.cert_file", "and database.tls.key_file go together"));
        }
        if tls.mode == TlsMode::Disable && (tls.ca_file.is_some() || tls.cert_file.is_some()) {
            return Err(ConfigError::key(
                "database.tls.mode",
                "is \"disable\", yet certificate files are set",
            ));
        }
        positive("database.batch_max_rows", self.database.batch_max_rows)?;
        if self.database.max_buffered_rows < self.database.batch_max_rows {
            return Err(ConfigError::key(
                "database.max_buffered_rows",
                "must be at least database.batch_max_rows",
            ));
        }
        if self.database.flush_interval.is_zero() {
            return Err(ConfigError::key("database.flush_interval", "must be longer than zero"));
        }
        check_database_url(&self.database.url)?;
        let journal = &self.journal;
        if journal.enabled {
            if journal.dir.as_os_str().is_empty() {
                return Err(ConfigError::key("journal.dir", "must not be empty"));
            }
            if journal.segment_bytes < 1024 * 1024 {
                return Err(ConfigError::key("journal.segment_bytes", "must be at least 1 MiB"));
            }
            if journal.sync_interval.is_zero() {
                return Err(ConfigError::key("journal.sync_interval", "must be longer than zero"));
            }
        }
        match &self.database.password {
            Some(password) => password.validate_as("database.password"),
            None => Ok(()),
        }
    }
}

fn positive(key: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(ConfigError::key(key, "must be at least 1"));
    }
    Ok(())
}

fn check_database_url(url: &str) -> Result<(), ConfigError> {
    let parsed: tokio_postgres::Config =
        url.parse().map_err(|err| ConfigError::key("database.url", format!("cannot be parsed: {err}")))?;
    if parsed.get_password().is_some() {
        // Never echo the URL: it holds the password we are refusing.
        return Err(ConfigError::key(
            "database.url",
            "carries a password; remove it and give the password through a secret source \
             (see docs/operations.md: AWS Secrets Manager, a file or an environment variable)",
        ));
    }
    Ok(())
}

/// `aggregation.default_timezone` by IANA name. chrono-tz's own error quotes the name
/// given; this one says what is expected instead (see `crate::de`).
mod iana_zone {
    use chrono_tz::Tz;
    use serde::de::{self, Unexpected};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(zone: &Tz, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(zone.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Tz, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|_| {
            de::Error::invalid_value(
                Unexpected::Str(&text),
                &"an IANA time zone name such as \"Europe/Paris\" or \"UTC\"",
            )
        })
    }
}

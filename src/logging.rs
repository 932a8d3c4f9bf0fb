//! Log set-up: `tracing` with text or JSON output, to standard error.
//!
//! Whatever filter the user sets (`--log-level`, `RUST_LOG`), a guard layer in front of
//! it drops the few events of dependencies known to carry secrets; see
//! [`may_carry_secrets`].

use crate::cli::LogFormat;
use std::io::IsTerminal;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};
use tracing_subscriber::EnvFilter;

pub(crate) fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in files or journald.
    let ansi = std::io::stderr().is_terminal();
    if let Err(err) = install(format, filter, std::io::stderr, ansi) {
        eprintln!("fleetagg: logging not initialised: {err}");
    }
}

/// Installs the global subscriber (and the bridge from the `log` crate, which paho-mqtt
/// logs through).
fn install<W>(format: LogFormat, filter: EnvFilter, writer: W, ansi: bool) -> Result<(), TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    // The guard is the outermost layer: an event it refuses is disabled for the whole
    // subscriber, before the user's filter is even asked.
    match format {
        LogFormat::Text => builder.finish().with(secret_guard()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).finish().with(secret_guard()).try_init(),
    }
}

/// The layer that vetoes [`may_carry_secrets`] events.
fn secret_guard() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    filter_fn(|metadata| !may_carry_secrets(metadata))
}

/// Events that no filter may enable, because they carry secrets:
///
/// - paho-mqtt's Rust layer (targets `paho_mqtt` and `paho_mqtt::…`; not the C library's
///   `paho_mqtt_c`) logs its whole `ConnectOptions` with `{:?}` at debug level on every
///   connect, the broker password included as a list of bytes. It is held at info: the
///   guard works on targets and levels, not on message text that an upgrade may reword,
///   and paho's warnings and errors (lost connection, full stream) still pass; its debug
///   and trace lines only follow its own calls. The C library's trace has no password
///   (checked at its most verbose in the tests), so it stays available for debugging the
///   protocol.
/// - The AWS SDK logs the HTTP response at trace level, and with `LOG_SENSITIVE_BODIES=true`
///   in the environment the body of GetSecretValue, the secret itself. Its orchestrator's
///   events with a `response` field are dropped, so that switch cannot leak it either.
///
/// Checked on the metadata alone, so it costs a comparison per callsite (for `log`
/// records, per record: the bridge asks before building the event).
fn may_carry_secrets(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    let paho = target == "paho_mqtt" || target.starts_with("paho_mqtt::");
    if paho {
        return *metadata.level() > Level::INFO;
    }
    target.starts_with("aws_smithy_runtime")
        && *metadata.level() == Level::TRACE
        && metadata.fields().field("response").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Collects everything the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;

        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    /// The most verbose filter anyone can set (`RUST_LOG=trace`), a real paho-mqtt
    /// connect with a broker password, and the AWS SDK's response-body event: the
    /// password appears nowhere, neither as text nor as the byte list of a `{:?}`.
    /// (The only test here that installs the global subscriber: it can be done once.)
    #[test]
    fn no_filter_lets_a_secret_into_the_log() {
        let password = "Lg5-mqtt-s3cr3t-Hn2";
        let captured = Captured::default();
        install(LogFormat::Text, EnvFilter::new("trace"), captured.clone(), false).unwrap();

        let client = paho_mqtt::CreateOptionsBuilder::new()
            .server_uri("tcp://127.0.0.1:1") // nothing listens there: refused at once
            .client_id("fleetagg-logging-test")
            .persistence(paho_mqtt::PersistenceType::None)
            .create_client()
            .unwrap();
        let options = paho_mqtt::ConnectOptionsBuilder::new()
            .user_name("fleetagg")
            .password(password)
            .connect_timeout(Duration::from_secs(2))
            .finalize();
        assert!(client.connect(options).wait().is_err(), "nothing should accept the connection");
        tracing::trace!(
            target: "aws_smithy_runtime::client::orchestrator::http",
            response = password,
            "read HTTP response body"
        );
        tracing::trace!("probe: trace events are written");

        let text = captured.text();
        assert!(text.contains("probe: trace events are written"), "the filter should be at trace:\n{text}");
        assert!(text.contains("paho_mqtt_c"), "paho's C trace should pass:\n{text}");
        let byte_list = format!("{:?}", password.as_bytes());
        let byte_list = byte_list.trim_start_matches('[').trim_end_matches(']');
        assert!(!text.contains(password), "the password is in the log:\n{text}");
        assert!(!text.contains(byte_list), "the password's bytes are in the log:\n{text}");
    }
}

//! paho's connect options, built again for every attempt: the password may have been
//! rotated and the certificate files replaced since the last one.

use super::SourceError;
use fleetagg_config::MqttConfig;
use paho_mqtt as mqtt;
use secrecy::ExposeSecret;
use std::time::Duration;

/// paho's own limit for one attempt (TCP, TLS and CONNACK), per broker URL.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A persistent session (the broker queues while the service is away), the broker URL,
/// TLS and the login when configured.
/// No automatic reconnect: the connection thread reconnects itself, so that each attempt
/// carries the current password and certificate files and re-subscribes (see
/// `connection.rs`).
pub(super) fn connect_options(
    config: &MqttConfig,
    urls: &[String],
    password: Option<&secrecy::SecretString>,
) -> Result<mqtt::ConnectOptions, SourceError> {
    let client_error = |message: String| SourceError::Client { url: urls.join(","), message };
    // Not paho's default version, which falls back to MQTT 3.1 when 3.1.1 is refused: a
    // second attempt of its own that the connection thread would not know about.
    let mut builder = mqtt::ConnectOptionsBuilder::with_mqtt_version(mqtt::MQTT_VERSION_3_1_1);
    builder
        .keep_alive_interval(config.keep_alive)
        .clean_session(false)
        .server_uris(urls)
        .connect_timeout(CONNECT_TIMEOUT);
    if config.uses_tls() {
        let mut ssl = mqtt::SslOptionsBuilder::new();
        // The certificate must also name the host connected to (paho checks the chain
        // only, unless asked).
        ssl.verify(true);
        if let Some(ca) = &config.ca_file {
            ssl.trust_store(ca).map_err(|err| client_error(format!("mqtt.ca_file: {err}")))?;
        }
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            ssl.key_store(cert).map_err(|err| client_error(format!("mqtt.cert_file: {err}")))?;
            ssl.private_key(key).map_err(|err| client_error(format!("mqtt.key_file: {err}")))?;
        }
        builder.ssl_options(ssl.finalize());
    }
    if let Some(user) = &config.username {
        builder.user_name(user);
    }
    if let Some(password) = password {
        builder.password(password.expose_secret());
    }
    Ok(builder.finalize())
}

/// The options the service connects to `url` with, without a password: for a consumer
/// that must connect exactly as the service does (the paho floor of `scripts/bench`).
pub fn service_connect_options(config: &MqttConfig, url: &str) -> Result<mqtt::ConnectOptions, SourceError> {
    connect_options(config, &[url.to_owned()], None)
}

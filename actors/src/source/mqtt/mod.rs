//! The MQTT source: a paho-mqtt client with a persistent session.
//!
//! paho acknowledges a QoS 1 message when it arrives, and its own bounded stream drops
//! messages when full ("Input stream full. Losing messages"). So this source does not use
//! that stream: its message callback hands each message to the bounded [`InboundSink`]
//! with a blocking send. While the service is slow, paho's receive thread waits in that
//! callback, stops reading the socket, and the broker keeps queuing for the session.

mod connect_error;

use super::{InboundMessage, InboundSink, MessageSource, SourceError};
use crate::backoff::{self, Retries};
use crate::stats::{bump, PipelineStats};
use fleetagg_config::MqttConfig;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use paho_mqtt as mqtt;
use secrecy::ExposeSecret;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub struct MqttSource {
    config: MqttConfig,
    client: Option<mqtt::AsyncClient>,
    sink: Option<InboundSink>,
}

impl std::fmt::Debug for MqttSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSource")
            .field("url", &self.config.url)
            .field("client_id", &self.config.client_id)
            .field("connected", &self.client.as_ref().is_some_and(mqtt::AsyncClient::is_connected))
            .finish()
    }
}

impl MqttSource {
    pub fn new(config: &MqttConfig) -> Self {
        MqttSource { config: config.clone(), client: None, sink: None }
    }
}

impl MessageSource for MqttSource {
    fn start(
        &mut self,
        sink: InboundSink,
        stats: Arc<PipelineStats>,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        let config = self.config.clone();
        let url = config.paho_url();
        let client = mqtt::CreateOptionsBuilder::new()
            .server_uri(&url)
            .client_id(&config.client_id)
            .persistence(mqtt::PersistenceType::None)
            .create_client()
            .map_err(|err| SourceError::Client { url: url.clone(), message: err.to_string() });
        let client = match client {
            Ok(client) => client,
            Err(err) => return async move { Err(err) }.boxed(),
        };

        let delivery = sink.clone();
        let max_payload_bytes = config.max_payload_bytes;
        // Set before connecting: a persistent session's queued messages arrive right
        // after CONNACK.
        client.set_message_callback(move |_, message| {
            if let Some(message) = message {
                let inbound = InboundMessage::received(message.topic(), message.payload(), max_payload_bytes);
                if !delivery.blocking_deliver(inbound) {
                    tracing::warn!(
                        topic = message.topic(),
                        "message arrived after intake stopped; not processed"
                    );
                }
            }
        });
        let topics = config.subscriptions();
        let qos = vec![config.qos; topics.len()];
        let connected_stats = stats.clone();
        client.set_connected_callback(move |client| {
            // paho does not re-subscribe after an automatic reconnect; when the broker
            // lost the session, the subscription is gone. Subscribing again is harmless.
            tracing::info!("connected to the MQTT broker; subscribing");
            let stats = &connected_stats;
            if stats.mqtt_connected_at_micros.load(Ordering::Relaxed) != 0 {
                bump(&stats.mqtt_reconnects, 1);
                // paho's callback does not say whether the broker kept the session.
                stats.mqtt_session_resumed.set(None);
            }
            stats.mark_now(&stats.mqtt_connected_at_micros);
            stats.mqtt_connected.store(true, Ordering::Relaxed);
            // Not waited for here (paho's callback thread must stay free): a refused
            // subscription is checked at start-up only.
            drop(client.subscribe_many(&topics, &qos));
            stats.mqtt_subscribed.store(true, Ordering::Relaxed);
        });
        let lost_stats = stats.clone();
        client.set_connection_lost_callback(move |_| {
            lost_stats.mqtt_connected.store(false, Ordering::Relaxed);
            lost_stats.mqtt_subscribed.store(false, Ordering::Relaxed);
            tracing::warn!("connection to the MQTT broker lost; reconnecting");
        });

        self.client = Some(client.clone());
        self.sink = Some(sink);
        async move {
            connect_and_subscribe(&client, &config, &url, stats.clone()).await?;
            stats.mqtt_subscribed.store(true, Ordering::Relaxed);
            Ok(())
        }
        .boxed()
    }

    fn stop(&mut self) -> BoxFuture<'static, ()> {
        let client = self.client.take();
        let sink = self.sink.take();
        async move {
            // Off the runtime for the reason given at `off_runtime`: the broker actor must
            // keep draining while paho disconnects.
            off_runtime(move || {
                if let Some(client) = client {
                    let options =
                        mqtt::DisconnectOptionsBuilder::new().timeout(Duration::from_secs(5)).finalize();
                    if let Err(err) = client.disconnect(options).wait() {
                        tracing::warn!(error = %err, "MQTT disconnect did not complete cleanly");
                    }
                }
                if let Some(sink) = sink {
                    sink.close();
                }
            })
            .await;
        }
        .boxed()
    }
}

/// Persistent session, automatic reconnection, and TLS and credentials when configured
/// (the broker password is read from its secret source once, at start-up).
fn connect_options(
    config: &MqttConfig,
    url: &str,
    password: Option<&secrecy::SecretString>,
) -> Result<mqtt::ConnectOptions, SourceError> {
    let client_error = |message: String| SourceError::Client { url: url.to_owned(), message };
    let mut builder = mqtt::ConnectOptionsBuilder::new();
    builder
        .keep_alive_interval(config.keep_alive)
        .clean_session(false)
        .automatic_reconnect(backoff::MQTT_CONNECT.initial, backoff::MQTT_CONNECT.max)
        .connect_timeout(Duration::from_secs(10));
    let tls = url.starts_with("ssl://") || url.starts_with("wss://") || config.ca_file.is_some();
    if tls {
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

/// Connects with a persistent session, retrying with capped back-off while the broker is
/// unreachable, then subscribes.
async fn connect_and_subscribe(
    client: &mqtt::AsyncClient,
    config: &MqttConfig,
    url: &str,
    stats: Arc<PipelineStats>,
) -> Result<(), SourceError> {
    let password = match &config.password {
        Some(password) => {
            let source = crate::secrets::build_source(password).await;
            let credentials = crate::secrets::fetch_at_start(source.as_ref()).await.map_err(|err| {
                SourceError::Client { url: url.to_owned(), message: format!("broker password: {err}") }
            })?;
            Some(credentials.password)
        }
        None => None,
    };
    let (client, config, url) = (client.clone(), config.clone(), url.to_owned());
    off_runtime(move || connect_blocking(&client, &config, &url, password.as_ref(), &stats))
        .await
        .unwrap_or_else(|| {
            Err(SourceError::Client { url: String::new(), message: "MQTT control thread failed".into() })
        })
}

/// Runs paho calls on a thread of their own. paho's API takes its global mutex, which its
/// receive thread holds while our message callback waits for room in the inbound channel:
/// called from the thread that drains that channel (the System arbiter, where the broker
/// actor runs), a paho call would wait for itself.
async fn off_runtime<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fleetagg-mqtt-ctl".into())
        .spawn(move || {
            let _ = done.send(work());
        })
        .ok()?;
    result.await.ok()
}

/// How long one connect of ours may take before the loop looks again (paho's own
/// connect timeout is 10 s; this only bounds a token that never completes).
const CONNECT_WAIT: Duration = Duration::from_secs(15);

fn connect_blocking(
    client: &mqtt::AsyncClient,
    config: &MqttConfig,
    url: &str,
    password: Option<&secrecy::SecretString>,
    stats: &PipelineStats,
) -> Result<(), SourceError> {
    let options = connect_options(config, url, password)?;
    let mut retries = Retries::new(backoff::MQTT_CONNECT);
    loop {
        // With automatic reconnect on, paho retries a failed first connect by itself too;
        // when it wins, a connect of ours would never complete (seen: start-up stuck after
        // paho had connected and acknowledged the backlog). Take its connection.
        if client.is_connected() {
            tracing::info!(url, client_id = %config.client_id, "MQTT connected (by paho's own retry)");
            stats.set_mqtt_problem(None);
            break;
        }
        match client.connect(options.clone()).wait_for(CONNECT_WAIT) {
            Ok(response) => {
                let resumed = response.connect_response().is_some_and(|r| r.session_present);
                tracing::info!(url, client_id = %config.client_id, resumed_session = resumed, "MQTT connected");
                stats.mqtt_session_resumed.set(Some(resumed));
                stats.set_mqtt_problem(None);
                break;
            }
            Err(_) if client.is_connected() => continue,
            Err(err) => {
                // Logged when a cause starts (or changes), not at every retry; `/readyz`
                // says it meanwhile.
                let (kind, cause) = connect_error::describe(&err, url);
                if stats.set_mqtt_problem(Some(cause.clone())) {
                    tracing::warn!(url, cause = %cause, "{}", kind.headline());
                }
                std::thread::sleep(retries.failed());
            }
        }
    }
    let topics = config.subscriptions();
    let qos = vec![config.qos; topics.len()];
    client
        .subscribe_many(&topics, &qos)
        .wait()
        .map_err(|err| err.to_string())
        .and_then(|response| refused_topics(&topics, response.subscribe_many_response().as_deref()))
        .map_err(|message| SourceError::Subscribe { topics: topics.clone(), message })?;
    tracing::info!(topics = ?topics, qos = config.qos, "subscribed");
    Ok(())
}

/// A SUBACK grants each topic filter a QoS, or refuses it with a failure code (0x80 and
/// up: MQTT 3.1.1's "failure", MQTT 5's reason codes), typically the broker's ACL: an
/// error naming the refused filters, since nothing would ever arrive on them.
fn refused_topics(topics: &[String], granted: Option<&[i32]>) -> Result<(), String> {
    let Some(granted) = granted else { return Ok(()) };
    let refused: Vec<String> = topics
        .iter()
        .zip(granted)
        .filter(|(_, code)| **code >= 0x80)
        .map(|(topic, code)| format!("{topic} (code 0x{code:02x})"))
        .collect();
    if refused.is_empty() {
        Ok(())
    } else {
        Err(format!("refused by the broker (not authorized by its ACL?): {}", refused.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::refused_topics;

    #[test]
    fn a_suback_failure_code_names_the_refused_filters() {
        let topics = vec!["a/+/telemetry".to_owned(), "b/+/telemetry".to_owned()];
        assert_eq!(refused_topics(&topics, Some(&[1, 1])), Ok(()));
        assert_eq!(refused_topics(&topics, None), Ok(()));
        let refused = refused_topics(&topics, Some(&[1, 0x80])).expect_err("0x80 is a refusal");
        assert!(refused.contains("b/+/telemetry (code 0x80)") && !refused.contains("a/+"), "{refused}");
        // MQTT 5 reason codes: 0x87 "not authorized".
        assert!(refused_topics(&topics, Some(&[0x87, 0])).is_err());
    }
}

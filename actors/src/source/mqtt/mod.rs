//! The MQTT source: a paho-mqtt client with a persistent session.
//!
//! paho acknowledges a QoS 1 message when it arrives, and its own bounded stream drops
//! messages when full ("Input stream full. Losing messages"). So this source does not use
//! that stream: its message callback hands each message to the bounded [`InboundSink`]
//! with a blocking send. While the service is slow, paho's receive thread waits in that
//! callback, stops reading the socket, and the broker keeps queuing for the session.
//!
//! Connecting, subscribing and reconnecting happen on a thread of their own
//! (`connection.rs`); the broker password is in `password.rs`, paho's options in
//! `options.rs`.

mod connect_error;
mod connection;
mod options;
mod password;

use super::{InboundMessage, InboundSink, MessageSource, SourceError};
use crate::placement::Split;
use crate::stats::PipelineStats;
use connection::{Connection, Event, StopGate};
use fleetagg_config::MqttConfig;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
pub use options::service_connect_options;
use paho_mqtt as mqtt;
use password::BrokerPassword;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

pub struct MqttSource {
    config: MqttConfig,
    client: Option<mqtt::AsyncClient>,
    sink: Option<InboundSink>,
    /// Tells the connection thread to stop reconnecting.
    events: Option<mpsc::Sender<Event>>,
    gate: Arc<StopGate>,
    /// The CPUs the connection thread, and so paho's threads, run on
    /// ([`crate::placement`]); `None`: wherever the OS puts them.
    placement: Option<Split>,
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
        MqttSource {
            config: config.clone(),
            client: None,
            sink: None,
            events: None,
            gate: Arc::default(),
            placement: None,
        }
    }

    /// Runs the MQTT client's threads on the intake's CPU of `split`.
    pub fn placed(mut self, split: Option<Split>) -> Self {
        self.placement = split;
        self
    }
}

impl MessageSource for MqttSource {
    fn start(
        &mut self,
        sink: InboundSink,
        stats: Arc<PipelineStats>,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        let config = self.config.clone();
        let urls = config.paho_urls();
        let client = mqtt::CreateOptionsBuilder::new()
            .server_uri(urls.first().map_or("", String::as_str))
            .client_id(&config.client_id)
            .persistence(mqtt::PersistenceType::None)
            .create_client()
            .map_err(|err| SourceError::Client { url: urls.join(","), message: err.to_string() });
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
        let (events, received_events) = mpsc::channel();
        let lost_stats = stats.clone();
        let lost = events.clone();
        client.set_connection_lost_callback(move |_| {
            lost_stats.mqtt_connected.store(false, Ordering::Relaxed);
            lost_stats.mqtt_subscribed.store(false, Ordering::Relaxed);
            tracing::warn!("connection to the MQTT broker lost; reconnecting");
            let _ = lost.send(Event::Lost);
        });

        self.client = Some(client.clone());
        self.sink = Some(sink);
        self.events = Some(events);
        let gate = self.gate.clone();
        let placement = self.placement.clone();
        async move {
            let password = match &config.password {
                Some(password) => {
                    Some(BrokerPassword::read_at_start(password, stats.clock.0.clone()).await.map_err(
                        |err| SourceError::Client {
                            url: urls.join(","),
                            message: format!("broker password: {err}"),
                        },
                    )?)
                }
                None => None,
            };
            let (first, first_result) = tokio::sync::oneshot::channel();
            let connection = Connection {
                client,
                config,
                urls,
                password,
                stats,
                events: received_events,
                gate,
                placement,
            };
            std::thread::Builder::new()
                .name("fleetagg-mqtt-conn".into())
                .spawn(move || connection.run(first))
                .map_err(|err| SourceError::Client {
                    url: String::new(),
                    message: format!("cannot start the MQTT connection thread: {err}"),
                })?;
            first_result.await.unwrap_or_else(|_| {
                Err(SourceError::Client {
                    url: String::new(),
                    message: "MQTT connection thread failed".into(),
                })
            })
        }
        .boxed()
    }

    fn stop(&mut self) -> BoxFuture<'static, ()> {
        let client = self.client.take();
        let sink = self.sink.take();
        // No connect begins after this: see `StopGate`.
        self.gate.close();
        if let Some(events) = self.events.take() {
            let _ = events.send(Event::Stop);
        }
        async move {
            // Off the runtime for the reason given at `off_runtime`: the broker actor must
            // keep draining while paho disconnects.
            off_runtime(move || {
                if let Some(client) = client {
                    let options =
                        mqtt::DisconnectOptionsBuilder::new().timeout(Duration::from_secs(5)).finalize();
                    // Also when not connected: a connect still in flight is ended by it.
                    let was_connected = client.is_connected();
                    if let Err(err) = client.disconnect(options).wait() {
                        if was_connected {
                            tracing::warn!(error = %err, "MQTT disconnect did not complete cleanly");
                        }
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

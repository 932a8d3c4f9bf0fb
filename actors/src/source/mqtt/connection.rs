//! The connection thread: connects, subscribes and checks the SUBACK at start-up and
//! again after every lost connection, until the service stops.
//!
//! paho's automatic reconnect is not used. It reconnects with the options of the first
//! connect (the password and certificate files as they were at start-up), does not
//! subscribe again (a session can die with its broker node), and once raced our own
//! first connect into a token that never completed. Here every attempt builds its
//! options anew, with the broker password read again when it is stale or was just
//! refused, and every connection subscribes and checks what the broker granted.

use super::connect_error::{self, FailureKind};
use super::options::connect_options;
use super::password::BrokerPassword;
use super::SourceError;
use crate::backoff::{self, Retries};
use crate::placement::Split;
use crate::stats::{bump, PipelineStats};
use fleetagg_config::MqttConfig;
use paho_mqtt as mqtt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// How long one connect or subscribe of ours may take before the thread looks again
/// (paho's own connect timeout is 10 s per URL; this only bounds a token that never
/// completes).
const TOKEN_WAIT: Duration = Duration::from_secs(25);

/// What the source tells the connection thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Event {
    /// paho reported the connection lost.
    Lost,
    /// The service stops: no new connection.
    Stop,
}

/// Whether the service stops, behind a lock that is held while a connect begins: once
/// `stop` has set it, no connect can begin after its disconnect, so nothing arrives after
/// the inbound sink closed.
#[derive(Debug, Default)]
pub(super) struct StopGate(Mutex<bool>);

impl StopGate {
    pub(super) fn close(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
    }

    /// Runs `begin` unless the gate is closed.
    fn unless_stopping<T>(&self, begin: impl FnOnce() -> T) -> Option<T> {
        let stopping = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (!*stopping).then(begin)
    }
}

pub(super) struct Connection {
    pub(super) client: mqtt::AsyncClient,
    pub(super) config: MqttConfig,
    pub(super) urls: Vec<String>,
    pub(super) password: Option<BrokerPassword>,
    pub(super) stats: Arc<PipelineStats>,
    pub(super) events: Receiver<Event>,
    pub(super) gate: Arc<StopGate>,
    /// Taken by this thread before it connects: paho starts its receive and send threads
    /// from the thread that connects, and they inherit its CPUs.
    pub(super) placement: Option<Split>,
}

/// What one round over the broker URLs gave.
enum Attempt {
    /// Connected to this URL; whether the broker kept the session, when its answer came
    /// in time.
    Connected(String, Option<bool>),
    /// The options could not be built (a certificate file unreadable).
    Unusable(SourceError),
    /// No URL answered: the most telling kind, and every URL's cause.
    Failed(FailureKind, String),
}

/// Why [`Connection::establish`] returned without a connection.
enum NotConnected {
    Stopped,
    /// At start-up only: the error start-up fails with.
    Failed(SourceError),
}

impl Connection {
    /// The thread's body: the first connection (its result goes to `first`), then a new
    /// one after every loss, until [`Event::Stop`].
    pub(super) fn run(mut self, first: tokio::sync::oneshot::Sender<Result<(), SourceError>>) {
        if let Some(split) = &self.placement {
            split.pin_intake_here();
        }
        match self.establish(true) {
            Ok(()) => {
                let _ = first.send(Ok(()));
            }
            Err(NotConnected::Failed(err)) => {
                let _ = first.send(Err(err));
                return;
            }
            Err(NotConnected::Stopped) => {
                let message = "stopped before the first connection".to_owned();
                let _ = first.send(Err(SourceError::Connect { url: self.urls.join(","), message }));
                return;
            }
        }
        while let Ok(event) = self.events.recv() {
            match event {
                Event::Stop => return,
                // paho reconnected by itself (to the same URL, the only one it was given)
                // before this notice was read: the session may be new, so subscribe.
                Event::Lost if self.client.is_connected() => {
                    bump(&self.stats.mqtt_reconnects, 1);
                    self.stats.mqtt_session_resumed.set(None);
                    if !matches!(self.subscribe_until_granted(false), Ok(true))
                        && self.establish(false).is_err()
                    {
                        return;
                    }
                }
                Event::Lost => {
                    if self.establish(false).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Connects and subscribes, retrying with back-off. At start-up a client that cannot
    /// be configured or a refused subscription fails start-up; later they are reported
    /// (log, `/readyz`) and retried, since a certificate file being replaced or an ACL
    /// being fixed heals.
    fn establish(&mut self, at_start: bool) -> Result<(), NotConnected> {
        let mut retries = Retries::new(backoff::MQTT_CONNECT);
        let mut login_refused = false;
        loop {
            match self.connect_to_first_that_answers(login_refused)? {
                Attempt::Connected(url, resumed) => self.note_connected(&url, resumed),
                Attempt::Unusable(err) if at_start => return Err(NotConnected::Failed(err)),
                Attempt::Unusable(err) => {
                    self.report(FailureKind::Unreachable, &err.to_string());
                    self.pause(retries.failed())?;
                    continue;
                }
                Attempt::Failed(kind, cause) => {
                    login_refused = kind == FailureKind::Refused;
                    self.report(kind, &cause);
                    self.pause(retries.failed())?;
                    continue;
                }
            }
            login_refused = false;
            match self.subscribe_until_granted(at_start)? {
                true => return Ok(()),
                // The connection was lost again while subscribing.
                false => continue,
            }
        }
    }

    /// One round over `mqtt.url`, in order. Each connect names one URL (paho given a
    /// list keeps trying its other entries by itself after a connection is lost, and
    /// connects without telling us where), so the URL connected to is known.
    fn connect_to_first_that_answers(&mut self, login_refused: bool) -> Result<Attempt, NotConnected> {
        let password = self.password.as_mut().map(|password| password.for_next_connection(login_refused));
        let mut failures = Vec::new();
        for url in &self.urls {
            let options = match connect_options(&self.config, std::slice::from_ref(url), password) {
                Ok(options) => options,
                Err(err) => return Ok(Attempt::Unusable(err)),
            };
            let Some(token) = self.gate.unless_stopping(|| self.client.connect(options)) else {
                return Err(NotConnected::Stopped);
            };
            match token.wait_for(TOKEN_WAIT) {
                Ok(response) => {
                    let resumed = response.connect_response().map(|connected| connected.session_present);
                    return Ok(Attempt::Connected(url.clone(), resumed));
                }
                // Connected although the token did not say so in time.
                Err(_) if self.client.is_connected() => return Ok(Attempt::Connected(url.clone(), None)),
                Err(err) => {
                    let (kind, cause) =
                        connect_error::describe(&err, std::slice::from_ref(url), &self.config);
                    failures.push((url, kind, cause));
                }
            }
        }
        // A refusal is the most telling (the broker answered), then TLS.
        let kind = [FailureKind::Refused, FailureKind::Tls]
            .into_iter()
            .find(|kind| failures.iter().any(|(_, failed, _)| failed == kind))
            .unwrap_or(FailureKind::Unreachable);
        let cause = match failures.as_slice() {
            [(_, _, cause)] => cause.clone(),
            all => all.iter().map(|(url, _, cause)| format!("{url}: {cause}")).collect::<Vec<_>>().join("; "),
        };
        Ok(Attempt::Failed(kind, cause))
    }

    /// Subscribes until the broker grants every filter. True when subscribed, false when
    /// the connection was lost meanwhile.
    fn subscribe_until_granted(&mut self, at_start: bool) -> Result<bool, NotConnected> {
        let topics = self.config.subscriptions();
        let qos = vec![self.config.qos; topics.len()];
        let mut retries = Retries::new(backoff::MQTT_CONNECT);
        loop {
            let granted = self
                .client
                .subscribe_many(&topics, &qos)
                .wait_for(TOKEN_WAIT)
                .map_err(|err| subscribe_error(&topics, &err))
                .and_then(|response| refused_topics(&topics, response.subscribe_many_response().as_deref()));
            match granted {
                Ok(()) => {
                    tracing::info!(topics = ?topics, qos = self.config.qos, "subscribed");
                    self.stats.mqtt_subscribed.store(true, Ordering::Relaxed);
                    if self.stats.set_mqtt_problem(None) {
                        tracing::info!("the MQTT subscription works again");
                    }
                    return Ok(true);
                }
                Err(message) if at_start => {
                    return Err(NotConnected::Failed(SourceError::Subscribe { topics, message }))
                }
                Err(message) => {
                    let cause = format!("subscription to {topics:?} failed: {message}");
                    if self.stats.set_mqtt_problem(Some(cause.clone())) {
                        tracing::error!(cause = %cause, "the MQTT broker did not grant the subscription; nothing arrives on it; retrying with back-off");
                    }
                    self.pause(retries.failed())?;
                    if !self.client.is_connected() {
                        return Ok(false);
                    }
                }
            }
        }
    }

    fn note_connected(&self, url: &str, resumed: Option<bool>) {
        let stats = &self.stats;
        if stats.mqtt_connected_at_micros.load(Ordering::Relaxed) != 0 {
            bump(&stats.mqtt_reconnects, 1);
        }
        stats.mark_now(&stats.mqtt_connected_at_micros);
        stats.mqtt_connected.store(true, Ordering::Relaxed);
        stats.mqtt_session_resumed.set(resumed);
        tracing::info!(
            broker = url,
            client_id = %self.config.client_id,
            resumed_session = %stats.mqtt_session_resumed.get().map_or("unknown".to_owned(), |resumed| resumed.to_string()),
            "MQTT connected; subscribing"
        );
        *stats.mqtt_broker.lock().unwrap_or_else(PoisonError::into_inner) = Some(url.to_owned());
    }

    /// Logged when a cause starts or changes, not at every retry; `/readyz` says it
    /// meanwhile.
    fn report(&self, kind: FailureKind, cause: &str) {
        if self.stats.set_mqtt_problem(Some(cause.to_owned())) {
            tracing::warn!(urls = ?self.urls, cause = %cause, "{}", kind.headline());
        }
    }

    /// Waits `delay` unless the service stops meanwhile.
    fn pause(&self, delay: Duration) -> Result<(), NotConnected> {
        match self.events.recv_timeout(delay) {
            Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => Err(NotConnected::Stopped),
            Ok(Event::Lost) | Err(RecvTimeoutError::Timeout) => Ok(()),
        }
    }
}

/// paho turns a SUBACK that refuses the only filter of a request into a bare "General
/// failure" (logging the code, 0x80, at warn): that is the broker refusing, named as such.
fn subscribe_error(topics: &[String], err: &mqtt::Error) -> String {
    match err {
        mqtt::Error::Failure => {
            let refused: Vec<String> = topics.iter().map(|topic| format!("{topic} (code 0x80)")).collect();
            refusal(&refused)
        }
        other => other.to_string(),
    }
}

fn refusal(refused: &[String]) -> String {
    format!("refused by the broker (not authorized by its ACL?): {}", refused.join(", "))
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
        Err(refusal(&refused))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suback_failure_code_names_the_refused_filters() {
        let topics = vec!["a/+/telemetry".to_owned(), "b/+/telemetry".to_owned()];
        assert_eq!(refused_topics(&topics, Some(&[1, 1])), Ok(()));
        assert_eq!(refused_topics(&topics, None), Ok(()));
        let refused = refused_topics(&topics, Some(&[1, 0x80])).expect_err("0x80 is a refusal");
        assert!(refused.contains("b/+/telemetry (code 0x80)") && !refused.contains("a/+"), "{refused}");
        // MQTT 5 reason codes: 0x87 "not authorized".
        assert!(refused_topics(&topics, Some(&[0x87, 0])).is_err());
        // paho's form for a request with one filter.
        let one = vec!["a/+/telemetry".to_owned()];
        assert!(subscribe_error(&one, &mqtt::Error::Failure).ends_with("a/+/telemetry (code 0x80)"));
        assert_eq!(subscribe_error(&one, &mqtt::Error::Disconnected), mqtt::Error::Disconnected.to_string());
    }
}

//! Where messages come from: the MQTT broker in production, an in-process fake broker in
//! tests and benchmarks. Both push into the same bounded [`InboundSink`], so the actor
//! pipeline cannot tell them apart.

mod fake;
mod mqtt;

pub use fake::{FakeBroker, FakeSource};
pub use mqtt::{service_connect_options, MqttSource};

use crate::backoff::{self, Retries};
use crate::journal::Journal;
use crate::logic::rows::MAX_STORED_PAYLOAD;
use crate::logic::{JournalMark, Timestamp};
use crate::stats::PipelineStats;
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::mpsc;

/// One message as received, before any check.
///
/// A payload over `mqtt.max_payload_bytes` is not kept whole: it can only be rejected as
/// `too_large`, and up to `mqtt.inbound_capacity` messages wait in the inbound channel
/// under back-pressure, so whole copies of payloads up to the broker's own limit (256 MiB
/// by default for Mosquitto) could hold gigabytes. See [`InboundMessage::received`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundMessage {
    pub topic: String,
    /// The payload, or the start of one larger than the limit.
    pub payload: Vec<u8>,
    /// The payload's length as received: `too_large` is decided on it and reports it.
    pub payload_len: usize,
    /// Its record in the journal: set by the sink when it appends the message, or by the
    /// replay; `NONE` without a journal.
    pub mark: JournalMark,
    /// When it arrived, as its journal record keeps it: set by the sink's append, or by
    /// the replay. It is checked as of then, on the first pass and on a replay alike (a
    /// sample accepted before a crash is not `too_late` because the replay came later,
    /// nor the other way round because it waited in the channel). `None` (no journal):
    /// when the broker takes it.
    pub received_at: Option<Timestamp>,
}

impl InboundMessage {
    /// The message a source hands over for a payload received under a limit of
    /// `max_payload_bytes`: the whole payload when within the limit, else its first
    /// `max_payload_bytes + 1` bytes (still over the limit on its own), or the first
    /// [`MAX_STORED_PAYLOAD`] + 4 bytes if that is more (what a stored rejection keeps,
    /// plus the longest UTF-8 character, which `RejectedMessage::new` looks at to cut on
    /// a character boundary), so the stored excerpt is the same as from the whole payload.
    pub fn received(topic: &str, payload: &[u8], max_payload_bytes: usize) -> InboundMessage {
        let keep = max_payload_bytes.saturating_add(1).max(MAX_STORED_PAYLOAD + 4);
        let kept = payload.get(..keep).unwrap_or(payload);
        InboundMessage {
            topic: topic.to_owned(),
            payload: kept.to_vec(),
            payload_len: payload.len(),
            mark: JournalMark::NONE,
            received_at: None,
        }
    }
}

/// The sending side of the inbound channel, shared by a source's delivery threads.
///
/// It can be closed from the outside (at shutdown) while a delivery is blocked: each
/// delivery clones the sender out of the slot, so closing only has to empty the slot,
/// and the channel ends once the last in-flight delivery returns.
///
/// With a journal, every message is appended to it before it enters the channel (a
/// replayed message already has its record). An append that fails (a full disk) is
/// retried with back-off while the delivering thread waits: paho stops reading the
/// socket, the broker queues for the session, nothing is lost.
#[derive(Debug, Clone)]
pub struct InboundSink {
    slot: Arc<SenderSlot>,
    journal: Option<Arc<Journal>>,
    stats: Arc<PipelineStats>,
}

impl InboundSink {
    /// A sink and the receiver the broker actor reads, holding at most `capacity` messages.
    pub fn channel(
        capacity: usize,
        journal: Option<Arc<Journal>>,
        stats: Arc<PipelineStats>,
    ) -> (InboundSink, mpsc::Receiver<InboundMessage>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (InboundSink { slot: Arc::new(SenderSlot(Mutex::new(Some(sender)))), journal, stats }, receiver)
    }

    fn sender(&self) -> Option<mpsc::Sender<InboundMessage>> {
        self.slot.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Appends the message to the journal unless it has a record already; false when
    /// the sink was closed while the journal could not write (the message is then only
    /// in memory, and lost with the process: logged).
    fn journal(&self, message: &mut InboundMessage, wait: impl Fn(std::time::Duration)) -> bool {
        let Some(journal) = &self.journal else { return true };
        if !message.mark.is_none() {
            return true;
        }
        let mut retries = Retries::new(backoff::JOURNAL_APPEND);
        // A failing append is retried here until it works, so only this loop can clear
        // the problem it set (not every append: that was a mutex per message).
        let mut failed = false;
        loop {
            match journal.append_message(&message.topic, &message.payload, message.payload_len) {
                Ok(appended) => {
                    message.mark = appended.mark;
                    message.received_at = Some(appended.received);
                    if failed && self.stats.set_journal_problem(None) {
                        tracing::info!(dir = %journal.dir().display(), "journal appends work again");
                    }
                    return true;
                }
                Err(err) => {
                    failed = true;
                    if self.stats.set_journal_problem(Some(err.to_string())) {
                        tracing::error!(error = %err, "cannot append to the journal; intake waits until it can (the broker keeps queuing)");
                    }
                    if self.sender().is_none() {
                        tracing::error!(topic = %message.topic, "stopping while the journal cannot write: one message received but not journaled");
                        return false;
                    }
                    wait(retries.failed());
                }
            }
        }
    }

    /// Hands a message over from a thread outside any async runtime (paho's callback
    /// thread), waiting while the channel is full: that wait is the back-pressure.
    /// False when the sink is closed.
    pub fn blocking_deliver(&self, mut message: InboundMessage) -> bool {
        if !self.journal(&mut message, std::thread::sleep) {
            return false;
        }
        let Some(sender) = self.sender() else { return false };
        // `try_send` first: `blocking_send` builds a parker and a waker for every call,
        // which was half of paho's receive thread while the channel had room.
        match sender.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(message)) => sender.blocking_send(message).is_ok(),
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Async form of [`InboundSink::blocking_deliver`], for the fake source and the
    /// replay. (Its journal append is a blocking `write`, as on paho's thread; a full
    /// disk's back-off blocks too: the fake source only runs in tests.)
    pub async fn deliver(&self, mut message: InboundMessage) -> bool {
        if !self.journal(&mut message, std::thread::sleep) {
            return false;
        }
        match self.sender() {
            Some(sender) => sender.send(message).await.is_ok(),
            None => false,
        }
    }

    /// Stops accepting messages; the receiver ends after what was already handed over.
    pub fn close(&self) {
        self.slot.0.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
}

/// The sender, on a cache line of its own: paho's receive thread locks it for every
/// message, and sharing the line with something the broker's thread writes cost a cache
/// miss each time (a quarter of that thread's time in one profile).
#[derive(Debug)]
#[repr(align(128))]
struct SenderSlot(Mutex<Option<mpsc::Sender<InboundMessage>>>);

/// Errors of a message source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot create the MQTT client for {url}: {message}")]
    Client { url: String, message: String },
    #[error("cannot connect to the MQTT broker at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("cannot subscribe to {topics:?}: {message}")]
    Subscribe { topics: Vec<String>, message: String },
}

impl SourceError {
    /// A broken or refused connection may heal; a client that cannot even be created will not.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, SourceError::Client { .. })
    }
}

/// A producer of inbound messages.
pub trait MessageSource: Send + std::fmt::Debug {
    /// Connects and subscribes; from then on messages flow into `sink`. The source keeps
    /// `stats`' connection state (connected, subscribed, reconnects) up to date.
    fn start(
        &mut self,
        sink: InboundSink,
        stats: Arc<PipelineStats>,
    ) -> BoxFuture<'static, Result<(), SourceError>>;

    /// Stops delivering and closes the sink. After it resolves no new message arrives.
    fn stop(&mut self) -> BoxFuture<'static, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_payload_is_held_cut_with_its_true_length() {
        let huge = vec![b'x'; 10 * 1024 * 1024];
        let message = InboundMessage::received("t", &huge, 65_536);
        assert_eq!(message.payload_len, huge.len());
        assert_eq!(message.payload.len(), 65_537, "held: the limit + 1 byte, not the whole payload");
        assert!(message.payload.capacity() <= 65_537 * 2, "no hidden whole copy");

        // Under a small limit, the start a stored rejection needs is kept.
        let message = InboundMessage::received("t", &huge, 1_024);
        assert_eq!((message.payload.len(), message.payload_len), (MAX_STORED_PAYLOAD + 4, huge.len()));
    }

    #[test]
    fn payloads_within_the_limit_are_kept_whole() {
        for len in [0, 1, 1_024, 65_536] {
            let payload = vec![b'{'; len];
            let message = InboundMessage::received("t", &payload, 65_536);
            assert_eq!((message.payload, message.payload_len), (payload, len));
        }
        // Just over the limit, the whole payload is at most limit + 1 bytes anyway.
        let message = InboundMessage::received("t", &[b'x'; 65_537], 65_536);
        assert_eq!((message.payload.len(), message.payload_len), (65_537, 65_537));
    }
}

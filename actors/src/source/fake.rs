//! The fake broker: an in-process message source with the same interface as the MQTT
//! one, so the actor pipeline is tested deterministically and benchmarked without a
//! network.

use super::{InboundMessage, InboundSink, MessageSource, SourceError};
use crate::logic::JournalMark;
use crate::stats::PipelineStats;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

/// The publishing side, kept by the test.
#[derive(Debug, Clone, Default)]
pub struct FakeBroker {
    sink: Arc<Mutex<Option<InboundSink>>>,
}

/// The side the pipeline consumes.
#[derive(Debug)]
pub struct FakeSource {
    sink: Arc<Mutex<Option<InboundSink>>>,
}

impl FakeBroker {
    pub fn new() -> (FakeBroker, FakeSource) {
        let broker = FakeBroker::default();
        let source = FakeSource { sink: broker.sink.clone() };
        (broker, source)
    }

    /// Publishes one message; waits while the pipeline is full, like a TCP connection
    /// would. False when the pipeline has stopped (or not started).
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) -> bool {
        let payload = payload.into();
        let payload_len = payload.len();
        self.deliver(InboundMessage {
            topic: topic.to_owned(),
            payload,
            payload_len,
            mark: JournalMark::NONE,
            received_at: None,
        })
        .await
    }

    /// Hands over a message exactly as given, e.g. one built by
    /// [`InboundMessage::received`] the way the MQTT source builds them.
    pub async fn deliver(&self, message: InboundMessage) -> bool {
        let sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match sink {
            Some(sink) => sink.deliver(message).await,
            None => false,
        }
    }
}

impl MessageSource for FakeSource {
    fn start(
        &mut self,
        sink: InboundSink,
        stats: Arc<PipelineStats>,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = Some(sink);
        stats.mqtt_connected.store(true, Ordering::Relaxed);
        stats.mqtt_subscribed.store(true, Ordering::Relaxed);
        stats.mark_now(&stats.mqtt_connected_at_micros);
        async { Ok(()) }.boxed()
    }

    fn stop(&mut self) -> BoxFuture<'static, ()> {
        if let Some(sink) = self.sink.lock().unwrap_or_else(PoisonError::into_inner).take() {
            sink.close();
        }
        async {}.boxed()
    }
}

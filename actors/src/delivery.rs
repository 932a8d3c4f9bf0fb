//! The data path's delivery policy, in one place: `try_send`, which costs no reply
//! channel and no wait while the receiver keeps up; a message refused because the
//! receiver's mailbox is full is sent again with `send()`, and the sender awaits it
//! (inside `ctx.wait`) before taking more work. That await is the back-pressure. A
//! receiver that has stopped loses the samples, which are counted and logged, never
//! silently dropped.

use crate::stats::{bump, PipelineStats};
use actix::dev::{SendError, ToEnvelope};
use actix::prelude::*;
use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use std::sync::Arc;

/// The deliveries of one batch that had to wait for a full mailbox.
#[derive(Default)]
pub(crate) struct Deliveries {
    /// Each fails with the number of samples it carried.
    waiting: Vec<BoxFuture<'static, Result<(), u64>>>,
}

impl Deliveries {
    /// Delivers `message`, which carries `samples` samples, to `receiver`.
    pub(crate) fn deliver<A, M>(
        &mut self,
        receiver: &Addr<A>,
        message: M,
        samples: u64,
        stats: &PipelineStats,
    ) where
        A: Actor + Handler<M>,
        A::Context: ToEnvelope<A, M>,
        M: Message<Result = ()> + Send + 'static,
    {
        match receiver.try_send(message) {
            Ok(()) => {}
            Err(SendError::Full(message)) => {
                let request = receiver.send(message);
                self.waiting.push(async move { request.await.map_err(|_| samples) }.boxed());
            }
            Err(SendError::Closed(_)) => count_lost(stats, samples),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Waits until every refused delivery has been taken (or its receiver is gone).
    pub(crate) async fn finish(self, stats: Arc<PipelineStats>) {
        for lost in join_all(self.waiting).await.into_iter().filter_map(Result::err) {
            count_lost(&stats, lost);
        }
    }
}

pub(crate) fn count_lost(stats: &PipelineStats, samples: u64) {
    bump(&stats.samples_lost, samples);
    tracing::error!(samples, "aggregator unavailable; samples lost");
}

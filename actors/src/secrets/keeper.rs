//! The secret keeper actor: keeps the database credentials fresh.
//!
//! It fetches the secret every `refresh_interval`, and at once when the writer reports a
//! failed login (a rotation has happened). When the value changes it tells the writer,
//! which opens a new connection with it before dropping the old one. Failures back off
//! exponentially (capped) and are logged when they start and when they end, not at every
//! attempt.

use super::{Credentials, SecretError, SecretSource};
use crate::backoff::{self, Retries};
use crate::messages::{CredentialsChanged, RefreshSecret, SubscribeCredentials};
use crate::stats::{bump, PipelineStats};
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Failed logins come in bursts; one fetch per burst is enough.
const MIN_GAP_BETWEEN_FETCHES: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct SecretKeeper {
    source: Arc<dyn SecretSource>,
    current: Credentials,
    refresh_interval: Duration,
    subscriber: Option<Recipient<CredentialsChanged>>,
    /// The scheduled next fetch, cancelled when a fetch is requested earlier.
    next_fetch: Option<SpawnHandle>,
    fetching: bool,
    last_fetch: Option<Instant>,
    /// The back-off of the current run of failed fetches.
    failing: Option<Retries>,
    stats: Arc<PipelineStats>,
}

impl SecretKeeper {
    pub fn new(
        source: Arc<dyn SecretSource>,
        current: Credentials,
        refresh_interval: Duration,
        stats: Arc<PipelineStats>,
    ) -> Self {
        SecretKeeper {
            source,
            current,
            refresh_interval,
            subscriber: None,
            next_fetch: None,
            fetching: false,
            last_fetch: None,
            failing: None,
            stats,
        }
    }

    fn schedule(&mut self, after: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.next_fetch.take() {
            ctx.cancel_future(handle);
        }
        self.next_fetch = Some(ctx.run_later(after, |keeper, ctx| keeper.fetch(ctx)));
        let at = self.stats.clock.now().micros().saturating_add(crate::logic::time::duration_micros(after));
        self.stats.secret_next_fetch_micros.store(at, std::sync::atomic::Ordering::Relaxed);
    }

    fn fetch(&mut self, ctx: &mut Context<Self>) {
        if self.fetching {
            return;
        }
        self.fetching = true;
        self.last_fetch = Some(self.stats.clock.instant());
        ctx.spawn(self.source.fetch().into_actor(self).map(|result, keeper, ctx| keeper.absorb(result, ctx)));
    }

    fn absorb(&mut self, result: Result<Credentials, SecretError>, ctx: &mut Context<Self>) {
        self.fetching = false;
        bump(&self.stats.secret_fetches, 1);
        match result {
            Ok(credentials) => {
                self.stats.mark_now(&self.stats.secret_last_ok_micros);
                if let Some(retries) = self.failing.take() {
                    let failures = retries.failures();
                    tracing::info!(source = %self.source.describe(), failures, "database secret readable again");
                }
                if !credentials.same_as(&self.current) {
                    tracing::info!(source = %self.source.describe(), user = ?credentials.user, "database secret changed");
                    bump(&self.stats.secret_changes, 1);
                    self.current = credentials.clone();
                    if let Some(subscriber) = self.subscriber.clone() {
                        ctx.spawn(
                            async move {
                                if subscriber.send(CredentialsChanged(credentials)).await.is_err() {
                                    tracing::error!("writer unavailable; rotated credentials not delivered");
                                }
                            }
                            .into_actor(self),
                        );
                    }
                }
                self.schedule(self.refresh_interval, ctx);
            }
            Err(err) => {
                bump(&self.stats.secret_failures, 1);
                let retries = self.failing.get_or_insert_with(|| {
                    tracing::warn!(error = %err, "fetching the database secret failed; retrying with back-off");
                    Retries::new(backoff::SECRET_REFRESH)
                });
                let delay = retries.failed();
                if retries.failures() > 1 {
                    tracing::debug!(error = %err, failures = retries.failures(), "fetching the database secret failed again");
                }
                self.schedule(delay.min(self.refresh_interval), ctx);
            }
        }
    }
}

impl Actor for SecretKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.schedule(self.refresh_interval, ctx);
    }
}

impl Handler<SubscribeCredentials> for SecretKeeper {
    type Result = ();

    fn handle(&mut self, SubscribeCredentials(subscriber): SubscribeCredentials, _: &mut Self::Context) {
        self.subscriber = Some(subscriber);
    }
}

impl Handler<RefreshSecret> for SecretKeeper {
    type Result = ();

    fn handle(&mut self, _: RefreshSecret, ctx: &mut Self::Context) {
        let recent = self.last_fetch.is_some_and(|at| at.elapsed() < MIN_GAP_BETWEEN_FETCHES);
        if recent {
            let wait = MIN_GAP_BETWEEN_FETCHES
                .saturating_sub(self.last_fetch.map_or(Duration::ZERO, |at| at.elapsed()));
            self.schedule(wait, ctx);
        } else {
            self.fetch(ctx);
        }
    }
}

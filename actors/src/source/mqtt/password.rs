//! The broker password, as the next connection should present it.
//!
//! Read from its secret source (file, environment, AWS Secrets Manager) at start-up, and
//! again before a connection attempt once the value is older than the source's
//! `refresh_interval`, or at once when the broker has just refused a login: so a rotated
//! password is picked up without a restart, at the latest at the reconnect it forces. A
//! read that fails keeps the last value, which the broker may still accept.

use crate::clock::Clock;
use crate::secrets::{SecretError, SecretSource};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long one read of the secret may take from the connection thread.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct BrokerPassword {
    source: Arc<dyn SecretSource>,
    refresh_interval: Duration,
    current: SecretString,
    fetched_at: Instant,
    clock: Arc<dyn Clock>,
    /// The runtime the source was built on (the AWS SDK's client lives there); the
    /// connection thread reads through it.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for BrokerPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerPassword").field("source", &self.source.describe()).finish_non_exhaustive()
    }
}

impl BrokerPassword {
    /// Reads the secret at start-up, with the start-up retries: a service that cannot log
    /// in at all should say so soon.
    pub(super) async fn read_at_start(
        config: &fleetagg_config::PasswordConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<BrokerPassword, SecretError> {
        let source = crate::secrets::build_source(config).await;
        let credentials = crate::secrets::fetch_at_start(source.as_ref()).await?;
        tracing::info!(source = %source.describe(), "MQTT broker password read");
        Ok(BrokerPassword {
            source,
            refresh_interval: config.refresh_interval,
            current: credentials.password,
            fetched_at: clock.instant(),
            clock,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// The password for the next connection attempt, read again first when it is stale
    /// or `refused` (the broker refused the last login). Blocking: called on the
    /// connection thread, never on a runtime's.
    pub(super) fn for_next_connection(&mut self, refused: bool) -> &SecretString {
        let stale = self.clock.instant().saturating_duration_since(self.fetched_at) >= self.refresh_interval;
        if refused || stale {
            self.refresh(if refused { "the broker refused the login" } else { "refresh_interval passed" });
        }
        &self.current
    }

    fn refresh(&mut self, why: &str) {
        let fetch = self.source.fetch();
        match self.runtime.block_on(async { tokio::time::timeout(FETCH_TIMEOUT, fetch).await }) {
            Ok(Ok(credentials)) => {
                self.fetched_at = self.clock.instant();
                if credentials.password.expose_secret() != self.current.expose_secret() {
                    tracing::info!(source = %self.source.describe(), why, "MQTT broker password changed at its source; the next connection uses the new one");
                    self.current = credentials.password;
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(error = %err, why, "reading the MQTT broker password failed; keeping the last one");
            }
            Err(_) => tracing::warn!(
                source = %self.source.describe(),
                why,
                "reading the MQTT broker password timed out after {}s; keeping the last one",
                FETCH_TIMEOUT.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::Timestamp;
    use fleetagg_config::{PasswordConfig, SecretSourceKind};
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A monotonic clock that moves only when told (the wall clock is not read here).
    #[derive(Debug)]
    struct SteppedClock {
        start: Instant,
        offset_ms: AtomicU64,
    }

    impl Clock for SteppedClock {
        fn now(&self) -> Timestamp {
            Timestamp::from_micros(0)
        }

        fn instant(&self) -> Instant {
            self.start + Duration::from_millis(self.offset_ms.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn a_password_is_read_again_when_stale_or_refused_and_kept_when_unreadable() {
        let dir = std::env::temp_dir().join(format!("fleetagg-broker-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mqtt-password");
        std::fs::write(&path, "first\n").unwrap();
        let config = PasswordConfig {
            source: SecretSourceKind::File,
            path: Some(path.clone()),
            secret_id: None,
            region: None,
            endpoint_url: None,
            version_stage: None,
            var: None,
            refresh_interval: Duration::from_secs(60),
        };
        let clock = Arc::new(SteppedClock { start: Instant::now(), offset_ms: AtomicU64::new(0) });
        // A runtime driven by a thread of its own, as the service's is by actix's.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let driver = std::thread::spawn(move || runtime.block_on(stopped));
        let mut password = handle.block_on(BrokerPassword::read_at_start(&config, clock.clone())).unwrap();
        let next = |password: &mut BrokerPassword, refused| {
            password.for_next_connection(refused).expose_secret().to_owned()
        };
        assert_eq!(next(&mut password, false), "first");

        std::fs::write(&path, "second\n").unwrap();
        assert_eq!(next(&mut password, false), "first", "fresh: not read again");
        clock.offset_ms.store(60_000, Ordering::SeqCst);
        assert_eq!(next(&mut password, false), "second", "older than refresh_interval: read again");

        std::fs::write(&path, "third\n").unwrap();
        assert_eq!(next(&mut password, true), "third", "a refused login reads it again at once");

        std::fs::remove_file(&path).unwrap();
        assert_eq!(next(&mut password, true), "third", "unreadable: the last one is kept");
        assert!(!format!("{password:?}").contains("third"), "Debug shows no password");
        let _ = stop.send(());
        let _ = driver.join();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

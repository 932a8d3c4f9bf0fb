//! Every message the actors exchange, in one place, so the protocol between them can be
//! read at a glance. All of them go into bounded mailboxes, never by `do_send`: by
//! `send().await`, or on the hot path by `try_send` with a full mailbox turned into an
//! awaited `send()`. Back-pressure must reach the MQTT connection, not pile up in a queue.

use crate::logic::{ClosedMinute, RejectedMessage, Sample, WrittenMinute};
use actix::Message;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use std::time::Instant;

/// Shard → aggregator: accepted samples of the aggregator's machine, in arrival order.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AcceptSamples(pub Vec<Sample>);

/// Broker → shard: one batch's samples for the machines of that shard's core, each under
/// the number the broker gave the machine within the shard. `new_machines` were first
/// seen in this batch: the shard starts their aggregators, numbering them in this order
/// after the ones it has.
#[derive(Debug, Default, Message)]
#[rtype(result = "()")]
pub struct RouteSamples {
    pub new_machines: Vec<Arc<str>>,
    pub deliveries: Vec<(u32, Vec<Sample>)>,
    /// At start-up only: minutes written before, per machine (see [`RememberWritten`]).
    pub written: Vec<(u32, Vec<WrittenMinute>)>,
}

/// Service → broker, when the minutes written before this start could only be read
/// after it (the database was unreachable then): routed to their aggregators like
/// [`RouteSamples::written`].
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RememberWrittenRows(pub Vec<(String, WrittenMinute)>);

/// Shard → aggregator, at start-up before any sample: minutes of its machine written
/// within `max_lateness` before this start, read back from the database, so a resend of
/// one of their samples is recognised as a duplicate.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RememberWritten(pub Vec<WrittenMinute>);

/// Shard → aggregator: a look at the open minutes it asked for is due (see
/// `aggregation::timers`).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CheckOpenMinutes {
    /// When the look was due: a look put off for want of room in the writer's backlog
    /// keeps it, so that its wait is bounded from then.
    pub due: std::time::Instant,
}

/// Broker → shard → aggregator at shutdown: hand every open minute, partial or not, to
/// the writer. Answers once the writer has taken them.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct FlushOpenMinutes;

/// Aggregator → writer: closed minutes to upsert.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WriteMinutes(pub Vec<ClosedMinute>);

/// Broker → writer: rejected messages to store (already rate-limited).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StoreRejections(pub Vec<RejectedMessage>);

/// Service → broker: stop taking messages, route what was received, flush every
/// aggregator. Answers when all of it is in the writer's hands.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopIntake;

/// Service → writer at shutdown: write everything buffered, retrying until `deadline`.
#[derive(Debug, Message)]
#[rtype(result = "DrainReport")]
pub struct Drain {
    pub deadline: Instant,
}

/// What a [`Drain`] could not write before its deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, actix::MessageResponse)]
pub struct DrainReport {
    pub unwritten_minutes: usize,
    pub unwritten_rejections: usize,
}

impl DrainReport {
    pub fn is_complete(&self) -> bool {
        self.unwritten_minutes == 0 && self.unwritten_rejections == 0
    }

    /// What the writer last said it held, when it cannot be asked.
    pub fn from_gauges(stats: &crate::stats::PipelineStats) -> Self {
        use std::sync::atomic::Ordering;
        let get = |gauge: &std::sync::atomic::AtomicU64| {
            usize::try_from(gauge.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
        };
        DrainReport {
            unwritten_minutes: get(&stats.rows_buffered),
            unwritten_rejections: get(&stats.rejections_buffered),
        }
    }
}

/// Writer → secret keeper: a login failed, the password may have been rotated: fetch the
/// secret now. Control path only.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RefreshSecret;

/// Secret keeper → writer: the secret changed; connect with it, then drop the old
/// connection.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CredentialsChanged(pub Credentials);

/// Service → secret keeper at start-up: who to tell about changes (the writer is started
/// after the keeper, so it cannot be passed at construction).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SubscribeCredentials(pub actix::Recipient<CredentialsChanged>);

/// A database password, and the user name when the secret names one (AWS's
/// alternating-users rotation switches between two users).
#[derive(Clone)]
pub struct Credentials {
    pub user: Option<String>,
    pub password: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"[REDACTED]").finish()
    }
}

impl Credentials {
    /// True when both would log in the same way.
    pub fn same_as(&self, other: &Credentials) -> bool {
        self.user == other.user && self.password.expose_secret() == other.password.expose_secret()
    }
}

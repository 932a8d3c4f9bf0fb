//! The pure logic fleetagg's actors run: parsing, validation, time, minute accumulation,
//! the writer's row buffer and the reject rate limit. A crate of its own so that its
//! purity is the compiler's to enforce, not a comment's: it depends on no actor
//! framework, no runtime and no client library (`cargo tree -p fleetagg-logic`), does no
//! I/O, and is unit- and property-tested on its own in seconds.

pub mod json;
pub mod minute;
pub mod offsets;
pub mod provenance;
pub mod reject_limit;
pub mod rfc3339;
pub mod rows;
pub mod seen;
pub mod time;
pub mod validate;
pub mod written;

pub use minute::{Accepted, MinuteAggregate, MinutePart, OpenMinutes};
pub use provenance::{JournalMark, JournalTally};
pub use reject_limit::RejectLimiter;
pub use rows::{ClosedMinute, PendingMinutes, RejectedMessage};
pub use time::{EpochUnit, Minute, Timestamp, TimestampRules};
pub use validate::{validate, RejectReason, Rejection, Sample, Telemetry, ValidationRules};
pub use written::{ColdRef, ColdTail, NeedsCold, WrittenMinute, WrittenMinutes};

//! The pure logic the actors run: parsing, validation, minute accumulation and the
//! reject rate limit. No actix and no I/O here, so all of it is unit- and
//! property-tested on its own.

pub mod json;
pub mod minute;
pub mod reject_limit;
pub mod rfc3339;
pub mod rows;
pub mod time;
pub mod validate;

pub use minute::{Accepted, MinuteAggregate, OpenMinutes};
pub use reject_limit::RejectLimiter;
pub use rows::{ClosedMinute, PendingMinutes, RejectedMessage};
pub use time::{Minute, Timestamp, TimestampRules};
pub use validate::{validate, RejectReason, Rejection, Sample, Telemetry, ValidationRules};

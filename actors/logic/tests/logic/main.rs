//! Unit and property tests of the pure logic in `fleetagg_logic`, against the
//! contract of issue 2 ("Validation" and "Tests that must exist"):
//!
//! - every rejection reason, with the exact reason and an informative detail;
//! - the order of the checks (the first failing check names the reason);
//! - time zones: RFC 3339 offsets, fractional seconds, naive local times in UTC and DST
//!   zones (ambiguous and missing hours), epoch seconds and milliseconds;
//! - minute bucketing at the boundaries, including before 1970;
//! - merging of minute aggregates, duplicate detection, closing of minutes, and the
//!   writer's pending-row buffer;
//! - properties (proptest): the parser never panics, valid messages round-trip, merging
//!   is associative and commutative and equals aggregating everything at once.
//!
//! And of issue 10 ("Hardening"): timestamps outside years 1 to 9999 and exact epoch
//! fractions (`timestamps`), exactly the listed text forms (`timestamp_forms`), stored
//! rejections cut to 4 KiB on character boundaries (`stored_rows`), and the JSON reader
//! against serde_json, its nesting limit and its linear time (`json_reader`).

// Test support code: a panic here is a test failure with its location.
#![allow(clippy::unwrap_used)]

mod check_order;
mod json_reader;
mod minutes;
mod properties;
mod reasons;
mod rfc3339;
mod stored_rows;
mod support;
mod timestamp_forms;
mod timestamps;

//! Stage 3: aggregation. One [`Aggregator`] actor per machine holds its open minutes
//! (and catches duplicates); one [`Shard`] actor per core starts the aggregators of the
//! machines assigned to that core, delivers the broker's batches to them and keeps their
//! close timers ([`timers`]). Closed minutes go on to the writer.
//!
//! Older written minutes of each machine's duplicate index wait on disk ([`cold_index`]).
//!
//! Imports point one way: `shard` → `aggregator` → `local` → `late`, `timers`; `aggregator` →
//! `cold_index`.

mod aggregator;
mod cold_index;
mod late;
mod local;
mod shard;
mod timers;

pub use aggregator::Aggregator;
pub use cold_index::{ColdIndex, ColdReadError};
pub use local::{AggregatorSettings, AggregatorShared};
pub use shard::Shard;

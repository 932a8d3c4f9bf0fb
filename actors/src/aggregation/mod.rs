//! Stage 3: aggregation. One [`Aggregator`] actor per machine holds its open minutes
//! (and catches duplicates); one [`Shard`] actor per core starts the aggregators of the
//! machines assigned to that core, delivers the broker's batches to them and keeps their
//! close timers ([`timers`]). Closed minutes go on to the writer.
//!
//! Imports point one way: `shard` → `aggregator` → `timers`.

mod aggregator;
mod shard;
mod timers;

pub use aggregator::{Aggregator, AggregatorSettings, AggregatorShared};
pub use shard::Shard;

//! The actors of fleetagg; the pure logic they run is the `fleetagg-logic` crate
//! (`actors/logic/`), re-exported here as [`logic`].
//!
//! Data path: a [`MessageSource`](source::MessageSource) (MQTT or the in-process fake
//! broker) feeds the [`Broker`](broker::Broker) actor through a bounded channel; the
//! broker validates each message and routes accepted samples to one
//! [`Aggregator`](aggregation::Aggregator) per machine, spread over one arbiter per core
//! (a [`Shard`](aggregation::Shard) actor on each delivers the broker's batch for that core);
//! aggregators hand closed minutes to the [`Writer`](writer::Writer), which upserts them
//! into PostgreSQL in batches. Every hop is bounded (a `try_send` that meets a full
//! mailbox waits for it), so a slow database slows the MQTT connection instead of growing
//! a queue. `docs/architecture.md` has the picture.

// The stages, in the order data flows through them.
pub mod source;
pub mod broker;
pub mod aggregation;
pub mod writer;

// What the stages share: the messages between them and their delivery policy, time,
// retries, counters, and the journal that makes what they hold survive a crash.
pub mod backoff;
pub mod clock;
mod delivery;
pub mod journal;
pub mod messages;
pub mod recent;
pub mod stats;
mod tls_refusal;

// Around the data path: secrets for the writer, what operators see, and the wiring.
pub mod monitoring;
pub mod placement;
pub mod secrets;
pub mod service;

pub use fleetagg_logic as logic;

pub use service::{Pipeline, Service, ServiceError, ShutdownReport};

//! Sluice's broker: shard-per-core process model and the Kafka wire protocol.
//!
//! - [`broker`]: shards (one glommio executor per core, each the only owner of its
//!   partitions), cross-shard `submit_to`, metadata on the home shard, partitions (log +
//!   idempotent-producer state), and [`broker::serve`], which runs the whole process.
//! - [`kafka`]: connections and handlers of the Kafka protocol, with request and response
//!   types from the `kafka-protocol` crate; record batches pass through undecoded.
//!
//! **Boundary.** Depends on `sluice-core` (formats, producer state) and `sluice-storage` (the
//! log); the binary only parses arguments and calls [`broker::serve`]. The native protocol and
//! its client crate will live beside this one.

pub mod broker;
pub mod kafka;
pub mod native;

//! Sluice's native protocol (see `sluice_core::native` for the frames): core publish/subscribe
//! with wildcards and queue groups, request-reply, and JetStream-style streams and consumers
//! stored in the same partition logs as Kafka topics.

pub mod admin;
pub mod pubsub;
pub mod read_buf;
pub mod server;
pub mod streams;

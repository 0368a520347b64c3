//! Sluice's protocol servers and the native client (not yet built).
//!
//! This crate will own the Kafka wire protocol server (request decoding with the
//! `kafka-protocol` crate, batches passed through undecoded, parked fetches, the zero-copy
//! send path) and the native binary protocol with its Rust client. It depends on
//! `sluice-core` only; the broker binary wires it to storage.

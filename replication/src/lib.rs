//! Broker-to-broker replication (not yet built).
//!
//! This crate will own the QUIC transport between brokers (quinn-proto driven from each shard's
//! own UDP socket), ISR-style replication of partition logs with leader epochs and truncation
//! of divergent tails, and the controller quorum on an existing Raft engine.

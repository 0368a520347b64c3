//! The Kafka wire protocol: connections ([`server`]), per-API handlers ([`handlers`]), topic
//! administration on the metadata home shard ([`admin`]) and error codes ([`errors`]).

pub mod admin;
pub mod errors;
pub mod fetch_encode;
pub mod groups;
pub mod handlers;
pub mod server;

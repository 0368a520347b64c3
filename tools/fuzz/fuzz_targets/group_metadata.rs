//! Group bytes from peers and disk: a member's ConsumerProtocolSubscription (JoinGroup
//! metadata, read for OffsetDelete) and offsets-log records. Any bytes must give a value or
//! nothing, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_core::group::subscription_topics(data);
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let (key, value) = data.split_at(split);
    let _ = sluice_net::broker::groups::decode_key(key);
    let _ = sluice_net::broker::groups::decode_value(value, 0);
});

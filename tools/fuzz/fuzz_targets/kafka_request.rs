//! A Kafka request frame from a client, into the broker's request decoder: any bytes must
//! decode or be refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_net::kafka::server::prepare(bytes::Bytes::copy_from_slice(data));
});

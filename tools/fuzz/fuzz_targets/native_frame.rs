//! Native-protocol bytes from a peer: frame splitting and every body decoder (fixed layouts
//! and the rkyv-validated admin bodies), plus a stream's saved state file (disk bytes). Any
//! bytes must decode or be refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::native::{self, AdminRequest, FetchRequest, Hello};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((h, body))) = native::split_frame(rest, 1 << 20) {
        let b = &rest[body.clone()];
        match h.op % 8 {
            0 => drop(native::Pub::decode(b)),
            1 => drop(native::Sub::decode(b)),
            2 => drop(native::Msg::decode(b)),
            3 => drop(native::Ack::decode(b)),
            4 => drop(native::from_body::<AdminRequest>(b)),
            5 => drop(native::from_body::<FetchRequest>(b)),
            6 => drop(native::from_body::<Hello>(b)),
            _ => drop(sluice_net::native::streams::decode_state(b)),
        }
        rest = &rest[body.end..];
    }
});

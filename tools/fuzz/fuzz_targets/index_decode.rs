//! Index files read back from disk: damaged or hostile bytes must decode to `None` or to a
//! well-formed index, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_storage::index::SegmentIndex;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize % (data.len().max(1)));
    let (a, b) = data.split_at(split);
    if let Some((index, summary)) = SegmentIndex::decode(a, b) {
        for w in index.offsets.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
        let _ = index.position_for(u32::MAX);
        let _ = index.offset_for_timestamp(summary.max_timestamp);
    }
});

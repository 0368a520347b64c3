//! Bytes from a producer or from a segment file, into the RecordBatch v2 decoder: header
//! parsing, validation, splitting a buffer into batches, and record decoding (with
//! decompression) must never panic, hang or allocate without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::batch;

fuzz_target!(|data: &[u8]| {
    let _ = batch::BatchHeader::parse(data);
    let _ = batch::validate(data);
    let (found, used) = batch::split_batches(data, true);
    assert!(used <= data.len());
    for (header, range) in found {
        assert_eq!(range.len(), header.total_bytes());
        let _ = batch::records(&data[range.clone()], 1 << 20);
        let _ = batch::single_record(&data[range]);
    }
    // Past the CRC: fix it up so the record decoder sees arbitrary bodies too.
    if data.len() >= batch::HEADER_BYTES {
        let mut owned = data.to_vec();
        let len = (owned.len() - batch::LOG_OVERHEAD_BYTES) as i32;
        owned[8..12].copy_from_slice(&len.to_be_bytes());
        owned[16] = 2;
        let crc = crc32c(&owned[21..]);
        owned[17..21].copy_from_slice(&crc.to_be_bytes());
        let _ = batch::records(&owned, 1 << 20);
        let _ = batch::single_record(&owned);
    }
});

fn crc32c(bytes: &[u8]) -> u32 {
    // Bitwise CRC-32C (Castagnoli, reflected 0x82F63B78): slow, but keeps the target free of
    // extra dependencies.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

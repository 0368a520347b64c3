//! Costs on the append path: validating a producer's batch (CRC-32C over the whole batch) and
//! assigning its offset, and decoding records (the path of compaction and subject filters).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_core::batch::{self, BatchBuilder, Compression};
use sluice_core::Offset;

fn sample(codec: Compression, records: usize, value_bytes: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new(codec, 0);
    for i in 0..records {
        let value: Vec<u8> = (0..value_bytes).map(|j| ((i * 7 + j) % 61) as u8).collect();
        b.push(
            i as i64,
            Some(format!("key-{i}").as_bytes()),
            Some(&value),
            &[],
        );
    }
    b.build()
}

fn validate_and_assign(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_and_assign");
    for (records, value_bytes) in [(1, 1024), (16, 1024), (1024, 1024)] {
        let mut batch = sample(Compression::None, records, value_bytes);
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{records}x{value_bytes}B")),
            &records,
            |b, _| {
                b.iter(|| {
                    let h = batch::validate_for_append(black_box(&batch)).expect("valid");
                    batch::set_base_offset(&mut batch, Offset(h.records_count as i64));
                })
            },
        );
    }
    group.finish();
}

fn decode_records(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_records");
    for codec in [
        Compression::None,
        Compression::Lz4,
        Compression::Zstd,
        Compression::Snappy,
        Compression::Gzip,
    ] {
        let batch = sample(codec, 64, 1024);
        group.throughput(Throughput::Elements(64));
        group.bench_function(codec.name(), |b| {
            b.iter(|| {
                batch::records(black_box(&batch), 1 << 24)
                    .expect("valid")
                    .len()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, validate_and_assign, decode_records);
criterion_main!(benches);

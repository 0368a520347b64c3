//! The cost of a filtered consumer follows its subject, not the stream: one stream of
//! 1,000,000 messages over 100,000 subjects; fetching the 10 messages of one subject through a
//! filtered consumer against fetching the first 10 messages unfiltered (each: a new consumer
//! and 10 deliveries, as a fresh pull consumer's first fetch does). Also a wildcard filter
//! that matches 10 subjects.
//!
//! `cargo bench -p sluice-benches --bench subjects`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sluice_core::consumer::Consumer;
use sluice_core::native::{ConsumerConfig, Retention, StreamConfig};
use sluice_core::stream::Stream;

const SUBJECTS: u64 = 100_000;
const MESSAGES: u64 = 1_000_000;

fn stream() -> Stream {
    let mut s = Stream::new(
        StreamConfig {
            name: "S".into(),
            subjects: vec!["s.>".into()],
            retention: Retention::Limits,
            ..StreamConfig::default()
        },
        0,
    );
    for seq in 1..=MESSAGES {
        // Subject k gets messages k, k + 100,000, ...: one subject's 10 messages are spread
        // over the whole stream.
        let subject = format!("s.{}.x", (seq - 1) % SUBJECTS);
        s.stored(seq, &subject, 100, seq as i64, None);
    }
    s.set_visible(MESSAGES);
    s
}

fn fetch10(s: &Stream, filters: &[&str]) -> u64 {
    let config = ConsumerConfig {
        durable_name: "c".into(),
        filter_subjects: filters.iter().map(|f| f.to_string()).collect(),
        max_ack_pending: -1,
        ..ConsumerConfig::default()
    };
    let mut c = Consumer::new("S", "c", config, s, 0);
    let mut dead = Vec::new();
    let mut last = 0;
    for _ in 0..10 {
        last = c.next(0, s, &mut dead).expect("a message").stream_seq;
    }
    last
}

fn subjects(c: &mut Criterion) {
    let s = stream();
    assert_eq!(fetch10(&s, &["s.4242.x"]), 4243 + 9 * SUBJECTS);
    assert_eq!(fetch10(&s, &[]), 10);
    let mut g = c.benchmark_group("fetch 10 of 1M messages over 100k subjects");
    g.bench_function("unfiltered (first 10)", |b| {
        b.iter(|| black_box(fetch10(&s, &[])))
    });
    g.bench_function("filtered, one subject", |b| {
        b.iter(|| black_box(fetch10(&s, &["s.4242.x"])))
    });
    g.bench_function("filtered, wildcard matching 10 subjects", |b| {
        // s.4242*.x is not a pattern; `s.*.y` style filters over distinct tokens: build one
        // that matches subjects s.42420.x ..= s.42429.x via ten literal-ish filters.
        let filters: Vec<String> = (0..10).map(|i| format!("s.4242{i}.*")).collect();
        let refs: Vec<&str> = filters.iter().map(|f| f.as_str()).collect();
        b.iter(|| black_box(fetch10(&s, &refs)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = subjects
}
criterion_main!(benches);

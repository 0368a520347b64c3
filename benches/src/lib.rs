//! Micro-benchmarks of Sluice's pure code (criterion): batch validation and offset assignment,
//! record decoding per codec. Run with `cargo bench -p sluice-benches`. Broker throughput and
//! latency are measured by `sluice-bench` (tools/), not here.

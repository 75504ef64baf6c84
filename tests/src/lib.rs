//! End-to-end tests live in `e2e/`; the benchmark binary in `src/bin/bench.rs`.

#!/usr/bin/env bash
# Sluice's whole test suite: formatting, lints, unit/property/model tests, the end-to-end tests
# against the real binary (kill -9 crash cycles included) and a short run of every fuzz target.
# Needs a Rust toolchain and Python 3; installs what else it needs if missing: the pinned
# Python clients (a venv in .venv), cargo-fuzz, and Debian's kcat (as root).
#
#   SLUICE_FUZZ_SECONDS   seconds per fuzz target (default 30; 0 skips fuzzing)
#   SLUICE_CRASH_CYCLES   kill -9 cycles of the crash test (default 50)
set -euo pipefail
cd "$(dirname "$0")/.."

fuzz_seconds="${SLUICE_FUZZ_SECONDS:-30}"
cargo_fuzz_version="0.13.2"

echo "== disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free here"
echo "== fmt"
cargo fmt --all --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
cargo build --workspace --bins
echo "== tests"
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
cargo test --workspace 2>&1 | tee "$test_log"
passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$test_log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '; [0-9]+ failed' "$test_log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')

if [ "$fuzz_seconds" -gt 0 ]; then
    if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
        cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
    fi
    # cargo-fuzz needs nightly flags (-Z sanitizer); the stable toolchain allows them with
    # RUSTC_BOOTSTRAP, the one toolchain this project can count on.
    for target in $(cd tools/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz list); do
        echo "== fuzz $target (${fuzz_seconds}s)"
        (cd tools/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
            -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 2>&1 | tail -n 3)
    done
fi
echo "== kafka clients (confluent-kafka, kafka-python, kcat)"
if ! command -v kcat >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq kcat >/dev/null || { apt-get update -qq && apt-get install -y -qq kcat; }
    else
        echo "kcat is missing: sudo apt-get install kcat" >&2
        exit 1
    fi
fi
[ -x .venv/bin/pip ] || python3 -m venv .venv
.venv/bin/pip install -q -r tests/kafka/requirements.txt
py_log="$(mktemp)"
trap 'rm -f "$test_log" "$py_log"' EXIT
(cd tests/kafka && ../../.venv/bin/pytest -q) 2>&1 | tee "$py_log"
py_passed=$(grep -Eo '([0-9]+) passed' "$py_log" | tail -1 | grep -Eo '[0-9]+' || echo 0)

echo "== kafka-python's own integration suite"
bash tools/kafka_python_suite.sh 2>&1 | tee "$py_log"
kp_passed=$(grep -Eo '([0-9]+) passed' "$py_log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
py_passed=$((py_passed + kp_passed))

echo "tests: $((passed + py_passed)) passed, $failed failed"

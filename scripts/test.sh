#!/usr/bin/env bash
# The project's test command (README): installs what the tests need, then checks format and
# lints and runs every test. Safe to run again; a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

echo "== setup: Chromium and playwright-core for the browser test"
scripts/setup-browser.sh

echo "== setup: NATS, Redis, Kafka and FerretDB on 127.0.0.1 for the split-mode tests"
scripts/services.sh start
eval "$(scripts/services.sh env)"

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

echo "== tests"
cargo test --workspace

echo "== docker: both compose files validate (docker compose config; no engine needed)"
scripts/check-docker.sh

echo "== fuzz: every target of fuzz/ for 30 s (docs/fuzzing.md)"
LINKER_FUZZ_SECONDS=30 scripts/fuzz.sh

#!/usr/bin/env bash
# scripts/fuzz.sh - runs every fuzz target in fuzz/ for a bounded time; fails on any crash.
#
# Installs cargo-fuzz (crates.io, into ~/.cargo/bin) and the nightly toolchain if missing.
# Each target starts from its committed seed corpus fuzz/corpus/<target>/ plus what earlier
# runs found (fuzz/target/corpus/<target>/, not committed). A crash leaves its input in
# fuzz/artifacts/<target>/ and makes the script exit 1 after the other targets have run.
#
# Usage: scripts/fuzz.sh [TARGET...]          default: every target (`cargo fuzz list`)
# Env:   LINKER_FUZZ_SECONDS   seconds per target (default 30)
#        LINKER_FUZZ_RUNS      most inputs per target (default 20000000)
#        LINKER_FUZZ_TOOLCHAIN (default nightly)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

SECONDS_PER_TARGET="${LINKER_FUZZ_SECONDS:-30}"
RUNS="${LINKER_FUZZ_RUNS:-20000000}"
TOOLCHAIN="${LINKER_FUZZ_TOOLCHAIN:-nightly}"

if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the $TOOLCHAIN toolchain"
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

if [[ $# -gt 0 ]]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "+$TOOLCHAIN" fuzz list)
fi

# Built once (with debug assertions, so an integer overflow is a crash too).
cargo "+$TOOLCHAIN" fuzz build --debug-assertions

failed=()
for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  log="fuzz/target/fuzz-$t.log"
  mkdir -p "$work" "fuzz/artifacts/$t"
  echo "== fuzz $t: up to ${SECONDS_PER_TARGET}s or $RUNS inputs"
  if cargo "+$TOOLCHAIN" fuzz run --debug-assertions "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_PER_TARGET" -runs="$RUNS" -max_len=16384 -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz $t: ok (${runs:-no summary}, $cov)"
  else
    tail -40 "$log"
    echo "fuzz $t: FAILED; the input is in fuzz/artifacts/$t/ (log: $log)"
    failed+=("$t")
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: crashes in ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets ran without a crash"

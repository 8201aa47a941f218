#!/usr/bin/env bash
# The benchmark matrix of docs/benchmarks.md: 3 runs of every configuration, interleaved (run 1
# of each, then run 2, then run 3) so background load falls on all of them alike.
#   scripts/bench-matrix.sh RESULTS_DIR     then: python3 scripts/bench-table.py RESULTS_DIR
# Needs the release build (cargo build --release -p linker -p test-script). About 20 minutes.
set -u
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/bench-matrix.sh RESULTS_DIR}"
mkdir -p "$out"
common="--connect-rate 1000 --quiet"
std="--warmup-secs 5 --duration-secs 15 --drain-secs 5"
open10="--warmup-secs 3 --duration-secs 10 --drain-secs 10"
configs=(
  "se-FAST-1000-1000ms|--workload self-echo --feature FAST --connections 1000 --interval-ms 1000 $std"
  "se-RELIABLE-1000-1000ms|--workload self-echo --feature RELIABLE --connections 1000 --interval-ms 1000 $std"
  "se-FAST-4000-1000ms|--workload self-echo --feature FAST --connections 4000 --interval-ms 1000 $std"
  "se-RELIABLE-4000-1000ms|--workload self-echo --feature RELIABLE --connections 4000 --interval-ms 1000 $std"
  "se-FAST-1000-100ms|--workload self-echo --feature FAST --connections 1000 --interval-ms 100 $std"
  "se-RELIABLE-1000-100ms|--workload self-echo --feature RELIABLE --connections 1000 --interval-ms 100 $std"
  "se-FAST-1000-10ms|--workload self-echo --feature FAST --connections 1000 --interval-ms 10 $open10"
  "se-RELIABLE-1000-10ms|--workload self-echo --feature RELIABLE --connections 1000 --interval-ms 10 $open10"
  "se-FAST-1000-10ms-closed|--workload self-echo --feature FAST --connections 1000 --interval-ms 10 --max-in-flight 1 $std"
  "se-RELIABLE-1000-10ms-closed|--workload self-echo --feature RELIABLE --connections 1000 --interval-ms 10 --max-in-flight 1 $std"
  "pairs-FAST-1000-1000ms|--workload pairs --feature FAST --connections 1000 --interval-ms 1000 $std"
  "pairs-RELIABLE-1000-1000ms|--workload pairs --feature RELIABLE --connections 1000 --interval-ms 1000 $std"
  "pairs-FAST-4000-1000ms|--workload pairs --feature FAST --connections 4000 --interval-ms 1000 $std"
  "pairs-RELIABLE-4000-1000ms|--workload pairs --feature RELIABLE --connections 4000 --interval-ms 1000 $std"
  "idle-5000|--workload self-echo --connections 5000 --interval-ms 0 --warmup-secs 0 --duration-secs 2 --drain-secs 0"
)
for run in 1 2 3; do
  for c in "${configs[@]}"; do
    name="${c%%|*}"
    args="${c#*|}"
    echo "=== $(date +%T) $name run $run (load $(cut -d' ' -f1 /proc/loadavg))"
    # shellcheck disable=SC2086 # the flags are meant to split
    scripts/bench.sh "$out/$name-r$run.json" $common $args >"$out/$name-r$run.txt" 2>&1
    grep -E "measured|latency" "$out/$name-r$run.txt"
  done
done

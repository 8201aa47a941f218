#!/usr/bin/env bash
# Interleaved before/after: for each run, each config, the baseline build then the new one.
# /tmp/perf-baseline/release and /tmp/perf-after/release hold the release linker and
# linker-bench of commits 124aa4e (before) and dca6140 (after); engines: scripts/services.sh.
cd "$(dirname "$0")/../../.."
eval "$(scripts/services.sh env)"
common="--connect-rate 2000 --size 1000 --quiet"
echo_phases="--interval-ms 1000 --warmup-secs 3 --duration-secs 10 --drain-secs 5"
bcast_phases="--warmup-secs 1 --duration-secs 2 --drain-secs 20"
configs=(
 "se-FAST-4000|--workload self-echo --feature FAST --connections 4000 $echo_phases"
 "se-RELIABLE-4000|--workload self-echo --feature RELIABLE --connections 4000 $echo_phases"
 "bc-RELIABLE-1000-100|--workload broadcast --feature RELIABLE --subscribers 1000 --publishers 100 $bcast_phases"
)
for run in 1 2 3; do
  for c in "${configs[@]}"; do
    name="${c%%|*}"; args="${c#*|}"
    for v in baseline after; do
      mkdir -p docs/benchmarks/2026-11-23-perf/$v
      echo "=== $(date +%T) $v $name r$run (load $(cut -d' ' -f1 /proc/loadavg))"
      CARGO_TARGET_DIR=/tmp/perf-$v scripts/bench-split.sh docs/benchmarks/2026-11-23-perf/$v/split-$name-r$run.json $common $args > docs/benchmarks/2026-11-23-perf/$v/split-$name-r$run.txt 2>&1
      grep latency docs/benchmarks/2026-11-23-perf/$v/split-$name-r$run.txt
    done
  done
done

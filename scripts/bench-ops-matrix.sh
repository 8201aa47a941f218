#!/usr/bin/env bash
# The issue-7 benchmark matrix of docs/benchmarks.md, kept short for a shared 2-core box:
# self-echo at 1000..4000 connections x 1 msg/s (1000 characters), the published broadcast
# configurations (GROUP_MESSAGE, and through one channel: bch-), and idle connections for
# memory; embedded (`linker domain`, scripts/bench.sh) and split (2 connectors + 2
# processors on the test engines, scripts/bench-split.sh), FAST and RELIABLE. 3 runs of
# each, interleaved (run 1 of all, then run 2, then run 3).
#   scripts/bench-ops-matrix.sh RESULTS_DIR [embedded|split|all] [filter-regex]
# then: python3 scripts/bench-table.py RESULTS_DIR; python3 scripts/bench-charts.py RESULTS_DIR
# Needs the release build (cargo build --release -p linker -p test-script) and, for split,
# scripts/services.sh start.
set -u
cd "$(dirname "$0")/.."
out="${1:?usage: scripts/bench-ops-matrix.sh RESULTS_DIR [embedded|split|all] [filter]}"
modes="${2:-all}"
filter="${3:-.}"
mkdir -p "$out"
common="--connect-rate 2000 --size 1000 --quiet"
echo_phases="--interval-ms 1000 --warmup-secs 3 --duration-secs 10 --drain-secs 5"
# One GROUP_MESSAGE per publisher at the start of the measured phase; the rest is waiting.
bcast_phases="--warmup-secs 1 --duration-secs 2 --drain-secs 20"
configs=()
for feature in FAST RELIABLE; do
  for n in 1000 2000 3000 4000; do
    configs+=("se-$feature-$n|--workload self-echo --feature $feature --connections $n $echo_phases")
  done
  for sp in 10,1 100,5 1000,10 1000,50 1000,100; do
    s="${sp%,*}"; p="${sp#*,}"
    configs+=("bc-$feature-$s-$p|--workload broadcast --feature $feature --subscribers $s --publishers $p $bcast_phases")
    # The same through one channel the subscribers joined (one CHANNEL_MESSAGE per publisher).
    configs+=("bch-$feature-$s-$p|--workload broadcast --channel --feature $feature --subscribers $s --publishers $p $bcast_phases")
  done
done
configs+=("idle-15000|--workload connections --connections 15000 --source-ips 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --warmup-secs 0 --duration-secs 2 --drain-secs 0")

for run in 1 2 3; do
  for mode in embedded split; do
    [[ "$modes" == all || "$modes" == "$mode" ]] || continue
    for c in "${configs[@]}"; do
      name="$mode-${c%%|*}"
      [[ "$name" =~ $filter ]] || continue
      args="${c#*|}"
      # Split connectors hold 19000 sockets each by default: idle runs are embedded only.
      [[ "$mode" == split && "$name" == *idle* ]] && continue
      echo "=== $(date +%T) $name run $run (load $(cut -d' ' -f1 /proc/loadavg))"
      if [[ "$mode" == embedded ]]; then
        # shellcheck disable=SC2086 # the flags are meant to split
        scripts/bench.sh "$out/$name-r$run.json" $common $args >"$out/$name-r$run.txt" 2>&1
      else
        # shellcheck disable=SC2086
        scripts/bench-split.sh "$out/$name-r$run.json" $common $args >"$out/$name-r$run.txt" 2>&1
      fi
      grep -E "measured|latency" "$out/$name-r$run.txt" || tail -3 "$out/$name-r$run.txt"
    done
  done
done

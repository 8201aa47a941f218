#!/usr/bin/env bash
# One benchmark run against a fresh split domain on the running test engines
# (scripts/services.sh): PROCESSORS `linker processor` and CONNECTORS `linker connector`
# processes (release build) of a domain named for this run, linker-bench spread over the
# connectors, every process's /metrics saved beside the JSON result, then everything stopped.
#   CONNECTORS=2 PROCESSORS=2 scripts/bench-split.sh RESULT.json [linker-bench flags...]
# --server-pid is connector-01's; the CPU and RSS of every process are in RESULT.procs.
# Build first: cargo build --release -p linker -p test-script. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$1"
shift
. scripts/lib/split-domain.sh
split_domain_config bench
split_domain_start "${PROCESSORS:-2}" "${CONNECTORS:-2}"

# CPU ticks of every process before and after the run, for RESULT.procs.
ticks() {
    for f in "$work"/*.pid; do
        local pid; pid="$(cat "$f")"
        echo "$(basename "$f" .pid) $(awk '{print $14+$15}' "/proc/$pid/stat") $(awk '/VmRSS/{print $2}' "/proc/$pid/status")"
    done
}
ticks >"$work/before"
start_s="$(date +%s.%N)"
"$target/linker-bench" --targets "$(IFS=,; echo "${targets[*]}")" \
    --server-pid "$(cat "$work/connector-01.pid")" --json "$out" "$@"
end_s="$(date +%s.%N)"
ticks >"$work/after"
hz="$(getconf CLK_TCK)"
join "$work/before" "$work/after" | awk -v hz="$hz" -v secs="$(echo "$end_s - $start_s" | bc)" \
    '{printf "%s cpu_percent_whole_run=%.1f rss_end_kib=%s\n", $1, ($4-$2)/hz/secs*100, $5}' \
    >"${out%.json}.procs"
for f in "$work"/*.out; do
    name="$(basename "$f" .out)"
    addr="$(sed -n 's/^LINKER_READY .*metrics=\([^ ]*\).*/\1/p' "$f")"
    curl -sf --max-time 5 "http://$addr/metrics" | grep -v '^#' >"${out%.json}.$name.metrics" || true
done
split_domain_errors

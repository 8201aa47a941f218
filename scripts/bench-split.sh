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
target="${CARGO_TARGET_DIR:-target}/release"
out="$1"
shift
connectors="${CONNECTORS:-2}"
processors="${PROCESSORS:-2}"
eval "$(scripts/services.sh env)"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

domain="bench$(date +%s)$$"
cat >"$work/linker.yaml" <<YAML
domains:
  - name: $domain
clientApps:
  # No master user: every connect and disconnect would otherwise be stored for the offline
  # master (docs/benchmarks.md, finding 3), one MongoDB write per connection of the ramp.
  - appName: ANZ
    appId: app-id-343
    authEnabled: false
linker:
  domain: $domain
  metrics_listen: 127.0.0.1:0
  engines:
    nats_url: $LINKER_TEST_NATS_URL
    kafka_brokers: $LINKER_TEST_KAFKA_BROKERS
    kafka_partitions: 8
    redis_url: $LINKER_TEST_REDIS_URL
    mongo_url: $LINKER_TEST_MONGO_URL
  connector:
    listen: 127.0.0.1:0
YAML

# Starts `linker ROLE --name NAME`; waits for its LINKER_READY line.
start() {
    local role="$1" name="$2"
    LINKER_LOG="${LINKER_LOG:-warn}" "$target/linker" "$role" --config "$work/linker.yaml" \
        --name "$name" >"$work/$name.out" 2>"$work/$name.log" &
    local pid=$!
    pids+=("$pid")
    echo "$pid" >"$work/$name.pid"
    for _ in $(seq 600); do
        grep -q '^LINKER_READY' "$work/$name.out" && return 0
        kill -0 "$pid" 2>/dev/null || { cat "$work/$name.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$name not ready within 60 s" >&2
    exit 1
}

for i in $(seq "$processors"); do start processor "processor-0$i"; done
targets=()
for i in $(seq "$connectors"); do
    start connector "connector-0$i"
    targets+=("ws://$(sed -n 's/^LINKER_READY ws=\([^ ]*\).*/\1/p' "$work/connector-0$i.out")/ws")
done

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
if grep -qiE 'error|panic' "$work"/*.log; then
    echo "--- server logs (errors) ---" >&2
    grep -iE 'error|panic' "$work"/*.log | head -20 >&2
fi

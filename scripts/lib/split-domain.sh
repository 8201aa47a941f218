# shellcheck shell=bash
# Sourced by the split benchmark scripts: one split domain of release `linker` processes on
# the running test engines (scripts/services.sh), stopped when the calling script exits.
#   . scripts/lib/split-domain.sh
#   split_domain_config PREFIX [extra connector settings, YAML lines indented 4 spaces]
#   split_domain_start PROCESSORS CONNECTORS   # fills `targets` with the connectors' ws URLs
# Each process's output is in "$work/NAME.out" (its LINKER_READY line), its log in
# "$work/NAME.log" and its pid in "$work/NAME.pid"; `pids` lists every process to stop.

target="${CARGO_TARGET_DIR:-target}/release"
eval "$(scripts/services.sh env)"
work="$(mktemp -d)"
pids=()
targets=()

# Stops every process started (SIGTERM, then SIGKILL after 10 s).
stop_all() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
}
split_domain_cleanup() {
    stop_all
    rm -rf "$work"
}
trap split_domain_cleanup EXIT

# Writes the domain's config: a domain named PREFIX plus the time and pid, its one app.
split_domain_config() {
    local prefix="$1" extra="${2:-}"
    domain="$prefix$(date +%s)$$"
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
$extra
YAML
}

# Starts `linker ROLE --name NAME`; waits for its LINKER_READY line.
split_domain_process() {
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

# Starts PROCESSORS processors, then CONNECTORS connectors, whose URLs go in `targets`.
split_domain_start() {
    local processors="$1" connectors="$2"
    for i in $(seq "$processors"); do split_domain_process processor "processor-0$i"; done
    for i in $(seq "$connectors"); do
        split_domain_process connector "connector-0$i"
        targets+=("ws://$(sed -n 's/^LINKER_READY ws=\([^ ]*\).*/\1/p' "$work/connector-0$i.out")/ws")
    done
}

# Prints the server logs' errors, if any.
split_domain_errors() {
    if grep -qiE 'error|panic' "$work"/*.log; then
        echo "--- server logs (errors) ---" >&2
        grep -iE 'error|panic' "$work"/*.log | head -20 >&2
    fi
}

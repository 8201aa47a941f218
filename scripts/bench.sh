#!/usr/bin/env bash
# One benchmark run against a fresh `linker domain` (its own store in a temp dir, ports picked
# by the kernel): starts the release server, runs linker-bench with --server-pid, saves the
# server's /metrics beside the JSON result, stops the server.
#   scripts/bench.sh RESULT.json [linker-bench flags...]
# Build first: cargo build --release -p linker -p test-script. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}/release"
out="$1"
shift
work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

LINKER_LOG="${LINKER_LOG:-warn}" "$target/linker" domain \
    --data-dir "$work/data" \
    --ws-listen 127.0.0.1:0 --page-listen 127.0.0.1:0 --meta-listen 127.0.0.1:0 \
    >"$work/stdout" 2>"$work/server.log" &
server_pid=$!
ws=""
for _ in $(seq 300); do
    ws="$(sed -n 's/^LINKER_READY ws=\([^ ]*\).*/\1/p' "$work/stdout")"
    [[ -n "$ws" ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n "$ws" ]] || { echo "linker not ready within 30 s" >&2; exit 1; }

"$target/linker-bench" --targets "ws://$ws/ws" --server-pid "$server_pid" --json "$out" "$@"
# The server's own counters (queue-full drops, stored messages, retries) beside the result.
page="$(sed -n 's/^LINKER_READY .*page=\([^ ]*\).*/\1/p' "$work/stdout")"
curl -sf --max-time 5 "http://$page/metrics" | grep -v '^#' >"${out%.json}.metrics" || true
if grep -qiE 'error|panic' "$work/server.log"; then
    echo "--- server log (errors) ---" >&2
    grep -iE 'error|panic' "$work/server.log" | head -20 >&2
fi

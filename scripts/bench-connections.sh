#!/usr/bin/env bash
# Many idle authenticated connections on one box: one split domain on the running test
# engines (scripts/services.sh), CONNECTORS `linker connector` processes and PROCESSORS
# `linker processor` processes (release build), and BENCHES `linker-bench --workload
# connections` processes sharing TOTAL connections. Each bench process connects from its own
# two loopback source addresses (127.0.0.x) to every connector in turn, as its own users.
# Once every bench has ended its ramp-up, the RSS of every process is sampled and the sum of
# open connections read; then the benches hold for HOLD_SECS, close, and everything stops.
#   TOTAL=100000 CONNECTORS=6 BENCHES=6 scripts/bench-connections.sh RESULT_DIR
# Why several processes: a process may open 20,000 files here, so a connector holds up to
# ~19,000 sockets (its `max_connections`) and so does one bench process; a source address
# has ~28,000 ephemeral ports. Results: RESULT_DIR/summary.txt, each bench's JSON and log.
# Build first: cargo build --release -p linker -p test-script. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$1"
total="${TOTAL:-100000}"
connectors="${CONNECTORS:-6}"
processors="${PROCESSORS:-1}"
benches="${BENCHES:-6}"
rate="${CONNECT_RATE:-250}"   # new connections per second, per bench process
hold="${HOLD_SECS:-20}"
ramp_limit="${RAMP_LIMIT_SECS:-600}"
mkdir -p "$out"
. scripts/lib/split-domain.sh
# The load comes from a few loopback addresses: no cap per address.
split_domain_config conns "    max_connections_per_ip: 0"

rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }

split_domain_start "$processors" "$connectors"
for i in $(seq "$connectors"); do
    echo "connector-0$i $(rss "$(cat "$work/connector-0$i.pid")")" >>"$work/rss-before"
done

# Bench b connects from 127.0.0.(10+2b) and 127.0.0.(11+2b), as users ANZ-(b+1)000000...
per_bench=$(( (total + benches - 1) / benches ))
bench_pids=()
for b in $(seq 0 $((benches - 1))); do
    n=$(( b == benches - 1 ? total - per_bench * (benches - 1) : per_bench ))
    "$target/linker-bench" --workload connections --interval-ms 0 --connections "$n" \
        --targets "$(IFS=,; echo "${targets[*]}")" \
        --source-ips "127.0.0.$((10 + 2 * b)),127.0.0.$((11 + 2 * b))" \
        --user-base "$(( (b + 1) * 1000000 ))" --connect-rate "$rate" \
        --connect-timeout-secs 60 --warmup-secs "$hold" --duration-secs 1 --drain-secs 1 \
        --json "$out/bench-$b.json" >"$out/bench-$b.txt" 2>"$out/bench-$b.log" &
    bench_pids+=("$!")
    pids+=("$!")
done

# Every bench prints a progress line a second; its ramp is over once it says warmup.
ramp_start=$(date +%s)
while :; do
    ramping=0
    for b in $(seq 0 $((benches - 1))); do
        last="$(tail -n 1 "$out/bench-$b.log" 2>/dev/null || true)"
        [[ "$last" == *warmup* || "$last" == *measure* || "$last" == *drain* ]] || ramping=$((ramping + 1))
    done
    open=0
    for b in $(seq 0 $((benches - 1))); do
        n="$(tail -n 1 "$out/bench-$b.log" 2>/dev/null | sed -n 's/.*connected \([0-9]*\)\/.*/\1/p')"
        open=$((open + ${n:-0}))
    done
    echo "$(date +%T) open $open, benches still ramping: $ramping" >&2
    [[ "$ramping" -eq 0 ]] && break
    if (( $(date +%s) - ramp_start > ramp_limit )); then
        echo "ramp-up not over within $ramp_limit s; sampling as it stands" >&2
        break
    fi
    sleep 2
done

{
    echo "# $(date -u +%FT%TZ) total=$total connectors=$connectors processors=$processors benches=$benches rate_per_bench=$rate"
    echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "open connections (bench progress lines): $open"
    sum_before=0; sum_now=0; sockets=0
    for i in $(seq "$connectors"); do
        name="connector-0$i"
        pid="$(cat "$work/$name.pid")"
        before="$(awk -v n="$name" '$1 == n {print $2}' "$work/rss-before")"
        now="$(rss "$pid")"
        port="$(sed -n 's/^LINKER_READY ws=[^ ]*:\([0-9]*\) .*/\1/p' "$work/$name.out")"
        conns="$(ss -Htn state established "( sport = :$port )" | wc -l)"
        sum_before=$((sum_before + before)); sum_now=$((sum_now + now)); sockets=$((sockets + conns))
        per="n/a"
        (( conns > 0 )) && per="$(echo "scale=2; ($now - $before) / $conns" | bc)"
        echo "$name pid=$pid sockets=$conns rss_before_kib=$before rss_kib=$now per_connection_kib=$per"
    done
    for i in $(seq "$processors"); do
        echo "processor-0$i rss_kib=$(rss "$(cat "$work/processor-0$i.pid")")"
    done
    for b in $(seq 0 $((benches - 1))); do
        echo "bench-$b rss_kib=$(rss "${bench_pids[$b]}" 2>/dev/null || echo gone)"
    done
    per="n/a"
    (( sockets > 0 )) && per="$(echo "scale=2; ($sum_now - $sum_before) / $sockets" | bc)"
    echo "all connectors: sockets=$sockets rss_before_kib=$sum_before rss_kib=$sum_now per_connection_kib=$per"
} | tee "$out/summary.txt"

for pid in "${bench_pids[@]}"; do wait "$pid" || true; done
split_domain_errors

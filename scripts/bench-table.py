#!/usr/bin/env python3
"""Medians of a bench-matrix results directory as the Markdown tables of docs/benchmarks.md.

Each column's median is taken over the runs on its own; lost, duplicated, errors and CPU
pressure are listed run by run. Usage: python3 scripts/bench-table.py RESULTS_DIR
"""
import collections
import glob
import json
import re
import statistics
import sys

results = sys.argv[1] if len(sys.argv) > 1 else "."
runs = collections.defaultdict(list)
for path in sorted(glob.glob(f"{results}/*-r[0-9].json")):
    runs[re.sub(r"-r\d\.json$", "", path.split("/")[-1])].append(json.load(open(path)))


def med(values):
    return statistics.median(values)


def per_run(rs, f):
    return "/".join(str(f(r)) for r in rs)


print("| config | runs | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | msg/s (offered) | sent "
      "| lost | dup | errors | server CPU % | server RSS MiB | client CPU % | CPU pressure % |")
print("|---" * 16 + "|")
for name, rs in runs.items():
    if name.startswith("idle"):
        continue
    lat = lambda k: f"{med([r['latency'][k] for r in rs]):.2f}"
    row = [
        name, str(len(rs)), lat("p50_ms"), lat("p90_ms"), lat("p99_ms"), lat("p999_ms"), lat("max_ms"),
        f"{med([r['achieved_msgs_per_sec'] for r in rs]):.0f} ({med([r['offered_msgs_per_sec'] for r in rs]):.0f})",
        f"{med([r['sent'] for r in rs]):.0f}",
        per_run(rs, lambda r: r["lost"]),
        per_run(rs, lambda r: r["duplicated"]),
        per_run(rs, lambda r: sum(v for k, v in r["errors"].items() if k != "first")),
        f"{med([r['server']['cpu_percent'] for r in rs]):.0f}",
        f"{med([r['server']['rss_end_kib'] for r in rs]) / 1024:.1f}",
        f"{med([r['client']['cpu_percent'] for r in rs]):.0f}",
        per_run(rs, lambda r: f"{r['machine_start']['cpu_pressure_10s'] or 0:.0f}"),
    ]
    print("| " + " | ".join(row) + " |")

for name, rs in runs.items():
    if not name.startswith("idle"):
        continue
    print(f"\n{name}:\n")
    print("| run | connected | RSS before KiB | RSS connected KiB | KiB per connection |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rs, 1):
        s = r["server"]
        print(f"| {i} | {r['connected']} | {s['rss_before_kib']} | {s['rss_connected_kib']} "
              f"| {s['rss_per_connection_kib']:.2f} |")
    print(f"\nmedian: {med([r['server']['rss_per_connection_kib'] for r in rs]):.2f} KiB per connection")

#!/usr/bin/env python3
"""The charts of docs/benchmarks.md from a bench-ops-matrix results directory: takes the
median of the runs of each configuration, writes series<TAB>x<TAB>value rows and has
linker-bench-chart (the bench's own renderer, plotters) draw them to SVG.

Usage: python3 scripts/bench-charts.py RESULTS_DIR OUT_DIR
Needs target/release/linker-bench-chart (cargo build --release -p test-script).
"""
import collections
import glob
import json
import os
import re
import statistics
import subprocess
import sys

results, out = sys.argv[1], sys.argv[2]
chart_bin = os.environ.get("LINKER_BENCH_CHART", "target/release/linker-bench-chart")
os.makedirs(out, exist_ok=True)

runs = collections.defaultdict(list)
for path in sorted(glob.glob(f"{results}/*-r[0-9].json")):
    runs[re.sub(r"-r\d\.json$", "", os.path.basename(path))].append(json.load(open(path)))


def median(name, key):
    rs = runs.get(name)
    if not rs:
        return None
    return statistics.median(r["latency"][key] for r in rs)


def draw(name, title, x_label, rows):
    tsv = os.path.join(out, f"{name}.tsv")
    with open(tsv, "w") as f:
        f.write("# series\tx\tvalue (median of the runs)\n")
        for series, x, value in rows:
            if value is not None and value > 0:
                f.write(f"{series}\t{x}\t{value}\n")
    subprocess.run([chart_bin, tsv, "--out", os.path.join(out, f"{name}.svg"), "--title", title,
                    "--x-label", x_label], check=True)


modes = ["embedded", "split"]
features = ["FAST", "RELIABLE"]
for pct, key in [("p50", "p50_ms"), ("p99", "p99_ms")]:
    rows = []
    for mode in modes:
        for feature in features:
            for n in [1000, 2000, 3000, 4000]:
                rows.append((f"{mode} {feature}", n, median(f"{mode}-se-{feature}-{n}", key)))
    draw(f"self-echo-{pct}", f"self-echo, 1 msg/s per connection, 1000 chars: {pct} round trip",
         "connections", rows)

configs = [(10, 1), (100, 5), (1000, 10), (1000, 50), (1000, 100)]
for stat, key in [("mean", "mean_ms"), ("p99", "p99_ms")]:
    rows = []
    for mode in modes:
        for feature in features:
            for s, p in configs:
                rows.append((f"{mode} {feature}", f"{s} subs x {p} pubs",
                             median(f"{mode}-bc-{feature}-{s}-{p}", key)))
    draw(f"broadcast-{stat}", f"broadcast (GROUP_MESSAGE to an explicit list): {stat} latency per copy",
         "subscribers x publishers", rows)


def cell(name, key, fmt="{:.2f}"):
    rs = runs.get(name)
    if not rs:
        return "-"
    return fmt.format(statistics.median(r["latency"][key] for r in rs))


def per_run(name, field):
    return "/".join(str(r[field]) for r in runs.get(name, [])) or "-"


print("\nself-echo, medians of the runs (ms):\n")
print("| mode | feature | connections | runs | p50 | p90 | p99 | p99.9 | max | lost | dup |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for mode in modes:
    for feature in features:
        for n in [1000, 2000, 3000, 4000]:
            name = f"{mode}-se-{feature}-{n}"
            if name in runs:
                print(f"| {mode} | {feature} | {n} | {len(runs[name])} | " + " | ".join(
                    cell(name, k) for k in ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"])
                      + f" | {per_run(name, 'lost')} | {per_run(name, 'duplicated')} |")
print("\nbroadcast, medians of the runs (ms, per delivered copy):\n")
print("| mode | feature | subscribers x publishers | copies | runs | mean | p50 | p99 | max | lost | dup |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for mode in modes:
    for feature in features:
        for sub, pub in configs:
            name = f"{mode}-bc-{feature}-{sub}-{pub}"
            if name in runs:
                print(f"| {mode} | {feature} | {sub} x {pub} | {sub * pub} | {len(runs[name])} | " + " | ".join(
                    cell(name, k) for k in ["mean_ms", "p50_ms", "p99_ms", "max_ms"])
                      + f" | {per_run(name, 'lost')} | {per_run(name, 'duplicated')} |")
print(f"\ncharts in {out}")

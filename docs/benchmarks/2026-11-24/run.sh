#!/usr/bin/env bash
# Session 6 measurements: broadcast before/after interleaved, then the other targets on the new build.
set -u
cd /work/main
out=/tmp/s6/res; mkdir -p $out
eval "$(scripts/services.sh env)"
BC="--connect-rate 2000 --size 1000 --quiet --workload broadcast --subscribers 1000 --publishers 100 --warmup-secs 1 --duration-secs 2 --drain-secs 20"
for r in ${BCROUNDS:-1 2 3}; do
  for f in FAST RELIABLE; do
    for v in base new; do
      dir=/tmp/bc/basebuild; [[ $v == new ]] && dir=/work/main/target
      CARGO_TARGET_DIR=$dir scripts/bench.sh $out/bc-$f-$v-$r.json --feature $f $BC > $out/bc-$f-$v-$r.txt 2>&1
      echo "bc $f $v $r $(grep -o 'mean [0-9.]*' $out/bc-$f-$v-$r.txt) load $(cut -d' ' -f1 /proc/loadavg)"
    done
  done
done
for r in 1 2 3; do
  scripts/bench-split.sh $out/split-rel-$r.json --workload self-echo --feature RELIABLE --connections 4000 \
    --interval-ms 1000 --warmup-secs 3 --duration-secs 10 --drain-secs 5 --connect-rate 2000 --size 1000 --quiet > $out/split-rel-$r.txt 2>&1
  echo "split-rel $r $(grep latency $out/split-rel-$r.txt) load $(cut -d' ' -f1 /proc/loadavg)"
  scripts/bench.sh $out/rate-$r.json --workload self-echo --feature FAST --connections 1000 --interval-ms 20 \
    --size 100 --connect-rate 2000 --warmup-secs 3 --duration-secs 10 --drain-secs 5 --quiet > $out/rate-$r.txt 2>&1
  echo "rate $r $(grep -E 'rate ' $out/rate-$r.txt) load $(cut -d' ' -f1 /proc/loadavg)"
  scripts/bench.sh $out/echo4000-$r.json --workload self-echo --feature FAST --connections 4000 \
    --interval-ms 1000 --size 1000 --connect-rate 2000 --warmup-secs 3 --duration-secs 10 --drain-secs 5 --quiet > $out/echo4000-$r.txt 2>&1
  echo "echo4000 $r $(grep latency $out/echo4000-$r.txt) load $(cut -d' ' -f1 /proc/loadavg)"
  scripts/bench.sh $out/mem-$r.json --workload connections --connections 10000 \
    --source-ips 127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4 --connect-rate 2000 \
    --warmup-secs 1 --duration-secs 1 --drain-secs 1 --quiet > $out/mem-$r.txt 2>&1
  echo "mem $r $(grep -o '[0-9.]* KiB per connection' $out/mem-$r.txt)"
done
echo done

#!/usr/bin/env bash
# scripts/services.sh - the local test engines that linker-rs tests talk to.
#
# Owns four background processes, each listening on 127.0.0.1 only:
#   nats   nats-server (Debian package), JetStream on      port $LINKER_TEST_NATS_PORT  (14222)
#   redis  redis-server (Debian package), append-only file port $LINKER_TEST_REDIS_PORT (16379)
#          (as production should run it: processed marks must outlive a restart)
#   kafka  Apache Kafka 3.9 single node in KRaft mode      port $LINKER_TEST_KAFKA_PORT (19092),
#          (jars from Maven Central via scripts/services/kafka-pom.xml,   controller port
#          cached in ~/.cache/linker-services/kafka-libs)   $LINKER_TEST_KAFKA_CONTROLLER_PORT (19093)
#   mongo  FerretDB v1 (MongoDB wire protocol, SQLite      port $LINKER_TEST_MONGO_PORT (27018)
#          backend), built from the Go module proxy into $GOBIN (default ~/go/bin)
# and their state (pids, logs, data) under ${LINKER_SERVICES_DIR:-/tmp/linker-services}/<engine>/.
# Missing software is installed on first use (apt, mvn, go); nothing else is downloaded.
#
# Usage: scripts/services.sh start   [ENGINE...]   install if needed, start, wait until ready
#        scripts/services.sh stop    [ENGINE...]
#        scripts/services.sh restart [ENGINE...]
#        scripts/services.sh status  [ENGINE...]   exit 0 only if all named engines are up
#        scripts/services.sh reset   [ENGINE...]   stop and delete the data (every topic, key and
#                                                  database the tests left; Kafka starts slower
#                                                  with each run's topics: ~11,000 partitions
#                                                  took it past its 90 s start timeout)
#        scripts/services.sh env                   eval "$(scripts/services.sh env)"
#        scripts/services.sh kafka-class CLASS [ARGS...]   run a Kafka CLI class with the jars
#             e.g. kafka-class org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:19092 --list
#             (3.9 class names: kafka.tools.ConsoleProducer, org.apache.kafka.tools.consumer.ConsoleConsumer,
#              org.apache.kafka.tools.consumer.group.ConsumerGroupCommand)
# ENGINE is nats, redis, kafka or mongo (alias: ferretdb); default all four.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RES_DIR="$SCRIPT_DIR/services"
STATE_DIR="${LINKER_SERVICES_DIR:-/tmp/linker-services}"
CACHE_DIR="${LINKER_SERVICES_CACHE:-$HOME/.cache/linker-services}"

NATS_PORT="${LINKER_TEST_NATS_PORT:-14222}"
REDIS_PORT="${LINKER_TEST_REDIS_PORT:-16379}"
KAFKA_PORT="${LINKER_TEST_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${LINKER_TEST_KAFKA_CONTROLLER_PORT:-19093}"
MONGO_PORT="${LINKER_TEST_MONGO_PORT:-27018}"

KAFKA_LIBS="$CACHE_DIR/kafka-libs"
KAFKA_POM="$RES_DIR/kafka-pom.xml"
KAFKA_HEAP="${LINKER_TEST_KAFKA_HEAP:-512m}"
KAFKA_TIMEOUT="${LINKER_TEST_KAFKA_TIMEOUT:-90}"
FERRETDB_VERSION="v1.24.2"
FERRETDB_MODULE="github.com/FerretDB/FerretDB"

ALL_ENGINES=(nats redis kafka mongo)

[[ -d /usr/local/go/bin ]] && PATH="$PATH:/usr/local/go/bin"

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

port_of() {
  case "$1" in
    nats) echo "$NATS_PORT" ;; redis) echo "$REDIS_PORT" ;;
    kafka) echo "$KAFKA_PORT" ;; mongo) echo "$MONGO_PORT" ;;
  esac
}
# A string that must appear in /proc/PID/cmdline of our process (guards against pid reuse).
marker_of() {
  case "$1" in
    nats) echo nats-server ;; redis) echo redis-server ;;
    kafka) echo kafka.Kafka ;; mongo) echo ferretdb ;;
  esac
}
timeout_of() {
  case "$1" in
    kafka) echo "$KAFKA_TIMEOUT" ;; mongo) echo 30 ;; *) echo 15 ;;
  esac
}
dir_of() { echo "$STATE_DIR/$1"; }
pidfile_of() { echo "$STATE_DIR/$1/pid"; }
logfile_of() { echo "$STATE_DIR/$1/$1.log"; }

ENGINES=()
set_engines() { # ARGS... -> ENGINES (deduplicated, validated)
  local e n
  ENGINES=()
  [[ $# -eq 0 ]] && set -- "${ALL_ENGINES[@]}"
  for e in "$@"; do
    case "$e" in
      nats | redis | kafka | mongo) n="$e" ;;
      ferretdb | mongodb) n=mongo ;;
      all) set_engines; return ;;
      *) die "unknown engine '$e' (expected: ${ALL_ENGINES[*]})" ;;
    esac
    [[ " ${ENGINES[*]} " == *" $n "* ]] || ENGINES+=("$n")
  done
}

# --- process helpers -------------------------------------------------------

pid_alive() { # PID MARKER
  local pid="$1" marker="$2" st
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/stat" ]] || return 1
  st="$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
  [[ "$st" != Z && "$st" != X ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$marker"
}

running_pid() { # ENGINE -> prints pid if our process is alive
  local f pid
  f="$(pidfile_of "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f" 2>/dev/null || true)"
  pid_alive "$pid" "$(marker_of "$1")" || return 1
  echo "$pid"
}

port_open() { # PORT
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

port_owner() { # PORT -> best-effort description of the listener
  ss -ltnpH "sport = :$1" 2>/dev/null | head -n 1 || true
}

# --- installation ------------------------------------------------------------

apt_install() { # PKG...
  log "apt-get install $*"
  local policy_created=0 rc=0
  # Do not let package scripts start the distribution's own redis/nats services.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy_created=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
  if ! apt-get install "${opts[@]}" "$@" >&2; then
    log "apt-get install failed; running apt-get update once and retrying"
    apt-get update -q -o DPkg::Lock::Timeout=300 >&2 && apt-get install "${opts[@]}" "$@" >&2 || rc=$?
  fi
  [[ $policy_created -eq 1 ]] && rm -f /usr/sbin/policy-rc.d
  return $rc
}

ensure_packages() { # ENGINE...
  local e pkgs=()
  for e in "$@"; do
    case "$e" in
      nats) command -v nats-server >/dev/null || pkgs+=(nats-server) ;;
      redis)
        command -v redis-server >/dev/null || pkgs+=(redis-server)
        command -v redis-cli >/dev/null || pkgs+=(redis-tools)
        ;;
      kafka)
        command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
        if [[ ! -f "$KAFKA_LIBS/.complete" ]] && ! command -v mvn >/dev/null; then pkgs+=(maven); fi
        ;;
      mongo)
        if ! ferretdb_ok && ! command -v go >/dev/null; then pkgs+=(golang-go); fi
        ;;
    esac
  done
  if [[ ${#pkgs[@]} -gt 0 ]]; then
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    apt_install "${pkgs[@]}" || die "could not install: ${pkgs[*]}"
  fi
}

pom_stamp() { sha256sum "$KAFKA_POM" | cut -d' ' -f1; }

kafka_libs_ok() {
  [[ -f "$KAFKA_LIBS/.complete" ]] && [[ "$(cat "$KAFKA_LIBS/.complete")" == "$(pom_stamp)" ]]
}

install_kafka_libs() {
  kafka_libs_ok && return 0
  log "fetching Kafka jars from Maven Central into $KAFKA_LIBS"
  local tmp="$KAFKA_LIBS.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mkdir -p "$CACHE_DIR"
  if ! mvn -B -q -ntp -Dstyle.color=never -f "$KAFKA_POM" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies \
    -DoutputDirectory="$tmp" -DincludeScope=runtime >"$CACHE_DIR/mvn.log" 2>&1; then
    tail -n 40 "$CACHE_DIR/mvn.log" >&2
    rm -rf "$tmp"
    return 1
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; log "kafka_2.13 jar missing after mvn"; return 1; }
  pom_stamp >"$tmp/.complete"
  rm -rf "$KAFKA_LIBS"
  mv "$tmp" "$KAFKA_LIBS"
}

ferretdb_bin() {
  if [[ -n "${LINKER_FERRETDB_BIN:-}" ]]; then echo "$LINKER_FERRETDB_BIN"; return; fi
  local gobin="${GOBIN:-}"
  if [[ -z "$gobin" ]] && command -v go >/dev/null; then
    gobin="$(go env GOBIN)"
    [[ -n "$gobin" ]] || gobin="$(go env GOPATH | cut -d: -f1)/bin"
  fi
  [[ -n "$gobin" ]] || gobin="${GOPATH:-$HOME/go}/bin"
  echo "$gobin/ferretdb"
}

ferretdb_ok() {
  local bin
  bin="$(ferretdb_bin)"
  [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -qx "version: $FERRETDB_VERSION"
}

# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` does not work: it needs the
# module's version list (refused by the proxy here), and the module zip lacks the generated
# build/version/version.txt, so such a binary panics at startup. So: download the exact module
# version, add version.txt, build.
install_ferretdb() {
  ferretdb_ok && return 0
  local bin moddir src
  bin="$(ferretdb_bin)"
  log "building FerretDB $FERRETDB_VERSION into $bin (takes a few minutes the first time)"
  moddir="$(cd / && go mod download -json "$FERRETDB_MODULE@$FERRETDB_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
  [[ -n "$moddir" && -d "$moddir" ]] || { log "go mod download of $FERRETDB_MODULE@$FERRETDB_VERSION failed"; return 1; }
  src="$CACHE_DIR/ferretdb-src-$FERRETDB_VERSION.$$"
  rm -rf "$src"
  mkdir -p "$CACHE_DIR" "$(dirname "$bin")"
  cp -r "$moddir" "$src"
  chmod -R u+w "$src"
  echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
  echo "linker-services" >"$src/build/version/package.txt"
  if ! (cd "$src" && go build -trimpath -o "$bin.tmp.$$" ./cmd/ferretdb) >&2; then
    rm -rf "$src" "$bin.tmp.$$"
    return 1
  fi
  mv "$bin.tmp.$$" "$bin"
  rm -rf "$src"
  ferretdb_ok
}

ensure_installed() { # ENGINE...
  ensure_packages "$@"
  local e jobs=() names=() i rc=0
  for e in "$@"; do
    case "$e" in
      kafka) kafka_libs_ok || { install_kafka_libs & jobs+=($!); names+=("Kafka jars"); } ;;
      mongo) ferretdb_ok || { install_ferretdb & jobs+=($!); names+=("FerretDB"); } ;;
    esac
  done
  for i in "${!jobs[@]}"; do
    wait "${jobs[$i]}" || { log "installing ${names[$i]} failed"; rc=1; }
  done
  [[ $rc -eq 0 ]] || die "installation failed (see messages above)"
}

# --- launching -----------------------------------------------------------------

kafka_java() { # CLASS ARGS... (foreground, for tools)
  java -Xmx256m -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$RES_DIR/kafka-log4j-tools.properties" \
    -cp "$KAFKA_LIBS/*" "$@"
}

prepare_kafka() {
  local dir="$1"
  mkdir -p "$dir/data"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
    -e "s|@LOG_DIR@|$dir/data|g" \
    "$RES_DIR/kafka-server.properties.template" >"$dir/server.properties"
  cp "$RES_DIR/kafka-log4j.properties" "$dir/log4j.properties"
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    local cid
    if [[ -s "$dir/cluster-id" ]]; then
      cid="$(cat "$dir/cluster-id")"
    else
      cid="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
      [[ -n "$cid" ]] || die "kafka: could not generate a cluster id"
      echo "$cid" >"$dir/cluster-id"
    fi
    log "kafka: formatting storage (cluster id $cid)"
    kafka_java kafka.tools.StorageTool format -t "$cid" -c "$dir/server.properties" \
      --ignore-formatted >>"$dir/format.log" 2>&1 9>&- ||
      { tail -n 30 "$dir/format.log" >&2; die "kafka: storage format failed"; }
  fi
}

launch() { # ENGINE
  local e="$1" dir port logf
  dir="$(dir_of "$e")"
  port="$(port_of "$e")"
  logf="$(logfile_of "$e")"
  mkdir -p "$dir"

  local ports=("$port")
  [[ "$e" == kafka ]] && ports+=("$KAFKA_CONTROLLER_PORT")
  local p
  for p in "${ports[@]}"; do
    if port_open "$p"; then
      die "$e: port 127.0.0.1:$p is already in use by another process: $(port_owner "$p")"
    fi
  done

  local cmd=()
  case "$e" in
    nats)
      mkdir -p "$dir/jetstream"
      cmd=(nats-server -a 127.0.0.1 -p "$NATS_PORT" -n linker-test -js -sd "$dir/jetstream")
      ;;
    redis)
      mkdir -p "$dir/data"
      cmd=(redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes
        --save '' --appendonly yes --appendfsync everysec --dir "$dir/data" --daemonize no --logfile '')
      ;;
    kafka)
      prepare_kafka "$dir"
      cmd=(java "-Xmx$KAFKA_HEAP" -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -Djava.awt.headless=true -Dlog4j.configuration="file:$dir/log4j.properties"
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties")
      ;;
    mongo)
      mkdir -p "$dir/data" "$dir/state"
      cmd=(env DO_NOT_TRACK=1 FERRETDB_TELEMETRY=disable "$(ferretdb_bin)"
        --handler=sqlite --sqlite-url="file:$dir/data/"
        --listen-addr="127.0.0.1:$MONGO_PORT" --state-dir="$dir/state"
        --debug-addr=- --telemetry=disable --test-telemetry-url=http://127.0.0.1:9/
        --log-level=WARN)
      ;;
  esac

  [[ -f "$logf" ]] && mv -f "$logf" "$logf.1"
  log "$e: starting on 127.0.0.1:$port (log $logf)"
  # setsid: own session, so the engine outlives the caller's process group;
  # fd 9 (our lock) is closed so the engine does not hold it.
  (cd "$dir" && exec setsid "${cmd[@]}" </dev/null >>"$logf" 2>&1 9>&-) &
  echo $! >"$(pidfile_of "$e")"
}

ready() { # ENGINE -> 0 if it accepts requests now
  local e="$1" port
  port="$(port_of "$e")"
  case "$e" in
    nats)
      [[ "$(timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; head -c 4 <&3" 2>/dev/null)" == INFO ]]
      ;;
    redis)
      [[ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" == PONG ]]
      ;;
    kafka)
      grep -q 'Kafka Server started' "$(logfile_of kafka)" 2>/dev/null && port_open "$port"
      ;;
    mongo)
      port_open "$port"
      ;;
  esac
}

fail_engine() { # ENGINE MESSAGE
  local e="$1" logf
  logf="$(logfile_of "$e")"
  log "ERROR: $e: $2"
  if [[ -f "$logf" ]]; then
    log "---- last 40 lines of $logf ----"
    tail -n 40 "$logf" >&2 || true
    log "---- end of $logf ----"
  fi
}

wait_ready() { # ENGINE
  local e="$1" deadline pid missing=0
  deadline=$((SECONDS + $(timeout_of "$e")))
  while :; do
    # Just after launch the pid is still the subshell that is about to exec the engine, so
    # its command line does not show the engine yet: only several misses in a row mean dead.
    if ! pid="$(running_pid "$e")"; then
      missing=$((missing + 1))
      if ((missing >= 5)); then
        fail_engine "$e" "process exited during startup"
        return 1
      fi
      sleep 0.3
      continue
    fi
    missing=0
    ready "$e" && return 0
    if ((SECONDS >= deadline)); then
      fail_engine "$e" "not ready on 127.0.0.1:$(port_of "$e") after $(timeout_of "$e")s; stopping it"
      stop_engine "$e" >/dev/null 2>&1 || true
      return 1
    fi
    sleep 0.3
  done
}

# A real round trip through the broker: list topics via the admin API.
kafka_verify() {
  local out
  if ! out="$(timeout 60 bash -c 'kafka_java "$@"' _ org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list 2>&1 9>&-)"; then
    log "$out"
    fail_engine kafka "TopicCommand --list against 127.0.0.1:$KAFKA_PORT failed"
    return 1
  fi
}
export -f kafka_java
export RES_DIR KAFKA_LIBS

stop_engine() { # ENGINE
  local e="$1" pid limit i
  if ! pid="$(running_pid "$e")"; then
    rm -f "$(pidfile_of "$e")"
    log "$e: not running"
    return 0
  fi
  limit=10
  [[ "$e" == kafka ]] && limit=60
  log "$e: stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < limit * 5; i++)); do
    pid_alive "$pid" "$(marker_of "$e")" || break
    sleep 0.2
  done
  if pid_alive "$pid" "$(marker_of "$e")"; then
    log "$e: still alive after ${limit}s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_alive "$pid" "$(marker_of "$e")" || break
      sleep 0.1
    done
  fi
  rm -f "$(pidfile_of "$e")"
}

# --- commands --------------------------------------------------------------------

take_lock() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -w 900 9 || die "could not take $STATE_DIR/.lock within 900s"
}

status_line() { # ENGINE -> prints a line, returns 0 if up
  local e="$1" pid port extra=""
  port="$(port_of "$e")"
  [[ "$e" == kafka ]] && extra=" (controller :$KAFKA_CONTROLLER_PORT)"
  if pid="$(running_pid "$e")" && ready "$e"; then
    printf '%-6s up    127.0.0.1:%s%s pid %s\n' "$e" "$port" "$extra" "$pid"
    return 0
  elif [[ -n "${pid:-}" ]]; then
    printf '%-6s start 127.0.0.1:%s%s pid %s (not accepting connections yet)\n' "$e" "$port" "$extra" "$pid"
  elif port_open "$port"; then
    printf '%-6s down  127.0.0.1:%s%s (port in use by a process not started by this script)\n' "$e" "$port" "$extra"
  else
    printf '%-6s down  127.0.0.1:%s%s\n' "$e" "$port" "$extra"
  fi
  return 1
}

cmd_start() {
  local engines e rc=0 fresh=()
  set_engines "$@"
  engines=("${ENGINES[@]}")
  take_lock
  local need=()
  for e in "${engines[@]}"; do running_pid "$e" >/dev/null || need+=("$e"); done
  [[ ${#need[@]} -gt 0 ]] && ensure_installed "${need[@]}"
  for e in "${engines[@]}"; do
    if running_pid "$e" >/dev/null; then continue; fi
    launch "$e"
    fresh+=("$e")
  done
  for e in "${engines[@]}"; do
    wait_ready "$e" || { rc=1; continue; }
    if [[ "$e" == kafka && " ${fresh[*]} " == *" kafka "* ]]; then
      kafka_verify || rc=1
    fi
  done
  for e in "${engines[@]}"; do status_line "$e" || true; done
  [[ $rc -eq 0 ]] || die "some engines did not start"
}

cmd_stop() {
  local engines e pids=() 
  set_engines "$@"
  engines=("${ENGINES[@]}")
  take_lock
  # Stop in parallel: Kafka's controlled shutdown takes a few seconds.
  for e in "${engines[@]}"; do stop_engine "$e" & pids+=($!); done
  for e in "${pids[@]}"; do wait "$e" || true; done
}

cmd_reset() {
  local e
  cmd_stop "$@"
  for e in "${ENGINES[@]}"; do
    log "$e: deleting its data"
    rm -rf "$(dir_of "$e")/data" "$(dir_of "$e")/state"
  done
}

cmd_status() {
  local engines e rc=0
  set_engines "$@"
  engines=("${ENGINES[@]}")
  for e in "${engines[@]}"; do status_line "$e" || rc=1; done
  return $rc
}

cmd_env() {
  echo "export LINKER_TEST_NATS_URL=nats://127.0.0.1:$NATS_PORT"
  echo "export LINKER_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
  echo "export LINKER_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
  echo "export LINKER_TEST_MONGO_URL=mongodb://127.0.0.1:$MONGO_PORT"
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
}

main() {
  local action="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$action" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart) cmd_stop "$@" && cmd_start "$@" ;;
    reset) cmd_reset "$@" ;;
    status) cmd_status "$@" ;;
    env) cmd_env ;;
    kafka-class)
      [[ $# -ge 1 ]] || die "usage: $0 kafka-class CLASS [ARGS...]"
      kafka_libs_ok || { ensure_packages kafka; install_kafka_libs || die "could not fetch Kafka jars"; }
      kafka_java "$@"
      ;;
    -h | --help | help) usage ;;
    *) usage; exit 2 ;;
  esac
}

main "$@"

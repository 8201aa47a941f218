#!/usr/bin/env bash
# Checks the files under docker/ without a Docker engine:
#   - `docker compose config` parses and validates both compose files against the Compose
#     specification (installing the compose plugin with scripts/setup-compose.sh if needed);
#   - the `linker` binary validates the linker config each process of them reads
#     (`--check-config`), when a binary is given or built (LINKER_BIN, default
#     target/debug/linker).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-compose.sh >/dev/null

for file in docker/compose.yml docker/network/compose.yml; do
    docker compose -f "$file" config --quiet
    echo "ok: $file ($(docker compose -f "$file" config --services | wc -l) services)"
done

bin="${LINKER_BIN:-target/debug/linker}"
if [ ! -x "$bin" ]; then
    echo "skipped: the linker configs ($bin not built)"
    exit 0
fi
for role in connector processor; do
    "$bin" "$role" --config docker/linker.yaml --check-config >/dev/null
done
"$bin" meta-server --config docker/linker.yaml --check-config >/dev/null
for n in 1 2 3 4; do
    "$bin" domain --config docker/network/network.yaml --domain "domain-0$n" --check-config >/dev/null
done
echo "ok: docker/linker.yaml and docker/network/network.yaml load in every role"

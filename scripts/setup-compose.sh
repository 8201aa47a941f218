#!/usr/bin/env bash
# Makes `docker compose` available for checking the compose files (`docker compose config`),
# without a Docker engine: builds Docker Compose v2 from the Go module proxy once, caches the
# binary, and links it as a Docker CLI plugin. Idempotent; a second run takes well under a
# second. Prints the path of the plugin.
#
#   scripts/setup-compose.sh            # install if missing
#   COMPOSE_VERSION=v2.40.3 scripts/setup-compose.sh
set -euo pipefail

version="${COMPOSE_VERSION:-v2.40.3}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/linker/compose-$version"
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
plugin="$plugins/docker-compose"

if ! command -v docker >/dev/null; then
    echo "setup-compose: the docker CLI is missing (install Debian's docker.io or docker-cli)" >&2
    exit 1
fi

# Already there (ours, or a plugin installed otherwise)?
if docker compose version >/dev/null 2>&1; then
    echo "$plugin"
    exit 0
fi

if [ ! -x "$cache/docker-compose" ]; then
    if ! command -v go >/dev/null; then
        echo "setup-compose: needs Go to build docker compose $version" >&2
        exit 1
    fi
    echo "setup-compose: building docker compose $version from the Go module proxy (once)..." >&2
    mkdir -p "$cache"
    # Its go.mod has exclude directives, which `go install pkg@version` refuses: download the
    # module's source through the proxy and build its ./cmd inside it instead.
    src=$(go mod download -json "github.com/docker/compose/v2@$version" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    if [ -z "$src" ]; then
        echo "setup-compose: cannot download github.com/docker/compose/v2@$version" >&2
        exit 1
    fi
    (cd "$src" && CGO_ENABLED=0 go build -trimpath \
        -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$version" \
        -o "$cache/docker-compose.tmp" ./cmd)
    mv "$cache/docker-compose.tmp" "$cache/docker-compose"
fi

mkdir -p "$plugins"
ln -sf "$cache/docker-compose" "$plugin"
docker compose version >&2
echo "$plugin"

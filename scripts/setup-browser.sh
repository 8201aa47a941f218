#!/usr/bin/env bash
# setup-browser.sh: prepare the browser test (test-script/browser/two-pages.mjs).
# Idempotent and quiet on success:
#   - installs Debian's chromium if /usr/bin/chromium is missing (needs root);
#   - runs `npm ci` in test-script/browser if playwright-core is not installed.
# Never downloads a browser build of its own: playwright-core drives /usr/bin/chromium.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
browser_dir="$root/test-script/browser"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

run_quiet() {
    if ! "$@" >"$log" 2>&1; then
        echo "setup-browser: failed: $*" >&2
        cat "$log" >&2
        exit 1
    fi
}

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-browser: /usr/bin/chromium is missing and we are not root; install Debian's chromium" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    run_quiet apt-get update
    run_quiet apt-get install -y chromium
fi

if [ ! -d "$browser_dir/node_modules/playwright-core" ]; then
    (cd "$browser_dir" && run_quiet npm ci --no-audit --no-fund)
fi

#!/usr/bin/env bash
# Installs Chromium from Debian for the status-page test of
# charging/tests/ops.rs (a real headless browser loads the admin
# listener's page and the test reads the figures from the rendered DOM).
# Called by .ci/run (as root, CI=true, no stdin); safe to run again.
set -euo pipefail
for b in chromium chromium-browser; do
    if command -v "$b" >/dev/null 2>&1; then
        exit 0
    fi
done
if [ "$(id -u)" -ne 0 ]; then
    echo "chromium missing and not root: install it with apt-get install chromium" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
chromium --version

#!/usr/bin/env bash
# Installs the independent Diameter stack the Diameter tests drive Reckon
# with: python-diameter from PyPI, into target/diameter-pydeps (no system
# packages touched). Called by .ci/run; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../../.."
dest=target/diameter-pydeps
if PYTHONPATH="$dest" python3 -c "import diameter.node" 2>/dev/null; then
    exit 0
fi
mkdir -p "$dest"
python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$dest" "python-diameter==0.9.0"
PYTHONPATH="$dest" python3 -c "import diameter.node" 
echo "python-diameter installed in $dest"

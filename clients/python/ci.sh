#!/usr/bin/env bash
# The Python client's and the LiteLLM hook's tests: builds the server if needed,
# installs the pinned packages in a venv under target/, runs pytest.
# Called by .ci/run; runs alone as well: bash clients/python/ci.sh [pytest args]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/target/py-client-venv"
python="${PYTHON:-python3}"

(cd "$repo" && cargo build --quiet --bin reckon)
lock_sum="$(sha256sum "$here/requirements-test.lock" | cut -d' ' -f1)"
if [ ! -f "$venv/.lock-$lock_sum" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements-test.lock"
    touch "$venv/.lock-$lock_sum"
fi
# The client itself, as a user installs it.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall "$here"

export RECKON_BIN="$repo/target/debug/reckon"
export LITELLM_LOCAL_MODEL_COST_MAP=True
cd "$here/tests"
# The installed package, not the source tree, is what the tests import.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider --import-mode=append "$@" .

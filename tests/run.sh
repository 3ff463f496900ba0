#!/usr/bin/env bash
# The one test command (README, CI): make .venv, install the package with every extra the tests
# need, start the services the tests need (a Docker engine and the local base image), run the
# whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
export LOGDIR=${LOGDIR:-$PWD/.test-logs}
mkdir -p "$LOGDIR"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c tests/constraints.txt -e '.[all,test]'

# The kserve SDK's clients live in their own venv (kserve's pins clash with MLServer's).
export KSERVE_VENV=${KSERVE_VENV:-$PWD/.venv-kserve}
export KSERVE_PYTHON="$KSERVE_VENV/bin/python"
if [ "${CI:-}" = "true" ]; then
    PYTHON="$PYTHON" bash tests/infra/kserve_sdk.sh
elif ! PYTHON="$PYTHON" bash tests/infra/kserve_sdk.sh; then
    echo "run.sh: no kserve SDK venv: its client tests will be skipped" >&2
fi

# Services. In CI (CI=true) each must come up or the run fails; elsewhere the tests that need a
# missing one skip with the reason.
if [ "${CI:-}" = "true" ]; then
    bash tests/infra/docker.sh
elif ! bash tests/infra/docker.sh; then
    echo "run.sh: no Docker engine: Docker tests will be skipped" >&2
fi

exec "$VENV/bin/python" -m pytest "$@"

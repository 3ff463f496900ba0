#!/usr/bin/env bash
# The one test command (README, CI): make .venv, install the package with every extra the tests
# need, start the services the tests need, run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -c tests/constraints.txt -e '.[all,test]'

exec "$VENV/bin/python" -m pytest "$@"

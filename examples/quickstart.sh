#!/usr/bin/env bash
# Fresh machine -> the main job: make .venv, install the package, run examples/quickstart.py in
# ./quickstart-output (SQLite tracking store there, nothing to start by hand).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$ROOT/.venv}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e "$ROOT"

mkdir -p "$ROOT/quickstart-output"
cd "$ROOT/quickstart-output"
exec "$VENV/bin/python" "$ROOT/examples/quickstart.py"

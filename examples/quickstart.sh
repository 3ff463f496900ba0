#!/usr/bin/env bash
# Fresh machine -> the main job: make .venv, install the package, run examples/quickstart.py in
# ./quickstart-output (SQLite tracking store there, nothing to start by hand). Arguments go to
# quickstart.py (--keep, --target auto|onnx-docker|local, --port, --base-image).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python3}
VENV=${VENV:-$ROOT/.venv}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# docker: the onnx-docker target (used when a Docker engine answers); monitoring: the drift report
"$VENV/bin/python" -m pip install -q -e "$ROOT[docker,monitoring]"

mkdir -p "$ROOT/quickstart-output"
cd "$ROOT/quickstart-output"
exec "$VENV/bin/python" "$ROOT/examples/quickstart.py" "$@"

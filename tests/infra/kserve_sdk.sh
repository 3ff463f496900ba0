#!/usr/bin/env bash
# The kserve SDK (its REST and gRPC inference clients) in its own venv: kserve pins fastapi,
# starlette and psutil to versions MLServer 1.7.1 refuses, so it cannot join the test venv.
# tests/serving/test_kserve_sdk.py runs the clients there in a child process
# (tests/kserve_sdk.py). Run by tests/run.sh; safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
KSERVE_VENV=${KSERVE_VENV:-.venv-kserve}
REQUIREMENT=$(grep -v '^#' tests/infra/kserve-sdk.txt)
if [ -x "$KSERVE_VENV/bin/python" ] && "$KSERVE_VENV/bin/python" -m pip show -q kserve >/dev/null 2>&1 \
    && "$KSERVE_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('kserve') != '${REQUIREMENT#kserve==}')"; then
    echo "kserve_sdk.sh: $REQUIREMENT present in $KSERVE_VENV"
    exit 0
fi
echo "kserve_sdk.sh: installing $REQUIREMENT into $KSERVE_VENV"
"$PYTHON" -m venv "$KSERVE_VENV"
"$KSERVE_VENV/bin/python" -m pip install -q --upgrade pip
"$KSERVE_VENV/bin/python" -m pip install -q "$REQUIREMENT"
"$KSERVE_VENV/bin/python" -c "from kserve import InferenceGRPCClient, InferenceRESTClient"

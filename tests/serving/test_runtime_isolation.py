"""The serving runtime needs onnxruntime, numpy and the HTTP stack only: never mlflow, pandas,
scikit-learn or pyarrow. Proved in a clean interpreter, then in a fresh venv holding nothing but
the package (``--no-deps``) and its ``serve`` extra, as images install it."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
#: Never imported by the runtime (``onnx`` is the converter's package, not onnxruntime).
FORBIDDEN = ["mlflow", "pandas", "sklearn", "pyarrow", "scipy", "skl2onnx", "onnx", "click"]

#: Runs the real CLI entry point in the main thread; a probe thread waits for readiness, sends
#: one request per route, reports what is imported, then SIGTERMs its own process.
SCRIPT = r"""
import http.client, json, os, signal, sys, threading, time

bundle, port, forbidden = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
preloaded = sorted(m for m in forbidden if m in sys.modules)

def call(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()

def probe():
    report = {"preloaded": preloaded}
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if call("GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                time.sleep(0.01)
        row = {"age": 41.0, "income": 30000.0, "tenure": 4.0, "city": "lyon"}
        v2 = {"inputs": [
            {"name": k, "datatype": "BYTES" if k == "city" else "FP64", "shape": [1], "data": [v]}
            for k, v in row.items()]}
        json_ct = {"Content-Type": "application/json"}
        name = json.loads(call("GET", "/v2")[1])["name"]
        model = json.loads(call("GET", "/v2/models/churn-onnx")[1])["name"]
        report["statuses"] = {
            "v2": call("POST", f"/v2/models/{model}/infer", json.dumps(v2), json_ct)[0],
            "records": call("POST", "/invocations",
                            json.dumps({"dataframe_records": [row]}), json_ct)[0],
            "csv": call("POST", "/invocations", "age,income,tenure,city\n41,30000,4,lyon\n",
                        {"Content-Type": "text/csv"})[0],
            "error": call("POST", "/invocations", "{", json_ct)[0],
            "metrics": call("GET", "/metrics")[0],
        }
        report["server"] = name
    except Exception as e:
        report["probe_error"] = repr(e)
    report["loaded"] = sorted(
        m for m in forbidden if m in sys.modules or any(k.startswith(m + ".") for k in sys.modules)
    )
    print("REPORT " + json.dumps(report), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=probe, daemon=True).start()
from mlflow_deploy_plugins.serving.__main__ import main
sys.exit(main([bundle, "--port", str(port), "--no-access-log"]))
"""


def run_isolated(python: str, bundle: str, port: int, cwd: Path, env: dict) -> dict:
    proc = subprocess.run(
        [python, "-I", "-c", SCRIPT, bundle, str(port), ",".join(FORBIDDEN)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(lines[-1][len("REPORT ") :])


def test_runtime_imports_no_mlflow_pandas_sklearn_pyarrow(served, kit, tmp_path):
    env = kit.server_env()
    env.pop("PYTHONPATH", None)
    report = run_isolated(sys.executable, served.clf_bundle, kit.free_port(), tmp_path, env)
    assert report["preloaded"] == []
    assert "probe_error" not in report, report
    assert report["statuses"] == {
        "v2": 200,
        "records": 200,
        "csv": 200,
        "error": 400,
        "metrics": 200,
    }
    assert report["loaded"] == [], f"the serving runtime imported {report['loaded']}"


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _serve_requirements() -> list[str]:
    return list(_pyproject()["project"]["optional-dependencies"]["serve"])


def _oldest_supported_python() -> str | None:
    """An interpreter of the oldest version ``requires-python`` allows, other than this one."""
    floor = _pyproject()["project"]["requires-python"].removeprefix(">=").strip()
    if f"{sys.version_info.major}.{sys.version_info.minor}" == floor:
        return None
    pattern = os.path.expanduser(f"~/.pyenv/versions/{floor}*/bin/python{floor}")
    for candidate in [shutil.which(f"python{floor}"), *sorted(glob.glob(pattern))]:
        if candidate:
            ok = subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0
            if ok:
                return candidate
    return None


@pytest.mark.slow
def test_package_without_deps_plus_serve_extra_serves(served, start_server, kit, tmp_path):
    """What an image does: ``pip install --no-deps <package>`` + the ``serve`` extra, nothing else;
    on this Python and on the oldest one the package claims to support (when installed here)."""
    source = tmp_path / "src"  # build from a copy: an in-tree build would write into the repo
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(
        REPO / "mlflow_deploy_plugins",
        source / "mlflow_deploy_plugins",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    env = kit.server_env()
    for var in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(var, None)
    pip = [sys.executable, "-m", "pip"]
    built = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")]
        + [str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("mlflow_deploy_plugins-*.whl")

    bases = {"current": sys.executable}
    oldest = _oldest_supported_python()
    if oldest:
        bases["oldest-supported"] = oldest
    else:
        print("no interpreter of the oldest supported Python found: testing this one only")
    venvs = {}
    for label, base in bases.items():
        venv = tmp_path / f"venv-{label}"
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        venvs[label] = str(venv / "bin" / "python")

    def install(python: str) -> list:
        target = [*pip, "--python", python, "install", "-q", "--no-compile"]
        return [
            subprocess.run(
                [*target, *args], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path
            )
            for args in (["--no-deps", str(wheel)], _serve_requirements())
        ]

    with ThreadPoolExecutor(len(venvs)) as pool:  # the downloads overlap
        results = dict(zip(venvs, pool.map(install, venvs.values()), strict=True))
    for label, steps in results.items():
        for done in steps:
            assert done.returncode == 0, (label, done.args, done.stdout + done.stderr)

    frame = kit.churn_frame(4, seed=17)
    labels = np.asarray(served.onnx_pyfunc.predict(frame)).tolist()
    probe = (
        "import importlib.util, json, sys; "
        "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    )
    for label, python in venvs.items():
        installed = subprocess.run(
            [python, "-I", "-c", probe, *FORBIDDEN], capture_output=True, text=True, env=env
        )
        assert json.loads(installed.stdout) == [], f"{label}: the venv holds the serve extra only"

        report = run_isolated(python, served.clf_bundle, kit.free_port(), tmp_path, env)
        assert "probe_error" not in report, (label, report)
        assert report["statuses"]["v2"] == report["statuses"]["records"] == 200, (label, report)
        assert report["loaded"] == [], (label, report)

        server = start_server(
            None,
            argv=[python, "-m", "mlflow_deploy_plugins.serving", "serve", served.clf_bundle],
            env=env,
            label=f"venv-serve-extra-{label}",
        )
        reply = server.post("/invocations", {"dataframe_split": frame.to_dict("split")})
        assert reply.status == 200, (label, reply.text)
        assert reply.json() == {"predictions": labels}, label
        assert server.stop() == 0, server.log()

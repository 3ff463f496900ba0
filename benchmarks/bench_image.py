"""Serving image of the onnx-docker target vs MLflow's Dockerfile: size, build time, start-to-ready.

Model: a GradientBoostingClassifier pipeline (StandardScaler + one-hot on string columns) logged
with MLflow's defaults to a throwaway SQLite store. Both images are built FROM the same local base
(``--base-image``) on the same engine in the same run:

- ours: ``_images.builder.ensure_image`` (wheels downloaded on the host, two stages, one venv). Cold =
  empty wheel cache and no Docker layer cache; warm = wheel cache filled, no layer cache; new
  model = a second model version with the layer cache; unchanged = the same model again (the
  image is reused).
- MLflow: ``mlflow models generate-dockerfile`` with ``FROM <base>``, a venv on PATH (the base's
  system pip refuses root installs) and the host's CA bundle for pip during the build only
  (``ARG PIP_CERT``); built with host networking (its pip and apt-get download during the build).
  Cold = no layer cache; cached = the same build again.

Start-to-ready: wall time from ``docker run`` (create + start, host network) to the first 200 of
the readiness route (ours ``/v2/health/ready``, MLflow ``/ping``), median of ``--starts`` runs.
MLflow's server runs with ``DISABLE_NGINX=true`` (uvicorn on 127.0.0.1:8000: every server here
binds the loopback) and one worker, like ours.

Run: ``python benchmarks/bench_image.py [--base-image local/debian-python:bookworm-slim]
[--starts 5] [--skip-mlflow] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import docker
import mlflow
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlflow_deploy_plugins.targets import _deployments, _endpoints
from mlflow_deploy_plugins.targets._images import builder, recipes

_logger = logging.getLogger("bench_image")
MLFLOW_PORT = 8000  # MLflow's container serves here when nginx is disabled


def _data(rows: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(
        {
            "age": rng.normal(40, 10, rows),
            "income": rng.lognormal(10, 0.5, rows),
            "tenure": rng.integers(0, 20, rows).astype(float),
            "city": rng.choice(["paris", "lyon", "nice"], rows),
            "plan": rng.choice(["basic", "pro"], rows),
        }
    )
    y = (((x.age - 40) / 10 + (x.city == "lyon") * 1.5 - (x.plan == "pro")) > 0).to_numpy()
    return x, y


def _register(name: str, seed: int) -> None:
    from _models import log_registered

    x, y = _data(seed=seed)
    columns = ColumnTransformer(
        [
            ("num", StandardScaler(), ["age", "income", "tenure"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
        ]
    )
    model = Pipeline(
        [("columns", columns), ("gb", GradientBoostingClassifier(random_state=seed))]
    ).fit(x, y)
    log_registered(model, x.head(200), name, pip_requirements=["scikit-learn", "skops"])


def _start_to_ready(client, image: str, url: str, environment: dict, starts: int) -> float:
    """Median seconds from ``docker run`` to the first 200 of ``url``."""
    times = []
    for _ in range(starts):
        started = time.perf_counter()
        container = client.containers.run(
            image, detach=True, network_mode="host", environment=environment
        )
        try:
            _endpoints.wait_until(
                lambda: _endpoints.http_ready(url, 0.5), 180, interval_s=0.01, max_interval_s=0.02
            )
            times.append(time.perf_counter() - started)
        finally:
            container.remove(force=True)
        time.sleep(0.5)
    return statistics.median(times)


def _ours(client, base: str, repository: str, starts: int, workdir: str) -> dict:
    cache = os.path.join(workdir, "wheel-cache")
    v1 = _deployments.resolve_model("models:/bench-gbc/1", os.path.join(workdir, "b1"))
    v2 = _deployments.resolve_model("models:/bench-gbc/2", os.path.join(workdir, "b2"))
    again = _deployments.resolve_model("models:/bench-gbc/1", os.path.join(workdir, "b1-again"))

    def timed(resolved, **kwargs) -> tuple[builder.BuiltImage, float]:
        started = time.perf_counter()
        built = builder.ensure_image(
            client,
            resolved,
            recipe=recipes.ONNX_SERVING,
            base_image=base,
            repository=repository,
            cache_dir=cache,
            progress=_logger.info,
            **kwargs,
        )
        return built, time.perf_counter() - started

    image, cold = timed(v1, rebuild=True, nocache=True)
    _, warm = timed(v1, rebuild=True, nocache=True)
    _, new_model = timed(v2)
    reused, unchanged = timed(again)
    assert reused.cached, "an unchanged bundle must reuse its image"
    port = _endpoints.free_port()
    ready = _start_to_ready(
        client,
        image.tag,
        f"http://127.0.0.1:{port}/v2/health/ready",
        {"MLFLOW_DEPLOY_HOST": "127.0.0.1", "MLFLOW_DEPLOY_PORT": str(port)},
        starts,
    )
    return {
        "size_mb": image.size / 1e6,
        "added_mb": image.added_mb,
        "build_cold_s": cold,
        "build_warm_wheels_s": warm,
        "build_new_model_s": new_model,
        "build_unchanged_s": unchanged,
        "start_to_ready_s": ready,
    }


def _mlflow_dockerfile(base: str, out: str, tracking_uri: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "mlflow", "models", "generate-dockerfile"]
        + ["-m", "models:/bench-gbc/1", "--output-directory", out],
        check=True,
        capture_output=True,
        env=dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri),
    )
    path = os.path.join(out, "Dockerfile")
    with open(path) as f:
        text = f.read()
    text, count = re.subn(r"^FROM .*$", "", text, count=1, flags=re.MULTILINE)
    assert count == 1, "unexpected Dockerfile from MLflow"
    header = (
        f"FROM {base}\n"
        "# the base's system pip refuses root installs (PEP 668): a venv on PATH\n"
        "RUN python3 -m venv /opt/venv\n"
        "ENV PATH=/opt/venv/bin:$PATH\n"
        "# the host's CA bundle, for pip during the build only (ARG: not in the image's env)\n"
        "COPY host-ca.pem /tmp/host-ca.pem\n"
        "ARG PIP_CERT=/tmp/host-ca.pem\n"
    )
    with open(path, "w") as f:
        f.write(header + text)
    shutil.copyfile(ssl.get_default_verify_paths().openssl_cafile, os.path.join(out, "host-ca.pem"))


def _build(client, context: str, tag: str, nocache: bool) -> float:
    started = time.perf_counter()
    for chunk in client.api.build(
        path=context, tag=tag, rm=True, forcerm=True, decode=True, nocache=nocache,
        network_mode="host",
    ):  # fmt: skip
        if "error" in chunk:
            raise RuntimeError(chunk["error"])
        line = str(chunk.get("stream", "")).strip()
        if line.startswith("Step "):
            _logger.info("  mlflow %s", line[:100])
    return time.perf_counter() - started


def _mlflow(client, base: str, repository: str, starts: int, workdir: str, uri: str) -> dict:
    context = os.path.join(workdir, "mlflow-dockerfile")
    _mlflow_dockerfile(base, context, uri)
    tag = f"{repository}:mlflow"
    cold = _build(client, context, tag, nocache=True)
    cached = _build(client, context, tag, nocache=False)
    image = client.images.get(tag)
    base_size = client.images.get(base).attrs["Size"]
    if _endpoints.port_in_use("127.0.0.1", MLFLOW_PORT):
        ready = float("nan")
        _logger.warning("port %d is in use: MLflow's start-to-ready not measured", MLFLOW_PORT)
    else:
        ready = _start_to_ready(
            client,
            tag,
            f"http://127.0.0.1:{MLFLOW_PORT}/ping",
            {"DISABLE_NGINX": "true", "MLFLOW_MODELS_WORKERS": "1"},
            starts,
        )
    return {
        "size_mb": image.attrs["Size"] / 1e6,
        "added_mb": (image.attrs["Size"] - base_size) / 1e6,
        "build_cold_s": cold,
        "build_cached_s": cached,
        "start_to_ready_s": ready,
    }


def _table(base: str, base_mb: float, ours: dict, theirs: dict | None) -> str:
    def cell(result, key, fmt):
        value = (result or {}).get(key)
        return "-" if value is None else fmt.format(value)

    rows = [
        ("image size (MB)", "size_mb", "{:.0f}"),
        (f"added over the base ({base_mb:.0f} MB)", "added_mb", "{:.0f}"),
        ("build, cold (s)", "build_cold_s", "{:.1f}"),
        ("build, warm wheel cache, no layer cache (s)", "build_warm_wheels_s", "{:.1f}"),
        ("build, new model version, layer cache (s)", "build_new_model_s", "{:.1f}"),
        ("build, cached (s)", "build_cached_s", "{:.1f}"),
        ("build, unchanged model: image reused (s)", "build_unchanged_s", "{:.2f}"),
        ("docker run -> ready (s, median)", "start_to_ready_s", "{:.2f}"),
    ]
    lines = [f"Base image: {base}", "", "| | onnx-docker | mlflow generate-dockerfile |"]
    lines.append("|---|---|---|")
    for label, key, fmt in rows:
        lines.append(f"| {label} | {cell(ours, key, fmt)} | {cell(theirs, key, fmt)} |")
    if theirs:
        lines.append("")
        lines.append(
            f"Ours is {theirs['added_mb'] / ours['added_mb']:.1f}x smaller over the base, builds "
            f"{theirs['build_cold_s'] / ours['build_cold_s']:.1f}x faster cold and is ready "
            f"{theirs['start_to_ready_s'] / ours['start_to_ready_s']:.1f}x sooner."
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default="local/debian-python:bookworm-slim")
    parser.add_argument("--starts", type=int, default=5, help="container starts to time")
    parser.add_argument("--skip-mlflow", action="store_true", help="measure ours only")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the images and temp dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    client = docker.from_env()
    workdir = tempfile.mkdtemp(prefix="bench-image-")
    repository = f"mlflow-deploy-bench/run-{uuid.uuid4().hex[:8]}"
    uri = f"sqlite:///{os.path.join(workdir, 'mlflow.db')}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-image")
    try:
        _register("bench-gbc", seed=0)
        _register("bench-gbc", seed=1)
        ours = _ours(client, args.base_image, repository, args.starts, workdir)
        theirs = None
        if not args.skip_mlflow:
            theirs = _mlflow(client, args.base_image, repository, args.starts, workdir, uri)
    finally:
        if not args.keep:
            for image in client.images.list(name=repository):
                client.images.remove(image.id, force=True)
            shutil.rmtree(workdir, ignore_errors=True)
    base_mb = client.images.get(args.base_image).attrs["Size"] / 1e6
    print(_table(args.base_image, base_mb, ours, theirs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"base_image": args.base_image, "ours": ours, "mlflow": theirs}, f, indent=2)


if __name__ == "__main__":
    main()

"""Conversion + parity time, and ONNX vs source pyfunc latency (1 and 100 rows).

Model: StandardScaler + GradientBoostingClassifier on 20 numeric features, logged with MLflow's
default (skops) format to a throwaway SQLite store. The baseline is the source model's own pyfunc,
measured in the same run, so the ratio holds on a noisy machine.

Run: ``python benchmarks/bench_convert.py [--rows 5000] [--repeats 300]``
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

import mlflow
from _models import log_registered, scaler_gradient_boosting

_logger = logging.getLogger("bench_convert")


def _timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="training/parity rows")
    parser.add_argument("--repeats", type=int, default=300, help="latency repeats")
    parser.add_argument("--conversions", type=int, default=5, help="conversion repeats")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from mlflow_deploy_plugins.onnx.convert import convert, load_source

    workdir = tempfile.mkdtemp(prefix="bench-convert-")
    mlflow.set_tracking_uri(f"sqlite:///{os.path.join(workdir, 'mlflow.db')}")
    x, model = scaler_gradient_boosting(args.rows)
    log_registered(model, x.head(3), "bench")

    source = load_source("models:/bench/1")
    phases: dict[str, list[float]] = {}
    result = None
    for _ in range(args.conversions):
        t0 = time.perf_counter()
        result = convert("models:/bench/1", sample=x, source=source)
        total = time.perf_counter() - t0
        for key, value in result.timings.items():
            phases.setdefault(key, []).append(value)
        phases.setdefault("wall_s", []).append(total)
    t0 = time.perf_counter()
    convert("models:/bench/1", sample=x)
    cold = time.perf_counter() - t0

    out_dir = os.path.join(workdir, "onnx")
    result.save(out_dir)
    source_pyfunc = mlflow.pyfunc.load_model("models:/bench/1")
    onnx_pyfunc = mlflow.pyfunc.load_model(out_dir)

    print(
        f"\nConversion + parity gate ({args.rows} parity rows, 20 features, "
        f"GradientBoosting 100 trees; median of {args.conversions})"
    )
    print(f"{'phase':<22}{'seconds':>10}")
    for key in ("convert_s", "parity_s", "total_s", "wall_s"):
        print(f"{key:<22}{statistics.median(phases[key]):>10.3f}")
    print(f"{'cold (incl. download)':<22}{cold:>10.3f}   goal < 2 s")

    print(f"\nPredict latency, median of {args.repeats} calls (ms)")
    print("(ONNX raw = OnnxModel.predict, without MLflow's pyfunc schema enforcement)")
    raw = onnx_pyfunc.get_raw_model()
    header = f"{'rows':>6}{'source pyfunc':>16}{'ONNX pyfunc':>14}{'ratio':>8}{'ONNX raw':>11}{'ratio':>8}"
    print(header)
    for rows in (1, 100):
        batch = x.head(rows)
        base = _timeit(lambda b=batch: source_pyfunc.predict(b), args.repeats)
        ours = _timeit(lambda b=batch: onnx_pyfunc.predict(b), args.repeats)
        bare = _timeit(lambda b=batch: raw.predict(b), args.repeats)
        print(
            f"{rows:>6}{base:>16.3f}{ours:>14.3f}{base / ours:>7.1f}x{bare:>11.3f}{base / bare:>7.1f}x"
        )
    print(f"\nparity: {result.parity.summary()}")


if __name__ == "__main__":
    main()

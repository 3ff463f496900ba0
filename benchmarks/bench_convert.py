"""Conversion + parity time, and ONNX vs source pyfunc latency (1 and 100 rows).

Model: StandardScaler + GradientBoostingClassifier on 20 numeric features, logged with MLflow's
default (skops) format to a throwaway SQLite store. The baseline is the source model's own pyfunc,
measured in the same run, so the ratio holds on a noisy machine. Also printed: onnxruntime
sessions built per conversion (deterministic, whatever the load).

Run: ``python benchmarks/bench_convert.py [--rows 5000] [--repeats 300]``

Before/after a change, in one run: ``--baseline-tree DIR`` (a checkout of another commit, e.g.
``git worktree add --detach ../base 5c0443b``) converts in subprocesses that import the package
from DIR and from this checkout alternately (``--rounds`` times each, ``--conversions`` timed
conversions per subprocess) and prints the median of each tree's medians, their ratio and the
sessions per conversion. ``--profile`` prints cProfile's cumulative top of the conversions.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THIS_TREE = Path(__file__).resolve().parents[1]

_logger = logging.getLogger("bench_convert")


def _timeit(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


@contextlib.contextmanager
def counted_sessions():
    """Count onnxruntime sessions built inside the block (a subclass that counts, then builds
    the real session); yields a one-element list holding the count."""
    import onnxruntime as ort

    real = ort.InferenceSession
    count = [0]

    class Counting(real):
        def __init__(self, *args, **kwargs):
            count[0] += 1
            super().__init__(*args, **kwargs)

    ort.InferenceSession = Counting
    try:
        yield count
    finally:
        ort.InferenceSession = real


def _import_from(tree: str) -> None:
    """Import ``mlflow_deploy_plugins`` from ``tree``: first on sys.path, and an editable
    install's import hook (which outranks sys.path) removed."""
    sys.meta_path[:] = [
        f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")
    ]
    sys.path.insert(0, tree)


def _log_bench_model(workdir: str, rows: int):
    import mlflow
    from _models import log_registered, scaler_gradient_boosting

    mlflow.set_tracking_uri(f"sqlite:///{os.path.join(workdir, 'mlflow.db')}")
    x, model = scaler_gradient_boosting(rows)
    log_registered(model, x.head(3), "bench")
    return x


def _worker(tree: str, workdir: str, conversions: int) -> None:
    """One subprocess of ``--baseline-tree``: time conversions with the package from ``tree``."""
    _import_from(tree)
    import mlflow
    import pandas as pd

    import mlflow_deploy_plugins
    from mlflow_deploy_plugins.onnx.convert import convert, load_source

    assert mlflow_deploy_plugins.__file__.startswith(tree), mlflow_deploy_plugins.__file__
    mlflow.set_tracking_uri(f"sqlite:///{os.path.join(workdir, 'mlflow.db')}")
    x = pd.read_parquet(os.path.join(workdir, "sample.parquet"))
    source = load_source("models:/bench/1")
    convert("models:/bench/1", sample=x, source=source)  # warm-up
    with counted_sessions() as sessions:
        convert("models:/bench/1", sample=x, source=source)
    times = []
    for _ in range(conversions):
        t0 = time.perf_counter()
        convert("models:/bench/1", sample=x, source=source)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "sessions": sessions[0]}))


def compare_trees(baseline: str, rows: int, rounds: int, conversions: int) -> None:
    """Old and new tree interleaved (ABAB, then BABA): same model, sample, venv and load."""
    workdir = tempfile.mkdtemp(prefix="bench-convert-")
    x = _log_bench_model(workdir, rows)
    x.to_parquet(os.path.join(workdir, "sample.parquet"))
    trees = {"baseline": str(Path(baseline).resolve()), "this tree": str(THIS_TREE)}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(rounds):
        for name in list(trees) if r % 2 == 0 else list(trees)[::-1]:
            cmd = [sys.executable, __file__, "--worker", trees[name], "--workdir", workdir]
            cmd += ["--conversions", str(conversions)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"\nconvert() wall time, {rounds} interleaved rounds x {conversions} conversions per "
        f"tree ({rows} parity rows); load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'tree':<12}{'median s':>10}{'min s':>9}{'max s':>9}{'sessions':>10}  path")
    medians = {}
    for name, runs in results.items():
        per_round = [run["median_s"] for run in runs]
        medians[name] = statistics.median(per_round)
        print(
            f"{name:<12}{medians[name]:>10.3f}{min(per_round):>9.3f}{max(per_round):>9.3f}"
            f"{runs[-1]['sessions']:>10}  {trees[name]}"
        )
    print(f"this tree / baseline: {medians['this tree'] / medians['baseline']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000, help="training/parity rows")
    parser.add_argument("--repeats", type=int, default=300, help="latency repeats")
    parser.add_argument("--conversions", type=int, default=5, help="conversion repeats")
    parser.add_argument("--baseline-tree", help="compare with the package of this checkout")
    parser.add_argument("--rounds", type=int, default=10, help="--baseline-tree: rounds")
    parser.add_argument("--profile", action="store_true", help="cProfile the conversions")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        return _worker(args.worker, args.workdir, args.conversions)
    if args.baseline_tree:
        return compare_trees(args.baseline_tree, args.rows, args.rounds, args.conversions)

    import mlflow

    from mlflow_deploy_plugins.onnx.convert import convert, load_source

    workdir = tempfile.mkdtemp(prefix="bench-convert-")
    x = _log_bench_model(workdir, args.rows)

    source = load_source("models:/bench/1")
    phases: dict[str, list[float]] = {}
    result = None
    profiler = cProfile.Profile() if args.profile else None
    with counted_sessions() as sessions:
        convert("models:/bench/1", sample=x, source=source)
    for _ in range(args.conversions):
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        result = convert("models:/bench/1", sample=x, source=source)
        if profiler:
            profiler.disable()
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
    print(f"onnxruntime sessions per conversion: {sessions[0]}")

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
    if profiler:
        print(f"\ncProfile of {args.conversions} conversions, cumulative:")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    main()

"""The whole drift job vs Evidently's own ``Report.run`` on the same sampled rows; flat as logs grow.

Model: a GradientBoosting classifier over 20 input columns (14 numeric, 6 categorical), promoted
to ONNX with a 10,000-row reference sample in a throwaway SQLite store; 23 columns compared (20
inputs + label + 2 probabilities). Current data, written in the serving runtime's payload-log
format (10 rows per record, files rotated every hour of traffic, ``.jsonl``) or as Parquet:

* ``parquet 100k``: a Parquet file of 100,000 rows (inputs + predictions);
* ``log 100k, 1 day``: a payload log of 100,000 rows spread over one day, window = that day;
* ``log 1M, 10 days``: ten times larger, same last day: the same window skips 9 days by name;
* ``log 1M, no window``: the same log read whole (every line parsed, still a bounded sample).

``job`` is ``drift_report(...)`` end to end (model lookup, streaming read + reservoir sample,
Evidently, HTML + JSON artifacts, one MLflow run, version tags). ``evidently`` is
``Report([DataDriftPreset(...)], include_tests=True).run(...)`` on exactly the rows the job
compared, with the same settings: the baseline, measured in the same process (medians).

Run: ``python benchmarks/bench_drift.py [--rows 100000] [--repeats 3] [--sample-size 20000]``
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

from mlflow_deploy_plugins.core import payload_format

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

_logger = logging.getLogger("bench_drift")

NUMERIC = [f"x{i}" for i in range(14)]
CATEGORICAL = [f"c{i}" for i in range(6)]
ROWS_PER_RECORD = 10
MAX_FILE_BYTES = 64 << 20  # the runtime's rotation defaults: 64 MiB or one hour
MAX_FILE_AGE = timedelta(hours=1)


def make_frame(n: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {c: rng.normal(shift if i < 3 else 0.0, 1.0, n).round(4) for i, c in enumerate(NUMERIC)}
    for c in CATEGORICAL:
        data[c] = rng.choice(["a", "b", "c", "d", "e"], n).astype(object)
    return pd.DataFrame(data)


def write_payload_log(
    directory: Path,
    frame: pd.DataFrame,
    outputs: dict,
    start: datetime,
    span: timedelta,
    model: str,
) -> None:
    """``frame`` as payload records (runtime format), timestamps spread evenly over ``span``."""
    directory.mkdir(parents=True, exist_ok=True)
    n_records = (len(frame) + ROWS_PER_RECORD - 1) // ROWS_PER_RECORD
    step = span / max(n_records, 1)
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    seq, f, lines, first_ts, last_ts = 0, None, 0, None, None

    def finish():
        nonlocal f
        if f is None:
            return
        f.close()
        key = payload_format.identity(first_ts.timestamp(), 4242, seq)
        os.replace(
            directory / payload_format.part_name(key),
            directory / payload_format.finished_name(key, last_ts.timestamp()),
        )
        f = None

    for r in range(n_records):
        ts = start + step * r
        lo, hi = r * ROWS_PER_RECORD, min((r + 1) * ROWS_PER_RECORD, len(frame))
        line = orjson.dumps(
            payload_format.record(
                ts.timestamp(),
                f"r{r}",
                model,
                "1",
                hi - lo,
                {c: v[lo:hi] for c, v in columns.items()},
                {k: v[lo:hi] for k, v in outputs.items()},
            ),
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE,
            default=lambda o: o.tolist(),
        )
        if f is None:
            seq += 1
            first_ts = ts
            key = payload_format.identity(ts.timestamp(), 4242, seq)
            f = open(directory / payload_format.part_name(key), "wb")  # noqa: SIM115
            lines = 0
        f.write(line)
        lines += len(line)
        last_ts = ts
        if lines >= MAX_FILE_BYTES or ts + step - first_ts >= MAX_FILE_AGE:
            finish()
    finish()


def onnx_outputs(model_uri: str, frame: pd.DataFrame) -> dict:
    """The raw ONNX outputs by served name, as the runtime logs them."""
    from mlflow_deploy_plugins.onnx.flavor import load_model

    model = load_model(model_uri)
    feed = model.io.encode_columns({c: frame[c].to_numpy() for c in model.io.columns}, len(frame))
    names = [o.name for o in model.io.outputs]
    return dict(zip(names, model.session.run(names, feed), strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the base case")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--sample-size", type=int, default=20_000)
    parser.add_argument("--workdir", default=None, help="keep the data here (default: temp)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import mlflow
    from helpers import mixed_pipeline, register_sklearn, tracking_store
    from sklearn.ensemble import GradientBoostingClassifier

    from mlflow_deploy_plugins import promote
    from mlflow_deploy_plugins.monitoring import drift_report
    from mlflow_deploy_plugins.monitoring.prepare import prepare
    from mlflow_deploy_plugins.monitoring.report import build_report, datasets
    from mlflow_deploy_plugins.monitoring.settings import DriftSettings, resolve_window
    from mlflow_deploy_plugins.monitoring.target import resolve

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-drift-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "store").mkdir(exist_ok=True)
    with tracking_store(work / "store"):
        t0 = time.perf_counter()
        train = make_frame(20_000, seed=0)
        target = (train.x0 + train.x1 - train.x2 + (train.c0 == "a")) > 0
        clf = mixed_pipeline(
            GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0),
            numeric=NUMERIC,
            categorical=CATEGORICAL,
        ).fit(train, target)
        register_sklearn(clf, "bench", train.head(5))
        promote("bench", "1", "champion", sample=train)  # 10,000-row reference sample
        uri = "models:/bench-onnx/1"

        n = args.rows
        base = make_frame(n, seed=1, shift=0.3)  # 3 numeric columns drift
        big = pd.concat([make_frame(9 * n, seed=2, shift=0.3), base], ignore_index=True)
        end = datetime(2026, 11, 27, tzinfo=timezone.utc)
        day = timedelta(days=1)
        base_out, big_out = onnx_outputs(uri, base), onnx_outputs(uri, big)
        write_payload_log(work / "log-1x", base, base_out, end - day, day, "bench-onnx")
        write_payload_log(work / "log-10x", big, big_out, end - 10 * day, 10 * day, "bench-onnx")
        with_predictions = base.assign(
            prediction=base_out["label"].astype(bool),
            proba_False=base_out["probabilities"][:, 0],
            proba_True=base_out["probabilities"][:, 1],
        )
        with_predictions.to_parquet(work / "current.parquet")
        size_1x = sum(p.stat().st_size for p in (work / "log-1x").iterdir())
        size_10x = sum(p.stat().st_size for p in (work / "log-10x").iterdir())
        print(
            f"set-up {time.perf_counter() - t0:.0f} s in {work}: payload logs "
            f"{size_1x / 1e6:.0f} MB and {size_10x / 1e6:.0f} MB"
        )

        window = {"since": end - day, "until": end}
        cases = [
            (f"parquet {n // 1000}k", str(work / "current.parquet"), {}),
            (f"log {n // 1000}k, 1 day", str(work / "log-1x"), window),
            (f"log {10 * n // 1000}k, 10 days", str(work / "log-10x"), window),
            (f"log {10 * n // 1000}k, no window", str(work / "log-10x"), {}),
        ]
        settings = DriftSettings(sample_size=args.sample_size).validate()
        drift_report(uri, str(work / "log-1x"), **window, sample_size=2000)  # warm-up (imports)
        client = mlflow.MlflowClient()
        model = resolve(uri, client)

        rows = []
        for label, current, kwargs in cases:
            walls, cpus, phases, result = {"job": [], "ev": []}, {"job": [], "ev": []}, {}, None
            since, until = resolve_window(kwargs.get("since"), kwargs.get("until"), None)
            prepared = prepare(model, current, None, settings, since, until, None, False, False)
            kinds = prepared.expected.kinds
            for _ in range(args.repeats):
                # same heap for both: no snapshot of an earlier run left for the collector to scan
                result = None
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                result = drift_report(uri, current, sample_size=args.sample_size, **kwargs)
                walls["job"].append(time.perf_counter() - wall)
                cpus["job"].append(time.process_time() - cpu)
                for k, v in result.timings.items():
                    phases.setdefault(k, []).append(v)
                result.snapshot = None
                report = build_report(list(prepared.current.columns), settings, kinds)
                ref_ds, cur_ds = datasets(prepared.reference, prepared.current, kinds)
                gc.collect()
                wall, cpu = time.perf_counter(), time.process_time()
                snapshot = report.run(current_data=cur_ds, reference_data=ref_ds)
                walls["ev"].append(time.perf_counter() - wall)
                cpus["ev"].append(time.process_time() - cpu)
                del snapshot, report, ref_ds, cur_ds
            med = statistics.median
            rows.append(
                {
                    "case": label,
                    "seen": result.current_rows_seen,
                    "compared": result.current_rows,
                    "wall": (med(walls["job"]), med(walls["ev"])),
                    "cpu": (med(cpus["job"]), med(cpus["ev"])),
                    "phases": {k: med(v) for k, v in phases.items()},
                    "drifted": f"{len(result.drifted_columns)}/{len(result.columns)}",
                }
            )

    base = rows[1]
    print(
        f"\nDrift job vs Evidently alone, median of {args.repeats} runs (seconds); sample "
        f"{args.sample_size:,} rows vs {len(prepared.reference):,} reference rows, "
        f"{len(prepared.current.columns)} columns. CPU = this process's CPU time (the machine "
        "is shared: wall times carry other jobs' load)."
    )
    header = (
        f"| {'case':<22} | {'rows read':>9} | {'compared':>8} | {'job wall':>8} | "
        f"{'Evidently wall':>14} | {'ratio':>5} | {'job CPU':>7} | {'Evidently CPU':>13} | "
        f"{'ratio':>5} | {'CPU vs log 1x':>13} | {'read':>5} | {'render':>6} | {'log':>5} "
        f"| drifted |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        (jw, ew), (jc, ec), ph = r["wall"], r["cpu"], r["phases"]
        print(
            f"| {r['case']:<22} | {r['seen']:>9,} | {r['compared']:>8,} | {jw:>8.2f} | {ew:>14.2f} "
            f"| {jw / ew:>5.2f} | {jc:>7.2f} | {ec:>13.2f} | {jc / ec:>5.2f} "
            f"| {jc / base['cpu'][0]:>13.2f} | {ph['read_s']:>5.2f} | {ph['render_s']:>6.2f} "
            f"| {ph['log_s']:>5.2f} | {r['drifted']:>7} |"
        )
    print(
        "\ngoals: job within 1.3x of Evidently alone; the 10x log with the same window in about "
        "the same time as the 1x log (read, render, log: wall seconds inside the job)"
    )


if __name__ == "__main__":
    main()

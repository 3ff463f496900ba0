"""Batch scoring throughput (rows/s) on a table of N rows x 20 float columns (default 1M).

Model: the issues' reference model (StandardScaler + GradientBoostingClassifier, 100 trees, 20
numeric features, ``_models.scaler_gradient_boosting``), registered in a throwaway SQLite store
as ``bench-batch`` and promoted, so the twin is ``models:/bench-batch-onnx@champion``.

Two comparisons, each against a baseline measured in the same run (the machine is shared and
noisy: read the ratios, not the absolute figures):

- Spark: ``mlflow.pyfunc.spark_udf`` over the ONNX twin vs over the source sklearn model, the same
  Parquet input, ``result_type="long"``, written to Spark's ``noop`` sink (scoring, not writing).
- In-process: ``mlflow-deploy batch`` (``batch.local.score_table``: our runtime's session, chunked,
  Parquet in and out) vs what ``mlflow models predict`` does: load the whole table with pandas,
  the source pyfunc's ``predict`` on it, write the table plus the prediction with pandas.

Run: ``python benchmarks/bench_batch.py [--rows 1000000] [--repeats 1] [--spark-master local[2]]
[--markdown FILE]``; needs pyspark and Java 17+ (``pip install -e '.[spark]'``).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

_logger = logging.getLogger("bench_batch")


def make_table(path: Path, rows: int, seed: int = 1) -> None:
    """``rows`` x 20 float64 columns ``x0..x19`` (the model's features), written in row groups."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from _models import N_FEATURES

    rng = np.random.default_rng(seed)
    names = [f"x{i}" for i in range(N_FEATURES)]
    with pq.ParquetWriter(path, pa.schema([(n, pa.float64()) for n in names])) as writer:
        for start in range(0, rows, 250_000):
            n = min(250_000, rows - start)
            block = rng.normal(size=(n, N_FEATURES))
            writer.write_table(pa.table({c: block[:, i] for i, c in enumerate(names)}))


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` runs of ``fn``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def spark_pair(table: Path, source: str, twin: str, master: str, repeats: int) -> dict:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    import mlflow
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master)
        .appName("bench-batch")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    frame = spark.read.parquet(str(table))
    columns = frame.columns

    def run(uri):
        udf = mlflow.pyfunc.spark_udf(spark, uri, result_type="long", env_manager="local")
        frame.withColumn("prediction", udf(*columns)).write.format("noop").mode("overwrite").save()

    run(twin)  # warm-up: Python workers started, packages imported
    result = {
        "spark_udf source sklearn": timed(lambda: run(source), repeats),
        "spark_udf ONNX twin": timed(lambda: run(twin), repeats),
    }
    spark.stop()
    return result


def in_process_pair(table: Path, source: str, twin: str, work: Path, repeats: int) -> dict:
    import mlflow
    import pandas as pd

    from mlflow_deploy_plugins.batch.local import score_table

    def baseline():
        frame = pd.read_parquet(table)
        model = mlflow.pyfunc.load_model(source)
        frame["prediction"] = model.predict(frame)
        frame.to_parquet(work / "baseline.parquet", index=False)

    def ours():
        score_table(twin, str(table), str(work / "ours.parquet"), overwrite=True)

    return {
        "pandas + source pyfunc (mlflow models predict)": timed(baseline, repeats),
        "mlflow-deploy batch (in-process ONNX)": timed(ours, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--spark-master", default="local[2]")
    parser.add_argument("--no-spark", action="store_true", help="Only the in-process pair.")
    parser.add_argument("--markdown", help="Also write the table to this file.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import mlflow
    from _models import log_registered, scaler_gradient_boosting

    import mlflow_deploy_plugins

    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        work = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
        mlflow.set_registry_uri(f"sqlite:///{work / 'mlflow.db'}")
        os.environ["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
        x, model = scaler_gradient_boosting(5000)
        log_registered(model, x.head(5), "bench-batch")
        mlflow_deploy_plugins.promote("bench-batch", 1, alias="champion", sample=x)
        source, twin = "models:/bench-batch/1", "models:/bench-batch-onnx@champion"
        table = work / "table.parquet"
        make_table(table, args.rows)
        print(f"{args.rows:,} rows x 20 columns, {os.cpu_count()} cores; median of {args.repeats}")
        pairs = []
        if not args.no_spark:
            pairs.append(spark_pair(table, source, twin, args.spark_master, args.repeats))
        pairs.append(in_process_pair(table, source, twin, work, args.repeats))
    lines = ["| path | seconds | rows/s | vs baseline |", "|---|---:|---:|---:|"]
    for pair in pairs:
        (base_name, base), *others = pair.items()
        lines.append(f"| {base_name} (baseline) | {base:.1f} | {args.rows / base:,.0f} | 1.00x |")
        for name, seconds in others:
            lines.append(
                f"| {name} | {seconds:.1f} | {args.rows / seconds:,.0f} | {base / seconds:.2f}x |"
            )
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""``mlflow-deploy batch --spark``: MLflow's spark_udf over the ONNX twin in a real local Spark
(the test run's one session, which the command finds active): Parquet and CSV, Spark's directory
layout, the same columns and predictions as in-process, and the refusals."""

from __future__ import annotations

import os

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mlflow_deploy_plugins.cli import main

pytestmark = pytest.mark.slow


def batch(*args):
    return CliRunner().invoke(main, ["batch", *map(str, args)], catch_exceptions=False)


def test_parquet_directory_scored_by_spark_like_in_process(registered, spark, tmp_path):
    frame = registered.frame.assign(row_id=np.arange(len(registered.frame)))
    parts = tmp_path / "in"  # Spark's own layout: a directory of part files
    parts.mkdir()
    frame.iloc[:150].to_parquet(parts / "part-0.parquet", index=False)
    frame.iloc[150:].to_parquet(parts / "part-1.parquet", index=False)
    out = tmp_path / "scored.parquet"
    result = batch(registered.twin, "--input", parts, "--output", out, "--spark")
    assert result.exit_code == 0, result.output
    assert f"{len(frame):,} rows scored" in result.output
    assert os.path.isdir(out) and not [n for n in os.listdir(tmp_path) if ".partial-" in n]
    scored = pd.read_parquet(out).sort_values("row_id").reset_index(drop=True)
    assert list(scored.columns) == [*frame.columns, "prediction"]
    pd.testing.assert_frame_equal(scored[frame.columns], frame)
    assert scored.prediction.dtype == np.int64
    local = tmp_path / "local.parquet"
    assert batch(registered.twin, "--input", parts, "--output", local).exit_code == 0
    in_process = pd.read_parquet(local).sort_values("row_id").reset_index(drop=True)
    np.testing.assert_array_equal(scored.prediction, in_process.prediction)
    np.testing.assert_array_equal(
        scored.prediction, mlflow.pyfunc.load_model(registered.twin).predict(frame)
    )


def test_csv_text_kept_and_a_bad_value_named(registered, spark, tmp_path):
    text = registered.frame.head(40).astype(object)
    text["comment"] = "00123"  # stays text, as in-process
    text.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    result = batch(registered.twin, "--input", tmp_path / "in.csv", "--output", out, "--spark")
    assert result.exit_code == 0, result.output
    written = pd.concat(
        pd.read_csv(out / name, dtype=str, keep_default_na=False)
        for name in sorted(os.listdir(out))
        if name.endswith(".csv")
    )
    assert list(written.columns) == [*text.columns, "prediction"]
    assert set(written.comment) == {"00123"}
    expected = mlflow.pyfunc.load_model(registered.twin).predict(registered.frame.head(40))
    np.testing.assert_array_equal(written.prediction.astype(np.int64), expected)

    text.loc[7, "age"] = "old"
    text.to_csv(tmp_path / "bad.csv", index=False)
    bad = batch(
        registered.twin, "--input", tmp_path / "bad.csv", "--output", tmp_path / "b", "--spark"
    )
    assert bad.exit_code == 1
    assert "column 'age'" in bad.output and "'old'" in bad.output
    assert not (tmp_path / "b").exists()
    assert not [n for n in os.listdir(tmp_path) if ".partial-" in n]


def test_spark_refusals(registered, spark, tmp_path):
    registered.frame.drop(columns=["plan"]).head(5).to_parquet(tmp_path / "in.parquet")
    missing = batch(
        registered.twin, "--input", tmp_path / "in.parquet", "--output", tmp_path / "o", "--spark"
    )
    assert missing.exit_code == 1 and "lacks column(s) ['plan']" in missing.output
    (tmp_path / "exists").mkdir()
    exists = batch(
        registered.twin,
        "--input",
        tmp_path / "in.parquet",
        "--output",
        tmp_path / "exists",
        "--spark",
    )
    assert exists.exit_code == 1 and "already exists" in exists.output
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    junk = batch(
        registered.twin,
        "--input",
        tmp_path / "junk.parquet",
        "--output",
        tmp_path / "j",
        "--spark",
    )
    assert junk.exit_code == 1
    assert "Cannot read" in junk.output and "junk.parquet" in junk.output

"""``mlflow-deploy batch`` in-process (our ONNX runtime, chunked): Parquet and CSV, the columns it
writes, and every refusal of issue 15 (missing columns, unreadable input, existing output, a value
the model cannot take, Spark not installed), each leaving nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mlflow_deploy_plugins.cli import main


def batch(*args):
    result = CliRunner().invoke(main, ["batch", *map(str, args)], catch_exceptions=False)
    return result


def expected_labels(registered, frame: pd.DataFrame) -> np.ndarray:
    return np.asarray(mlflow.pyfunc.load_model(registered.twin).predict(frame))


def leftovers(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".partial-" in n)


def test_parquet_in_chunks_keeps_every_column_and_adds_the_prediction(registered, tmp_path):
    frame = registered.frame.assign(row_id=np.arange(len(registered.frame)), note="kept")
    frame.to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "out.parquet"
    result = batch(
        registered.twin, "--input", tmp_path / "in.parquet", "--output", out, "--chunk-rows", 37
    )
    assert result.exit_code == 0, result.output
    assert f"{len(frame):,} rows scored" in result.output
    scored = pd.read_parquet(out)
    assert list(scored.columns) == [*frame.columns, "prediction"]
    pd.testing.assert_frame_equal(scored[frame.columns], frame)
    assert scored.prediction.dtype == np.int64
    np.testing.assert_array_equal(scored.prediction, expected_labels(registered, frame))
    # what the source itself predicts (labels agree with the gate's threshold)
    source = mlflow.pyfunc.load_model(registered.source).predict(registered.frame)
    assert (scored.prediction.to_numpy() == source).mean() >= 0.999
    assert leftovers(tmp_path) == []


def test_csv_values_are_read_like_the_runtime_and_carried_verbatim(registered, tmp_path):
    frame = registered.frame.head(50).copy()
    text = frame.astype(object)
    text.loc[3, "age"] = " 41.5 "  # pandas reads it as 41.5; Arrow's parser does not
    text["comment"] = ["00123", "", "a,b", "NA"] + ["x"] * 46  # text that typing would change
    text.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    result = batch(registered.twin, "--input", tmp_path / "in.csv", "--output", out)
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    original = pd.read_csv(tmp_path / "in.csv", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(written[original.columns], original)
    frame.loc[3, "age"] = 41.5
    np.testing.assert_array_equal(
        written.prediction.astype(np.int64), expected_labels(registered, frame)
    )


def test_formats_by_extension_or_flag(registered, tmp_path):
    registered.frame.head(20).to_csv(tmp_path / "rows.txt", index=False)
    refused = batch(registered.twin, "--input", tmp_path / "rows.txt", "--output", tmp_path / "o")
    assert refused.exit_code == 1
    assert "--format" in refused.output and "rows.txt" in refused.output
    out = tmp_path / "scored.parquet"  # CSV in, Parquet out (the output's extension)
    ok = batch(
        registered.twin, "--input", tmp_path / "rows.txt", "--format", "csv", "--output", out
    )
    assert ok.exit_code == 0, ok.output
    assert pq.read_table(out).num_rows == 20


def test_probabilities_as_a_list_column_in_parquet_refused_in_csv(registered, tmp_path):
    rows = registered.frame.head(30)
    rows.to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "p.parquet"
    assert (
        batch(registered.proba_twin, "--input", tmp_path / "in.parquet", "--output", out).exit_code
        == 0
    )
    got = np.stack(pd.read_parquet(out).prediction.to_numpy())
    expected = mlflow.pyfunc.load_model(registered.proba_twin).predict(rows)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    refused = batch(
        registered.proba_twin, "--input", tmp_path / "in.parquet", "--output", tmp_path / "p.csv"
    )
    assert refused.exit_code == 1
    assert "['prediction']" in refused.output and "Parquet" in refused.output
    assert not (tmp_path / "p.csv").exists() and leftovers(tmp_path) == []


def test_missing_columns_are_named(registered, tmp_path):
    registered.frame.drop(columns=["city", "tenure"]).to_parquet(tmp_path / "in.parquet")
    result = batch(
        registered.twin, "--input", tmp_path / "in.parquet", "--output", tmp_path / "o.parquet"
    )
    assert result.exit_code == 1
    assert "lacks column(s) ['tenure', 'city']" in result.output
    assert not (tmp_path / "o.parquet").exists()


def test_unreadable_input_names_the_file_and_the_format(registered, tmp_path):
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"age,income\n1,2\n")  # CSV under a Parquet name
    result = batch(registered.twin, "--input", bad, "--output", tmp_path / "o.parquet")
    assert result.exit_code == 1
    assert "Cannot read" in result.output and "broken.parquet" in result.output
    assert "as parquet" in result.output and "--format csv" in result.output
    assert os.listdir(tmp_path) == ["broken.parquet"]


def test_a_bad_value_names_column_and_rows_and_keeps_the_old_output(registered, tmp_path):
    text = registered.frame.astype(object)
    text.loc[130, "income"] = "lots"
    text.to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "out.csv"
    out.write_text("previous results\n")
    result = batch(
        registered.twin,
        "--input",
        tmp_path / "in.csv",
        "--output",
        out,
        "--overwrite",
        "--chunk-rows",
        100,
    )
    assert result.exit_code == 1
    assert "column 'income'" in result.output and "'lots'" in result.output
    assert "rows 100-199" in result.output
    assert out.read_text() == "previous results\n"  # replaced only by a complete output
    assert leftovers(tmp_path) == []


def test_existing_output_refused_unless_overwrite(registered, tmp_path):
    registered.frame.head(10).to_parquet(tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    out.write_bytes(b"keep me")
    refused = batch(registered.twin, "--input", tmp_path / "in.parquet", "--output", out)
    assert refused.exit_code == 1 and "already exists" in refused.output
    assert "--overwrite" in refused.output and out.read_bytes() == b"keep me"
    ok = batch(registered.twin, "--input", tmp_path / "in.parquet", "--output", out, "--overwrite")
    assert ok.exit_code == 0, ok.output
    assert pq.read_table(out).num_rows == 10


def test_prediction_column_never_overwrites_an_input_column(registered, tmp_path):
    registered.frame.head(10).assign(prediction=1).to_parquet(tmp_path / "in.parquet")
    refused = batch(
        registered.twin, "--input", tmp_path / "in.parquet", "--output", tmp_path / "o.parquet"
    )
    assert refused.exit_code == 1 and "'prediction'" in refused.output
    assert "--prediction-column" in refused.output
    ok = batch(
        registered.twin,
        "--input",
        tmp_path / "in.parquet",
        "--output",
        tmp_path / "o.parquet",
        "--prediction-column",
        "churn_label",
    )
    assert ok.exit_code == 0, ok.output
    assert list(pd.read_parquet(tmp_path / "o.parquet").columns)[-2:] == [
        "prediction",
        "churn_label",
    ]


def test_spark_not_installed_names_the_extra(registered, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "pyspark" or m.startswith("pyspark.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark -> ImportError
    registered.frame.head(5).to_parquet(tmp_path / "in.parquet")
    result = batch(
        registered.twin, "--input", tmp_path / "in.parquet", "--output", tmp_path / "o", "--spark"
    )
    assert result.exit_code == 1
    assert "pip install 'mlflow-deploy-plugins[spark]'" in result.output
    assert not (tmp_path / "o").exists()


def test_the_console_script_loads_no_scoring_library():
    """`mlflow-deploy serve` and `--help` stay fast: batch's imports are lazy."""
    code = (
        "import sys, mlflow_deploy_plugins.cli; "
        "print(sorted(m for m in ('pyarrow', 'pyspark', 'mlflow', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_predict_method_probabilities_from_a_label_model(registered, tmp_path):
    rows = registered.frame.head(25)
    rows.to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "p.parquet"
    result = batch(
        registered.twin,
        "--input",
        tmp_path / "in.parquet",
        "--output",
        out,
        "--predict-method",
        "predict_proba",
    )
    assert result.exit_code == 0, result.output
    got = np.stack(pd.read_parquet(out).prediction.to_numpy())
    model = mlflow.pyfunc.load_model(registered.twin)
    expected = model.predict(rows, params={"predict_method": "predict_proba"})
    assert got.shape == (25, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_an_empty_table_gives_an_empty_output_with_the_prediction_column(
    registered, tmp_path, suffix
):
    empty = registered.frame.head(0)
    path = tmp_path / f"in.{suffix}"
    empty.to_parquet(path, index=False) if suffix == "parquet" else empty.to_csv(path, index=False)
    out = tmp_path / f"out.{suffix}"
    result = batch(registered.twin, "--input", path, "--output", out)
    assert result.exit_code == 0, result.output
    assert "0 rows scored" in result.output
    read = pd.read_parquet if suffix == "parquet" else pd.read_csv
    assert list(read(out).columns) == [*empty.columns, "prediction"]

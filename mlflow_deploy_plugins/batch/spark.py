"""``mlflow-deploy batch --spark``: the table scored by MLflow's own ``mlflow.pyfunc.spark_udf``
over the ONNX twin (our flavor's pyfunc: onnxruntime in each Python worker), read and written by
Spark. The same columns, prediction column and CSV reading as the in-process path."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

from mlflow_deploy_plugins.batch.local import (
    PREDICTION_COLUMN,
    BatchResult,
    model_columns,
)
from mlflow_deploy_plugins.batch.tables import check_output, format_of, unreadable
from mlflow_deploy_plugins.core.constants import DIST_NAME, FLAVOR_NAME
from mlflow_deploy_plugins.core.iospec import LABEL, IOSpec, SchemaError
from mlflow_deploy_plugins.errors import InvalidInputError, ModelNotFoundError
from mlflow_deploy_plugins.serving.codecs.mlflow_csv import CSV_NA

_logger = logging.getLogger(__name__)

#: numpy dtype of the source's prediction -> Spark SQL type of the UDF's result
_SPARK_TYPES = {
    "int64": "long",
    "int32": "integer",
    "float64": "double",
    "float32": "float",
    "bool": "boolean",
    "object": "string",
    "string": "string",
}


def spark_session():
    """The active Spark session (under ``spark-submit``, a notebook), else a new one whose
    Python workers run this interpreter.

    Raises:
        InvalidInputError: pyspark is not installed (names the ``spark`` extra).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise InvalidInputError(
            f"--spark needs pyspark in this Python environment ({sys.executable}): "
            f"pip install '{DIST_NAME}[spark]' (and a Java 17+ runtime), or score in-process "
            "without --spark"
        ) from e
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return SparkSession.builder.appName("mlflow-deploy-batch").getOrCreate()


def result_type(io: IOSpec, role: str) -> str:
    """The Spark result type of the twin's prediction for ``role``: the source's dtype
    (``long`` labels, ``double`` values, ``string`` labels), ``array<...>`` for several values
    per row (probabilities)."""
    spec = io.output_for(role)
    element = _SPARK_TYPES.get(spec.source_dtype or spec.dtype, "double")
    several = len(spec.shape) > 1 and spec.shape[1] != 1 and spec.role != LABEL
    if several and io.extra.get("proba_column") is None:
        return f"array<{element}>"
    return element


def score_table_spark(
    model_uri: str,
    input_path: str,
    output_path: str,
    *,
    input_format: str | None = None,
    overwrite: bool = False,
    prediction_column: str = PREDICTION_COLUMN,
    predict_method: str | None = None,
) -> BatchResult:
    """Like ``local.score_table``, through Spark: the output is a directory of part files
    (Spark's layout), the input a file or a directory. A local output is written beside its
    path and moved into place when complete; a remote one (``s3://``...) is Spark's to write.

    Raises:
        InvalidInputError: pyspark missing (names the extra), unreadable input, missing columns.
        AlreadyExistsError: the output exists and ``overwrite`` is false.
    """
    import mlflow

    spark = spark_session()  # first: refuses a missing pyspark, naming the extra
    from pyspark.sql import functions as F  # noqa: N812 - Spark's own convention

    fmt = format_of(input_path, input_format)
    out_format = format_of(output_path, default=fmt)
    local_output = "://" not in output_path
    if local_output:
        check_output(output_path, overwrite)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-batch-") as work:
        model_path, io = _twin(model_uri, work)
        try:
            role = io.role_for(predict_method)
        except SchemaError as e:
            raise InvalidInputError(str(e)) from e
        frame = _read(spark, input_path, fmt)
        sources = model_columns(io, frame.columns, prediction_column)
        dtypes = io.column_dtypes()
        arguments = [
            _typed(F, F.col(f"`{source}`"), column, dtypes[column], fmt == "csv").alias(column)
            for column, source in sources.items()
        ]
        kind = result_type(io, role)
        udf = mlflow.pyfunc.spark_udf(
            spark,
            model_path,
            result_type=kind,
            env_manager="local",
            params={"predict_method": predict_method} if predict_method else None,
        )
        scored = frame.withColumn(prediction_column, udf(F.struct(*arguments)))
        target = output_path
        if local_output:
            head, tail = os.path.split(os.path.abspath(output_path))
            target = os.path.join(head, f".{tail}.partial-{os.getpid()}")
        try:
            _write(scored, target, out_format, input_path)
            rows = _read(spark, target, out_format).count()
        except BaseException:
            if local_output:
                _remove(target)
            raise
    if local_output:
        _remove(output_path)
        os.replace(target, output_path)
    seconds = time.perf_counter() - started
    _logger.info(
        "Spark scored %s rows in %.1f s: %s (input columns + '%s' %s)",
        f"{rows:,}",
        seconds,
        output_path,
        prediction_column,
        kind,
    )
    return BatchResult(output_path, rows, seconds, prediction_column)


def _twin(model_uri: str, work: str) -> tuple[str, IOSpec]:
    """A local MLflow model of our flavor for ``model_uri`` and its IOSpec: the model itself
    when it is ours, else converted through the parity gate (nothing registered)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from mlflow_deploy_plugins.onnx.convert import convert

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=work)
        flavors = Model.load(local).flavors
    except MlflowException as e:
        raise ModelNotFoundError(f"Model '{model_uri}' could not be resolved: {e.message}") from e
    if FLAVOR_NAME not in flavors:
        _logger.info(
            "%s is not an ONNX model of ours: converting through the parity gate", model_uri
        )
        result = convert(model_uri)
        local = os.path.join(work, "onnx-model")
        result.save(local)
        return local, result.io
    return local, IOSpec.from_dict(flavors[FLAVOR_NAME]["io"])


def _typed(F, column, name: str, dtype: str, text: bool):  # noqa: N803 - pyspark.sql.functions
    """A model column as the model takes it: CSV text cast to its type, pandas' missing-value
    tokens as null first; any other text that is not a number fails the job naming the column
    and the value (as the in-process reading does), never a silent null."""
    if not text or dtype == "string":
        return column
    spark_type = _SPARK_TYPES.get(dtype, "double")
    missing = column.isNull() | column.isin(*sorted(CSV_NA))
    typed = column.try_cast(spark_type)
    refused = F.raise_error(
        F.concat(
            F.lit(f"Incompatible input types for column '{name}': expected {dtype}, got '"),
            column,
            F.lit("'"),
        )
    )
    return F.when(missing, F.lit(None)).when(typed.isNull(), refused).otherwise(typed)


def _read(spark, path: str, fmt: str):
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    try:
        if fmt == "parquet":
            return spark.read.parquet(path)
        return spark.read.option("header", True).option("enforceSchema", False).csv(path)
    except (PySparkException, Py4JJavaError) as e:
        raise unreadable(path, fmt, job_error(e)) from e


def _write(frame, path: str, fmt: str, input_path: str) -> None:
    """Run the job. Its failures (a value the model refuses, text that is not a number, an
    unreadable part file) come back from the JVM: reported as the line that says what failed."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    writer = frame.write.mode("errorifexists")
    try:
        if fmt == "parquet":
            writer.parquet(path)
        else:
            writer.option("header", True).csv(path)
    except (PySparkException, Py4JJavaError) as e:
        raise InvalidInputError(f"Scoring {input_path!r} failed in Spark: {job_error(e)}") from e


def job_error(error: Exception) -> str:
    """The line of a Spark failure that names the problem: our (or MLflow's) exception raised in
    a Python worker, else the JVM's root cause, else Spark's error class line
    (``[CAST_INVALID_INPUT] ...``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for marker in ("InvalidInputError: ", "MlflowException: "):
        found = [line for line in lines if marker in line]
        if found:
            return found[-1].split(marker, 1)[1][:500]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by: ")]
    if causes:  # "java.lang.RuntimeException: file:/x is not a Parquet file ..."
        return causes[-1].split(": ", 1)[-1][:500]
    tagged = [line for line in lines if line.startswith("[")]
    return (tagged or lines or [type(error).__name__])[0][:500]


def _remove(path: str) -> None:
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)

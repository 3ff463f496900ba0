"""``mlflow-deploy batch``: score a Parquet or CSV table in-process or with Spark.

Only click is imported at the top: the scoring modules (pyarrow, onnxruntime, mlflow, pyspark)
load when the command runs, so ``mlflow-deploy --help`` and ``serve`` stay fast.
"""

from __future__ import annotations

import click

from mlflow_deploy_plugins.console import fail

_FORMATS = ["parquet", "csv"]


@click.command("batch")
@click.argument("model_uri")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True),
    help="Parquet or CSV file (or a directory of them, as Spark writes tables).",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(),
    help="Where to write the input's columns plus the prediction column: a file (a directory "
    "of part files with --spark). Format: its extension, else the input's.",
)
@click.option(
    "--format",
    "input_format",
    type=click.Choice(_FORMATS),
    default=None,
    help="The input's format when its name does not end in .parquet/.pq/.csv.",
)
@click.option("--spark", is_flag=True, help="Score with mlflow.pyfunc.spark_udf in Spark.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (once complete).")
@click.option(
    "--prediction-column",
    default="prediction",
    show_default=True,
    help="Name of the added column.",
)
@click.option(
    "--predict-method",
    type=click.Choice(["predict", "predict_proba", "predict_label", "predict_values"]),
    default=None,
    help="What to predict, as the pyfunc's params (default: what the source's pyfunc returns).",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=65_536,
    show_default=True,
    help="Rows per chunk in-process (memory is bounded by one chunk).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="onnxruntime threads in-process (0: every core).",
)
def batch_command(
    model_uri,
    input_path,
    output_path,
    input_format,
    spark,
    overwrite,
    prediction_column,
    predict_method,
    chunk_rows,
    threads,
):
    """Score the table at --input with MODEL_URI and write it, plus a prediction column, to
    --output.

    \b
    mlflow-deploy batch models:/churn-onnx@champion --input day.parquet --output scored.parquet
    mlflow-deploy batch models:/churn-onnx@champion --input day.csv --output scored.csv --spark

    In-process, our ONNX runtime scores the table chunk by chunk; with --spark, MLflow's
    spark_udf over the same ONNX model does, in the active Spark session or a local one. A model
    that is not ONNX yet goes through the parity gate first (nothing is registered).
    """
    from mlflow.exceptions import MlflowException

    kwargs = {
        "input_format": input_format,
        "overwrite": overwrite,
        "prediction_column": prediction_column,
        "predict_method": predict_method,
    }
    try:
        if spark:
            from mlflow_deploy_plugins.batch.spark import score_table_spark

            result = score_table_spark(model_uri, input_path, output_path, **kwargs)
        else:
            from mlflow_deploy_plugins.batch.local import score_table

            result = score_table(
                model_uri, input_path, output_path, chunk_rows=chunk_rows, threads=threads, **kwargs
            )
    except MlflowException as e:
        fail(e)
    click.echo(
        f"{result.rows:,} rows scored in {result.seconds:.1f} s -> {result.output} "
        f"(input columns + '{result.prediction_column}')"
    )

"""``mlflow-deploy drift``: the drift report on the command line, exit status 0 / 2 / 1.

Exported as ``drift_command`` for the main ``mlflow-deploy`` group; imports only click and the
default settings until it runs.
"""

from __future__ import annotations

import json
import logging
import sys

import click

from mlflow_deploy_plugins.console import fail
from mlflow_deploy_plugins.monitoring.defaults import (
    DEFAULT_CAT_METHOD,
    DEFAULT_DRIFT_SHARE,
    DEFAULT_NUM_METHOD,
    DEFAULT_SAMPLE_SIZE,
    DEFAULT_THRESHOLD,
)

_logger = logging.getLogger(__name__)

#: ``mlflow-deploy drift`` exit statuses (cron/CI alert on 2).
EXIT_NO_DRIFT, EXIT_ERROR, EXIT_DRIFT = 0, 1, 2


class _DriftCommand(click.Command):
    """Usage errors exit 1 like every other error: 2 means "drift detected" for this command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            e.exit_code = EXIT_ERROR
            raise


def _column_methods(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str]:
    """``--column-method COLUMN=METHOD`` (repeated) as ``{column: method}``."""
    methods = {}
    for value in values:
        column, sep, method = value.partition("=")
        if not sep or not column or not method:
            raise click.BadParameter(f"expected COLUMN=METHOD, got {value!r}")
        methods[column] = method
    return methods


@click.command("drift", cls=_DriftCommand)
@click.argument("model_uri")
@click.option(
    "--current",
    required=True,
    type=click.Path(exists=True),
    help="Production data: a payload-log directory (serve --payload-log DIR), or a Parquet, "
    "CSV or JSONL file.",
)
@click.option(
    "--reference",
    type=click.Path(exists=True),
    default=None,
    help="Reference data [default: the reference sample stored with the ONNX model].",
)
@click.option(
    "--experiment", default=None, help="Experiment of the report run [default: NAME-monitoring]."
)
@click.option("--since", default=None, help="Payload records from this UTC time (ISO 8601).")
@click.option("--until", default=None, help="Payload records up to this UTC time (ISO 8601).")
@click.option(
    "--window", default=None, help="Payload records of the last 90s / 30m / 24h / 7d (to --until)."
)
@click.option(
    "--sample-size",
    type=int,
    default=DEFAULT_SAMPLE_SIZE,
    show_default=True,
    help="Rows compared at most per side (uniform random sample).",
)
@click.option("--num-method", default=DEFAULT_NUM_METHOD, show_default=True, help="Numeric test.")
@click.option("--cat-method", default=DEFAULT_CAT_METHOD, show_default=True, help="Category test.")
@click.option(
    "--threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True, help="Per column."
)
@click.option(
    "--drift-share",
    type=float,
    default=DEFAULT_DRIFT_SHARE,
    show_default=True,
    help="Drift when at least this share of columns drifted.",
)
@click.option(
    "--column-method",
    multiple=True,
    callback=_column_methods,
    metavar="COLUMN=METHOD",
    help="Method for one column (repeatable).",
)
@click.option("--column", "columns", multiple=True, help="Compare only this column (repeatable).")
@click.option("--intersection", is_flag=True, help="Compare the shared columns only.")
@click.option("--coerce", is_flag=True, help="Convert columns whose type changed.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option(
    "--fail-on-drift/--no-fail-on-drift",
    default=True,
    show_default=True,
    help="Exit 2 when drift is detected (--no-fail-on-drift: exit 0).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def drift_command(
    model_uri,
    current,
    reference,
    experiment,
    since,
    until,
    window,
    sample_size,
    num_method,
    cat_method,
    threshold,
    drift_share,
    column_method,
    columns,
    intersection,
    coerce,
    seed,
    fail_on_drift,
    as_json,
):
    """Compare production data with MODEL_URI's reference sample; log the report to MLflow.

    \b
    mlflow-deploy drift models:/churn-onnx@champion --current /var/log/payloads --window 24h
    mlflow-deploy drift models:/churn/3 --current prod.parquet --reference train.parquet

    One MLflow run per report (HTML report, Evidently snapshot, per-column scores); the model
    version (and the source version of an ONNX twin) gets mlflow_deploy.drift.* tags.

    \b
    Exit status: 0 no drift, 2 drift detected (0 with --no-fail-on-drift), 1 error.
    """
    from mlflow.exceptions import MlflowException

    # imported when run: the main CLI imports this module to build its help
    from mlflow_deploy_plugins.monitoring.drift import drift_report

    try:
        result = drift_report(
            model_uri,
            current,
            reference,
            experiment_name=experiment,
            since=since,
            until=until,
            window=window,
            sample_size=sample_size,
            num_method=num_method,
            cat_method=cat_method,
            threshold=threshold,
            drift_share=drift_share,
            per_column_method=column_method,
            columns=list(columns) or None,
            intersection=intersection,
            coerce=coerce,
            seed=seed,
        )
    except MlflowException as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(result.to_dict(), default=str))
    else:
        click.echo(result.summary())
        for c in result.columns:
            click.echo(
                f"  {'DRIFT' if c.drifted else 'ok   '} {c.column:<24} {c.kind} {c.method:<14} "
                f"score {c.score:.4g} (threshold {c.threshold:g})"
            )
        click.echo(f"Report: runs:/{result.run_id}/drift_report.html")
    sys.exit(EXIT_DRIFT if result.drift_detected and fail_on_drift else EXIT_NO_DRIFT)

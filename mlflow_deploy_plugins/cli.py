"""The ``mlflow-deploy`` command line."""

from __future__ import annotations

import json
import logging
import sys

import click

from mlflow_deploy_plugins import __version__
from mlflow_deploy_plugins.console import fail, setup_logging

_logger = logging.getLogger(__name__)

_TOLERANCE_OPTIONS = [
    click.option(
        "--sample",
        "sample",
        type=click.Path(exists=True, dir_okay=False),
        help="Validation data for the parity gate (CSV, Parquet, JSON or JSONL). "
        "Default: the run's logged dataset, else 1,000 rows synthesized from the input example.",
    ),
    click.option(
        "--atol",
        type=float,
        default=1e-4,
        show_default=True,
        help="Absolute tolerance on probabilities and values.",
    ),
    click.option(
        "--rtol",
        type=float,
        default=1e-3,
        show_default=True,
        help="Relative tolerance on probabilities and values.",
    ),
    click.option(
        "--min-label-agreement",
        type=float,
        default=0.999,
        show_default=True,
        help="Minimum share of identical labels (classifiers).",
    ),
    click.option(
        "--quantize/--no-quantize",
        default=False,
        show_default=True,
        help="Apply dynamic int8 quantisation (must pass the parity gate too).",
    ),
]


def _tolerance_options(func):
    for option in reversed(_TOLERANCE_OPTIONS):
        func = option(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlflow-deploy")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Turn registered MLflow models into verified ONNX models and deploy them.

    \b
    Typical use:
      mlflow-deploy promote churn 3 --alias champion   # convert, gate, register churn-onnx
      mlflow-deploy convert models:/churn/3 --output ./churn-onnx
      mlflow-deploy drift models:/churn-onnx@champion --current PAYLOAD_LOG_DIR --window 24h
      mlflow-deploy batch models:/churn-onnx@champion --input day.parquet --output scored.parquet

    The tracking and registry servers come from MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, as
    for every mlflow command.
    """
    setup_logging(verbose)


@main.command()
@click.argument("model_uri")
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory to write the MLflow model (our ONNX flavor) to; must not exist.",
)
@_tolerance_options
def convert(model_uri, output, sample, atol, rtol, min_label_agreement, quantize):
    """Convert MODEL_URI to ONNX, check parity, write an MLflow model to --output.

    MODEL_URI is any MLflow model URI: models:/name/version, models:/name@alias, runs:/..., a path.
    Nothing is registered.
    """
    from mlflow.exceptions import MlflowException

    from mlflow_deploy_plugins.onnx.convert import convert as do_convert

    try:
        result = do_convert(
            model_uri,
            sample=sample,
            atol=atol,
            rtol=rtol,
            min_label_agreement=min_label_agreement,
            quantize=quantize,
        )
        result.save(output)
    except MlflowException as e:
        fail(e)
    click.echo(result.parity.summary())
    opt = result.optimization
    click.echo(
        f"ONNX model: {output}/model.onnx ({opt.after.size_bytes:,} bytes, "
        f"{result.converter} {result.converter_version}, {len(result.reference_sample)} "
        f"reference rows)"
    )
    click.echo(f"Load it: mlflow.pyfunc.load_model({output!r})")


@main.command()
@click.argument("name")
@click.argument("version")
@click.option(
    "--alias",
    default=None,
    help="Alias to set on the ONNX version after the gate (default: champion when no "
    "--stage is given).",
)
@click.option(
    "--stage",
    type=click.Choice(["Staging", "Production", "Archived", "None"]),
    default=None,
    help="Legacy stage to move the ONNX version to.",
)
@click.option(
    "--onnx-name", default=None, help="Registered model of the ONNX twin [default: NAME-onnx]."
)
@click.option(
    "--experiment",
    default=None,
    help="Experiment for the conversion run [default: the source run's].",
)
@click.option(
    "--alias-source/--no-alias-source",
    default=True,
    show_default=True,
    help="Also set the alias on the source version (after the ONNX version has it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@_tolerance_options
def promote(
    name,
    version,
    alias,
    stage,
    onnx_name,
    experiment,
    alias_source,
    as_json,
    sample,
    atol,
    rtol,
    min_label_agreement,
    quantize,
):
    """Promote version VERSION of registered model NAME: convert, gate, register, alias.

    Idempotent: promoting the same version again only moves the alias. On failure the source
    version is tagged mlflow_deploy.status=failed with the reason, and no alias moves.
    """
    from mlflow.exceptions import MlflowException

    from mlflow_deploy_plugins.registry.promote import promote as do_promote

    if alias is None and stage is None:
        alias = "champion"
    try:
        result = do_promote(
            name,
            version,
            alias,
            stage=stage,
            sample=sample,
            onnx_name=onnx_name,
            atol=atol,
            rtol=rtol,
            min_label_agreement=min_label_agreement,
            quantize=quantize,
            experiment_name=experiment,
            alias_source=alias_source,
        )
    except MlflowException as e:
        fail(e)
    if as_json:
        click.echo(json.dumps(result.__dict__ | {"model_uri": result.model_uri}, default=str))
        return
    click.echo(result.summary())
    for key, value in sorted(result.parity.items()):
        click.echo(f"  parity {key}: {value}")
    click.echo(f"Model URI: {result.model_uri}")
    if result.run_id:
        click.echo(f"Conversion run: {result.run_id} (parity_report.json, metrics)")


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("model", required=False)
@click.pass_context
def serve(ctx, model):
    """Serve MODEL (a models:/ URI or a serving-bundle directory) with the ONNX runtime.

    \b
    mlflow-deploy serve models:/churn-onnx@champion --port 8080 [--workers 2]
        [--max-batch-size 64 --max-batch-time-ms 0] [--payload-log DIR]
    mlflow-deploy serve ./bundle --host 127.0.0.1 --port 8080

    A model that is not ONNX yet is converted through the parity gate first (nothing is
    registered). The server runs in a fresh process that imports no mlflow. Run with --help for
    every flag (also settable as MLFLOW_DEPLOY_* environment variables).
    """
    import inspect
    import os
    import tempfile

    from mlflow_deploy_plugins.core.manifest import MANIFEST_FILE
    from mlflow_deploy_plugins.serving.__main__ import build_parser

    args = list(ctx.args)
    if model in (None, "-h", "--help") or "-h" in args or "--help" in args:
        click.echo(inspect.cleandoc(serve.help).replace("\b\n", ""))
        click.echo(build_parser(prog="mlflow-deploy serve MODEL").format_help())
        return
    build_parser().parse_args([model, *args])  # fail fast on bad flags, before any conversion
    argv = [sys.executable, "-m", "mlflow_deploy_plugins.serving", "serve", model, *args]
    if os.path.isfile(os.path.join(model, MANIFEST_FILE)):
        # A bundle: become the lean server before anything imports mlflow (~1 s of start-up).
        sys.stdout.flush()
        os.execv(sys.executable, argv)
    from mlflow.exceptions import MlflowException

    from mlflow_deploy_plugins.bundle import build_bundle

    with tempfile.TemporaryDirectory(prefix="mlflow-deploy-bundle-") as work:
        bundle_dir = os.path.join(work, "bundle")
        try:
            build_bundle(model, bundle_dir)
        except MlflowException as e:
            fail(e)
        argv[4] = bundle_dir
        sys.exit(_run_server(argv))


def _run_server(argv: list[str]) -> int:
    """Run the server in a child process (it never imports mlflow) and forward SIGTERM/SIGINT,
    so the temporary bundle is removed once it stopped."""
    import signal
    import subprocess

    sys.stdout.flush()
    child = subprocess.Popen(argv)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # pragma: no cover - the handler above catches SIGINT
                forward(signal.SIGINT, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _add_subcommands() -> None:
    """Commands that live with their code: ``drift`` (monitoring/cli.py), ``webhooks
    serve|register`` and ``watch`` (registry/cli.py), ``batch`` (batch/cli.py). These modules
    import only click at the top, so ``--help`` stays fast."""
    from mlflow_deploy_plugins.batch.cli import batch_command
    from mlflow_deploy_plugins.monitoring.cli import drift_command
    from mlflow_deploy_plugins.registry.cli import watch_command, webhooks_group

    main.add_command(batch_command, "batch")
    main.add_command(drift_command, "drift")
    main.add_command(webhooks_group, "webhooks")
    main.add_command(watch_command, "watch")


_add_subcommands()


if __name__ == "__main__":  # pragma: no cover
    main()

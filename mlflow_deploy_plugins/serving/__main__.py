"""``python -m mlflow_deploy_plugins.serving [serve] [BUNDLE_DIR] [--port N ...]``.

The flags are generated from ``ServingSettings`` (one flag per setting, same names as the
``MLFLOW_DEPLOY_*`` variables), so the parser, the environment and the docs never disagree.
SageMaker starts containers with the argument ``serve``; its model directory is /opt/ml/model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mlflow_deploy_plugins.serving.settings import (
    BUNDLE_ENV,
    ENV_PREFIX,
    ServingSettings,
    SettingsError,
)

#: Settings never taken from the command line (visible in `ps`): environment only.
SECRET_SETTINGS = frozenset({"auth_token"})
#: Short spellings documented in the issue / README, on top of the generated flags.
ALIASES = {
    "payload_log_dir": ["--payload-log"],
    "payload_log_sample_rate": ["--payload-log-sample"],
}
SAGEMAKER_MODEL_DIR = "/opt/ml/model"


def build_parser(prog: str = "python -m mlflow_deploy_plugins.serving") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a serving bundle (model.onnx + bundle.json) over Open Inference "
        "Protocol V2 and MLflow's scoring protocol.",
        epilog=f"Every flag can also be set as {ENV_PREFIX}<NAME> (e.g. {ENV_PREFIX}PORT=8080); "
        f"flags win. The bearer token comes from {ENV_PREFIX}AUTH_TOKEN or --auth-token-file (a mounted secret).",
    )
    parser.add_argument(
        "args",
        nargs="*",
        metavar="[serve] BUNDLE_DIR",
        help=f"the bundle directory (default: ${BUNDLE_ENV}, else {SAGEMAKER_MODEL_DIR}); "
        "a leading 'serve' is accepted (SageMaker's container contract)",
    )
    add_settings_arguments(parser)
    return parser


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per ServingSettings field (reused by ``mlflow-deploy serve``)."""
    for name, type_name, default, help_text in ServingSettings.describe():
        if name in SECRET_SETTINGS:
            continue
        flags = [f"--{name.replace('_', '-')}", *ALIASES.get(name, [])]
        if type_name == "bool":
            parser.add_argument(
                *flags,
                dest=name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=f"{help_text} (default: {default})",
            )
        else:
            parser.add_argument(
                *flags,
                dest=name,
                default=None,
                metavar=type_name.split(" ")[0].upper(),
                help=f"{help_text} (default: {default})",
            )


def overrides_from(namespace: argparse.Namespace) -> dict:
    fields = {name for name, *_ in ServingSettings.describe()} - SECRET_SETTINGS
    return {k: v for k, v in vars(namespace).items() if k in fields and v is not None}


def _bundle_dir(positional: list[str]) -> str:
    args = list(positional)
    if args and args[0] == "serve":
        args.pop(0)
    if len(args) > 1:
        raise SystemExit(f"expected one bundle directory, got {args}")
    if args:
        return args[0]
    return os.environ.get(BUNDLE_ENV) or SAGEMAKER_MODEL_DIR


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    bundle_dir = _bundle_dir(ns.args)
    from mlflow_deploy_plugins.core.manifest import BundleError, Manifest

    try:
        manifest = Manifest.read(bundle_dir)
        settings = ServingSettings.resolve(manifest.settings, os.environ, overrides_from(ns))
    except (BundleError, SettingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from mlflow_deploy_plugins.serving import logs

    logs.configure(settings.log_level)
    from mlflow_deploy_plugins.serving.payload_files import PayloadLogDirectoryError
    from mlflow_deploy_plugins.serving.server import run

    try:
        return run(bundle_dir, settings)
    except (BundleError, PayloadLogDirectoryError) as e:
        logging.getLogger(__name__).error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())

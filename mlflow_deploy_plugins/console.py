"""What every command of the ``mlflow-deploy`` console script shares: logging and the error exit.

The command groups live next to what they drive (``registry/cli.py``, ``monitoring/cli.py``);
they and ``cli.py`` import this module, never each other's internals.
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import click


def setup_logging(verbose: bool = False) -> None:
    """Timestamped logs on stderr (DEBUG with ``verbose``); the libraries' chatter stays quiet.

    Args:
        verbose: debug logging.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("alembic", "mlflow.store.db.utils", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(error: Exception) -> NoReturn:
    """Print ``Error: <message>`` in red on stderr and exit 1 (every command's error path).

    Args:
        error: an MlflowException (its message) or any exception (its text).
    """
    message = getattr(error, "message", None) or str(error)
    click.secho(f"Error: {message}", fg="red", err=True)
    sys.exit(1)

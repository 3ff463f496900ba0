"""What every target's ``BaseDeploymentClient`` does: hand each call to its lifecycle object
(``self.deployments``: a ``DockerTarget``, an ``MlserverTarget``...), whose docstrings say what
each call guarantees. A mixin, not a client: MLflow's plugin loader counts the
``BaseDeploymentClient`` subclasses visible in a target module and must find exactly one."""

from __future__ import annotations

import logging
import sys

_logger = logging.getLogger(__name__)


def stderr_progress(message: str) -> None:
    """The default ``progress``: one line on stderr (and the debug log)."""
    _logger.debug("%s", message)
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


class DelegatingClient:
    """The deployment calls of MLflow's client contract, delegated to ``self.deployments``."""

    deployments: object

    def create_deployment(self, name, model_uri, flavor=None, config=None, endpoint=None):
        """Deploy ``model_uri`` as ``name``; blocks until it answers."""
        return self.deployments.create_deployment(name, model_uri, flavor, config)

    def update_deployment(self, name, model_uri=None, flavor=None, config=None, endpoint=None):
        """Move ``name`` to ``model_uri`` (default: its model URI, re-resolved) and/or new
        config; the old version answers until the new one is ready."""
        return self.deployments.update_deployment(name, model_uri, flavor, config)

    def delete_deployment(self, name, config=None, endpoint=None):
        """Remove ``name``; no error when absent."""
        self.deployments.delete_deployment(name, config)

    def list_deployments(self, endpoint=None):
        """Every deployment of this target, as ``get_deployment`` describes each."""
        return self.deployments.list_deployments()

    def get_deployment(self, name, endpoint=None):
        """The deployment ``name`` (RESOURCE_DOES_NOT_EXIST when there is none)."""
        return self.deployments.get_deployment(name)

    def predict(self, deployment_name=None, inputs=None, endpoint=None):
        """Score ``inputs`` (DataFrame, MLflow or V2 JSON dict, records, numpy array)."""
        return self.deployments.predict(deployment_name, inputs)

    def serve_foreground(self, name, model_uri, flavor=None, config=None) -> None:
        """``run_local``: serve ``model_uri`` in the foreground until Ctrl+C, then clean up."""
        self.deployments.serve_foreground(name, model_uri, flavor, config)

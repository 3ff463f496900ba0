"""Typed target configuration parsed from ``-C key=value`` strings (MLflow passes strings).

Each target declares ONE frozen dataclass subclassing ``TargetConfig``; every field carries its
help text with ``option(default, "help", choices=..., check=...)``. Parsing, validation and the
help/docs tables are the shared config engine's (``core/config.py``, also behind the serving
runtime's settings); this module only turns its errors into MLflow errors naming the target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from mlflow_deploy_plugins.core import config
from mlflow_deploy_plugins.errors import InvalidInputError

#: A target config field: ``option(default, help, *, choices=None, secret=False, check=None)``.
option = config.setting


# The image build's keys, the same in every target that builds the serving image (a new field
# object per call: each config class declares its own).
def base_image_option():
    return option(
        "python:3.11-slim", "Image the serving image is built FROM (needs python3 with venv)."
    )


def python_version_option():
    return option(
        None, "Python version of the base image the wheels are for (e.g. 3.11); default: probed."
    )


def platform_option():
    return option(
        None, "pip platform tag of the base image (e.g. manylinux_2_28_x86_64); default: probed."
    )


def wheel_cache_option():
    return option(None, "Host directory caching downloaded wheels; default ~/.cache/mlflow-deploy.")


def image_repository_option():
    return option(
        None, "Repository of the image (its tag is a content hash); default mlflow-deploy/MODEL."
    )


def remove_image_option():
    return option(
        False, "delete: also remove the image; update: remove the previous version's image."
    )


def rebuild_option():
    return option(False, "Build the image even when one with the same content hash exists.")


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """Base class: subclasses add fields with ``option(...)``."""

    target: ClassVar[str] = "?"

    def __post_init__(self) -> None:
        try:
            config.validate(self, lambda name: f"Config key '{name}' of target '{self.target}'")
        except config.ConfigError as e:
            raise InvalidInputError(str(e)) from e

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None, **defaults: Any):
        """Parse ``-C`` values (strings or already typed); unknown keys are an error.

        Args:
            values: the ``-C`` dict MLflow passes (``-`` in a key reads as ``_``).
            defaults: typed values used where ``values`` has no key (e.g. from a deployment).

        Raises:
            InvalidInputError: an unknown key, or a value of the wrong type or out of range;
                the message names the key and what was expected.
        """
        names = config.field_types(cls)
        parsed: dict[str, Any] = dict(defaults)
        for key, raw in (values or {}).items():
            name = key.replace("-", "_")
            if name not in names or name == "target":
                known = ", ".join(sorted(o.name for o in config.describe(cls)))
                raise InvalidInputError(
                    f"Unknown config key '{key}' for target '{cls.target}'. Known keys: {known}"
                )
            where = f"Config key '{key}' of target '{cls.target}'"
            try:
                parsed[name] = config.parse_value(cls, name, raw, where, key)
            except config.ConfigError as e:
                raise InvalidInputError(str(e)) from e
        try:
            return cls(**parsed)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"Invalid config for target '{cls.target}': {e}") from e

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self, include_secrets: bool = False) -> dict[str, Any]:
        return config.to_dict(self, include_secrets)

    @classmethod
    def help_table(cls) -> str:
        """A readable table of every key: name, type, default, allowed values, help."""
        return config.help_table(cls)

    @classmethod
    def markdown_table(cls) -> str:
        return config.markdown_table(cls)

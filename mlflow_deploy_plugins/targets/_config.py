"""Typed target configuration parsed from ``-C key=value`` strings (MLflow passes strings).

Each target declares ONE frozen dataclass subclassing ``TargetConfig``; every field carries its
help text with ``option(default, "help", choices=...)``. Parsing names the key and the allowed
values on error, and ``help_table()`` renders ``target_help()`` and the docs from the same fields.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from mlflow_deploy_plugins.errors import InvalidInputError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def option(default: Any = None, help: str = "", *, choices: tuple | None = None, secret=False):
    """A config field: default, help text, optional allowed values, secret (never printed)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "secret": secret}
    )


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """Base class: subclasses add fields with ``option(...)``."""

    target: ClassVar[str] = "?"

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, **defaults: Any):
        """Parse ``-C`` values (strings or already typed); unknown keys are an error."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = dict(defaults)
        for key, raw in (config or {}).items():
            name = key.replace("-", "_")
            if name not in fields:
                raise InvalidInputError(
                    f"Unknown config key '{key}' for target '{cls.target}'. "
                    f"Known keys: {', '.join(sorted(fields))}"
                )
            values[name] = _convert(raw, hints[name], fields[name], key, cls.target)
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"Invalid config for target '{cls.target}': {e}") from e

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self, include_secrets: bool = False) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value is not None and not include_secrets:
                value = "<hidden>"
            out[f.name] = value
        return out

    @classmethod
    def help_table(cls) -> str:
        """A readable table of every key: name, type, default, allowed values, help."""
        hints = typing.get_type_hints(cls)
        lines = []
        for f in dataclasses.fields(cls):
            type_name = _type_name(hints[f.name])
            choices = f.metadata.get("choices")
            default = "(none)" if f.default is None else f.default
            allowed = f"; one of {', '.join(map(str, choices))}" if choices else ""
            lines.append(f"  {f.name} ({type_name}, default {default}{allowed})")
            lines.append(f"      {f.metadata.get('help', '')}")
        return "\n".join(lines)

    @classmethod
    def markdown_table(cls) -> str:
        hints = typing.get_type_hints(cls)
        rows = ["| key | type | default | description |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            choices = f.metadata.get("choices")
            text = f.metadata.get("help", "")
            if choices:
                text += f" One of: {', '.join(f'`{c}`' for c in choices)}."
            default = "" if f.default is None else f"`{f.default}`"
            rows.append(f"| `{f.name}` | {_type_name(hints[f.name])} | {default} | {text} |")
        return "\n".join(rows)


def _type_name(tp: Any) -> str:
    base, optional = _unwrap(tp)
    return getattr(base, "__name__", str(base)) + (" or none" if optional else "")


def _unwrap(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        real = [a for a in args if a is not type(None)]
        return real[0], len(real) != len(args)
    return tp, False


def _convert(raw: Any, tp: Any, field: dataclasses.Field, key: str, target: str) -> Any:
    base, optional = _unwrap(tp)
    choices = field.metadata.get("choices")
    where = f"Config key '{key}' of target '{target}'"
    if raw is None or (optional and isinstance(raw, str) and raw.strip().lower() in ("", "none")):
        if optional:
            return None
        raise InvalidInputError(f"{where} needs a value")
    try:
        if base is bool:
            if isinstance(raw, bool):
                value = raw
            elif str(raw).strip().lower() in _TRUE:
                value = True
            elif str(raw).strip().lower() in _FALSE:
                value = False
            else:
                raise ValueError
        elif base is int:
            if isinstance(raw, bool):
                raise ValueError
            value = int(str(raw).strip().replace("_", ""))
        elif base is float:
            value = float(str(raw).strip())
        elif base is str:
            value = str(raw)
        else:
            value = raw
    except ValueError:
        expected = {bool: "true or false", int: "an integer", float: "a number"}.get(
            base, f"a {getattr(base, '__name__', base)}"
        )
        raise InvalidInputError(f"{where} must be {expected}, got {raw!r}") from None
    if choices and value not in choices:
        raise InvalidInputError(
            f"{where} must be one of {', '.join(map(str, choices))}; got {raw!r}"
        )
    return value

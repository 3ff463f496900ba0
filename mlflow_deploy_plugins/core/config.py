"""The one typed-config engine: dataclass fields declared with ``setting()``, values parsed from
strings (``-C key=value``, environment variables, flags) or JSON, validated, and described for
``--help``, ``target_help()`` and the docs. Standard library only (the serving runtime uses it).

Both the serving runtime's ``ServingSettings`` and every target's ``-C`` config class are built
on it, so a value means the same thing wherever it is written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple

#: A field's own validation: returns what is wrong with a (converted, non-None) value, or None.
Check = Callable[[Any], "str | None"]

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
HIDDEN = "<hidden>"

_EXPECTED = {
    int: "an integer",
    float: "a number",
    bool: "a boolean (true/false, yes/no, on/off, 1/0)",
    str: "a string",
    dict: 'a JSON object (e.g. {"key": "value"})',
}
_SIZE = re.compile(r"^\s*(\d[\d_]*)\s*(k|ki|m|mi|g|gi)?b?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "k": 1000, "ki": 1024, "m": 1000**2, "mi": 1024**2, "g": 1000**3, "gi": 1024**3}


class ConfigError(ValueError):
    """A config value has the wrong type or an invalid value.

    Attributes:
        key: the ``-C`` key, environment variable, manifest key or flag at fault.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class Option(NamedTuple):
    """One field as users see it: in ``--help``, ``target_help()`` and the docs tables."""

    name: str
    type_name: str
    default: Any
    help: str
    choices: tuple | None
    secret: bool


def setting(
    default: Any = None,
    help: str = "",
    *,
    choices: tuple | None = None,
    secret: bool = False,
    check: Check | None = None,
    **field_kwargs: Any,
) -> Any:
    """A config field: its default, help text, allowed values, secrecy and own validation.

    Args:
        default: the value when nothing sets the field.
        help: one line for ``--help``, ``target_help()`` and the docs.
        choices: the allowed values, when they are a fixed set.
        secret: never printed (``repr``, ``to_dict``, error messages); a blank string does not
            clear it, so an unfilled secret template cannot silently turn a protection off.
        check: ``value -> problem or None`` for what a type cannot say (ranges, formats).
        field_kwargs: passed to ``dataclasses.field``.
    """
    if secret:
        field_kwargs.setdefault("repr", False)
    return dataclasses.field(
        default=default,
        metadata={"help": help, "choices": choices, "secret": secret, "check": check},
        **field_kwargs,
    )


# --- checks shared by several config classes ---------------------------------------------------


def at_least(low: float) -> Check:
    return lambda v: None if v >= low else f"must be >= {low}"


def positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


def between(low: float, high: float) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def check_of(cls: type, name: str) -> Check:
    """The rule of field ``name`` of ``cls`` (its choices and check), for a field of another
    config that must obey the same rule (a target's ``-C`` key that is a runtime setting)."""
    f = _field(cls, name)
    return lambda value: problem_with(f, value)


# --- reading the declarations --------------------------------------------------------------------


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations (they are strings under ``from __future__ import annotations``)."""
    return typing.get_type_hints(cls)


def split_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        base = [a for a in args if a is not type(None)]
        return base[0], len(base) != len(args)
    return tp, False


def type_name(tp: Any) -> str:
    base, optional = split_optional(tp)
    name = getattr(base, "__name__", str(base))
    return f"{name} | None" if optional else name


def describe(cls: type) -> list[Option]:
    """Every field of ``cls`` with a default, in declaration order."""
    hints = field_types(cls)
    return [
        Option(
            f.name,
            type_name(hints[f.name]),
            f.default,
            f.metadata.get("help", ""),
            f.metadata.get("choices"),
            bool(f.metadata.get("secret")),
        )
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING
    ]


def help_table(cls: type) -> str:
    """A plain-text table of every field: name, type, default, allowed values, help."""
    lines = []
    for opt in describe(cls):
        default = "(none)" if opt.default is None else opt.default
        allowed = f"; one of {', '.join(map(str, opt.choices))}" if opt.choices else ""
        lines.append(f"  {opt.name} ({opt.type_name}, default {default}{allowed})")
        lines.append(f"      {opt.help}")
    return "\n".join(lines)


def markdown_table(cls: type) -> str:
    """The same table in Markdown, for the docs (tests check the docs contain it verbatim)."""
    rows = ["| key | type | default | description |", "|---|---|---|---|"]
    for opt in describe(cls):
        text = opt.help
        if opt.choices:
            text += f" One of: {', '.join(f'`{c}`' for c in opt.choices)}."
        default = "" if opt.default is None else f"`{opt.default}`"
        rows.append(f"| `{opt.name}` | {opt.type_name.replace('|', 'or')} | {default} | {text} |")
    return "\n".join(rows)


# --- parsing and validating ----------------------------------------------------------------------


def parse_value(cls: type, name: str, raw: Any, where: str, key: str | None = None) -> Any:
    """Convert ``raw`` (a string or a JSON value) for field ``name`` of ``cls`` and validate it.

    Args:
        cls: the config dataclass.
        name: the field.
        raw: a string (``-C``, environment, flag) or an already typed value (JSON, Python).
        where: how the error message names the source, e.g. ``environment variable X``.
        key: what ``ConfigError.key`` reports; default ``name``.

    Raises:
        ConfigError: the value does not convert, is not one of the choices or fails the check;
            the message starts with ``where`` and says what was expected.
    """
    value = convert_value(cls, name, raw, where, key)
    check_value(cls, name, value, where, key, raw)
    return value


def convert_value(cls: type, name: str, raw: Any, where: str, key: str | None = None) -> Any:
    """The type conversion of :func:`parse_value` alone (for sources merged before checking)."""
    f = _field(cls, name)
    key = key or name
    secret = bool(f.metadata.get("secret"))
    shown = HIDDEN if secret else repr(raw)
    base, optional = split_optional(field_types(cls)[name])
    clears = (
        optional and not secret and isinstance(raw, str) and raw.strip().lower() in ("", "none")
    )
    if raw is None or clears:
        if optional:
            return None
        raise ConfigError(f"{where}: expected {_expected(base)}, got {shown}", key=key)
    try:
        return _from_string(name, raw, base) if isinstance(raw, str) else _native(raw, base)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: expected {_expected(base)}, got {shown}", key=key) from e


def check_value(
    cls: type, name: str, value: Any, where: str, key: str | None = None, raw: Any = None
) -> None:
    """The validation of :func:`parse_value` alone: choices, then the field's own check.

    Raises:
        ConfigError: ``"<where>=<raw>: <problem>"``.
    """
    f = _field(cls, name)
    problem = problem_with(f, value)
    if problem:
        shown = HIDDEN if f.metadata.get("secret") else repr(value if raw is None else raw)
        raise ConfigError(f"{where}={shown}: {problem}", key=key or name)


def problem_with(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with a converted ``value`` of field ``f`` (choices, then its check)."""
    if value is None:
        return None
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}"
    check = f.metadata.get("check")
    if check is None:
        return None
    try:
        return check(value)
    except TypeError:
        return "has the wrong type"


def validate(instance: Any, describe_field: Callable[[str], str] = lambda name: repr(name)) -> None:
    """Check every field of a constructed config (direct construction skips ``parse_value``).

    Raises:
        ConfigError: naming every field at fault, joined with ``; ``.
    """
    problems = []
    first_key = None
    for f in dataclasses.fields(instance):
        problem = problem_with(f, getattr(instance, f.name))
        if problem:
            problems.append(f"{describe_field(f.name)}: {problem}")
            first_key = first_key or f.name
    if problems:
        raise ConfigError("; ".join(problems), key=first_key)


def to_dict(instance: Any, include_secrets: bool = False) -> dict[str, Any]:
    """Field values by name; secrets shown as ``<hidden>`` unless asked for."""
    out = {}
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if f.metadata.get("secret") and value is not None and not include_secrets:
            value = HIDDEN
        out[f.name] = value
    return out


def _field(cls: type, name: str) -> dataclasses.Field:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(name)


def _expected(base: Any) -> str:
    return _EXPECTED.get(base, f"a {getattr(base, '__name__', base)}")


def _from_string(name: str, raw: str, base: Any) -> Any:
    text = raw.strip()
    if base is str:
        return raw
    if base is bool:
        low = text.lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
        raise ValueError(raw)
    if base is int:
        match = _SIZE.match(text) if name.endswith("_bytes") else None
        if match:
            unit = match.group(2).lower() if match.group(2) else None
            return int(match.group(1).replace("_", "")) * _UNITS[unit]
        return int(text)
    if base is float:
        return float(text)
    if base is dict:
        return _native(json.loads(text), dict)
    raise TypeError(f"no string form for {base!r}")


def _native(raw: Any, base: Any) -> Any:
    # JSON gives bools where ints are expected by mistake; bool is an int subclass, so refuse it.
    if base is bool and isinstance(raw, bool):
        return raw
    if base is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if base is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if base is str and isinstance(raw, str | os.PathLike):
        return os.fspath(raw)
    if base is dict and isinstance(raw, dict):
        return dict(raw)
    raise TypeError(type(raw).__name__)

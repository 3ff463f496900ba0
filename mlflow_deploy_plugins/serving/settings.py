"""Every tunable of the serving runtime, in one frozen dataclass with one environment prefix.

Precedence, lowest first: field defaults < the bundle manifest's ``settings`` dict < environment
variables ``MLFLOW_DEPLOY_<FIELD>`` < explicit overrides (CLI flags). Standard library only, so the
runtime starts fast and never imports mlflow.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

_logger = logging.getLogger(__name__)

#: Environment variables are named ``ENV_PREFIX + field name in upper case``.
ENV_PREFIX = "MLFLOW_DEPLOY_"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting has the wrong type or an invalid value.

    ``key`` is the environment variable, manifest key or override name at fault.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _setting(default: Any, help: str, **kwargs: Any) -> Any:
    # The help text lives in the field metadata so describe() can print it (docs, --help).
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass(frozen=True)
class ServingSettings:
    """Resolved settings of one serving process; build it with :meth:`resolve`."""

    host: str = _setting("127.0.0.1", "Interface to bind; 0.0.0.0 in containers.")
    port: int = _setting(8080, "TCP port (SageMaker requires 8080).")
    workers: int = _setting(
        1, "Worker processes sharing the port with SO_REUSEPORT; one per core scales best."
    )
    model_name: str | None = _setting(
        None, "Served model name (/v2/models/{name}); None uses the manifest's name."
    )
    max_batch_size: int = _setting(64, "Most rows run in one onnxruntime call.")
    max_batch_time_ms: float = _setting(
        0.0,
        "Longest wait to fill a batch, in ms; 0 is adaptive: flush once per event-loop "
        "iteration, so a lone request is answered at once.",
    )
    max_body_bytes: int = _setting(
        8 * MIB, "Largest request body accepted; larger gets 413 (suffixes KiB/MiB/GiB allowed)."
    )
    keepalive_timeout_s: float = _setting(
        75.0,
        "Idle keep-alive connections are closed after this many seconds (above the 60 s idle "
        "timeout of common load balancers, so they never reuse a connection we closed).",
    )
    request_timeout_s: float = _setting(
        30.0, "A request whose headers and body do not arrive within this many seconds is dropped."
    )
    payload_log_dir: str | None = _setting(
        None, "Directory for sampled request/response JSON Lines logs; None turns logging off."
    )
    payload_log_sample_rate: float = _setting(
        1.0, "Fraction of requests logged, between 0 and 1 (sampled per request)."
    )
    payload_log_max_bytes: int = _setting(
        64 * MIB, "A payload log file is rotated once it reaches this size."
    )
    payload_log_max_age_s: float = _setting(
        3600.0, "A payload log file is rotated once it has been open this many seconds."
    )
    payload_log_gzip: bool = _setting(False, "Gzip payload log files when they are rotated.")
    payload_log_queue_size: int = _setting(
        10_000, "Records waiting for the payload log writer; beyond this they are dropped."
    )
    auth_token: str | None = _setting(
        None,
        "Bearer token required on every route but health checks; None disables auth.",
        repr=False,  # never print the secret
    )
    auth_token_file: str | None = _setting(
        None,
        "File holding the bearer token (read once at start, surrounding whitespace stripped), "
        "e.g. a mounted secret; use it instead of auth_token.",
    )
    reuse_port: bool = _setting(
        False,
        "Set SO_REUSEPORT with one worker too, so a second server (the new container of a "
        "zero-downtime update) can bind the same port before this one stops.",
    )
    reuse_port_takeover: int | None = _setting(
        None,
        "Set by a zero-downtime update: how many sockets (workers) the previous server holds "
        "on the shared port. This server then steers every new connection to its own workers "
        "(Linux, classic BPF on the SO_REUSEPORT group), so the previous one only finishes the "
        "connections it has and never resets one waiting in its accept queue.",
    )
    access_log: bool = _setting(True, "Write one structured access log line per request.")
    intra_op_threads: int = _setting(
        1, "onnxruntime intra-op threads per worker; 1 is fastest with one worker per core."
    )
    log_level: str = _setting("INFO", "Python log level: " + ", ".join(LOG_LEVELS) + ".")

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_level", str(self.log_level).upper())
        for f in fields(self):
            problem = _check_range(f.name, getattr(self, f.name))
            if problem:
                raise SettingsError(f"setting {f.name!r}: {problem}", key=f.name)

    @classmethod
    def resolve(
        cls,
        manifest_settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = os.environ,
        overrides: Mapping[str, Any] | None = None,
    ) -> ServingSettings:
        """Merge defaults < manifest settings < environment < overrides.

        Args:
            manifest_settings: the bundle manifest's ``settings`` dict (JSON values). Unknown keys
                are logged and ignored, so a newer bundle still starts on an older runtime.
            env: environment to read ``MLFLOW_DEPLOY_<FIELD>`` from (strings); ``None`` skips it.
                Other variables are ignored. An empty value sets an optional field to ``None``.
            overrides: explicit values, e.g. CLI flags; a ``None`` value means "not given".
                Unknown keys are an error.

        Returns:
            The validated settings.

        Raises:
            SettingsError: a value has the wrong type or is out of range; the message names the
                variable or key, the value and what was expected.
        """
        hints = _field_types()
        values: dict[str, Any] = {}
        origin: dict[str, tuple[str, str]] = {}  # field -> (description, key) of its source

        def put(name: str, raw: Any, where: str, key: str) -> None:
            values[name] = _convert(raw, hints[name], name, where, key)
            origin[name] = (where, key)

        for key, raw in (manifest_settings or {}).items():
            if key not in hints:
                _logger.warning("Ignoring unknown manifest setting %r", key)
                continue
            put(key, raw, f"manifest settings key {key!r}", key)

        if env is not None:
            for name in hints:
                var = ENV_PREFIX + name.upper()
                if var in env:
                    put(name, env[var], f"environment variable {var}", var)

        for key, raw in (overrides or {}).items():
            if key not in hints:
                raise SettingsError(
                    f"unknown setting {key!r} in overrides; known settings: {', '.join(hints)}",
                    key=key,
                )
            if raw is not None:
                put(key, raw, f"override {key!r}", key)

        for name, value in values.items():
            problem = _check_range(name, value)
            if problem:
                where, key = origin[name]
                shown = "<hidden>" if name == "auth_token" else repr(value)
                raise SettingsError(f"{where}={shown}: {problem}", key=key)
        if values.get("auth_token_file") is not None:
            where, key = origin["auth_token_file"]
            if values.get("auth_token") is not None:
                raise SettingsError(
                    f"{where}: set auth_token or auth_token_file, not both", key=key
                )
            values["auth_token"] = _read_token_file(values["auth_token_file"], where, key)
        return cls(**values)

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """``(name, type, default, help)`` for every field, in declaration order (docs, --help)."""
        hints = _field_types()
        return [
            (f.name, _type_name(hints[f.name]), f.default, f.metadata["help"])
            for f in fields(cls)
            if f.default is not MISSING
        ]

    @staticmethod
    def env_var(name: str) -> str:
        """The environment variable that sets field ``name``."""
        return ENV_PREFIX + name.upper()


@functools.cache
def _field_types() -> dict[str, Any]:
    # Annotations are strings (from __future__ import annotations): resolve them once.
    return typing.get_type_hints(ServingSettings)


def _split_optional(tp: Any) -> tuple[type, bool]:
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        base = [a for a in args if a is not type(None)]
        return base[0], len(base) != len(args)
    return tp, False


def _type_name(tp: Any) -> str:
    base, optional = _split_optional(tp)
    return f"{base.__name__} | None" if optional else base.__name__


_EXPECTED = {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_SIZE = re.compile(r"^\s*(\d[\d_]*)\s*(k|ki|m|mi|g|gi)?b?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "k": 1000, "ki": 1024, "m": 1000**2, "mi": 1024**2, "g": 1000**3, "gi": 1024**3}


def _convert(raw: Any, tp: Any, name: str, where: str, key: str) -> Any:
    base, optional = _split_optional(tp)
    shown = "<hidden>" if name == "auth_token" else repr(raw)
    # "" or "none" clears an optional field, except the token: a blank secret (an unfilled
    # template) must not silently turn authentication off.
    clears = optional and name != "auth_token" and isinstance(raw, str)
    if raw is None or (clears and raw.strip().lower() in ("", "none")):
        if optional:
            return None
        raise SettingsError(f"{where}: expected {_EXPECTED[base]}, got {shown}", key=key)
    try:
        if isinstance(raw, str):
            return _parse_string(name, raw, base)
        return _check_native(raw, base)
    except (TypeError, ValueError) as e:
        allowed = " (true/false, yes/no, on/off, 1/0)" if base is bool else ""
        raise SettingsError(
            f"{where}: expected {_EXPECTED[base]}{allowed}, got {shown}", key=key
        ) from e


def _parse_string(name: str, raw: str, base: type) -> Any:
    text = raw.strip()
    if base is str:
        return raw
    if base is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(raw)
    if base is int:
        match = _SIZE.match(text) if name.endswith("_bytes") else None
        if match:
            unit = match.group(2).lower() if match.group(2) else None
            return int(match.group(1)) * _UNITS[unit]
        return int(text)
    return float(text)


def _check_native(raw: Any, base: type) -> Any:
    # JSON gives bools where ints are expected by mistake; bool is an int subclass, so reject it.
    if base is bool and isinstance(raw, bool):
        return raw
    if base is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if base is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if base is str and isinstance(raw, str | os.PathLike):
        return os.fspath(raw)
    raise TypeError(type(raw).__name__)


def _at_least(low: float) -> typing.Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}"


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be > 0"


_RANGES: dict[str, typing.Callable[[Any], str | None]] = {
    "port": lambda v: None if 0 <= v <= 65535 else "must be between 0 and 65535",
    "workers": _at_least(1),
    "max_batch_size": _at_least(1),
    "max_batch_time_ms": lambda v: None if v >= 0 and math.isfinite(v) else "must be >= 0",
    "max_body_bytes": _at_least(1),
    "keepalive_timeout_s": _positive,
    "request_timeout_s": _positive,
    "payload_log_sample_rate": lambda v: None if 0 <= v <= 1 else "must be between 0 and 1",
    "payload_log_max_bytes": _at_least(1),
    "payload_log_max_age_s": _positive,
    "payload_log_queue_size": _at_least(1),
    "intra_op_threads": _at_least(1),
    "reuse_port_takeover": _at_least(1),
    "log_level": lambda v: (
        None if str(v).upper() in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"
    ),
    "auth_token": lambda v: (
        None
        if v is None or v.strip()
        else "must not be blank (unset it to turn authentication off)"
    ),
}


def _read_token_file(path: str, where: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{where}={path!r}: cannot read the token file: {e}", key=key) from e
    if not token:
        raise SettingsError(f"{where}={path!r}: the token file is empty", key=key)
    return token


def _check_range(name: str, value: Any) -> str | None:
    check = _RANGES.get(name)
    if check is None or (value is None and name != "log_level"):
        return None
    try:
        return check(value)
    except TypeError:
        return "has the wrong type"

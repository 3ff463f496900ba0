"""Every tunable of the serving runtime, in one frozen dataclass with one environment prefix.

Precedence, lowest first: field defaults < the bundle manifest's ``settings`` dict < environment
variables ``MLFLOW_DEPLOY_<FIELD>`` < explicit overrides (CLI flags). Standard library only, so the
runtime starts fast and never imports mlflow.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow_deploy_plugins.core import config
from mlflow_deploy_plugins.core.config import ConfigError, at_least, between, positive, setting

_logger = logging.getLogger(__name__)

#: Environment variables are named ``ENV_PREFIX + field name in upper case``.
ENV_PREFIX = "MLFLOW_DEPLOY_"
#: The bundle directory when the command line names none (images set it).
BUNDLE_ENV = ENV_PREFIX + "BUNDLE_DIR"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

MIB = 1024 * 1024

#: The runtime's name for a config error (``key`` is the variable, manifest key or flag at fault).
SettingsError = ConfigError


def _finite_non_negative(v: float) -> str | None:
    return None if v >= 0 and math.isfinite(v) else "must be >= 0"


def _not_blank(v: str) -> str | None:
    return None if v.strip() else "must not be blank (unset it to turn authentication off)"


def _log_level(v: str) -> str | None:
    return None if str(v).upper() in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


@dataclass(frozen=True)
class ServingSettings:
    """Resolved settings of one serving process; build it with :meth:`resolve`."""

    host: str = setting("127.0.0.1", "Interface to bind; 0.0.0.0 in containers.")
    port: int = setting(8080, "TCP port (SageMaker requires 8080).", check=between(0, 65535))
    workers: int = setting(
        1,
        "Worker processes sharing the port with SO_REUSEPORT; one per core scales best.",
        check=at_least(1),
    )
    grpc_port: int | None = setting(
        None,
        "Also serve the Open Inference Protocol over gRPC on this port (needs the grpc extra: "
        "grpcio); off by default.",
        check=between(1, 65535),
    )
    model_name: str | None = setting(
        None, "Served model name (/v2/models/{name}); None uses the manifest's name."
    )
    max_batch_size: int = setting(64, "Most rows run in one onnxruntime call.", check=at_least(1))
    max_batch_time_ms: float = setting(
        0.0,
        "Longest wait to fill a batch, in ms; 0 is adaptive: flush once per event-loop "
        "iteration, so a lone request is answered at once.",
        check=_finite_non_negative,
    )
    max_body_bytes: int = setting(
        8 * MIB,
        "Largest request body accepted; larger gets 413 (suffixes KiB/MiB/GiB allowed).",
        check=at_least(1),
    )
    keepalive_timeout_s: float = setting(
        75.0,
        "Idle keep-alive connections are closed after this many seconds (above the 60 s idle "
        "timeout of common load balancers, so they never reuse a connection we closed).",
        check=positive,
    )
    request_timeout_s: float = setting(
        30.0,
        "A request whose headers and body do not arrive within this many seconds is dropped.",
        check=positive,
    )
    first_request_timeout_s: float = setting(
        10.0,
        "A new connection that sends no byte within this many seconds is closed (the keep-alive "
        "timeout applies only after a first request).",
        check=positive,
    )
    max_connections: int = setting(
        2048,
        "Open connections per worker; beyond it the oldest idle connection is closed to make "
        "room, or, when all are busy, the new one is answered 503 (Retry-After) and closed.",
        check=at_least(1),
    )
    max_inflight_body_bytes: int = setting(
        128 * MIB,
        "Request body bytes received and not yet handed on, across all connections of a worker; "
        "a request whose declared body does not fit in the room left gets 503 (Retry-After) "
        "before its body is read, bytes count as they arrive (a client that declares a large "
        "body and stalls holds only what it sent; suffixes KiB/MiB/GiB).",
        check=at_least(1),
    )
    max_header_count: int = setting(
        100, "Most header lines in one request; more gets 431.", check=at_least(1)
    )
    offload_rows: int = setting(
        4096,
        "Requests with at least this many rows run inference (and encoding) on a worker thread, "
        "so the event loop keeps answering others (health probes); smaller ones are batched on "
        "the loop.",
        check=at_least(1),
    )
    offload_body_bytes: int = setting(
        1 * MIB,
        "Inference requests with a body of at least this size are decoded, run and encoded on a "
        "worker thread (suffixes KiB/MiB/GiB allowed).",
        check=at_least(1),
    )
    offload_threads: int = setting(
        1, "Worker threads per worker process for offloaded (large) requests.", check=at_least(1)
    )
    payload_log_dir: str | None = setting(
        None, "Directory for sampled request/response JSON Lines logs; None turns logging off."
    )
    payload_log_sample_rate: float = setting(
        1.0,
        "Fraction of requests logged, between 0 and 1 (sampled per request).",
        check=between(0, 1),
    )
    payload_log_max_bytes: int | None = setting(
        1024 * MIB,
        "Size cap of the payload log directory: the oldest finished files are removed to stay "
        "under it (counted in payload_log_files_removed_total); none: no cap.",
        check=at_least(1),
    )
    payload_log_file_max_bytes: int = setting(
        64 * MIB,
        "A payload log file is rotated once it reaches this size (at most half the cap).",
        check=at_least(1),
    )
    payload_log_max_record_bytes: int = setting(
        4 * MIB,
        "A payload log record (one request, as JSON) larger than this is dropped and counted "
        "(reason too_large), so one huge request cannot fill the disk.",
        check=at_least(1),
    )
    payload_log_max_age_s: float = setting(
        3600.0,
        "A payload log file is rotated once it has been open this many seconds.",
        check=positive,
    )
    payload_log_gzip: bool = setting(False, "Gzip payload log files when they are rotated.")
    payload_log_unwritable: str = setting(
        "fail",
        "When the payload log directory cannot be written at start: fail (refuse to start) or "
        "unready (start, answer readiness and inference 503 naming the directory, check it again "
        "every few seconds and become ready once it is writable, e.g. a volume mounted late).",
        choices=("fail", "unready"),
    )
    payload_log_queue_size: int = setting(
        10_000,
        "Records waiting for the payload log writer; beyond this they are dropped.",
        check=at_least(1),
    )
    auth_token: str | None = setting(
        None,
        "Bearer token required on every route but health checks; None disables auth.",
        secret=True,  # never printed, and a blank value does not clear it
        check=_not_blank,
    )
    auth_token_file: str | None = setting(
        None,
        "File holding the bearer token (read once at start, surrounding whitespace stripped), "
        "e.g. a mounted secret; use it instead of auth_token.",
    )
    reuse_port: bool = setting(
        False,
        "Set SO_REUSEPORT with one worker too, so a second server (the new container of a "
        "zero-downtime update) can bind the same port before this one stops.",
    )
    reuse_port_takeover: int | None = setting(
        None,
        "Set by a zero-downtime update: how many sockets (workers) the previous server holds "
        "on the shared port. This server then steers every new connection to its own workers "
        "(Linux, classic BPF on the SO_REUSEPORT group), so the previous one only finishes the "
        "connections it has and never resets one waiting in its accept queue.",
        check=at_least(1),
    )
    access_log: bool = setting(
        False,
        "Write one structured access log line per request; off, only requests answered with "
        "an error (4xx, 5xx) are logged (a line for every request costs about a fifth of the "
        "throughput of 1-row requests at c=32: docs/benchmarks-serving.md).",
    )
    intra_op_threads: int = setting(
        1,
        "onnxruntime intra-op threads per worker; 1 is fastest with one worker per core.",
        check=at_least(1),
    )
    log_level: str = setting(
        "INFO", "Python log level: " + ", ".join(LOG_LEVELS) + ".", check=_log_level
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_level", str(self.log_level).upper())
        config.validate(self, lambda name: f"setting {name!r}")

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
        names = config.field_types(cls)
        values: dict[str, Any] = {}
        origin: dict[str, tuple[str, str]] = {}  # field -> (description, key) of its source

        def put(name: str, raw: Any, where: str, key: str) -> None:
            values[name] = config.convert_value(cls, name, raw, where, key)
            origin[name] = (where, key)

        for key, raw in (manifest_settings or {}).items():
            if key not in names:
                _logger.warning("Ignoring unknown manifest setting %r", key)
                continue
            put(key, raw, f"manifest settings key {key!r}", key)

        if env is not None:
            for name in names:
                var = cls.env_var(name)
                if var in env:
                    put(name, env[var], f"environment variable {var}", var)

        for key, raw in (overrides or {}).items():
            if key not in names:
                raise SettingsError(
                    f"unknown setting {key!r} in overrides; known settings: {', '.join(names)}",
                    key=key,
                )
            if raw is not None:
                put(key, raw, f"override {key!r}", key)

        # Ranges are checked once the sources are merged: a later source may fix an earlier one.
        for name, value in values.items():
            config.check_value(cls, name, value, *origin[name])
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
        return [(o.name, o.type_name, o.default, o.help) for o in config.describe(cls)]

    @classmethod
    def markdown_table(cls) -> str:
        """The settings table of docs/serving.md: flag, environment variable, type, default, help.

        Secrets have no flag (a command line is visible in ``ps``): environment only.
        """
        rows = [
            "| flag | environment | type | default | meaning |",
            "|---|---|---|---|---|",
        ]
        for o in config.describe(cls):
            flag = "(env only)" if o.secret else f"`--{o.name.replace('_', '-')}`"
            type_name = o.type_name.replace(" | ", " or ")
            rows.append(
                f"| {flag} | `{cls.env_var(o.name)}` | {type_name} | `{o.default}` | {o.help} |"
            )
        return "\n".join(rows)

    @staticmethod
    def env_var(name: str) -> str:
        """The environment variable that sets field ``name``."""
        return ENV_PREFIX + name.upper()


def _read_token_file(path: str, where: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError(f"{where}={path!r}: cannot read the token file: {e}", key=key) from e
    if not token:
        raise SettingsError(f"{where}={path!r}: the token file is empty", key=key)
    return token

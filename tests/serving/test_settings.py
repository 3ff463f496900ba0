"""ServingSettings: defaults < manifest < environment < overrides, conversions and error messages."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from mlflow_deploy_plugins.serving.settings import (
    ENV_PREFIX,
    ServingSettings,
    SettingsError,
)


def test_defaults():
    s = ServingSettings.resolve(None, env={}, overrides=None)
    assert s == ServingSettings()
    assert (s.host, s.port, s.workers, s.model_name) == ("127.0.0.1", 8080, 1, None)
    assert (s.max_batch_size, s.max_batch_time_ms, s.max_body_bytes) == (64, 0.0, 8 * 1024 * 1024)
    assert s.payload_log_dir is None and s.payload_log_sample_rate == 1.0
    assert s.payload_log_max_bytes == 1024 * 1024 * 1024 and s.payload_log_gzip is False
    assert s.payload_log_file_max_bytes == 64 * 1024 * 1024
    assert s.payload_log_queue_size == 10_000 and s.auth_token is None
    assert s.access_log is False and s.intra_op_threads == 1 and s.log_level == "INFO"


def test_precedence_defaults_manifest_env_overrides():
    manifest = {"max_batch_size": 16, "port": 9000, "workers": 2, "host": "0.0.0.0"}
    env = {"MLFLOW_DEPLOY_PORT": "9001", "MLFLOW_DEPLOY_WORKERS": "3"}
    overrides = {"workers": 4, "host": None}  # None: flag not given
    s = ServingSettings.resolve(manifest, env=env, overrides=overrides)
    assert s.max_batch_size == 16  # manifest over default
    assert s.port == 9001  # env over manifest
    assert s.workers == 4  # override over env
    assert s.host == "0.0.0.0"  # a None override leaves lower layers alone
    assert s.max_body_bytes == 8 * 1024 * 1024  # default


def test_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("MLFLOW_DEPLOY_MAX_BATCH_SIZE", "7")
    assert ServingSettings.resolve().max_batch_size == 7
    assert ServingSettings.resolve(env=None).max_batch_size == 64


def test_env_var_names_use_one_prefix():
    assert ServingSettings.env_var("payload_log_dir") == "MLFLOW_DEPLOY_PAYLOAD_LOG_DIR"
    assert ENV_PREFIX == "MLFLOW_DEPLOY_"
    # Other variables with the prefix belong to other parts of the package: ignored.
    assert ServingSettings.resolve(env={"MLFLOW_DEPLOY_SOMETHING_ELSE": "x"}) == ServingSettings()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("Yes", True), ("ON", True)]
    + [("0", False), ("false", False), ("no", False), (" off ", False)],
)
def test_bool_from_env(text, expected):
    assert ServingSettings.resolve(env={"MLFLOW_DEPLOY_ACCESS_LOG": text}).access_log is expected


def test_string_conversions():
    env = {
        "MLFLOW_DEPLOY_MAX_BODY_BYTES": "16MiB",
        "MLFLOW_DEPLOY_PAYLOAD_LOG_MAX_BYTES": "1_000_000",
        "MLFLOW_DEPLOY_MAX_BATCH_TIME_MS": "0.5",
        "MLFLOW_DEPLOY_PAYLOAD_LOG_SAMPLE_RATE": "0.1",
        "MLFLOW_DEPLOY_PAYLOAD_LOG_DIR": "/var/log/payloads",
        "MLFLOW_DEPLOY_LOG_LEVEL": "debug",
        "MLFLOW_DEPLOY_MODEL_NAME": "",  # empty: optional field back to None
    }
    s = ServingSettings.resolve({"model_name": "from-manifest"}, env=env)
    assert s.max_body_bytes == 16 * 1024 * 1024
    assert s.payload_log_max_bytes == 1_000_000
    assert s.max_batch_time_ms == 0.5 and s.payload_log_sample_rate == 0.1
    assert s.payload_log_dir == "/var/log/payloads"
    assert s.log_level == "DEBUG"
    assert s.model_name is None


def test_manifest_json_values_and_null():
    s = ServingSettings.resolve(
        {"payload_log_gzip": True, "payload_log_max_age_s": 60, "payload_log_dir": None}, env={}
    )
    assert s.payload_log_gzip is True
    assert s.payload_log_max_age_s == 60.0 and isinstance(s.payload_log_max_age_s, float)


@pytest.mark.parametrize(
    ("manifest", "env", "overrides", "key", "fragments"),
    [
        (
            None,
            {"MLFLOW_DEPLOY_PORT": "eighty"},
            None,
            "MLFLOW_DEPLOY_PORT",
            ["environment variable MLFLOW_DEPLOY_PORT", "expected an integer", "'eighty'"],
        ),
        (
            None,
            {"MLFLOW_DEPLOY_ACCESS_LOG": "maybe"},
            None,
            "MLFLOW_DEPLOY_ACCESS_LOG",
            ["MLFLOW_DEPLOY_ACCESS_LOG", "expected a boolean", "true/false", "'maybe'"],
        ),
        (
            {"max_batch_size": "many"},
            None,
            None,
            "max_batch_size",
            ["manifest settings key 'max_batch_size'", "expected an integer"],
        ),
        (
            {"max_batch_size": True},  # JSON true is not an integer
            None,
            None,
            "max_batch_size",
            ["manifest settings key 'max_batch_size'", "expected an integer", "True"],
        ),
        (
            {"port": None},
            None,
            None,
            "port",
            ["manifest settings key 'port'", "expected an integer", "None"],
        ),
        (
            None,
            {"MLFLOW_DEPLOY_PAYLOAD_LOG_SAMPLE_RATE": "1.5"},
            None,
            "MLFLOW_DEPLOY_PAYLOAD_LOG_SAMPLE_RATE",
            ["MLFLOW_DEPLOY_PAYLOAD_LOG_SAMPLE_RATE=1.5", "between 0 and 1"],
        ),
        (
            None,
            {"MLFLOW_DEPLOY_PAYLOAD_LOG_SAMPLE_RATE": "nan"},
            None,
            "MLFLOW_DEPLOY_PAYLOAD_LOG_SAMPLE_RATE",
            ["between 0 and 1"],
        ),
        (
            {"port": 70000},
            None,
            None,
            "port",
            ["manifest settings key 'port'=70000", "between 0 and 65535"],
        ),
        (
            None,
            None,
            {"workers": 0},
            "workers",
            ["override 'workers'=0", "must be >= 1"],
        ),
        (
            None,
            None,
            {"log_level": "LOUD"},
            "log_level",
            ["override 'log_level'", "DEBUG, INFO, WARNING, ERROR, CRITICAL"],
        ),
        (
            None,
            None,
            {"max_batchsize": 8},
            "max_batchsize",
            ["unknown setting 'max_batchsize'", "max_batch_size"],
        ),
    ],
)
def test_errors_name_the_source_and_expectation(manifest, env, overrides, key, fragments):
    with pytest.raises(SettingsError) as info:
        ServingSettings.resolve(manifest, env=env, overrides=overrides)
    assert isinstance(info.value, ValueError)
    assert info.value.key == key
    for fragment in fragments:
        assert fragment in str(info.value)


def test_range_is_checked_on_the_winning_value_only():
    # A bad manifest value that the environment replaces does not fail the start.
    s = ServingSettings.resolve({"port": 70000}, env={"MLFLOW_DEPLOY_PORT": "8081"})
    assert s.port == 8081


def test_unknown_manifest_key_is_logged_and_ignored(caplog):
    with caplog.at_level(logging.WARNING):
        s = ServingSettings.resolve({"from_the_future": 1, "max_batch_size": 8}, env={})
    assert s.max_batch_size == 8
    assert "from_the_future" in caplog.text


def test_auth_token_is_never_printed():
    s = ServingSettings.resolve(env={"MLFLOW_DEPLOY_AUTH_TOKEN": "s3cret"})
    assert s.auth_token == "s3cret"
    assert "s3cret" not in repr(s)
    with pytest.raises(SettingsError) as info:
        ServingSettings.resolve({"auth_token": 12345}, env={})
    assert "12345" not in str(info.value) and "auth_token" in str(info.value)
    with pytest.raises(SettingsError, match="must not be blank"):
        ServingSettings.resolve(overrides={"auth_token": "   "}, env={})
    # An unfilled template must not silently turn authentication off.
    with pytest.raises(SettingsError, match="MLFLOW_DEPLOY_AUTH_TOKEN"):
        ServingSettings.resolve(env={"MLFLOW_DEPLOY_AUTH_TOKEN": ""})


def test_frozen_and_validated_on_direct_construction():
    s = ServingSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]
    with pytest.raises(SettingsError, match="'max_batch_size'"):
        ServingSettings(max_batch_size=0)
    assert ServingSettings(log_level="warning").log_level == "WARNING"
    assert dataclasses.replace(s, port=9).port == 9


def test_describe_covers_every_field():
    rows = ServingSettings.describe()
    names = [f.name for f in dataclasses.fields(ServingSettings)]
    assert [r[0] for r in rows] == names
    by_name = {name: (tp, default, help) for name, tp, default, help in rows}
    assert by_name["port"][:2] == ("int", 8080)
    assert by_name["payload_log_dir"][:2] == ("str | None", None)
    assert by_name["payload_log_gzip"][:2] == ("bool", False)
    assert by_name["max_batch_time_ms"][:2] == ("float", 0.0)
    for name, (_tp, default, help) in by_name.items():
        assert help.strip(), name
        assert default == getattr(ServingSettings(), name)


def test_docs_show_the_generated_settings_table():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    assert ServingSettings.markdown_table() in docs, (
        "docs/serving.md must contain ServingSettings.markdown_table() verbatim"
    )


def test_payload_log_short_flags():
    from mlflow_deploy_plugins.serving.__main__ import build_parser, overrides_from

    ns = build_parser().parse_args(["b", "--payload-log", "/tmp/x", "--payload-log-sample", "0.1"])
    assert overrides_from(ns) == {"payload_log_dir": "/tmp/x", "payload_log_sample_rate": "0.1"}

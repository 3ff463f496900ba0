"""The per-target example scripts (examples/targets/*.sh) stay in step with the targets: valid
bash, and every `-C key=` they pass is a key of the target named by the same command's `-t`
(a renamed or removed key fails here, not in a user's shell)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mlflow_deploy_plugins.core import config

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "examples" / "targets").glob("*.sh"))


def config_class(target: str):
    name = target.split(":", 1)[0]
    if name == "onnx-docker":
        from mlflow_deploy_plugins.targets.onnx_docker import OnnxDockerConfig as found
    elif name == "onnx-sagemaker":
        from mlflow_deploy_plugins.targets.onnx_sagemaker import OnnxSageMakerConfig as found
    elif name == "mlserver":
        from mlflow_deploy_plugins.targets.mlserver import MlserverConfig as found
    else:
        raise AssertionError(f"unknown target {target!r}")
    return found


def commands(script: Path) -> list[str]:
    """The script's lines with backslash continuations joined."""
    return script.read_text().replace("\\\n", " ").splitlines()


def test_there_is_a_script_per_target():
    names = {s.stem for s in SCRIPTS}
    assert {"onnx-docker", "onnx-docker-swarm", "mlserver", "onnx-sagemaker"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.name)
def test_a_target_script_is_valid_bash_with_known_keys(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    checked = 0
    for line in commands(script):
        target = re.search(r"mlflow deployments \S+ .*?-t (\S+)", line)
        if not target:
            continue
        known = {o.name for o in config.describe(config_class(target.group(1)))}
        for key in re.findall(r"-C (\w+)=", line):
            assert key in known, f"{script.name}: -C {key} is no key of {target.group(1)}"
            checked += 1
    assert checked or "help" in script.name

"""Serving images: platform tags, the pinned lock, wheels on the host, the Dockerfile, and a real
build on the local base image (lean, hardened, labelled, reused when unchanged)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile

import pytest
from docker_support import TEST_REPOSITORY
from helpers import mixed_data, mixed_pipeline, register_sklearn, tracking_store
from mlflow.exceptions import MlflowException

from mlflow_deploy_plugins.targets import _deployments, _docker
from mlflow_deploy_plugins.targets._images import builder, package, probe, recipes, wheels

HOST_311 = probe.ImagePlatform("3.11", probe.manylinux_tags((2, 36), "x86_64"))


def test_manylinux_tags_cover_every_older_glibc():
    tags = probe.manylinux_tags((2, 28), "aarch64")
    assert tags[0] == "manylinux_2_28_aarch64" and tags[-1] == "manylinux1_aarch64"
    assert "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert "manylinux_2_5_aarch64" in tags and "manylinux_2_29_aarch64" not in tags
    assert probe.parse_platform("manylinux_2_31_x86_64")[:2] == (
        "manylinux_2_31_x86_64",
        "manylinux_2_30_x86_64",
    )
    assert probe.parse_platform("musllinux_1_2_x86_64") == ("musllinux_1_2_x86_64",)
    assert HOST_311.machine == "x86_64"
    assert probe.ImagePlatform("3.11", ("manylinux2014_aarch64",)).machine == "aarch64"


def test_the_lock_pins_the_serve_extra_to_the_host_versions():
    lock = wheels.runtime_lock(HOST_311, recipes.ONNX_SERVING.runtime_extra)
    pins = dict(line.split("==") for line in lock)
    for name in ("onnxruntime", "numpy", "orjson", "httptools", "uvloop"):
        assert pins[name] == importlib.metadata.version(name)
    for heavy in ("mlflow", "pandas", "scikit-learn", "skl2onnx", "onnx", "sympy"):
        assert heavy not in pins
    assert lock == sorted(lock)


def test_the_dockerfile_has_a_build_stage_and_a_lean_hardened_final_stage():
    labels = {"org.opencontainers.image.title": 'we"ird', _deployments.LABEL_SHA256: "ab" * 32}
    text = recipes.ONNX_SERVING.dockerfile("python:3.11-slim", "pkg-0.1-py3-none-any.whl", labels)
    assert text.count("\nFROM ") == 2 and "\nFROM python:3.11-slim AS build\n" in text
    build, final = text.split("\nFROM python:3.11-slim\n")
    assert "--no-index" in build and "--no-deps" in build and "uninstall -y pip setuptools" in build
    assert "-name tests" in build and "unchecked-hash" in build
    assert "pip" not in final.replace("/bin/pip*", "")
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert "USER 10001:10001" in final and "HEALTHCHECK" in final and "/v2/health/ready" in final
    assert '"we\\"ird"' in final  # label values are quoted and escaped
    assert 'ENTRYPOINT ["python", "-m", "mlflow_deploy_plugins.serving"]' in final


def test_the_assembled_wheel_installs_with_its_entry_points(tmp_path):
    wheel = package.assemble_wheel(str(tmp_path))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "mlflow_deploy_plugins/serving/server.py" in names
        assert not any("__pycache__" in n for n in names)
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "onnx-docker" in zf.read(info).decode()
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target"]
        + [str(target), wheel],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (target / "mlflow_deploy_plugins" / "serving" / "__main__.py").is_file()
    os.makedirs(tmp_path / "again")
    with open(wheel, "rb") as f, open(package.assemble_wheel(str(tmp_path / "again")), "rb") as g:
        assert f.read() == g.read()  # same files, same bytes: Docker's layer cache holds


def test_the_package_wheel_is_built_once_per_content(tmp_path):
    first = package.package_wheel(str(tmp_path), lambda line: None)
    assert first.endswith("-py3-none-any.whl") and os.path.isfile(first)
    assert package.package_wheel(str(tmp_path), lambda line: None) == first


def test_wheels_come_from_the_cache_keyed_on_the_lock(tmp_path, monkeypatch):
    lock = ["numpy==1.0"]
    calls = []

    def fake_pip(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("--dest") + 1]
        open(os.path.join(dest, "numpy-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"), "w").close()
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheels.subprocess, "run", fake_pip)
    lines = []
    first = wheels.download_wheels(lock, HOST_311, str(tmp_path), lines.append)
    again = wheels.download_wheels(lock, HOST_311, str(tmp_path), lines.append)
    assert first == again and len(calls) == 1
    cmd = calls[0]
    assert cmd[cmd.index("--python-version") + 1] == "3.11" and "--only-binary=:all:" in cmd
    assert "manylinux_2_17_x86_64" in cmd and "manylinux2014_x86_64" in cmd
    assert "cached" in lines[-1]
    other = wheels.download_wheels(["numpy==2.0"], HOST_311, str(tmp_path), lines.append)
    assert other != first and len(calls) == 2


def test_a_failed_download_shows_pip_output(tmp_path, monkeypatch):
    def failing(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution for x")

    monkeypatch.setattr(wheels.subprocess, "run", failing)
    with pytest.raises(MlflowException, match="No matching distribution"):
        wheels.download_wheels(["x==1"], HOST_311, str(tmp_path), lambda line: None)
    assert not [n for n in os.listdir(tmp_path / "wheels") if not n.startswith(".")]


# --- against the engine --------------------------------------------------------------------


@pytest.mark.docker
def test_the_platform_of_the_base_image_is_probed(docker_client, base_image):
    platform = probe.probe_platform(docker_client, docker_client.images.get(base_image))
    assert platform.python_version == "3.11"
    assert platform.platform_tags[0].startswith("manylinux_2_")
    given = probe.probe_platform(
        docker_client, object(), python_version="3.12", platform="manylinux_2_28_aarch64"
    )
    assert given.python_version == "3.12" and given.machine == "aarch64"


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    from sklearn.ensemble import GradientBoostingClassifier

    path = tmp_path_factory.mktemp("images")
    with tracking_store(path):
        x, y = mixed_data()
        pipeline = mixed_pipeline(GradientBoostingClassifier(n_estimators=20, random_state=0))
        register_sklearn(pipeline.fit(x, y), "img-model", x.head(100))
        yield lambda sub: _deployments.resolve_model("models:/img-model/1", str(path / sub))


@pytest.fixture(scope="module")
def built(docker_client, base_image, resolved):
    lines: list[str] = []
    package_hash = package.package_hash()
    dangling_before = {i.id for i in docker_client.images.list(filters={"dangling": True})}
    image = builder.ensure_image(
        docker_client,
        resolved("bundle-1"),
        recipe=recipes.ONNX_SERVING,
        base_image=base_image,
        repository=TEST_REPOSITORY,
        progress=lines.append,
    )
    dangling = {i.id for i in docker_client.images.list(filters={"dangling": True})}
    yield image, lines, package_hash, dangling - dangling_before
    _docker.remove_image(docker_client, image.tag)


def run_python(docker_client, image: str, code: str) -> str:
    out = docker_client.containers.run(
        image, entrypoint=["python", "-c", code], network_mode="none", remove=True
    )
    return out.decode()


@pytest.mark.docker
def test_the_image_holds_one_lean_venv(docker_client, built):
    image, *_ = built
    probe = """
import importlib.util as u, json, os, sys, sysconfig
site = sysconfig.get_paths()["purelib"]
print(json.dumps({
    "prefix": sys.prefix,
    "importable": {m: u.find_spec(m) is not None for m in
        ["pip", "setuptools", "wheel", "mlflow", "pandas", "sklearn", "onnxruntime", "numpy",
         "orjson", "httptools", "uvloop", "mlflow_deploy_plugins.serving"]},
    "tests": [r for r, d, f in os.walk(site) if os.path.basename(r) == "tests"],
    "pip_cache": os.path.exists(os.path.expanduser("~/.cache/pip")),
    "wheels": [f for top in ("/opt", "/tmp") for r, d, fs in os.walk(top) for f in fs
               if f.endswith(".whl")],
    "uid": os.getuid(),
}))
"""
    facts = json.loads(run_python(docker_client, image.tag, probe))
    assert facts["prefix"] == "/opt/venv" and facts["uid"] == 10001
    importable = facts["importable"]
    for absent in ("pip", "setuptools", "wheel", "mlflow", "pandas", "sklearn"):
        assert not importable[absent], absent
    for present in ("onnxruntime", "numpy", "orjson", "httptools", "uvloop"):
        assert importable[present], present
    assert importable["mlflow_deploy_plugins.serving"]
    assert facts["tests"] == [] and facts["wheels"] == [] and not facts["pip_cache"]


@pytest.mark.docker
def test_the_image_is_labelled_non_root_and_health_checked(docker_client, built, resolved):
    image, lines, *_ = built
    attrs = docker_client.images.get(image.tag).attrs
    config = attrs["Config"]
    assert config["User"] == "10001:10001"
    assert "/v2/health/ready" in " ".join(config["Healthcheck"]["Test"])
    labels = config["Labels"]
    bundle = resolved("bundle-labels")
    assert labels["org.opencontainers.image.title"] == "img-model"
    assert labels["org.opencontainers.image.version"] == "1"
    assert labels["org.opencontainers.image.revision"] == bundle.source_run
    assert labels["mlflow_deploy.sha256"] == bundle.sha256
    assert any(line.startswith("  step 1/") for line in lines)
    assert "MB over the base" in lines[-1]


@pytest.mark.docker
def test_the_build_stage_is_tagged_and_nothing_is_left_dangling(docker_client, built):
    image, lines, _, new_dangling = built
    assert image.stage_tag and image.stage_tag.split(":")[1].startswith("build-")
    stage = docker_client.images.get(image.stage_tag)
    assert not new_dangling, "a build left an untagged image behind"
    # the final image was built on the tagged stage, not on a second copy of it
    assert any(line.startswith(f"Build stage {image.stage_tag}") for line in lines)
    assert stage.id != image.id


@pytest.mark.docker
def test_the_image_adds_at_most_170_mb_over_its_base(built):
    image, *_ = built
    assert image.added_mb <= 170, f"{image.added_mb:.0f} MB over the base"


@pytest.mark.docker
def test_an_unchanged_bundle_reuses_the_image(docker_client, base_image, built, resolved):
    image, _, package_hash, _ = built
    lines: list[str] = []
    again = builder.ensure_image(
        docker_client,
        resolved("bundle-2"),  # built again: a new created_at, the same model bytes
        recipe=recipes.ONNX_SERVING,
        base_image=base_image,
        repository=TEST_REPOSITORY,
        progress=lines.append,
    )
    # the runtime's code changed meanwhile: a new image is due
    if package.package_hash() != package_hash:
        assert not again.cached and again.tag != image.tag
        return
    assert again.cached and again.id == image.id and again.tag == image.tag
    assert not any("step" in line for line in lines)

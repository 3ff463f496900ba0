"""The onnx-sagemaker target through MLflow's public API, against moto in server mode (the AWS
control plane), a local Docker registry (standing in for ECR's registry) and a real Docker engine
(the image is built, pushed, and run as SageMaker runs it). Real AWS is never called: see
aws_support for what moto cannot do and how each test stands in for it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest
from aws_support import (
    FAKE_SECRET,
    REGION,
    ROLE,
    SageMakerOutcome,
    aws_environment,
    boto,
    local_registry,  # noqa: F401  (session fixture)
    moto_server,  # noqa: F401  (session fixture)
    queue_invoke_results,
)
from docker_support import BASE_IMAGE, TEST_REPOSITORY, remove_deployment_containers
from helpers import mixed_data, mixed_pipeline, register_sklearn, tracking_store
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException

from mlflow_deploy_plugins.targets import _aws, _ecr, _endpoints, onnx_sagemaker
from mlflow_deploy_plugins.targets import _sagemaker as sm
from mlflow_deploy_plugins.targets.onnx_sagemaker import OnnxSageMakerConfig

DOCS = Path(__file__).resolve().parents[2] / "docs" / "targets" / "onnx-sagemaker.md"
RUN = uuid.uuid4().hex[:6]
#: An image that is never pulled: moto runs no container (the tests that need none use it).
IMAGE_URL = "123456789012.dkr.ecr.eu-west-3.amazonaws.com/mlflow-deploy/churn:given"


def base_config(bucket: str, **extra) -> dict[str, str]:
    return {
        "region_name": REGION,
        "execution_role_arn": ROLE,
        "bucket": bucket,
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()},
    }


# --- without AWS ---------------------------------------------------------------------------


def test_mlflow_loads_the_plugin_with_its_region():
    client = get_deploy_client("onnx-sagemaker:/eu-west-1")
    assert isinstance(client, onnx_sagemaker.OnnxSageMakerDeploymentClient)
    assert client.region_name == "eu-west-1"


def test_target_help_lists_every_key_and_the_docs_embed_the_table():
    text = onnx_sagemaker.target_help()
    assert OnnxSageMakerConfig.help_table() in text
    mlflow_keys = (
        "region_name", "execution_role_arn", "bucket", "image_url", "instance_type",
        "instance_count", "vpc_config", "mode", "synchronous", "timeout_seconds",
        "variant_name", "serverless_config", "async_inference_config", "env", "tags",
    )  # fmt: skip
    for key in (*mlflow_keys, "min_instances", "max_instances", "target_invocations_per_instance"):
        assert f"  {key} (" in text, key
    assert OnnxSageMakerConfig.markdown_table() in DOCS.read_text(), (
        "docs/targets/onnx-sagemaker.md must contain OnnxSageMakerConfig.markdown_table() verbatim"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "help", "-t", "onnx-sagemaker"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert OnnxSageMakerConfig.help_table() in done.stdout


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"execution_role_arn": "admin"}, "'execution_role_arn'.*must be an IAM role ARN"),
        ({"env": "{not json"}, "'env' of target 'onnx-sagemaker': expected a JSON object"),
        ({"vpc_config": "[1, 2]"}, "'vpc_config'.*expected a JSON object"),
        ({"mode": "blue"}, "must be one of create, replace, add"),
        ({"mode": "add"}, "'mode'.*is for update"),
        ({"instance_count": "0"}, "'instance_count'.*must be >= 1"),
        ({"bogus": "1"}, "Unknown config key 'bogus'"),
        ({"max_instances": "2", "min_instances": "3"}, "'max_instances'.*=2 is below min_i"),
        (
            {"max_instances": "2", "serverless_config": '{"MemorySizeInMB": 2048}'},
            "'max_instances'.*a serverless variant scales itself",
        ),
    ],
)
def test_bad_config_is_refused_before_aws_is_asked(monkeypatch, config, fragment):
    with pytest.MonkeyPatch.context() as mp:
        aws_environment(mp, None)  # no credentials: AWS would refuse if it were asked
        config = {"execution_role_arn": ROLE, "bucket": "b", **config}
        with pytest.raises(MlflowException, match=fragment) as info:
            get_deploy_client("onnx-sagemaker").create_deployment("x", "models:/m/1", config=config)
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize("name", ["with_underscore", "dotted.name", "ends-"])
def test_names_sagemaker_refuses_are_refused(name):
    with pytest.raises(MlflowException, match="not a valid SageMaker endpoint name"):
        get_deploy_client("onnx-sagemaker").create_deployment(name, "models:/m/1")


@pytest.mark.parametrize("missing", ["execution_role_arn", "bucket"])
def test_a_missing_role_or_bucket_is_named(missing):
    config = {"region_name": REGION, "execution_role_arn": ROLE, "bucket": "b"}
    del config[missing]
    with pytest.raises(MlflowException, match=f"Config key '{missing}' .* is required"):
        get_deploy_client("onnx-sagemaker").create_deployment("x", "models:/m/1", config=config)


def test_a_missing_region_is_named():
    with pytest.MonkeyPatch.context() as mp:
        aws_environment(mp, "http://127.0.0.1:9", region=None)
        config = {"execution_role_arn": ROLE, "bucket": "b"}
        with pytest.raises(MlflowException, match="Config key 'region_name' .* is required"):
            get_deploy_client("onnx-sagemaker").create_deployment("x", "models:/m/1", config=config)


def test_no_credentials_says_how_the_chain_is_searched():
    with pytest.MonkeyPatch.context() as mp:
        aws_environment(mp, None)  # no keys, no files, no instance metadata
        with pytest.raises(MlflowException) as info:
            get_deploy_client("onnx-sagemaker").list_deployments()
    message = info.value.message
    assert "No AWS credentials found" in message
    for place in ("AWS_ACCESS_KEY_ID", "~/.aws/credentials", "AWS_PROFILE", "instance role"):
        assert place in message
    assert "aws configure" in message


def test_model_archive_is_reproducible_and_unpacks_to_the_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.onnx").write_bytes(b"\x08\x07onnx")
    (bundle / "bundle.json").write_text('{"a": 1}')
    first = sm.bundle_archive(str(bundle))
    os.utime(bundle / "model.onnx", (1, 1))
    assert sm.bundle_archive(str(bundle)) == first  # timestamps do not change the sha256
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(first))) as tar:
        assert sorted(tar.getnames()) == ["bundle.json", "model.onnx"]


def test_long_values_round_trip_through_tags():
    text = json.dumps({"env": {"K": "v" * 700}, "tags": {"team": "risk"}})
    tags = _aws.encode_tag("mlflow_deploy.config", text)
    assert len(tags) == 4 and all(len(v) <= 256 for v in tags.values())
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/=+-@ ")
    assert all(set(v) <= allowed for v in tags.values())  # SageMaker's tag alphabet
    assert _aws.decode_tag(tags, "mlflow_deploy.config") == text


def test_dict_keys_take_json_strings_or_dicts():
    from_cli = OnnxSageMakerConfig.from_config({"env": '{"A": "1"}', "tags": '{"team": "risk"}'})
    from_python = OnnxSageMakerConfig.from_config({"env": {"A": "1"}, "tags": {"team": "risk"}})
    assert from_cli == from_python and from_cli.env == {"A": "1"}
    assert "env (dict | None" in OnnxSageMakerConfig.help_table()


def test_v2_tensors_are_refused_by_predict():
    v2 = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP64", "data": [1.0]}]}
    with pytest.raises(MlflowException, match="not V2 tensors"):
        get_deploy_client("onnx-sagemaker").predict("x", v2)


# --- against moto ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws(moto_server):  # noqa: F811
    """The environment of a user with credentials in the chain (fake; moto's endpoint)."""
    with pytest.MonkeyPatch.context() as mp:
        aws_environment(mp, moto_server)
        bucket = f"models-{RUN}"
        boto("s3").create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        yield {"url": moto_server, "bucket": bucket}


@pytest.fixture(scope="module")
def registry(tmp_path_factory, aws):
    """A store with one source sklearn model, deployed as models:/NAME/1 (converted at deploy)."""
    from sklearn.linear_model import LogisticRegression

    path = tmp_path_factory.mktemp("store")
    with tracking_store(path) as uri:
        x, y = mixed_data()
        name = f"churn-{RUN}"
        model = mixed_pipeline(LogisticRegression()).fit(x, y)
        register_sklearn(model, name, x.head(100))
        yield {"uri": uri, "name": name, "x": x, "model": model}


@pytest.fixture
def client(aws):
    deploy = get_deploy_client(f"onnx-sagemaker:/{REGION}")
    deploy.lines = []
    deploy.progress = deploy.lines.append
    return deploy


def new_name(prefix: str) -> str:
    return f"{prefix}-{RUN}-{uuid.uuid4().hex[:4]}"


def endpoint_resources(name: str) -> dict[str, list[str]]:
    client = boto("sagemaker")
    return {
        "endpoints": [
            e["EndpointName"]
            for e in client.list_endpoints()["Endpoints"]
            if e["EndpointName"] == name
        ],
        "configs": [
            c["EndpointConfigName"]
            for c in client.list_endpoint_configs(NameContains=name)["EndpointConfigs"]
        ],
        "models": [m["ModelName"] for m in client.list_models(NameContains=name)["Models"]],
    }


def s3_keys(bucket: str, name: str) -> list[str]:
    found = boto("s3").list_objects_v2(Bucket=bucket, Prefix=f"mlflow-deploy/{name}/")
    return [o["Key"] for o in found.get("Contents", [])]


@pytest.mark.aws
def test_a_missing_bucket_is_named(client, registry):
    config = base_config(f"no-such-bucket-{RUN}", image_url=IMAGE_URL)
    with pytest.raises(MlflowException, match="Config key 'bucket'.*no-such-bucket.*aws s3 mb"):
        client.create_deployment(
            new_name("nobucket"), f"models:/{registry['name']}/1", config=config
        )


@pytest.mark.aws
def test_create_with_a_given_image_then_clash_then_delete_twice(client, aws, registry):
    name = new_name("given")
    config = base_config(
        aws["bucket"],
        image_url=IMAGE_URL,
        instance_type="ml.c5.large",
        env={"TEAM": "risk"},
        tags={"owner": "data-team"},
        max_instances="3",
        target_invocations_per_instance="250",
    )
    info = client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
    assert info["status"] == "InService" and info["name"] == name and info["flavor"] == "onnx"
    assert info["model_uri"] == f"models:/{registry['name']}/1"
    assert info["source_model"] == registry["name"] and info["source_version"] == "1"
    assert info["image"] == IMAGE_URL
    (variant,) = info["variants"]
    assert variant["instance_type"] == "ml.c5.large" and variant["weight"] == 1.0
    assert variant["autoscaling"] == {"min": 1, "max": 3}
    assert info["config"]["instance_type"] == "ml.c5.large" and "image_url" not in info["config"]
    assert info["endpoint_url"].endswith(f"/endpoints/{name}/invocations")

    sagemaker = boto("sagemaker")
    model = sagemaker.describe_model(ModelName=variant["model"])
    assert model["ExecutionRoleArn"] == ROLE
    container = model["PrimaryContainer"]
    assert container["Image"] == IMAGE_URL and container["Environment"] == {"TEAM": "risk"}
    bucket, key = sm.split_s3_uri(container["ModelDataUrl"])
    body = boto("s3").get_object(Bucket=bucket, Key=key)
    data = body["Body"].read()
    assert hashlib.sha256(data).hexdigest() == body["Metadata"]["sha256"]
    assert key.split("/")[-2] == body["Metadata"]["sha256"][:16]
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        manifest = json.load(tar.extractfile("bundle.json"))
        onnx = tar.extractfile("model.onnx").read()
    assert manifest["sha256"] == hashlib.sha256(onnx).hexdigest() == info["sha256"]
    tags = _aws.tag_dict(sagemaker.list_tags(ResourceArn=info["endpoint_arn"])["Tags"])
    assert tags["owner"] == "data-team" and tags["mlflow_deploy.target"] == "onnx-sagemaker"

    assert name in [d["name"] for d in client.list_deployments()]
    with pytest.raises(MlflowException, match=f"Endpoint '{name}' already exists") as info_clash:
        client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
    assert info_clash.value.error_code == "RESOURCE_ALREADY_EXISTS"

    delete = {"region_name": REGION, "remove_model_data": "true"}
    client.delete_deployment(name, config=delete)
    client.delete_deployment(name, config=delete)  # idempotent
    assert endpoint_resources(name) == {"endpoints": [], "configs": [], "models": []}
    assert s3_keys(aws["bucket"], name) == []
    assert not boto("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="sagemaker"
    )["ScalableTargets"] or all(
        name not in t["ResourceId"]
        for t in boto("application-autoscaling").describe_scalable_targets(
            ServiceNamespace="sagemaker"
        )["ScalableTargets"]
    )
    with pytest.raises(MlflowException) as gone:
        client.get_deployment(name)
    assert gone.value.error_code == "RESOURCE_DOES_NOT_EXIST"


@pytest.mark.aws
def test_an_endpoint_this_target_did_not_make_is_left_alone(client, aws, registry):
    name = new_name("foreign")
    sagemaker = boto("sagemaker")
    sagemaker.create_model(
        ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE_URL}
    )
    sagemaker.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "v",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=name)
    try:
        assert name not in [d["name"] for d in client.list_deployments()]
        with pytest.raises(MlflowException, match="not made by this target") as info:
            client.get_deployment(name)
        assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        with pytest.raises(MlflowException, match="was not made by onnx-sagemaker: not deleting"):
            client.delete_deployment(name, config={"region_name": REGION})
        config = base_config(aws["bucket"], image_url=IMAGE_URL)
        with pytest.raises(MlflowException, match="already exists") as clash:
            client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
        assert clash.value.error_code == "RESOURCE_ALREADY_EXISTS"
        assert sagemaker.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    finally:
        sagemaker.delete_endpoint(EndpointName=name)
        sagemaker.delete_endpoint_config(EndpointConfigName=name)
        sagemaker.delete_model(ModelName=name)


@pytest.mark.aws
def test_a_failed_endpoint_shows_its_failure_reason_and_leaves_nothing(
    client, aws, registry, monkeypatch
):
    # moto's endpoints are InService at once: its DescribeEndpoint answer is made to say Failed.
    reason = "The primary container for production variant AllTraffic did not pass the ping check"
    SageMakerOutcome(describe_status="Failed", failure_reason=reason).install(monkeypatch)
    name = new_name("failed")
    config = base_config(aws["bucket"], image_url=IMAGE_URL)
    with pytest.raises(MlflowException, match=f"Endpoint '{name}' is Failed: {reason}") as info:
        client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
    assert info.value.error_code == "INTERNAL_ERROR"
    assert endpoint_resources(name) == {"endpoints": [], "configs": [], "models": []}
    assert s3_keys(aws["bucket"], name) == []


@pytest.mark.aws
def test_an_endpoint_stuck_in_creating_times_out_and_is_cleaned_up(
    client, aws, registry, monkeypatch
):
    SageMakerOutcome(describe_status="Creating").install(monkeypatch)
    name = new_name("stuck")
    config = base_config(aws["bucket"], image_url=IMAGE_URL, timeout_seconds="1")
    with pytest.raises(MlflowException, match=r"still Creating after 1 s \(-C timeout_seconds\)"):
        client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
    assert endpoint_resources(name) == {"endpoints": [], "configs": [], "models": []}


@pytest.fixture
def given_deployment(client, aws, registry):
    name = new_name("upd")
    config = base_config(aws["bucket"], image_url=IMAGE_URL, max_instances="2")
    info = client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
    yield info
    client.delete_deployment(name, config={"region_name": REGION, "remove_model_data": "true"})


@pytest.mark.aws
def test_update_replace_swaps_the_variant_and_deletes_the_old_one(
    client, given_deployment, monkeypatch
):
    # UpdateEndpoint is answered by botocore's Stubber (moto 5.2: HTTP 500), which checks the
    # request; moto is then given SageMaker's outcome (see aws_support.SageMakerOutcome).
    outcome = SageMakerOutcome()
    outcome.install(monkeypatch)
    name = given_deployment["name"]
    (old,) = given_deployment["variants"]
    info = client.update_deployment(
        name, config={"region_name": REGION, "image_url": IMAGE_URL, "instance_count": "2"}
    )
    (request,) = outcome.updates
    assert (
        request["EndpointName"] == name and request["EndpointConfigName"] == info["endpoint_config"]
    )
    (new,) = info["variants"]
    assert new["model"] != old["model"] and new["instances"] == 2 and new["weight"] == 1.0
    assert new["autoscaling"] == {"min": 1, "max": 2}  # remembered from create
    left = endpoint_resources(name)
    assert left["models"] == [new["model"]] and left["configs"] == [info["endpoint_config"]]
    assert info["config"]["max_instances"] == 2 and info["config"]["instance_count"] == 2


@pytest.mark.aws
def test_update_add_keeps_the_old_variant_next_to_a_weighted_canary(
    client, given_deployment, monkeypatch
):
    outcome = SageMakerOutcome()
    outcome.install(monkeypatch)
    name = given_deployment["name"]
    (old,) = given_deployment["variants"]
    config = {"region_name": REGION, "image_url": IMAGE_URL, "mode": "add"}
    config.update(variant_name="canary", variant_weight="0.1")
    info = client.update_deployment(name, config=config)
    weights = {v["name"]: v["weight"] for v in info["variants"]}
    assert weights == {old["name"]: 1.0, "canary": 0.1}
    assert set(endpoint_resources(name)["models"]) == {v["model"] for v in info["variants"]}
    with pytest.raises(MlflowException, match="Variant 'canary' already serves"):
        client.update_deployment(name, config=config)


@pytest.mark.aws
def test_a_failed_update_keeps_the_old_version_and_removes_the_new_one(
    client, given_deployment, monkeypatch
):
    reason = "Ping health check failed for variant new-model"
    outcome = SageMakerOutcome(update_succeeds=False, failure_reason=reason)
    outcome.install(monkeypatch)
    name = given_deployment["name"]
    with pytest.raises(MlflowException, match=f"previous version keeps serving.*{reason}"):
        client.update_deployment(name, config={"region_name": REGION, "image_url": IMAGE_URL})
    monkeypatch.undo()
    info = client.get_deployment(name)
    assert info["endpoint_config"] == given_deployment["endpoint_config"]
    assert info["variants"][0]["autoscaling"] == {"min": 1, "max": 2}  # registered again
    left = endpoint_resources(name)
    assert left["models"] == [given_deployment["variants"][0]["model"]]
    assert left["configs"] == [given_deployment["endpoint_config"]]
    # the same bundle gives the same archive: the one the old version serves is kept
    bucket, key = sm.split_s3_uri(given_deployment["model_data"])
    assert s3_keys(bucket, name) == [key]


@pytest.mark.aws
def test_an_endpoint_still_updating_takes_no_second_update(client, given_deployment, monkeypatch):
    # moto's endpoints are always InService: its DescribeEndpoint answer is made to say Updating
    SageMakerOutcome(describe_status="Updating").install(monkeypatch)
    name = given_deployment["name"]
    with pytest.raises(MlflowException, match=f"Endpoint '{name}' is Updating"):
        client.update_deployment(name, config={"region_name": REGION, "image_url": IMAGE_URL})
    assert endpoint_resources(name)["models"] == [given_deployment["variants"][0]["model"]]


@pytest.mark.aws
def test_update_of_a_missing_deployment_is_resource_does_not_exist(client):
    with pytest.raises(MlflowException) as info:
        client.update_deployment(new_name("none"), config={"region_name": REGION})
    assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"


# --- the real image: built, pushed to the local registry, run as SageMaker runs it ------------


@pytest.fixture(scope="module")
def ecr_to_local_registry(local_registry):  # noqa: F811
    """The registry a push goes to is the local one: ``_ecr.registry_address`` (the host of
    ECR's ``proxyEndpoint``, a fake host under moto) is rewritten to it; the repository,
    the token, the login and the push itself are unchanged."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_ecr, "registry_address", lambda proxy_endpoint: local_registry)
        yield local_registry


@pytest.mark.aws
@pytest.mark.docker
def test_create_pushes_the_image_and_run_local_serves_what_predict_returns(
    client, aws, registry, docker_client, base_image, ecr_to_local_registry, caplog
):
    name = new_name("real")
    config = base_config(
        aws["bucket"], base_image=BASE_IMAGE, ecr_repository=TEST_REPOSITORY, env={"TEAM": "risk"}
    )
    caplog.set_level("DEBUG", logger="mlflow_deploy_plugins")  # ours; botocore DEBUG signs
    info = client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
    try:
        image_tag = info["image"].rsplit(":", 1)[1]
        assert info["image"].startswith("123456789012.dkr.ecr.")
        assert info["image"].endswith(f"/{TEST_REPOSITORY}:{image_tag}")
        with urllib.request.urlopen(
            f"http://{ecr_to_local_registry}/v2/{TEST_REPOSITORY}/tags/list", timeout=10
        ) as answer:
            assert image_tag in json.load(answer)["tags"]
        assert any(line.startswith("Pushed ") for line in client.lines), client.lines[-5:]
        repositories = boto("ecr").describe_repositories()["repositories"]
        assert TEST_REPOSITORY in [r["repositoryName"] for r in repositories]

        # the credentials stay in the chain: not in tags, the model, the image, or any log
        sagemaker = boto("sagemaker")
        tags = sagemaker.list_tags(ResourceArn=info["endpoint_arn"])["Tags"]
        model = sagemaker.describe_model(ModelName=info["variants"][0]["model"])
        image = docker_client.images.get(f"{TEST_REPOSITORY}:{image_tag}")
        rendered = json.dumps([tags, model, image.attrs, info["config"]], default=str)
        logs = "\n".join(client.lines) + caplog.text
        for text in (rendered, logs):
            assert FAKE_SECRET not in text and "AKIAFAKEFAKEFAKEFAKE" not in text

        x = registry["x"].head(5)
        expected = registry["model"].predict(x)  # what the source pyfunc returns
        served = serve_locally_and_score(registry, config, name, x, docker_client)
        assert served["predictions"] and len(served["predictions"]) == 5
        # moto's invoke_endpoint answers what is queued: the real container's answer
        queue_invoke_results(aws["url"], [json.dumps(served).encode()])
        predicted = client.predict(name, x)
        assert predicted == served
        assert predicted["predictions"] == expected.tolist()
    finally:
        client.delete_deployment(
            name,
            config={"region_name": REGION, "remove_model_data": "true", "remove_image": "true"},
        )
    assert endpoint_resources(name) == {"endpoints": [], "configs": [], "models": []}
    assert not boto("ecr").list_images(repositoryName=TEST_REPOSITORY)["imageIds"]


def serve_locally_and_score(registry, config, name, frame, docker_client) -> dict:
    """``mlflow deployments run-local -t onnx-sagemaker`` (the same image, ``serve``, the model
    unpacked read-only in /opt/ml/model); the container's own /ping and /invocations answer."""
    port = _endpoints.free_port()
    local = f"{name}-local"
    cmd = [sys.executable, "-m", "mlflow", "deployments", "run-local", "-t", "onnx-sagemaker"]
    cmd += ["--name", local, "-m", f"models:/{registry['name']}/1"]
    settings = {**config, "port": str(port), "network_mode": "host"}  # no bridge on this engine
    for key, value in settings.items():
        cmd += ["-C", f"{key}={value}"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=registry["uri"])
    process = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        _endpoints.wait_until(
            lambda: any("Ctrl+C stops it" in line for line in lines), 300, what="run-local"
        )
        (container,) = docker_client.containers.list(
            filters={"label": f"mlflow_deploy.run_local={local}"}
        )
        assert container.attrs["Config"]["Cmd"] == ["serve"]  # docker run IMAGE serve
        (mount,) = [m for m in container.attrs["Mounts"] if m["Destination"] == "/opt/ml/model"]
        assert mount["RW"] is False
        assert "TEAM=risk" in container.attrs["Config"]["Env"]
        assert _endpoints.http_ready(f"http://127.0.0.1:{port}/ping")
        body = json.dumps(
            {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
        )
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            body.encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            served = json.load(answer)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        remove_deployment_containers(docker_client, [local])
    return served

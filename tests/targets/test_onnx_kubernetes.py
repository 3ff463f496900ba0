"""The onnx-kubernetes target through MLflow's public API (``get_deploy_client``).

No Kubernetes API server can run on these machines, so:
* the manifests are validated against the real schemas: ``kubernetes-validate`` for the core
  kinds at two Kubernetes versions, KServe's InferenceService CRD (vendored under testdata/)
  with ``jsonschema``;
* the client calls go to a FAKE API server (tests/targets/k8s_support.py) on 127.0.0.1 that
  speaks the real REST paths and plays the controllers' status (a test chooses ready/failed);
* predict goes to a real serving runtime process on 127.0.0.1 standing in for the pods;
* the image is built with the real builder and pushed to a real local registry (docker tests).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from aws_support import local_registry  # noqa: F401  (session fixture)
from docker_support import BASE_IMAGE, TEST_REPOSITORY, remove_deployment_containers
from helpers import mixed_data, mixed_pipeline, register_sklearn, tracking_store
from k8s_support import FakeApiServer
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException

from mlflow_deploy_plugins.targets import _endpoints, onnx_kubernetes
from mlflow_deploy_plugins.targets.onnx_kubernetes import OnnxKubernetesConfig

HERE = Path(__file__).resolve().parent
DOCS = HERE.parents[1] / "docs" / "targets" / "kubernetes.md"
CRD_FILE = HERE / "testdata" / "kserve-inferenceservices-crd-v0.20.0.yaml"
#: Two Kubernetes versions the core kinds are validated at (an older supported one, a new one).
K8S_VERSIONS = ("1.30.0", "1.35.0")
IMAGE = "registry.example.com/ml/churn@sha256:" + "ab" * 32
NS = "ml"
RUN = uuid.uuid4().hex[:6]


def new_name(prefix: str) -> str:
    return f"{prefix}-{RUN}-{uuid.uuid4().hex[:4]}"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd() -> dict:
    with open(CRD_FILE) as f:
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A store with a source sklearn model in two versions (converted at deploy time)."""
    from sklearn.linear_model import LogisticRegression

    with tracking_store(tmp_path_factory.mktemp("store")) as uri:
        x, y = mixed_data()
        name = f"churn-{RUN}"
        model = mixed_pipeline(LogisticRegression()).fit(x, y)
        register_sklearn(model, name, x.head(100))
        register_sklearn(mixed_pipeline(LogisticRegression(C=0.1)).fit(x, y), name, x.head(100))
        yield {"uri": uri, "name": name, "x": x, "model": model}


@pytest.fixture(scope="module")
def fake(tmp_path_factory, crd):
    with FakeApiServer() as server:
        server.install_kserve(crd)
        server.kubeconfig_path = server.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
        yield server


@pytest.fixture
def kube_env(fake, monkeypatch):
    """The user's environment: KUBECONFIG names the fake cluster's kubeconfig."""
    monkeypatch.setenv("KUBECONFIG", fake.kubeconfig_path)
    fake.rollouts.clear()
    fake.uninstall_kserve()
    return fake


@pytest.fixture
def client(kube_env):
    deploy = get_deploy_client("onnx-kubernetes")
    deploy.lines = []
    deploy.progress = deploy.lines.append
    return deploy


@pytest.fixture
def token_file(tmp_path) -> Path:
    token = tmp_path / "token"
    token.write_text(f"secret-{uuid.uuid4().hex}\n")
    return token


def left_behind(fake, name: str) -> set:
    """The objects of deployment ``name`` still stored (events expire on their own)."""
    return {n for n in fake.names(NS) if n[1].startswith(name) and n[0] != "events"}


def manifest_texts(fake) -> str:
    return json.dumps([o for k, o in fake.objects.items() if k[2] != "secrets"])


# --- schemas -------------------------------------------------------------------------------


def validate_core(obj: dict) -> None:
    import kubernetes_validate

    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def validate_isvc(obj: dict, crd: dict) -> None:
    import jsonschema

    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    body = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    jsonschema.validate(body, schema["schema"]["openAPIV3Schema"])


# --- without a cluster ---------------------------------------------------------------------


def test_mlflow_loads_the_plugin_and_the_docs_embed_the_key_table():
    assert isinstance(
        get_deploy_client("onnx-kubernetes"), onnx_kubernetes.OnnxKubernetesDeploymentClient
    )
    text = onnx_kubernetes.target_help()
    assert OnnxKubernetesConfig.help_table() in text
    for key in ("kubeconfig", "context", "namespace", "kind", "registry", "dry_run", "output",
                "pdb_min_available", "canary_traffic_percent"):  # fmt: skip
        assert f"  {key} (" in text, key
    assert OnnxKubernetesConfig.markdown_table() in DOCS.read_text(), (
        "docs/targets/kubernetes.md must contain OnnxKubernetesConfig.markdown_table() verbatim"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "help", "-t", "onnx-kubernetes"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert OnnxKubernetesConfig.help_table() in done.stdout


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"kind": "helm"}, "'kind'.*must be one of kserve, deployment"),
        ({"kind": "deployment", "canary_traffic_percent": "10"}, "needs kind=kserve"),
        ({"min_replicas": "3", "max_replicas": "2"}, "'max_replicas'.*=2 is below min_replicas=3"),
        ({"pdb_min_available": "most"}, "'pdb_min_available'.*pod count"),
        ({"image": "registry.example.com/ml/churn:latest"}, "'image'.*by digest"),
        ({"memory_limit": "lots"}, "'memory_limit'.*Kubernetes quantity"),
        ({"canary_traffic_percent": "150"}, "'canary_traffic_percent'"),
        ({"bogus": "1"}, "Unknown config key 'bogus'"),
        ({"kind": "deployment"}, "Config key 'registry' .* is required"),
        ({"grpc_port": "8081"}, "'grpc_port'.*needs kind=deployment.*one port"),
        ({"kind": "deployment", "grpc_port": "80"}, "'grpc_port'.*=80 is the Service's HTTP port"),
        ({"kind": "deployment", "grpc_port": "0"}, "'grpc_port'"),
    ],
)
def test_bad_config_is_refused_before_anything_runs(config, fragment, monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nothing"))  # no cluster is needed to refuse
    with pytest.raises(MlflowException, match=fragment) as info:
        get_deploy_client("onnx-kubernetes").create_deployment(
            "churn", "models:/m/1", config=config
        )
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"


@pytest.mark.parametrize("name", ["Churn", "with_underscore", "dotted.name", "ends-"])
def test_names_kubernetes_refuses_are_refused(name):
    with pytest.raises(MlflowException, match="not a valid Kubernetes name"):
        get_deploy_client("onnx-kubernetes").create_deployment(name, "models:/m/1")


def test_no_kubeconfig_says_where_it_was_searched(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(MlflowException) as info:
        get_deploy_client("onnx-kubernetes").list_deployments()
    message = info.value.message
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"
    for place in ("-C kubeconfig=", "KUBECONFIG (not set)", "~/.kube/config", "in-cluster"):
        assert place in message, place
    assert str(tmp_path / ".kube" / "config") in message


def test_a_missing_kubeconfig_file_is_named(client):
    with pytest.raises(MlflowException, match="Config key 'kubeconfig': no file at '/nope/cfg'"):
        client.create_deployment("churn", "models:/m/1", config={"kubeconfig": "/nope/cfg",
                                                                 "image": IMAGE})  # fmt: skip


def test_an_unknown_context_lists_the_known_ones(client, kube_env):
    with pytest.raises(MlflowException, match=r"no context 'prod'.*contexts there: fake, other"):
        client.create_deployment("churn", "models:/m/1", config={"context": "prod", "image": IMAGE})


def test_dry_run_writes_valid_hardened_manifests_without_the_token(
    registry, crd, tmp_path, token_file, monkeypatch, capsys
):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster-needed"))
    client = get_deploy_client("onnx-kubernetes")
    client.progress = lines = []
    client.progress = lines.append
    out = tmp_path / "manifests"
    config = {
        "kind": "deployment", "image": IMAGE, "dry_run": "true", "output": str(out),
        "auth_token_file": str(token_file), "pdb_min_available": "1", "namespace": NS,
        "min_replicas": "2", "max_replicas": "5",
    }  # fmt: skip
    info = client.create_deployment("churn", f"models:/{registry['name']}/1", config=config)
    assert info["status"] == "dry_run" and info["flavor"] == "onnx"
    files = sorted(out.iterdir())
    kinds = [yaml.safe_load(f.read_text())["kind"] for f in files]
    assert kinds == ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    token = token_file.read_text().strip()
    for f in files:
        obj = yaml.safe_load(f.read_text())
        validate_core(obj)
        assert token not in f.read_text()
        assert base64.b64encode(token.encode()).decode() not in f.read_text()
    assert any("kubectl -n ml create secret generic churn-mlflow-deploy-token" in x for x in lines)
    deployment = yaml.safe_load(files[0].read_text())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["image"] == IMAGE
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    token_env = [e for e in container["env"] if "TOKEN" in e["name"]]
    assert token_env == [
        {"name": "MLFLOW_DEPLOY_AUTH_TOKEN_FILE", "value": "/run/secrets/mlflow-deploy/token"}
    ]
    assert {"name": "auth-token", "secret": {"secretName": "churn-mlflow-deploy-token",
            "items": [{"key": "token", "path": "token"}], "defaultMode": 0o440}} in pod["volumes"]  # fmt: skip
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert [p["name"] for p in container["ports"]] == ["http1"]  # no gRPC unless asked
    assert not any(e["name"] == "MLFLOW_DEPLOY_GRPC_PORT" for e in container["env"])

    config.update(kind="kserve", output="", canary_traffic_percent="20")
    del config["pdb_min_available"]
    capsys.readouterr()
    client.create_deployment("churn", f"models:/{registry['name']}/1", config=config)
    printed = capsys.readouterr().out
    (isvc,) = list(yaml.safe_load_all(printed))
    validate_isvc(isvc, crd)
    predictor = isvc["spec"]["predictor"]
    assert predictor["containers"][0]["name"] == "kserve-container"
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 5)
    assert predictor["canaryTrafficPercent"] == 20
    assert token not in printed


def test_grpc_port_opens_the_pods_and_the_services_grpc_port(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster-needed"))
    out = tmp_path / "manifests"
    config = {"kind": "deployment", "image": IMAGE, "dry_run": "true", "output": str(out),
              "grpc_port": "9000", "namespace": NS}  # fmt: skip
    get_deploy_client("onnx-kubernetes").create_deployment(
        "churn", f"models:/{registry['name']}/1", config=config
    )
    objects = {o["kind"]: o for o in (yaml.safe_load(f.read_text()) for f in out.iterdir())}
    for obj in objects.values():
        validate_core(obj)
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert {"name": "MLFLOW_DEPLOY_GRPC_PORT", "value": "8081"} in container["env"]
    (grpc_port,) = [p for p in objects["Service"]["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port == {"name": "grpc", "port": 9000, "targetPort": "grpc", "protocol": "TCP",
                         "appProtocol": "kubernetes.io/h2c"}  # fmt: skip


def test_images_carry_grpcio_only_when_grpc_port_is_set():
    from mlflow_deploy_plugins.targets._images import recipes

    lean = OnnxKubernetesConfig(kind="deployment", image=IMAGE)
    assert recipes.for_config(onnx_kubernetes.RECIPE, lean) == onnx_kubernetes.RECIPE
    with_grpc = recipes.for_config(onnx_kubernetes.RECIPE, lean.replace(grpc_port=9000))
    assert with_grpc.runtime_extra.split(",") == [
        *onnx_kubernetes.RECIPE.runtime_extra.split(","),
        "grpc",
    ]


def test_the_schemas_catch_what_they_should(crd):
    """The validators are not vacuous: a wrong field fails each of them."""
    import jsonschema
    import kubernetes_validate

    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {}, "template": {}}}  # fmt: skip
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_core(bad)
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "spec": {"predictor": {"minReplicas": "one"}}}  # fmt: skip
    with pytest.raises(jsonschema.ValidationError):
        validate_isvc(isvc, crd)


# --- against the fake API server -----------------------------------------------------------


def test_kserve_missing_on_the_cluster_is_said_with_the_alternative(client, registry):
    with pytest.raises(MlflowException, match="KServe is not installed.*kind=deployment") as info:
        client.create_deployment(new_name("k"), f"models:/{registry['name']}/1",
                                 config={"kind": "kserve", "image": IMAGE})  # fmt: skip
    assert info.value.error_code == "INVALID_PARAMETER_VALUE"


def test_an_unreachable_api_server_is_named(monkeypatch, tmp_path):
    with FakeApiServer() as gone:
        path = gone.kubeconfig(tmp_path / "config")
    monkeypatch.setenv("KUBECONFIG", path)
    with pytest.raises(MlflowException, match=f"API server {gone.url}.*does not answer") as info:
        get_deploy_client("onnx-kubernetes").list_deployments()
    assert info.value.error_code == "TEMPORARILY_UNAVAILABLE"


def test_an_unreachable_registry_is_refused_before_the_build(client, registry):
    port = _endpoints.free_port()
    config = {"kind": "deployment", "registry": f"127.0.0.1:{port}/ml"}
    with pytest.raises(MlflowException, match=f"registry '127.0.0.1:{port}/ml' is unreachable"):
        client.create_deployment(new_name("r"), f"models:/{registry['name']}/1", config=config)
    assert not any(line.startswith("Image ") for line in client.lines)  # nothing was built


def test_unknown_names(client):
    for call in (lambda: client.get_deployment("nope"), lambda: client.update_deployment("nope")):
        with pytest.raises(
            MlflowException, match="No deployment named 'nope'.*namespace 'ml'"
        ) as e:
            call()
        assert e.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    client.delete_deployment("nope")  # idempotent


def test_deployment_lifecycle_create_predict_update_rollback_delete(
    client, kube_env, registry, token_file, tmp_path
):
    fake = kube_env
    name = new_name("churn")
    model_uri = f"models:/{registry['name']}/1"
    config = {"kind": "deployment", "image": IMAGE, "auth_token_file": str(token_file),
              "pdb_min_available": "1"}  # fmt: skip
    info = client.create_deployment(name, model_uri, config=config)
    assert info["status"] == "ready" and info["kind"] == "Deployment" and info["namespace"] == NS
    assert info["model_uri"] == model_uri and info["image"] == IMAGE
    assert info["source_model"] == registry["name"] and info["source_version"] == "1"
    assert fake.names(NS) >= {("deployments", name), ("services", name),
                              ("horizontalpodautoscalers", name), ("poddisruptionbudgets", name),
                              ("secrets", f"{name}-mlflow-deploy-token")}  # fmt: skip
    token = token_file.read_text().strip()
    secret = fake.get("v1", NS, "secrets", f"{name}-mlflow-deploy-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    assert secret["data"]["token"] not in json.dumps(secret["metadata"])  # no annotated copy
    assert token not in manifest_texts(fake)  # only the Secret's data holds it
    for api, plural in (("apps/v1", "deployments"),
                        ("autoscaling/v2", "horizontalpodautoscalers"),
                        ("policy/v1", "poddisruptionbudgets"),
                        ("v1", "services")):  # fmt: skip
        live = fake.get(api, NS, plural, name)
        validate_core({k: v for k, v in live.items() if k != "status"})
    assert (
        "POST",
        f"/apis/apps/v1/namespaces/{NS}/deployments",
        "application/json",
    ) in fake.requests

    listed = client.list_deployments()
    assert [d["name"] for d in listed if d["name"] == name] == [name]
    assert client.get_deployment(name)["endpoint_url"] is None

    # predict: a real serving runtime stands in for the pods (as kubectl port-forward would)
    with serving_runtime(model_uri, token_file, tmp_path) as url:
        client.update_deployment(name, config={"endpoint_url": url, "image": IMAGE})
        x = registry["x"].head(5)
        answer = client.predict(name, x)
    assert answer["predictions"] == registry["model"].predict(x).tolist()

    # a failed rollout is rolled back to the previous template and reported with pod events
    fake.rollouts.extend(["failed", "ready"])
    before = fake.get("apps/v1", NS, "deployments", name)
    bad_image = IMAGE.replace("ab", "cd")
    with pytest.raises(MlflowException) as failed:
        client.update_deployment(name, f"models:/{registry['name']}/2",
                                 config={"image": bad_image, "rollout_timeout": "30"})  # fmt: skip
    assert failed.value.error_code == "INTERNAL_ERROR"
    message = failed.value.message
    assert "ProgressDeadlineExceeded" in message or "timed out progressing" in message
    assert "rolled back: the previous version serves" in message
    assert "Back-off restarting failed container" in message
    after = fake.get("apps/v1", NS, "deployments", name)
    assert after["spec"]["template"] == before["spec"]["template"]
    assert after["metadata"]["annotations"]["mlflow_deploy.source_version"] == "1"
    patches = [
        r for r in fake.requests if r[0] == "PATCH" and r[1].endswith(f"/deployments/{name}")
    ]
    assert patches and all(r[2] == "application/merge-patch+json" for r in patches)

    # a successful update moves the template and the lineage
    info = client.update_deployment(name, f"models:/{registry['name']}/2",
                                    config={"image": bad_image, "pdb_min_available": ""})  # fmt: skip
    assert info["status"] == "ready" and info["source_version"] == "2"
    live = fake.get("apps/v1", NS, "deployments", name)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == bad_image
    assert ("poddisruptionbudgets", name) not in fake.names(NS)  # no longer asked for

    client.delete_deployment(name)
    client.delete_deployment(name)  # idempotent
    assert not left_behind(fake, name)


def test_a_new_token_updates_the_secret_and_rolls_the_pods(
    client, kube_env, registry, token_file, tmp_path
):
    fake = kube_env
    name = new_name("tok")
    config = {"kind": "deployment", "image": IMAGE, "auth_token_file": str(token_file)}
    client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
    template = fake.get("apps/v1", NS, "deployments", name)["spec"]["template"]
    rotated = tmp_path / "rotated"
    rotated.write_text("rotated-" + uuid.uuid4().hex)
    client.update_deployment(name, config={"auth_token_file": str(rotated), "image": IMAGE})
    secret = fake.get("v1", NS, "secrets", f"{name}-mlflow-deploy-token")
    assert base64.b64decode(secret["data"]["token"]).decode() == rotated.read_text()
    after = fake.get("apps/v1", NS, "deployments", name)["spec"]["template"]
    digest = "mlflow_deploy.token_sha256"
    assert after["metadata"]["annotations"][digest] != template["metadata"]["annotations"][digest]
    assert rotated.read_text() not in manifest_texts(fake)
    # from a machine without the token file: the Secret's token is kept
    rotated.unlink()
    client.update_deployment(name, config={"image": IMAGE, "max_replicas": "4"})
    secret = fake.get("v1", NS, "secrets", f"{name}-mlflow-deploy-token")
    assert base64.b64decode(secret["data"]["token"]).decode().startswith("rotated-")
    with pytest.raises(MlflowException, match="cannot be read"):
        client.update_deployment(name, config={"image": IMAGE, "auth_token_file": str(rotated)})
    client.update_deployment(name, config={"auth_token_file": "", "image": IMAGE})
    assert fake.get("v1", NS, "secrets", f"{name}-mlflow-deploy-token") is None
    env = fake.get("apps/v1", NS, "deployments", name)["spec"]["template"]["spec"]["containers"]
    assert not [e for e in env[0]["env"] if "TOKEN" in e["name"]]
    client.delete_deployment(name)


def test_kserve_create_canary_update_failed_rollback(client, kube_env, registry, crd):
    fake = kube_env
    fake.install_kserve(crd)
    fake.isvc_url = "http://churn.ml.example.com"
    name = new_name("isvc")
    info = client.create_deployment(name, f"models:/{registry['name']}/1",
                                    config={"kind": "kserve", "image": IMAGE})  # fmt: skip
    assert info["kind"] == "InferenceService" and info["status"] == "ready"
    assert info["endpoint_url"] == fake.isvc_url
    live = fake.get("serving.kserve.io/v1beta1", NS, "inferenceservices", name)
    validate_isvc({k: v for k, v in live.items() if k != "status"}, crd)

    canary = IMAGE.replace("ab", "ef")
    client.update_deployment(name, f"models:/{registry['name']}/2",
                             config={"image": canary, "canary_traffic_percent": "10"})  # fmt: skip
    predictor = fake.get("serving.kserve.io/v1beta1", NS, "inferenceservices", name)["spec"][
        "predictor"
    ]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["containers"][0]["image"] == canary

    fake.rollouts.extend(["failed", "ready"])
    with pytest.raises(MlflowException, match="RevisionFailed.*rolled back") as failed:
        client.update_deployment(name, config={"image": IMAGE.replace("ab", "00")})
    assert "Readiness probe failed" in failed.value.message
    restored = fake.get("serving.kserve.io/v1beta1", NS, "inferenceservices", name)["spec"]
    assert restored["predictor"] == predictor  # the previous spec, canary included

    # the next update without a canary percent promotes (the key is not remembered)
    client.update_deployment(name, config={"image": canary})
    promoted = fake.get("serving.kserve.io/v1beta1", NS, "inferenceservices", name)["spec"]
    assert "canaryTrafficPercent" not in promoted["predictor"]
    assert [d["name"] for d in client.list_deployments() if d["name"] == name] == [name]
    client.delete_deployment(name)
    assert fake.get("serving.kserve.io/v1beta1", NS, "inferenceservices", name) is None


def test_a_rollout_that_never_finishes_times_out_and_create_cleans_up(client, kube_env, registry):
    fake = kube_env
    fake.rollouts.append("pending")
    name = new_name("slow")
    with pytest.raises(MlflowException, match="not ready within 1 s") as info:
        client.create_deployment(name, f"models:/{registry['name']}/1",
                                 config={"kind": "deployment", "image": IMAGE,
                                         "rollout_timeout": "1"})  # fmt: skip
    assert info.value.error_code == "INTERNAL_ERROR"
    assert not left_behind(fake, name)


def test_objects_this_target_did_not_make_are_left_alone(client, kube_env):
    from kubernetes import client as k8s
    from kubernetes import config as kconfig

    api = k8s.AppsV1Api(kconfig.new_client_from_config(config_file=kube_env.kubeconfig_path))
    name = new_name("theirs")
    api.create_namespaced_deployment(NS, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {}}})  # fmt: skip
    with pytest.raises(MlflowException, match="not made by onnx-kubernetes"):
        client.delete_deployment(name)
    assert kube_env.get("apps/v1", NS, "deployments", name) is not None
    with pytest.raises(MlflowException, match="No deployment named"):
        client.get_deployment(name)
    api.delete_namespaced_deployment(name, NS)


# --- the real image, pushed to a real local registry -------------------------------------


@pytest.mark.docker
def test_the_image_is_built_pushed_and_referenced_by_digest(
    client,
    kube_env,
    registry,
    docker_client,
    base_image,
    local_registry,  # noqa: F811
):
    name = new_name("pushed")
    config = {"kind": "deployment", "registry": local_registry, "base_image": BASE_IMAGE,
              "image_repository": f"{TEST_REPOSITORY}/k8s"}  # fmt: skip
    try:
        info = client.create_deployment(name, f"models:/{registry['name']}/1", config=config)
    finally:  # the images tagged for the registry (the session's cleanup knows the plain ones)
        remove_images(docker_client, f"{local_registry}/{TEST_REPOSITORY}/")
    image = info["image"]
    repository, _, digest = image.partition("@")
    assert repository == f"{local_registry}/{TEST_REPOSITORY}/k8s" and digest.startswith("sha256:")
    live = kube_env.get("apps/v1", NS, "deployments", name)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == image
    request = urllib.request.Request(
        f"http://{local_registry}/v2/{TEST_REPOSITORY}/k8s/manifests/{digest}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                 "application/vnd.oci.image.manifest.v1+json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Docker-Content-Digest"] == digest
    assert any(line.startswith("Pushed ") for line in client.lines)
    assert any(": Pushed" in line or ": Layer already exists" in line for line in client.lines)
    client.delete_deployment(name)


@pytest.mark.docker
def test_run_local_serves_the_image_as_the_pods_would(
    registry, docker_client, base_image, token_file, monkeypatch, tmp_path
):
    """``mlflow deployments run-local -t onnx-kubernetes``: the image, hardened as the pod spec
    says, answering with the token, until SIGINT."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-cluster-needed"))
    os.chmod(token_file, 0o444)  # the container user reads it (a mounted file, not an env var)
    port = _endpoints.free_port()
    local = new_name("local")
    cmd = [sys.executable, "-m", "mlflow", "deployments", "run-local", "-t", "onnx-kubernetes",
           "--name", local, "-m", f"models:/{registry['name']}/1"]  # fmt: skip
    config = {"local_port": port, "base_image": BASE_IMAGE, "auth_token_file": token_file,
              "image_repository": f"{TEST_REPOSITORY}/k8s-local", "workers": 2}  # fmt: skip
    for key, value in config.items():
        cmd += ["-C", f"{key}={value}"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=registry["uri"])
    process = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    try:
        _endpoints.wait_until(
            lambda: any("Ctrl+C stops it" in line for line in lines), 300, what="run-local"
        )
        (container,) = docker_client.containers.list(
            filters={"label": f"mlflow_deploy.run_local={local}"}
        )
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"]
        assert container.attrs["Config"]["User"] == "10001:10001"
        assert "MLFLOW_DEPLOY_WORKERS=2" in container.attrs["Config"]["Env"]
        x = registry["x"].head(5)
        body = json.dumps({"dataframe_split": json.loads(x.to_json(orient="split", index=False))})
        url = f"http://127.0.0.1:{port}/invocations"
        headers = {"Content-Type": "application/json"}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, body.encode(), headers), timeout=30)
        assert refused.value.code == 401
        headers["Authorization"] = "Bearer " + token_file.read_text().strip()
        with urllib.request.urlopen(
            urllib.request.Request(url, body.encode(), headers), timeout=30
        ) as answer:
            assert json.load(answer)["predictions"] == registry["model"].predict(x).tolist()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        assert not docker_client.containers.list(
            all=True, filters={"label": f"mlflow_deploy.run_local={local}"}
        )
    finally:
        if process.poll() is None:
            process.kill()
        remove_deployment_containers(docker_client, [local])
        remove_images(docker_client, f"{TEST_REPOSITORY}/")


# --- helpers -------------------------------------------------------------------------------


def remove_images(docker_client, prefix: str) -> None:
    """Remove the images with a tag under ``prefix`` (the name filter of the engine does not
    match a registry host with a port)."""
    for image in docker_client.images.list():
        if any(tag.startswith(prefix) for tag in image.tags):
            docker_client.images.remove(image.id, force=True)


class serving_runtime:
    """The serving runtime on 127.0.0.1 with the deployment's bundle and token (the pods'
    process, as ``kubectl port-forward`` would reach it)."""

    def __init__(self, model_uri: str, token_file: Path, tmp_path: Path):
        from mlflow_deploy_plugins.bundle import build_bundle

        self.bundle = str(tmp_path / "bundle")
        build_bundle(model_uri, self.bundle)
        self.port = _endpoints.free_port()
        self.token_file = token_file

    def __enter__(self) -> str:
        argv = [sys.executable, "-m", "mlflow_deploy_plugins.serving", "serve", self.bundle,
                "--port", str(self.port), "--auth-token-file", str(self.token_file)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}"
        _endpoints.wait_until(lambda: _endpoints.http_ready(url + "/v2/health/ready"), 60)
        return url

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(20)

"""AWS stand-ins of the onnx-sagemaker tests, all on 127.0.0.1 and never real AWS:

* ``moto_server`` (moto in server mode, started once per test session) answers S3, ECR, IAM,
  SageMaker and Application Auto Scaling; boto3 reaches it through ``AWS_ENDPOINT_URL`` with
  fake credentials from the environment (the shared config files are pointed at nothing, the
  instance metadata service is disabled: no request can leave the machine).
* ``local_registry``: Debian's ``docker-registry`` (moto has no registry behind ECR).
* ``SageMakerOutcome``: what moto cannot do (measured on moto 5.2): UpdateEndpoint is not
  implemented (HTTP 500), endpoints are InService at once. Each test that needs more says so.

Without moto or the registry the tests skip with the reason; with CI=true they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field

import pytest

from mlflow_deploy_plugins.targets import _aws, _endpoints

#: The fake secret key of the tests: it must appear in no tag, image, config or log.
FAKE_SECRET = f"fake-secret-{uuid.uuid4().hex}"
REGION = "eu-west-3"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"


def service_unavailable(reason: str):
    """Skip with the reason; under CI (CI=true) fail: CI installs moto and docker-registry."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so the AWS tests must run (.ci/run installs it)")
    pytest.skip(reason)


def _wait_http(url: str, what: str, process: subprocess.Popen, log_path: str) -> None:
    def up() -> bool:
        if process.poll() is not None:
            with open(log_path) as f:
                raise RuntimeError(f"{what} exited: {f.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return True
        except OSError:
            return False

    _endpoints.wait_until(up, 30, what=what)


@contextlib.contextmanager
def _service(cmd: list[str], url: str, what: str, log_path: str):
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(url, what, process, log_path)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """``http://127.0.0.1:PORT`` of one moto server for the whole session."""
    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which(
        "moto_server"
    )
    if exe is None:
        service_unavailable("moto_server is not installed (pip install 'moto[server]')")
    port = _endpoints.free_port()
    url = f"http://127.0.0.1:{port}"
    log = str(tmp_path_factory.mktemp("moto") / "moto.log")
    with _service([exe, "-H", "127.0.0.1", "-p", str(port)], url + "/moto-api/", "moto", log):
        yield url


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory):
    """``127.0.0.1:PORT`` of a Debian ``docker-registry`` (no auth: it ignores the ECR token)."""
    exe = shutil.which("docker-registry")
    if exe is None:
        service_unavailable("docker-registry is not installed (apt-get install docker-registry)")
    root = tmp_path_factory.mktemp("registry")
    port = _endpoints.free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    address = f"127.0.0.1:{port}"
    with _service(
        [exe, "serve", str(config)], f"http://{address}/v2/", "registry", str(root / "log")
    ):
        yield address


def aws_environment(mp: pytest.MonkeyPatch, moto_url: str | None, region: str | None = REGION):
    """Fake credentials and the moto endpoint in the environment, nothing else of the chain."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            mp.delenv(name)
    mp.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
    mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if moto_url:
        mp.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEFAKEFAKEFAKE")
        mp.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
        mp.setenv("AWS_ENDPOINT_URL", moto_url)
    if region:
        mp.setenv("AWS_DEFAULT_REGION", region)


def boto(service: str):
    """A boto3 client on the environment's (moto's) endpoint, for the tests' own checks."""
    import boto3

    return boto3.session.Session().client(service, region_name=REGION)


def queue_invoke_results(moto_url: str, bodies: list[bytes]) -> None:
    """Queue what moto's ``invoke_endpoint`` answers next (its canned-results API)."""
    payload = {
        "region": REGION,
        "results": [{"Body": b.decode(), "ContentType": "application/json"} for b in bodies],
    }
    request = urllib.request.Request(
        f"{moto_url}/moto-api/static/sagemaker/endpoint-results",
        json.dumps(payload).encode(),
        {"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201


@dataclass
class SageMakerOutcome:
    """Where moto cannot play SageMaker, this does, on every session the target opens.

    * ``UpdateEndpoint`` (moto 5.2: HTTP 500, not implemented) is answered by botocore's
      ``Stubber`` on a separate client, which checks the request against the service model
      and the parameters expected; then, when ``update_succeeds``, moto is given the outcome
      SageMaker reaches: the endpoint on the new config, InService (delete + create under the
      same name with the same tags; moto's endpoints are InService at once).
    * ``describe_status`` / ``failure_reason`` override what moto's DescribeEndpoint says
      (an endpoint stuck in Creating, failed, or an update rolled back with a reason).
    """

    update_succeeds: bool = True
    describe_status: str | None = None
    failure_reason: str | None = None
    updates: list[dict] = field(default_factory=list)

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real = _aws.session_for

        def session_for(region, target):
            aws = real(region, target)
            events = aws.session.events
            events.register("provide-client-params.sagemaker.UpdateEndpoint", self._capture)
            events.register("before-call.sagemaker.UpdateEndpoint", self._update)
            events.register("after-call.sagemaker.DescribeEndpoint", self._describe)
            return aws

        mp.setattr(_aws, "session_for", session_for)

    def _capture(self, params, **kwargs):
        self.updates.append(dict(params))

    def _update(self, **kwargs):
        from botocore.awsrequest import AWSResponse
        from botocore.stub import Stubber

        params = self.updates[-1]
        name = params["EndpointName"]
        arn = f"arn:aws:sagemaker:{REGION}:123456789012:endpoint/{name.lower()}"
        stub_client = boto("sagemaker")
        with Stubber(stub_client) as stubber:
            stubber.add_response("update_endpoint", {"EndpointArn": arn}, expected_params=params)
            parsed = stub_client.update_endpoint(**params)
            stubber.assert_no_pending_responses()
        if self.update_succeeds:
            moto = boto("sagemaker")
            tags = moto.list_tags(
                ResourceArn=moto.describe_endpoint(EndpointName=name)["EndpointArn"]
            )
            moto.delete_endpoint(EndpointName=name)
            moto.create_endpoint(
                EndpointName=name,
                EndpointConfigName=params["EndpointConfigName"],
                Tags=tags["Tags"],
            )
        return AWSResponse(arn, 200, {}, None), parsed

    def _describe(self, parsed, **kwargs):
        if "EndpointStatus" not in parsed:
            return
        if self.describe_status:
            parsed["EndpointStatus"] = self.describe_status
        if self.failure_reason:
            parsed["FailureReason"] = self.failure_reason

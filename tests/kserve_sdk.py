"""The kserve SDK's inference clients (``InferenceRESTClient``, ``InferenceGRPCClient``), run in a
child process with the kserve venv's interpreter.

kserve pins fastapi/starlette/psutil versions MLServer refuses, so it lives in its own venv
(``tests/infra/kserve_sdk.sh``); its generated ``inference.*`` protobuf messages would also clash
with MLServer's in one process. ``run(python, scenario, **args)`` executes one function of this
module there and returns its JSON result. This module imports nothing from the test venv.
"""

from __future__ import annotations

import json
import subprocess


def run(python: str, scenario: str, **args) -> dict:
    """The JSON result of ``scenario(**args)`` run by the interpreter ``python``."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import kserve_sdk; "
        "print(json.dumps(getattr(kserve_sdk, sys.argv[2])(**json.loads(sys.argv[3]))))"
    )
    here = __file__.rsplit("/", 1)[0]
    done = subprocess.run(
        [python, "-c", code, here, scenario, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise AssertionError(f"kserve SDK scenario {scenario} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ scenarios (child process)
def _request(model: str, columns: dict, strings: list, binary: bool, **kwargs):
    import numpy as np
    from kserve import InferInput, InferRequest

    inputs = []
    for name, values in columns.items():
        datatype = "BYTES" if name in strings else "FP64"
        array = np.array(values, dtype=object if datatype == "BYTES" else np.float64)
        tensor = InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return InferRequest(model_name=model, infer_inputs=inputs, **kwargs)


def _outputs(response) -> dict:
    found = {}
    for output in response.outputs:
        array = output.as_numpy()
        values = [v.decode() if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
        found[output.name] = {
            "shape": list(array.shape),
            "datatype": output.datatype,
            "data": values,
        }
    return found


def _headers(token):
    return {"authorization": f"Bearer {token}"} if token else None


def rest_health(url: str, model: str) -> dict:
    import asyncio

    from kserve import InferenceRESTClient, RESTConfig

    async def main():
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
            found = {
                "live": await client.is_server_live(url),
                "ready": await client.is_server_ready(url),
                "model_ready": await client.is_model_ready(url, model),
            }
            try:
                found["other_ready"] = await client.is_model_ready(url, "other-model")
            except Exception as e:  # the SDK raises for a 404
                found["other_ready"] = {"error": type(e).__name__, "message": str(e)}
            return found

    return asyncio.run(main())


def rest_infer(
    url: str,
    model: str,
    columns: dict,
    strings: list,
    binary: bool = False,
    token: str | None = None,
    request_id: str | None = None,
    outputs: list | None = None,
) -> dict:
    import asyncio

    import httpx
    from kserve import InferenceRESTClient, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    wanted = [RequestedOutput(n) for n in outputs] if outputs else None
    request = _request(
        model, columns, strings, binary, request_id=request_id, request_outputs=wanted
    )

    async def main():
        async with InferenceRESTClient(RESTConfig(protocol="v2", retries=0)) as client:
            try:
                response = await client.infer(
                    url, request, model_name=model, headers=_headers(token)
                )
            except httpx.HTTPStatusError as e:
                return {"error": {"status": e.response.status_code, "message": str(e)}}
            return {"id": response.id, "model": response.model_name, "outputs": _outputs(response)}

    return asyncio.run(main())


def grpc_health(target: str, model: str) -> dict:
    import asyncio

    import grpc
    from kserve import InferenceGRPCClient

    async def main():
        async with InferenceGRPCClient(target, retries=0, timeout=30) as client:
            found = {
                "live": await client.is_server_live(),
                "ready": await client.is_server_ready(),
                "model_ready": await client.is_model_ready(model),
            }
            try:
                found["other_ready"] = await client.is_model_ready("other-model")
            except grpc.RpcError as e:
                found["other_ready"] = {"error": e.code().name, "message": e.details()}
            return found

    return asyncio.run(main())


def grpc_infer(
    target: str,
    model: str,
    columns: dict,
    strings: list,
    binary: bool = True,
    token: str | None = None,
    request_id: str | None = None,
    calls: int = 1,
) -> dict:
    import asyncio

    import grpc
    from kserve import InferenceGRPCClient

    async def main():
        async with InferenceGRPCClient(target, retries=0, timeout=30) as client:
            try:
                responses = await asyncio.gather(
                    *(
                        client.infer(
                            _request(model, columns, strings, binary, request_id=request_id),
                            headers=list((_headers(token) or {}).items()),
                        )
                        for _ in range(calls)
                    )
                )
            except grpc.RpcError as e:
                return {"error": {"status": e.code().name, "message": e.details()}}
            first = responses[0]
            return {
                "id": first.id,
                "model": first.model_name,
                "outputs": _outputs(first),
                "all": [_outputs(r) for r in responses],
            }

    return asyncio.run(main())

"""``tritonclient.grpc`` calls run in a child process.

tritonclient's generated ``grpc_service_pb2`` and MLServer's ``dataplane_pb2`` both register the
``inference.*`` messages in protobuf's default descriptor pool, so the two cannot be imported in
one process (``duplicate symbol 'inference.ServerLiveRequest'``), and the suite imports MLServer.
The tests therefore drive the stock client from a fresh interpreter: ``run(scenario, **args)``
executes one function of this module there and returns its JSON result. (Our own messages live
in a private pool: ``serving/grpc_schema.py`` imports beside either.)
"""

from __future__ import annotations

import json
import subprocess
import sys


def run(scenario: str, **args) -> dict:
    """The JSON result of ``scenario(**args)`` run in a child interpreter."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import triton_grpc; "
        "print(json.dumps(getattr(triton_grpc, sys.argv[2])(**json.loads(sys.argv[3]))))"
    )
    here = __file__.rsplit("/", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", code, here, scenario, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise AssertionError(f"tritonclient.grpc scenario {scenario} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ scenarios (child process)
def _inputs(columns: dict, strings: list, shape_2d: bool = False):
    import numpy as np
    import tritonclient.grpc as grpcclient

    inputs = []
    for name, values in columns.items():
        datatype = "BYTES" if name in strings else "FP64"
        array = np.array(values, dtype=object if datatype == "BYTES" else np.float64)
        array = array.reshape(-1, 1) if shape_2d else array
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def _outputs(result, names) -> dict:
    found = {}
    for name in names:
        array = result.as_numpy(name)
        values = array.reshape(-1).tolist()
        values = [v.decode() if isinstance(v, bytes) else v for v in values]
        found[name] = {"shape": list(array.shape), "dtype": str(array.dtype), "data": values}
    return found


def health(port: int, model: str, metadata: bool = True) -> dict:
    """The health RPCs (open), and with ``metadata`` the metadata ones (need the token)."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    found = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "model_ready_v1": client.is_model_ready(model, "1"),
        "other_ready": client.is_model_ready("other-model"),
    }
    if metadata:
        server = client.get_server_metadata()
        found["server_name"] = server.name
        found["extensions"] = list(server.extensions)
        found["metadata"] = client.get_model_metadata(model, as_json=True)
    return found


def infer(
    port: int,
    model: str,
    columns: dict,
    strings: list,
    outputs: list,
    request_id: str = "",
    shape_2d: bool = False,
    token: str | None = None,
    requested: list | None = None,
) -> dict:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    headers = {"authorization": f"Bearer {token}"} if token else None
    wanted = [grpcclient.InferRequestedOutput(n) for n in requested] if requested else None
    try:
        result = client.infer(
            model,
            _inputs(columns, strings, shape_2d),
            request_id=request_id,
            headers=headers,
            outputs=wanted,
        )
    except grpcclient.InferenceServerException as e:
        return {"error": {"status": e.status(), "message": e.message()}}
    return {"id": result.get_response().id, "outputs": _outputs(result, outputs)}


def infer_raw_of_wrong_size(port: int, model: str, columns: dict, strings: list) -> dict:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = _inputs(columns, strings)
    inputs[0]._raw_content = b"\0" * (8 * len(next(iter(columns.values()))) - 4)
    try:
        client.infer(model, inputs)
    except grpcclient.InferenceServerException as e:
        return {"status": e.status(), "message": e.message()}
    return {"status": "OK"}


def metadata_with(port: int, model: str, token: str | None = None) -> dict:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    headers = {"authorization": f"Bearer {token}"} if token else None
    try:
        return {"name": client.get_model_metadata(model, headers=headers).name}
    except grpcclient.InferenceServerException as e:
        return {"error": {"status": e.status(), "message": e.message()}}


def aio_infer(port: int, model: str, columns: dict, strings: list, calls: int) -> dict:
    import asyncio

    import tritonclient.grpc.aio as aioclient

    async def main():
        client = aioclient.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            results = await asyncio.gather(
                *(client.infer(model, _inputs(columns, strings)) for _ in range(calls))
            )
        finally:
            await client.close()
        return [r.as_numpy("probabilities").reshape(-1).tolist() for r in results]

    return {"probabilities": asyncio.run(main())}

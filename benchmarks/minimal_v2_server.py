"""The baseline a user would write in an afternoon: uvicorn (httptools, uvloop) + onnxruntime +
orjson, answering Open Inference Protocol V2 with the ONNX graph's own tensors.

``python benchmarks/minimal_v2_server.py BUNDLE_DIR PORT`` (run by bench_serving.py)."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from floor_servers import lifespan

DTYPES = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32}
V2_TYPES = {np.dtype(v): k for k, v in DTYPES.items()}


def make_app(bundle_dir: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        f"{bundle_dir}/model.onnx", options, providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]
    json_header = [(b"content-type", b"application/json")]

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["method"] == "GET":  # /v2/health/ready and friends
            await send({"type": "http.response.start", "status": 200, "headers": json_header})
            await send({"type": "http.response.body", "body": b'{"ready":true}'})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = orjson.loads(body)
        feed = {
            i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
            for i in request["inputs"]
        }
        results = session.run(outputs, feed)
        reply = {
            "model_name": scope["path"].split("/")[3],
            "outputs": [
                {
                    "name": name,
                    "datatype": V2_TYPES.get(array.dtype, "FP32"),
                    "shape": list(array.shape),
                    "data": array.ravel().tolist(),
                }
                for name, array in zip(outputs, results, strict=True)
            ],
        }
        await send({"type": "http.response.start", "status": 200, "headers": json_header})
        await send({"type": "http.response.body", "body": orjson.dumps(reply)})

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")

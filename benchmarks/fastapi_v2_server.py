"""The other baseline a user would write: FastAPI + pydantic request models + onnxruntime on
uvicorn (httptools, uvloop), answering Open Inference Protocol V2 with the graph's own tensors.
The handler is ``async def`` (no thread-pool hop: the fastest way FastAPI offers) and the response
is returned as a dict (FastAPI validates and serialises it, as most services do).

``python benchmarks/fastapi_v2_server.py BUNDLE_DIR PORT`` (run by bench_serving.py)."""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

DTYPES = {"FP64": np.float64, "FP32": np.float32, "INT64": np.int64, "INT32": np.int32}
V2_TYPES = {np.dtype(v): k for k, v in DTYPES.items()}


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list


class InferenceRequest(BaseModel):
    inputs: list[RequestInput]


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list


class InferenceResponse(BaseModel):
    model_name: str
    outputs: list[ResponseOutput]


def make_app(bundle_dir: str) -> FastAPI:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        f"{bundle_dir}/model.onnx", options, providers=["CPUExecutionProvider"]
    )
    outputs = [o.name for o in session.get_outputs()]
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}

    @app.post("/v2/models/{model_name}/infer", response_model=InferenceResponse)
    async def infer(model_name: str, request: InferenceRequest) -> InferenceResponse:
        feed = {
            i.name: np.asarray(i.data, dtype=DTYPES[i.datatype]).reshape(i.shape)
            for i in request.inputs
        }
        results = session.run(outputs, feed)
        return InferenceResponse(
            model_name=model_name,
            outputs=[
                ResponseOutput(
                    name=name,
                    datatype=V2_TYPES.get(array.dtype, "FP32"),
                    shape=list(array.shape),
                    data=array.ravel().tolist(),
                )
                for name, array in zip(outputs, results, strict=True)
            ],
        )

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")

"""PyTorch -> ONNX with ``torch.onnx.export``: a module taking one float32 matrix, batch axis dynamic.

The MLflow ``pytorch`` pyfunc feeds the whole input frame as one float32 tensor
(``df.to_numpy(dtype=float32)``) and returns the module's output, so the graph has one input
``input`` bound to every sample column and one output ``output`` with role ``value``.

Exporters (``options.extra["torch_exporter"]``):

* ``"torchscript"``: the legacy tracer (``dynamo=False``, ``dynamic_axes``); fast, and the default
  for ordinary ``nn.Module``s and ``ScriptModule``s.
* ``"dynamo"``: ``torch.export``-based; the default for modules loaded from MLflow's ``pt2``
  format (``torch.export.load(...).module()``), which the tracer cannot export.
"""

from __future__ import annotations

import contextlib
import io as _io
import logging
import warnings
from typing import Any

import numpy as np
import onnx
import pandas as pd

from mlflow_deploy_plugins.core.iospec import VALUE, IOSpec, spec_inputs_from_columns
from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError, UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters._graph import (
    graph_shape,
    outputs_from_graph,
    table_dtype,
)
from mlflow_deploy_plugins.onnx.converters.base import (
    ConversionOptions,
    ConvertedModel,
    SourceModel,
    package_version,
)

_logger = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "output"
EXPORTERS = ("torchscript", "dynamo")


class TorchConverter:
    flavors = ("pytorch",)

    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        module = _check_module(source.native)
        inputs = _input_bindings(sample)
        exporter = _exporter(module, options)
        io = IOSpec(inputs=inputs, outputs=(), task="regression", default_role=VALUE)
        reference = self.reference_outputs(source, sample.head(2), io)
        example = _example(sample[list(inputs[0].columns)])
        onx = _export(module, example, exporter, options.target_opset)
        _check_batch_axis(onx)
        task = _task(module)
        io = IOSpec(
            inputs=inputs,
            outputs=outputs_from_graph(onx, {OUTPUT_NAME: VALUE}, reference),
            task=task,
            default_role=VALUE,
        )
        notes = [f"exported with the {exporter} exporter"]
        opset = next((o.version for o in onx.opset_import if o.domain in ("", "ai.onnx")), None)
        if opset is not None and opset != options.target_opset:
            notes.append(f"opset {opset} (asked for {options.target_opset})")
        if task == "other":
            notes.append("the module ends with a softmax/sigmoid: task 'other', role 'value'")
        return ConvertedModel(
            onnx_model=onx,
            io=io,
            converter=f"torch.onnx.export[{exporter}]",
            converter_version=package_version("torch"),
            notes=notes,
        )

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        import torch

        module = _check_module(source.native)
        frame = sample[io.columns] if io.columns else sample
        x = torch.from_numpy(frame.to_numpy(dtype=np.float32))
        device = next((p.device for p in module.parameters()), None)
        if device is not None:
            x = x.to(device)
        try:
            with torch.no_grad(), _eval_mode(module):
                out = module(x)
        except Exception as e:  # shape mismatches surface as RuntimeError
            raise InvalidInputError(
                f"{_describe(module)} failed on the sample ({x.shape[1]} float32 columns "
                f"{list(frame.columns)}): {type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, torch.Tensor):
            raise UnsupportedModelError(
                f"{_describe(module)} returns {type(out).__name__}; only modules returning one "
                "tensor can be converted"
            )
        out = out.detach().cpu().numpy()
        if out.ndim == 0 or out.shape[0] != len(frame):
            raise UnsupportedModelError(
                f"{_describe(module)} returns shape {out.shape} for {len(frame)} rows; the first "
                "axis of the output must be the batch axis"
            )
        return {VALUE: out}


# --------------------------------------------------------------------------- helpers
def _check_module(native: Any):
    import torch

    if not isinstance(native, torch.nn.Module):
        raise UnsupportedModelError(
            f"Cannot convert {type(native).__module__}.{type(native).__name__} with the PyTorch "
            "converter: expected a torch.nn.Module"
        )
    return native


def _input_bindings(sample: pd.DataFrame):
    columns = [str(c) for c in sample.columns]
    if not columns:
        raise InvalidInputError("The sample has no columns; the model's input width is unknown")
    non_numeric = [c for c in columns if table_dtype(sample[c]) == "string"]
    if non_numeric:
        raise InvalidInputError(
            f"Column(s) {non_numeric} hold strings but a PyTorch model takes one float32 matrix"
        )
    return spec_inputs_from_columns(
        columns, ["float32"] * len(columns), per_column=False, name=INPUT_NAME
    )


def _is_exported(module: Any) -> bool:
    """Modules from ``torch.export.load(...).module()`` refuse ``train()``/``eval()``."""
    import torch

    if not isinstance(module, torch.fx.GraphModule):
        return False
    try:
        module.train(module.training)
    except NotImplementedError:
        return True
    return False


@contextlib.contextmanager
def _eval_mode(module: Any):
    """Evaluation mode for the duration, restoring every submodule's mode afterwards."""
    if _is_exported(module):
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _exporter(module: Any, options: ConversionOptions) -> str:
    exporter = options.extra.get("torch_exporter")
    if exporter is None:
        return "dynamo" if _is_exported(module) else "torchscript"
    if exporter not in EXPORTERS:
        raise InvalidInputError(
            f"Unknown torch_exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}"
        )
    if exporter == "torchscript" and _is_exported(module):
        raise InvalidInputError(
            "torch_exporter='torchscript' cannot export a module loaded from the pt2 format "
            "(torch.export); use 'dynamo'"
        )
    return exporter


def _example(frame: pd.DataFrame):
    """The export example: at least two rows, so no exporter specialises the batch axis to 1."""
    import torch

    x = frame.head(2).to_numpy(dtype=np.float32)
    if len(x) < 2:
        if len(x) == 0:
            raise InvalidInputError("The sample has no rows; the model cannot be traced")
        x = np.repeat(x, 2, axis=0)
    return torch.from_numpy(x)


def _export(module: Any, example, exporter: str, opset: int) -> onnx.ModelProto:
    import torch

    try:
        with torch.no_grad(), _eval_mode(module), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            if _is_exported(module):  # its graph was captured when it was logged
                warnings.filterwarnings(
                    "ignore", message="Exporting a model while it is in training"
                )
            if exporter == "torchscript":
                buffer = _io.BytesIO()
                torch.onnx.export(
                    module,
                    (example,),
                    buffer,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamo=False,
                    dynamic_axes={INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
                )
                return onnx.load_from_string(buffer.getvalue())
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("N")},),
                verbose=False,
            )
            return program.model_proto
    except Exception as e:  # torch raises many types (TorchExportError, UnsupportedOperatorError)
        raise ConversionError(
            f"torch.onnx.export ({exporter}) could not export {_describe(module)}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _check_batch_axis(model: onnx.ModelProto) -> None:
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        raise ConversionError(
            f"The exported graph has {len(model.graph.input)} input(s) and "
            f"{len(model.graph.output)} output(s); expected one of each"
        )
    for vi in (model.graph.input[0], model.graph.output[0]):
        shape = graph_shape(vi)
        if not shape or shape[0] is not None:
            raise ConversionError(
                f"The exported graph's '{vi.name}' has shape {shape}: its batch axis is not "
                "dynamic (a pt2 model logged with a one-row input_example has a static batch)"
            )


def _task(module: Any) -> str:
    """'regression', or 'other' when an ``nn.Sequential`` obviously ends in a softmax/sigmoid."""
    import torch

    last = module[-1] if isinstance(module, torch.nn.Sequential) and len(module) else None
    if isinstance(last, (torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Sigmoid)):
        return "other"
    return "regression"


def _describe(module: Any) -> str:
    return f"{type(module).__module__}.{type(module).__name__}"

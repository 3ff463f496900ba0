"""Helpers shared by the converters of onnxmltools-converted tree boosters (LightGBM, XGBoost):
opset cap, matrix inputs, dynamic batch axis, positive-class column, roles, and
``OnnxmltoolsTreeConverter``, the ``convert()`` / ``reference_outputs()`` flow they share."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pandas as pd

from mlflow_deploy_plugins.core.iospec import (
    LABEL,
    PROBABILITIES,
    VALUE,
    InputBinding,
    IOSpec,
    spec_inputs_from_columns,
)
from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError
from mlflow_deploy_plugins.onnx.converters import categorical
from mlflow_deploy_plugins.onnx.converters._graph import (
    default_roles,
    outputs_from_graph,
    rewrite_output,
    table_dtype,
)
from mlflow_deploy_plugins.onnx.converters.base import (
    ConversionOptions,
    ConvertedModel,
    SourceModel,
    package_version,
)

#: onnxmltools refuses a higher ``target_opset`` for tree models.
ONNXMLTOOLS_MAX_OPSET = 15

#: what a model predicts; decides roles, the default role and the reference outputs.
BINARY, MULTICLASS, REGRESSION, RANKING = "binary", "multiclass", "regression", "ranking"

#: pyfunc_predict_fn values whose output role we know.
_PREDICT_FN_ROLE = {"predict": None, "predict_proba": PROBABILITIES}


def clamp_opset(target_opset: int) -> tuple[int, list[str]]:
    """onnxmltools' tree converters stop at opset 15 (the graph uses far older operators)."""
    if target_opset > ONNXMLTOOLS_MAX_OPSET:
        return ONNXMLTOOLS_MAX_OPSET, [
            f"target_opset {target_opset} lowered to {ONNXMLTOOLS_MAX_OPSET} (onnxmltools maximum)"
        ]
    return target_opset, []


def matrix_inputs(
    feature_names: list[str] | None,
    n_features: int,
    sample: pd.DataFrame,
    what: str,
    strict_names: bool,
) -> tuple[tuple[InputBinding, ...], list[str]]:
    """One float32 matrix input ``X`` for a tree model and the notes about how columns were picked.

    The model's own feature names win when the sample has them all. Otherwise, if
    ``strict_names`` is false (the source reads columns by position, like LightGBM) or the model
    has no names, the sample's columns are used positionally when there are exactly
    ``n_features`` of them.

    Raises:
        InvalidInputError: the sample does not provide the model's features, or holds strings.
    """
    notes: list[str] = []
    sample_columns = [str(c) for c in sample.columns]
    if feature_names is not None and all(c in sample_columns for c in feature_names):
        columns = list(feature_names)
    elif feature_names is not None and strict_names:
        missing = [c for c in feature_names if c not in sample_columns]
        raise InvalidInputError(
            f"The sample is missing column(s) {missing} that {what} was fitted on ({feature_names})"
        )
    elif len(sample_columns) == n_features:
        columns = sample_columns
        if feature_names is not None:
            notes.append(
                f"the model's feature names {feature_names} are not the sample's columns; the "
                "sample's columns are used by position"
            )
    else:
        raise InvalidInputError(
            f"{what} takes {n_features} feature(s)"
            + (f" {feature_names}" if feature_names is not None else "")
            + f" but the sample has {len(sample_columns)} column(s) {sample_columns}"
        )
    non_numeric = [c for c in columns if table_dtype(sample[c]) == "string"]
    if non_numeric:
        raise InvalidInputError(
            f"Column(s) {non_numeric} hold strings or categories but {what} takes one numeric "
            "matrix; encode them as numbers before training"
        )
    return spec_inputs_from_columns(columns, ["float32"] * len(columns), per_column=False), notes


def dynamic_batch(model: onnx.ModelProto) -> None:
    """Declare the first axis of every output as the batch axis ``N``.

    onnxmltools declares some outputs with a fixed first dimension (``label`` as ``[1]``), which
    makes onnxruntime warn on every batch of more than one row.
    """
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"


def positive_class_probability(model: onnx.ModelProto, name: str) -> None:
    """Rewrite the ``[N, 2]`` output ``name`` into its column 1, shape ``[N]``, in place."""
    from onnx import TensorProto, helper

    index = helper.make_tensor(f"{name}_positive_column", TensorProto.INT64, [], [1])
    rewrite_output(model, name, "Gather", constants=[index], batch_only=True, axis=1)


def booster_reference(kind: str, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Reference outputs of a raw Booster from what its ``predict`` returned."""
    if kind == BINARY:
        return {LABEL: (pred > 0.5).astype(np.int64), PROBABILITIES: pred}
    if kind == MULTICLASS:
        return {LABEL: pred.argmax(axis=1).astype(np.int64), PROBABILITIES: pred}
    return {VALUE: pred}


def default_role(pyfunc_predict_fn: str | None, kind: str, raw_booster: bool) -> str:
    """The role matching what the source pyfunc returns."""
    if kind not in (BINARY, MULTICLASS):
        return VALUE
    if raw_booster:
        return PROBABILITIES  # Booster.predict returns probabilities
    return _PREDICT_FN_ROLE.get(pyfunc_predict_fn or "predict") or LABEL


def name_for_role(roles: dict[str, str], role: str) -> str:
    for name, r in roles.items():
        if r == role:
            return name
    raise ConversionError(f"The converted graph has no {role} output (outputs: {sorted(roles)})")


def sklearn_api_methods(roles: dict[str, str]) -> dict[str, str]:
    """Role -> the scikit-learn API model's method behind it (see ``sklearn_outputs.py``)."""
    method = {LABEL: "predict", PROBABILITIES: "predict_proba", VALUE: "predict"}
    return {role: method[role] for role in roles.values() if role in method}


class OnnxmltoolsTreeConverter:
    """The conversion flow of a tree booster converted by onnxmltools.

    Subclasses name their ``flavors`` and fill in the hooks below: how to recognise and inspect
    the framework's models, which onnxmltools function converts them, and what the source
    predicts for a raw Booster.
    """

    flavors: tuple[str, ...] = ()
    #: False when the source reads columns by position (see ``matrix_inputs``).
    strict_names = True
    #: kinds whose graph has label and probabilities outputs.
    classifier_kinds: tuple[str, ...] = (BINARY, MULTICLASS)
    #: notes added to a converted classifier.
    classifier_notes: tuple[str, ...] = ()

    # ----------------------------------------------------------------------------- the flow
    def convert(
        self, source: SourceModel, sample: pd.DataFrame, options: ConversionOptions
    ) -> ConvertedModel:
        from onnxmltools.convert.common.data_types import FloatTensorType

        model = source.native
        kind, objective = self._kind(model)
        booster = self._booster(model)
        categories = self._categories(model, booster)
        if categories:
            columns = self._feature_names(booster)
            inputs = categorical.table_inputs(columns, categories, sample, self._describe(model))
            notes = [
                f"categorical column(s) {sorted(categories)} take the category values; the graph "
                f"maps them to the training categories' codes (unseen: {self.unseen_categories})"
            ]
        else:
            inputs, notes = matrix_inputs(
                self._feature_names(booster),
                self._num_features(booster),
                sample,
                self._describe(model),
                strict_names=self.strict_names,
            )
        matrix = "X" if categories else inputs[0].name
        n_columns = sum(len(b.columns) for b in inputs)
        opset, opset_notes = clamp_opset(options.target_opset)
        try:
            onx = self._onnxmltools_convert(
                model, objective, [(matrix, FloatTensorType([None, n_columns]))], opset
            )
        except Exception as e:  # onnxmltools raises RuntimeError/NotImplementedError/ValueError/...
            raise ConversionError(
                f"onnxmltools could not convert {self._describe(model)} (objective {objective!r}): "
                f"{type(e).__name__}: {e}"
            ) from e
        dynamic_batch(onx)
        if categories:
            categorical.prepend_encoder(onx, matrix, columns, categories)
        roles = default_roles(onx)
        raw_booster = self._is_booster(model)
        self._postprocess(onx, roles, objective, notes)
        if raw_booster and kind == BINARY:
            positive_class_probability(onx, name_for_role(roles, PROBABILITIES))
            notes.append(
                "binary Booster: the probabilities output is P(class=1), shape [N], "
                "as Booster.predict returns it"
            )

        classifier = kind in self.classifier_kinds
        task = "classification" if classifier else "other" if kind == RANKING else "regression"
        io = IOSpec(inputs=inputs, outputs=(), task=task)
        reference = self.reference_outputs(source, sample.head(2), io)
        io = IOSpec(
            inputs=inputs,
            outputs=outputs_from_graph(onx, roles, reference),
            task=task,
            classes=self._classes(model, kind, booster) if classifier else None,
            default_role=self._default_role(source.pyfunc_predict_fn, kind, raw_booster),
            extra={
                **({} if raw_booster else {"source_methods": sklearn_api_methods(roles)}),
                **(categorical.io_extra(categories, self.unseen_categories) if categories else {}),
            },
        )
        return ConvertedModel(
            onnx_model=onx,
            io=io,
            converter="onnxmltools",
            converter_version=package_version("onnxmltools"),
            notes=[*notes, *opset_notes, *(self.classifier_notes if classifier else ())],
        )

    def reference_outputs(
        self, source: SourceModel, sample: pd.DataFrame, io: IOSpec
    ) -> dict[str, np.ndarray]:
        model = source.native
        kind, _ = self._kind(model)
        x = self._native_input(model, sample, io)
        if self._is_booster(model):
            return self._booster_reference(model, kind, x)
        if kind in self.classifier_kinds:
            return {
                LABEL: np.asarray(model.predict(x)),
                PROBABILITIES: np.asarray(model.predict_proba(x)),
            }
        return {VALUE: np.asarray(model.predict(x))}

    # ---------------------------------------------------------------------------- the hooks
    def _categories(self, model: Any, booster: Any) -> dict[str, list]:
        """Training categories of each pandas ``category`` column, by column name ({}: none)."""
        return {}

    #: what the source does with a category it never saw (see ``categorical.py``)
    unseen_categories = categorical.UNSEEN_IS_MISSING

    def _is_booster(self, model: Any) -> bool:
        raise NotImplementedError

    def _booster(self, model: Any) -> Any:
        """The framework's Booster behind ``model`` (``model`` itself when it is one)."""
        raise NotImplementedError

    def _kind(self, model: Any) -> tuple[str, str]:
        """(kind, objective); UnsupportedModelError for what onnxmltools gets wrong."""
        raise NotImplementedError

    def _describe(self, model: Any) -> str:
        raise NotImplementedError

    def _feature_names(self, booster: Any) -> list[str] | None:
        """The names the model was fitted on, None when it has none."""
        raise NotImplementedError

    def _num_features(self, booster: Any) -> int:
        raise NotImplementedError

    def _onnxmltools_convert(
        self, model: Any, objective: str, initial_types: list, target_opset: int
    ) -> onnx.ModelProto:
        raise NotImplementedError

    def _postprocess(
        self, onx: onnx.ModelProto, roles: dict[str, str], objective: str, notes: list[str]
    ) -> None:
        """Fix up the converted graph in place (before the binary Booster rewrite)."""

    def _classes(self, model: Any, kind: str, booster: Any) -> tuple:
        raise NotImplementedError

    def _default_role(self, pyfunc_predict_fn: str | None, kind: str, raw_booster: bool) -> str:
        return default_role(pyfunc_predict_fn, kind, raw_booster)

    def _native_input(self, model: Any, sample: pd.DataFrame, io: IOSpec) -> Any:
        """What the source model's ``predict`` is given for ``sample``."""
        raise NotImplementedError

    def _booster_reference(self, model: Any, kind: str, x: Any) -> dict[str, np.ndarray]:
        """Reference outputs of a raw Booster for the native input ``x``."""
        return booster_reference(kind, np.asarray(model.predict(x)))

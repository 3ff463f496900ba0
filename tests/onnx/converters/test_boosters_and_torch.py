"""LightGBM, XGBoost, PyTorch and ONNX-passthrough converters on real tiny MLflow models.

Each case saves a model with its MLflow flavor, loads it back the way the plugin does, converts it,
runs the ONNX graph in onnxruntime and checks it against ``reference_outputs`` and against what
the source pyfunc returns.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from mlflow.models import Model

from mlflow_deploy_plugins.core.iospec import LABEL, PROBABILITIES, VALUE
from mlflow_deploy_plugins.errors import ConversionError, InvalidInputError, UnsupportedModelError
from mlflow_deploy_plugins.onnx.converters.base import ConversionOptions, SourceModel

ATOL, RTOL = 1e-4, 1e-3
COLUMNS = ["a", "b", "c", "d"]


# --------------------------------------------------------------------------- fixtures & helpers
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # float32, as served: the source, its reference and the ONNX graph all see the same values
    df = pd.DataFrame(rng.normal(size=(120, 4)).astype(np.float32), columns=COLUMNS)
    x = df.to_numpy()
    return {
        "df": df,
        "holdout": pd.DataFrame(rng.normal(size=(60, 4)).astype(np.float32), columns=COLUMNS),
        "x": x,
        "binary": (x[:, 0] + x[:, 1] > 0).astype(int),
        "multi": (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int),
        "reg": np.abs(2 * x[:, 0] + x[:, 2]) + 0.1,
    }


def _source(flavor: str, path, native) -> SourceModel:
    path = str(path)
    return SourceModel(
        model_uri=path,
        flavor=flavor,
        native=native,
        local_path=path,
        flavor_conf=Model.load(path).flavors[flavor],
    )


def _run(converted, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Run the ONNX graph on ``df`` (as float32 where bound so), outputs reshaped per the IOSpec."""
    io = converted.io
    session = ort.InferenceSession(
        converted.onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feed = io.encode_columns({c: df[c].to_numpy() for c in io.columns})
    names = [o.name for o in io.outputs]
    results = dict(zip(names, session.run(names, feed), strict=True))
    return {o.role: results[o.name].reshape((len(df), *o.shape[1:])) for o in io.outputs}


def _assert_close(got, expected, role: str) -> None:
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, (role, got.shape, expected.shape)
    if role == LABEL:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def _assert_parity(converter, source, converted, df: pd.DataFrame) -> None:
    """Every output agrees with reference_outputs; the default role with the source pyfunc."""
    import mlflow.pyfunc

    got = _run(converted, df)
    reference = converter.reference_outputs(source, df, converted.io)
    assert set(got) == set(reference)
    for role, expected in reference.items():
        _assert_close(got[role], expected, role)
    pyfunc_pred = np.asarray(mlflow.pyfunc.load_model(source.local_path).predict(df))
    _assert_close(got[converted.io.default_role], pyfunc_pred, converted.io.default_role)


def _convert(converter, source, df, **extra):
    return converter.convert(source, df, ConversionOptions(extra=extra))


# --------------------------------------------------------------------------- LightGBM
def _lgb_case(name, data):
    import lightgbm as lgb

    df, x = data["df"], data["x"]
    small = {"verbose": -1, "num_leaves": 4}
    if name == "booster-binary-named":
        return lgb.train({"objective": "binary", **small}, lgb.Dataset(df, data["binary"]), 5)
    if name == "booster-multiclass-unnamed":
        params = {"objective": "multiclass", "num_class": 3, **small}
        return lgb.train(params, lgb.Dataset(x, data["multi"]), 5)
    if name == "booster-regression-l1-alias":
        return lgb.train({"objective": "l1", **small}, lgb.Dataset(x, data["reg"]), 5)
    if name == "classifier-string-labels":
        labels = np.array(["low", "mid", "high"])[data["multi"]]
        return lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(df, labels)
    if name == "regressor":
        return lgb.LGBMRegressor(n_estimators=5, num_leaves=4, verbose=-1).fit(x, data["reg"])
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("case", "task", "default_role", "classes", "shapes"),
    [
        ("booster-binary-named", "classification", PROBABILITIES, (0, 1), {PROBABILITIES: (None,)}),
        (
            "booster-multiclass-unnamed",
            "classification",
            PROBABILITIES,
            (0, 1, 2),
            {PROBABILITIES: (None, 3)},
        ),
        ("booster-regression-l1-alias", "regression", VALUE, None, {VALUE: (None,)}),
        (
            "classifier-string-labels",
            "classification",
            LABEL,
            ("high", "low", "mid"),
            {LABEL: (None,)},
        ),
        ("regressor", "regression", VALUE, None, {VALUE: (None,)}),
    ],
)
def test_lightgbm(tmp_path, data, case, task, default_role, classes, shapes):
    pytest.importorskip("lightgbm")
    import mlflow.lightgbm

    from mlflow_deploy_plugins.onnx.converters.lightgbm import LightGBMConverter

    path = tmp_path / "model"
    mlflow.lightgbm.save_model(_lgb_case(case, data), str(path), pip_requirements=["lightgbm"])
    source = _source("lightgbm", path, mlflow.lightgbm.load_model(str(path)))
    converter = LightGBMConverter()

    converted = _convert(converter, source, data["df"])

    io = converted.io
    assert io.columns == COLUMNS
    assert [b.name for b in io.inputs] == ["X"] and io.inputs[0].dtype == "float32"
    assert (io.task, io.default_role, io.classes) == (task, default_role, classes)
    for role, shape in shapes.items():
        assert io.output_for(role).shape == shape
    assert converted.converter == "onnxmltools"
    _assert_parity(converter, source, converted, data["df"])


def test_lightgbm_rejects_multiclassova_and_short_sample(tmp_path, data):
    pytest.importorskip("lightgbm")
    import lightgbm as lgb

    from mlflow_deploy_plugins.onnx.converters.lightgbm import LightGBMConverter

    params = {"objective": "multiclassova", "num_class": 3, "verbose": -1, "num_leaves": 4}
    ova = lgb.train(params, lgb.Dataset(data["x"], data["multi"]), 3)
    source = SourceModel("m", "lightgbm", ova, str(tmp_path))
    with pytest.raises(UnsupportedModelError, match="multiclassova"):
        LightGBMConverter().convert(source, data["df"], ConversionOptions())

    reg = _lgb_case("regressor", data)
    source = SourceModel("m", "lightgbm", reg, str(tmp_path))
    with pytest.raises(InvalidInputError, match="takes 4 feature"):
        LightGBMConverter().convert(source, data["df"][["a", "b"]], ConversionOptions())


# --------------------------------------------------------------------------- XGBoost
def _xgb_case(name, data):
    import xgboost as xgb

    df, x = data["df"], data["x"]
    small = {"max_depth": 2}
    if name == "booster-binary-named":
        params = {"objective": "binary:logistic", **small}
        return xgb.train(params, xgb.DMatrix(df, data["binary"]), 5)
    if name == "booster-softprob-unnamed":
        params = {"objective": "multi:softprob", "num_class": 3, **small}
        return xgb.train(params, xgb.DMatrix(x, data["multi"]), 5)
    if name == "booster-softmax":
        params = {"objective": "multi:softmax", "num_class": 3, **small}
        return xgb.train(params, xgb.DMatrix(df, data["multi"]), 5)
    if name == "booster-regression":
        params = {"objective": "reg:squarederror", **small}
        return xgb.train(params, xgb.DMatrix(df, data["reg"]), 5)
    if name == "classifier-named":
        return xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(df, data["binary"])
    if name == "regressor-unnamed":
        return xgb.XGBRegressor(n_estimators=5, max_depth=2).fit(x, data["reg"])
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("case", "task", "default_role", "classes", "shapes"),
    [
        ("booster-binary-named", "classification", PROBABILITIES, (0, 1), {PROBABILITIES: (None,)}),
        (
            "booster-softprob-unnamed",
            "classification",
            PROBABILITIES,
            (0, 1, 2),
            {PROBABILITIES: (None, 3)},
        ),
        ("booster-softmax", "classification", LABEL, (0, 1, 2), {PROBABILITIES: (None, 3)}),
        ("booster-regression", "regression", VALUE, None, {VALUE: (None,)}),
        ("classifier-named", "classification", LABEL, (0, 1), {PROBABILITIES: (None, 2)}),
        ("regressor-unnamed", "regression", VALUE, None, {VALUE: (None,)}),
    ],
)
def test_xgboost(tmp_path, data, case, task, default_role, classes, shapes):
    pytest.importorskip("xgboost")
    import mlflow.xgboost

    from mlflow_deploy_plugins.onnx.converters.xgboost import XGBoostConverter

    path = tmp_path / "model"
    mlflow.xgboost.save_model(_xgb_case(case, data), str(path), pip_requirements=["xgboost"])
    source = _source("xgboost", path, mlflow.xgboost.load_model(str(path)))
    converter = XGBoostConverter()

    converted = _convert(converter, source, data["df"])

    io = converted.io
    assert io.columns == COLUMNS
    assert (io.task, io.default_role, io.classes) == (task, default_role, classes)
    for role, shape in shapes.items():
        assert io.output_for(role).shape == shape
    _assert_parity(converter, source, converted, data["df"])


def test_xgboost_rejects_logitraw_and_missing_named_column(tmp_path, data):
    pytest.importorskip("xgboost")
    import xgboost as xgb

    from mlflow_deploy_plugins.onnx.converters.xgboost import XGBoostConverter

    params = {"objective": "binary:logitraw", "max_depth": 2}
    raw = xgb.train(params, xgb.DMatrix(data["x"], data["binary"]), 3)
    with pytest.raises(UnsupportedModelError, match="binary:logitraw"):
        XGBoostConverter().convert(
            SourceModel("m", "xgboost", raw, str(tmp_path)), data["df"], ConversionOptions()
        )

    named = _xgb_case("classifier-named", data)
    sample = data["df"].rename(columns={"d": "z"})
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) \['d'\]"):
        XGBoostConverter().convert(
            SourceModel("m", "xgboost", named, str(tmp_path)), sample, ConversionOptions()
        )


# --------------------------------------------------------------------------- boosters in sklearn
@pytest.mark.parametrize("booster", ["lightgbm", "xgboost"])
def test_sklearn_pipeline_with_booster(tmp_path, data, booster):
    pytest.importorskip(booster)
    import mlflow.sklearn
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mlflow_deploy_plugins.onnx.converters.sklearn import SklearnConverter

    if booster == "lightgbm":
        from lightgbm import LGBMClassifier

        estimator = LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1)
    else:
        from xgboost import XGBClassifier

        estimator = XGBClassifier(n_estimators=5, max_depth=2)
    pipeline = make_pipeline(StandardScaler(), estimator).fit(data["df"], data["multi"])
    path = tmp_path / "model"
    mlflow.sklearn.save_model(
        pipeline, str(path), serialization_format="cloudpickle", pip_requirements=["scikit-learn"]
    )
    source = _source("sklearn", path, mlflow.sklearn.load_model(str(path)))
    converter = SklearnConverter()

    converted = _convert(converter, source, data["df"])

    assert converted.io.task == "classification"
    assert converted.io.classes == (0, 1, 2)
    # Held-out rows: on the training rows a scaled value can sit exactly on a split threshold
    # (XGBoost cuts at data points), where the float32 scaler in ONNX and sklearn's float64 one
    # land on different sides.
    _assert_parity(converter, source, converted, data["holdout"])


# --------------------------------------------------------------------------- PyTorch
def _mlp(n_in=4, n_out=2):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, 8), torch.nn.ReLU(), torch.nn.Linear(8, n_out)
    ).eval()


@pytest.mark.parametrize(("fmt", "exporter"), [("pickle", "torchscript"), ("pt2", "dynamo")])
def test_torch_mlp(tmp_path, data, fmt, exporter):
    pytest.importorskip("torch")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from mlflow_deploy_plugins.onnx.converters.torch import TorchConverter

    module = _mlp()
    path = tmp_path / "model"
    if fmt == "pt2":
        example = data["x"][:5]
        with torch.no_grad():
            signature = infer_signature(example, module(torch.from_numpy(example)).numpy())
        mlflow.pytorch.save_model(
            module,
            str(path),
            serialization_format="pt2",
            input_example=example,
            signature=signature,
            pip_requirements=["torch"],
        )
    else:
        mlflow.pytorch.save_model(
            module, str(path), serialization_format="pickle", pip_requirements=["torch"]
        )
    source = _source("pytorch", path, mlflow.pytorch.load_model(str(path)))
    converter = TorchConverter()

    converted = _convert(converter, source, data["df"])

    io = converted.io
    assert converted.converter == f"torch.onnx.export[{exporter}]"
    assert [b.name for b in io.inputs] == ["input"] and io.columns == COLUMNS
    assert (io.task, io.default_role) == ("regression", VALUE)
    assert io.output_for(VALUE).shape == (None, 2)
    _assert_parity(converter, source, converted, data["df"])
    # the batch axis is dynamic: one row works as well as many
    with torch.no_grad():
        first = module(torch.from_numpy(data["x"][:1])).numpy()
    _assert_close(_run(converted, data["df"].head(1))[VALUE], first, VALUE)


def test_torch_invalid_cases(tmp_path, data):
    pytest.importorskip("torch")
    import torch

    from mlflow_deploy_plugins.onnx.converters.torch import TorchConverter

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.linear(x), self.linear(x)

    def convert(native, sample, **extra):
        source = SourceModel("m", "pytorch", native, str(tmp_path))
        return TorchConverter().convert(source, sample, ConversionOptions(extra=extra))

    with pytest.raises(UnsupportedModelError, match="returns tuple"):
        convert(TwoHeads(), data["df"])
    with pytest.raises(InvalidInputError, match="failed on the sample"):
        convert(_mlp(), data["df"][["a", "b"]])
    with pytest.raises(InvalidInputError, match="Unknown torch_exporter"):
        convert(_mlp(), data["df"], torch_exporter="jit")
    with pytest.raises(UnsupportedModelError, match=r"expected a torch\.nn\.Module"):
        convert(object(), data["df"])


# --------------------------------------------------------------------------- ONNX passthrough
def _save_onnx(model: onnx.ModelProto, path):
    import mlflow.onnx

    mlflow.onnx.save_model(model, str(path), pip_requirements=["onnx"])
    return _source("onnx", path, mlflow.onnx.load_model(str(path)))


def _logistic_onnx(data, zipmap: bool) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression().fit(data["x"], data["multi"])
    return convert_sklearn(
        clf,
        initial_types=[("features", FloatTensorType([None, 4]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(clf): {"zipmap": zipmap}},
    )


def _two_input_onnx() -> onnx.ModelProto:
    """y = [a, b] @ w with a as [N, 1] and b as [N]: one column per input."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["b", "axis1"], ["b2"]),
            helper.make_node("Concat", ["a", "b2"], ["ab"], axis=1),
            helper.make_node("MatMul", ["ab", "w"], ["score"]),
        ],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N"]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[
            helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
            helper.make_tensor("w", TensorProto.FLOAT, [2, 1], [2.0, -0.5]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_passthrough_classifier(tmp_path, data):
    from mlflow_deploy_plugins.onnx.converters.onnx_passthrough import OnnxPassthroughConverter

    source = _save_onnx(_logistic_onnx(data, zipmap=False), tmp_path / "model")
    original = source.native.SerializeToString()
    converter = OnnxPassthroughConverter()

    converted = _convert(converter, source, data["df"])

    io = converted.io
    assert [(b.name, b.columns) for b in io.inputs] == [("features", tuple(COLUMNS))]
    assert (io.task, io.default_role, io.classes) == ("classification", LABEL, (0, 1, 2))
    assert io.output_for(PROBABILITIES).shape == (None, 3)
    assert converted.onnx_model.SerializeToString() == original
    assert converted.onnx_model is not source.native
    got = _run(converted, data["df"])
    reference = converter.reference_outputs(source, data["df"], io)
    for role in (LABEL, PROBABILITIES):
        _assert_close(got[role], reference[role], role)


def test_onnx_passthrough_column_per_input_and_zipmap(tmp_path, data):
    from mlflow_deploy_plugins.onnx.converters.onnx_passthrough import OnnxPassthroughConverter

    converter = OnnxPassthroughConverter()
    source = _save_onnx(_two_input_onnx(), tmp_path / "two")
    converted = _convert(converter, source, data["df"])
    io = converted.io
    assert [(b.name, b.columns, b.shape) for b in io.inputs] == [
        ("a", ("a",), (None, 1)),
        ("b", ("b",), (None,)),
    ]
    assert (io.task, io.default_role, io.output_for(VALUE).shape) == (
        "regression",
        VALUE,
        (None, 1),
    )
    expected = (2.0 * data["x"][:, 0] - 0.5 * data["x"][:, 1]).reshape(-1, 1)
    _assert_close(_run(converted, data["df"])[VALUE], expected, VALUE)

    source = _save_onnx(_logistic_onnx(data, zipmap=True), tmp_path / "zipmap")
    converted = _convert(converter, source, data["df"])
    assert [o.role for o in converted.io.outputs] == [LABEL]
    assert any("output_probability" in n for n in converted.notes)
    _assert_close(
        _run(converted, data["df"])[LABEL],
        converter.reference_outputs(source, data["df"], converted.io)[LABEL],
        LABEL,
    )


def test_onnx_passthrough_invalid_models(tmp_path, data):
    from mlflow_deploy_plugins.onnx.converters.onnx_passthrough import OnnxPassthroughConverter

    converter = OnnxPassthroughConverter()
    source = _save_onnx(_two_input_onnx(), tmp_path / "model")
    # Corrupt the saved file: a node now reads a tensor nothing produces. (mlflow.onnx.load_model
    # itself runs the checker, so load the file with onnx directly.)
    broken = onnx.load(str(tmp_path / "model" / source.flavor_conf["data"]))
    broken.graph.node[1].input[1] = "nowhere"
    onnx.save(broken, str(tmp_path / "model" / source.flavor_conf["data"]))
    source.native = onnx.load(str(tmp_path / "model" / source.flavor_conf["data"]))
    with pytest.raises(ConversionError, match="nowhere"):
        _convert(converter, source, data["df"])

    with pytest.raises(UnsupportedModelError, match="expected an onnx.ModelProto"):
        _convert(converter, SourceModel("m", "onnx", b"bytes", str(tmp_path)), data["df"])

    image = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["img"], ["out"])],
            "image",
            [onnx.helper.make_tensor_value_info("img", onnx.TensorProto.FLOAT, ["N", 3, 8])],
            [onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, ["N", 3, 8])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    with pytest.raises(UnsupportedModelError, match="Cannot bind table columns"):
        _convert(converter, SourceModel("m", "onnx", image, str(tmp_path)), data["df"])
    with pytest.raises(InvalidInputError, match=r"missing column\(s\) \['b'\]"):
        _convert(
            converter,
            SourceModel("m", "onnx", _two_input_onnx(), str(tmp_path)),
            data["df"][["a", "c"]],
        )

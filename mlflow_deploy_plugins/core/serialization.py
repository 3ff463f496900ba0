"""How a source model is serialised, told from its MLmodel (and file names) without loading it.

Loading a pickle or cloudpickle file runs whatever code the file names: the promotion automation
converts such models only with an explicit ``trust_pickle`` (docs/registry.md, threat model).
What each MLflow flavor writes (mlflow 3.x, read from its ``save_model``/``_load_model``):

- ``sklearn``: ``serialization_format`` is ``pickle``, ``cloudpickle`` or ``skops``; MLflow's
  loader reads a missing key as ``pickle``. A skops file is only as safe as its
  ``skops_trusted_types``, which the MLmodel itself lists: a trusted type from Python's standard
  library (``builtins.eval``, ``os.system``, ``functools.partial``...) makes it count as
  ``skops-untrusted``; the model's own classes (installed on the host) do not.
- ``lightgbm``: a ``lightgbm.basic.Booster`` (the default ``model_class``) is LightGBM's text
  format; any other class (``LGBMClassifier``...) follows ``serialization_format`` like sklearn,
  a missing key read as ``cloudpickle``.
- ``xgboost``: XGBoost's own ``model_format`` (``ubj``, ``json``, ``xgb``): no pickle.
- ``pytorch``: ``model.pt2`` in the ``model_data`` directory is ``torch.export`` (MLflow checks
  it is pickle-free); ``model.pth`` is ``torch.save`` with a pickle module.
- ``tensorflow``: a SavedModel (``model_type: tf2-module``) is protobuf graphs and a variables
  checkpoint, no code. A Keras model (``keras``) in the ``.keras`` format loads in Keras'
  ``safe_mode`` (no lambda bytecode) unless MLflow also wrote its custom objects with cloudpickle
  (``custom_objects.cloudpickle`` / ``global_custom_objects.cloudpickle`` in ``data``); the legacy
  ``h5`` format (``save_format: h5``) can hold marshalled Lambda code: unknown.
- ``python_function`` with a ``python_model``: cloudpickle.
- ``onnx`` and this package's flavor: protobuf, no code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

PICKLE = "pickle"
CLOUDPICKLE = "cloudpickle"
SKOPS = "skops"
SKOPS_UNTRUSTED = "skops-untrusted"
PT2 = "pt2"
NATIVE = "native"  # a library's own format: LightGBM text, XGBoost ubj/json/xgb
ONNX = "onnx"
UNKNOWN = "unknown"

#: Formats whose loading can run arbitrary code from the file.
RUNS_CODE = (PICKLE, CLOUDPICKLE, SKOPS_UNTRUSTED)
#: Standard-library modules whose types carry data only: skops may be told to trust them.
DATA_ONLY_STDLIB = frozenset({"collections", "datetime", "decimal", "fractions", "uuid"})

_SKLEARN_FORMATS = (PICKLE, CLOUDPICKLE, SKOPS)


def serialization_format(flavor: str, conf: Mapping, files: Iterable[str] = ()) -> str:
    """The serialisation format of ``flavor``'s files, from its MLmodel entry ``conf``.

    Args:
        flavor: the flavor the model is loaded through (``sklearn``, ``pytorch``...).
        conf: that flavor's entry of the MLmodel (``Model.flavors[flavor]``).
        files: names of the files in the flavor's data directory (``pytorch`` and
            ``tensorflow`` need them).

    Returns:
        One of the constants of this module; ``unknown`` when the MLmodel does not say.
    """
    if flavor in ("onnx", "mlflow_deploy_plugins"):
        return ONNX
    if flavor == "sklearn":
        return _sklearn_like(conf, default=PICKLE)
    if flavor == "lightgbm":
        if conf.get("model_class", "lightgbm.basic.Booster") == "lightgbm.basic.Booster":
            return NATIVE
        return _sklearn_like(conf, default=CLOUDPICKLE)
    if flavor == "xgboost":
        return NATIVE if conf.get("model_format", "xgb") in ("ubj", "json", "xgb") else UNKNOWN
    if flavor == "pytorch":
        names = {str(f).rsplit("/", 1)[-1] for f in files}
        if "model.pth" in names:
            return PICKLE
        return PT2 if "model.pt2" in names else UNKNOWN
    if flavor == "tensorflow":
        return _tensorflow(conf, files)
    if flavor == "python_function" and conf.get("python_model"):
        return CLOUDPICKLE
    return UNKNOWN


def runs_code(fmt: str) -> bool:
    """True when loading a model of format ``fmt`` may run code from the file (or nobody knows)."""
    return fmt in RUNS_CODE or fmt == UNKNOWN


def pickle_warning(model_uri: str, flavor: str, fmt: str) -> str | None:
    """The warning to log before loading a model whose format can run code (None: safe)."""
    if not runs_code(fmt):
        return None
    return (
        f"Loading {model_uri} ({flavor} flavor, {fmt} serialisation): this format can run "
        "arbitrary code from the model file; load only models you trust (log them with "
        "serialization_format='skops' to avoid it)"
    )


def _sklearn_like(conf: Mapping, default: str) -> str:
    fmt = conf.get("serialization_format") or default
    if fmt not in _SKLEARN_FORMATS:
        return UNKNOWN
    if fmt == SKOPS:
        for name in conf.get("skops_trusted_types") or []:
            top = str(name).split(".", 1)[0]
            if top in sys.stdlib_module_names and top not in DATA_ONLY_STDLIB or not top:
                return SKOPS_UNTRUSTED
    return fmt


_KERAS_PICKLES = frozenset({"custom_objects.cloudpickle", "global_custom_objects.cloudpickle"})


def _tensorflow(conf: Mapping, files: Iterable[str]) -> str:
    model_type = conf.get("model_type")
    if model_type == "tf2-module":
        return NATIVE
    if model_type != "keras" or conf.get("save_format", "h5") == "h5":
        return UNKNOWN  # MLflow's loader reads a missing save_format as h5
    names = {str(f).rsplit("/", 1)[-1] for f in files}
    return CLOUDPICKLE if names & _KERAS_PICKLES else NATIVE

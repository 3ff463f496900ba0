"""promote(): source version -> verified ONNX twin version -> alias/stage, on a real local store."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from helpers import (
    CATEGORICAL,
    NUMERIC,
    ClipTransformer,
    log_sklearn,
    mixed_pipeline,
    onnx_versions,
    register_sklearn,
    version_tags,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression

import mlflow_deploy_plugins
from mlflow_deploy_plugins.core import tags as tag_keys
from mlflow_deploy_plugins.errors import (
    InvalidInputError,
    ModelNotFoundError,
    ParityError,
    UnsupportedModelError,
)

NAME, TWIN = "churn", "churn-onnx"


def forest():
    return mixed_pipeline(RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0))


def promote(version, **kwargs):
    return mlflow_deploy_plugins.promote(NAME, version, **kwargs)


def test_promote_alias_source_false_leaves_the_source_alias(
    tracking_uri, mixed_frame, mixed_target
):
    model = forest().fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))
    register_sklearn(model, NAME, mixed_frame.head(5))
    MlflowClient().set_registered_model_alias(NAME, "champion", "2")  # the user's alias

    promote(1, sample=mixed_frame, alias_source=False)

    assert alias_version(TWIN, "champion") == "1"
    assert alias_version(NAME, "champion") == "2"


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


# --------------------------------------------------------------------------- the happy path
def test_promote_end_to_end(tracking_uri, mixed_frame, mixed_target):
    import mlflow

    model = forest().fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))
    register_sklearn(model, NAME, mixed_frame.head(5))
    client = MlflowClient()
    client.set_registered_model_alias(NAME, "champion", "2")  # the user's alias on the source

    result = promote(1, sample=mixed_frame)

    assert (result.source_name, result.source_version) == (NAME, "1")
    assert (result.onnx_name, result.onnx_version, result.reused) == (TWIN, "1", False)
    assert result.model_uri == f"models:/{TWIN}@champion"
    rows = len(mixed_frame) + result.parity["missing_value_rows"]  # + synthesized NaN rows
    assert result.parity["passed"] is True and result.parity["rows"] == rows
    # alias_source=True (default): the same alias on both sides, so the registry reads the same
    assert alias_version(TWIN, "champion") == "1"
    assert alias_version(NAME, "champion") == "1"
    # the twin records which source version, by which path, and when (registry/ownership.py)
    twin_tags = client.get_registered_model(TWIN).tags
    assert twin_tags["mlflow_deploy.alias.champion.source_version"] == "1"
    assert twin_tags["mlflow_deploy.alias.champion.version"] == "1"
    assert twin_tags["mlflow_deploy.alias.champion.set_by"] == "promote"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", twin_tags["mlflow_deploy.alias.champion.set_at"]
    )
    assert version_tags(TWIN, 1)[tag_keys.PROMOTED_BY] == "promote"

    twin_model = client.get_registered_model(TWIN)
    assert (
        twin_model.tags[tag_keys.KIND] == "onnx" and twin_model.tags[tag_keys.SOURCE_MODEL] == NAME
    )
    twin = version_tags(TWIN, 1)
    assert twin[tag_keys.STATUS] == tag_keys.STATUS_CONVERTED and twin[tag_keys.KIND] == "onnx"
    assert (twin[tag_keys.SOURCE_MODEL], twin[tag_keys.SOURCE_VERSION]) == (NAME, "1")
    assert twin[tag_keys.IDEMPOTENCY_KEY] == f"{NAME}/1/{twin[tag_keys.OPTIONS_HASH]}"
    assert twin[tag_keys.CONVERTER].startswith("skl2onnx==")
    assert twin[tag_keys.RUN_ID] == result.run_id
    source = version_tags(NAME, 1)
    assert source[tag_keys.STATUS] == tag_keys.STATUS_CONVERTED and tag_keys.ERROR not in source
    assert (source[tag_keys.ONNX_MODEL], source[tag_keys.ONNX_VERSION]) == (TWIN, "1")
    for tags in (twin, source):
        assert tags[tag_keys.PARITY_PREFIX + "passed"] == "true"
        assert float(tags[tag_keys.PARITY_PREFIX + "rows"]) == rows
        assert float(tags[tag_keys.PARITY_PREFIX + "label.label_agreement"]) == 1.0
        assert float(tags[tag_keys.PARITY_PREFIX + "probabilities.max_abs_error"]) < 1e-4
        assert tag_keys.PARITY_SMALL_SAMPLE not in tags
    assert tag_keys.STATUS not in version_tags(NAME, 2)

    # the conversion run carries the parity report and metrics
    run = client.get_run(result.run_id)
    assert run.data.metrics["parity.passed"] == 1.0
    assert run.data.params["sample_origin"] == "caller"
    assert "parity_report.json" in {a.path for a in client.list_artifacts(result.run_id)}

    # the flavor round trip through the registry
    loaded = mlflow.pyfunc.load_model(f"models:/{TWIN}@champion")
    shuffled = mixed_frame[CATEGORICAL + NUMERIC]
    np.testing.assert_array_equal(loaded.predict(shuffled), model.predict(mixed_frame))
    proba = loaded.predict(mixed_frame, params={"predict_method": "predict_proba"})
    np.testing.assert_allclose(proba, model.predict_proba(mixed_frame), atol=1e-5)


def test_promote_is_idempotent(tracking_uri, mixed_frame, mixed_target):
    model = forest().fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))
    register_sklearn(model, NAME, mixed_frame.head(5))
    first = promote(1, sample=mixed_frame)

    again = promote(1, sample=mixed_frame)
    assert (again.onnx_version, again.reused, again.run_id) == ("1", True, first.run_id)
    assert again.parity.keys() == first.parity.keys() and again.parity["passed"] is True
    assert again.parity == pytest.approx(first.parity, rel=1e-5)
    assert onnx_versions(TWIN) == ["1"]

    other_alias = promote(1, alias="challenger")  # no sample needed: nothing is converted
    assert other_alias.reused and alias_version(TWIN, "challenger") == "1"
    assert alias_version(TWIN, "champion") == "1"

    promote(2, sample=mixed_frame)  # a new source version converts once more
    assert onnx_versions(TWIN) == ["1", "2"] and alias_version(TWIN, "champion") == "2"
    back = promote(1)  # re-used, and the alias moves back to it
    assert back.reused and alias_version(TWIN, "champion") == "1"
    assert onnx_versions(TWIN) == ["1", "2"]


def test_a_tampered_twin_is_never_re_used(tracking_uri, mixed_frame, mixed_target):
    # Re-using reads tags only; a model.onnx changed in the artifact store since it passed the
    # gate must not be aliased again with "parity passed": converted anew, the old one marked.
    from urllib.parse import urlparse

    model = forest().fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))
    promote(1, sample=mixed_frame)
    location = MlflowClient().get_model_version_download_uri(TWIN, "1")
    onnx_file = urlparse(location).path + "/model.onnx"
    with open(onnx_file, "ab") as f:
        f.write(b"\0")  # any change: the sha256 the MLmodel records no longer matches

    again = promote(1, sample=mixed_frame)
    assert (again.onnx_version, again.reused) == ("2", False)
    assert alias_version(TWIN, "champion") == "2"
    tags = version_tags(TWIN, "1")
    assert tags[tag_keys.STATUS] == tag_keys.STATUS_FAILED
    assert "sha256" in tags[tag_keys.ERROR] and "modified" in tags[tag_keys.ERROR]
    third = promote(1)  # the fresh twin is the one re-used from now on
    assert (third.onnx_version, third.reused) == ("2", True)


def test_concurrent_promotions_of_one_version_agree_on_one_twin(
    tracking_uri, mixed_frame, mixed_target
):
    # two CI jobs, or a person and the automation, promoting the same version at once: each
    # used to register its own twin, and the source's onnx_version tag and the alias could end
    # on different ones. The first registered wins; the others delete theirs and re-use it.
    import threading

    model = forest().fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))
    barrier, results, errors = threading.Barrier(3), [], []

    def run():
        barrier.wait()
        try:
            results.append(promote(1, sample=mixed_frame))
        except Exception as e:  # reported below with the others
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    (winner,) = onnx_versions(TWIN)
    assert {r.onnx_version for r in results} == {winner}
    assert sum(not r.reused for r in results) == 1
    assert alias_version(TWIN, "champion") == winner
    assert version_tags(NAME, "1")[tag_keys.ONNX_VERSION] == winner


def test_legacy_stage(tracking_uri, mixed_frame, mixed_target):
    model = forest().fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))

    result = promote(1, alias=None, stage="Production", sample=mixed_frame)

    client = MlflowClient()
    assert result.stage == "Production" and result.model_uri == f"models:/{TWIN}/1"
    assert client.get_model_version(TWIN, "1").current_stage == "Production"
    assert alias_version(TWIN, "champion") is None
    assert client.get_model_version(NAME, "1").current_stage == "None"

    both = promote(1, alias="champion", stage="Staging")  # combined, re-used
    assert both.reused and client.get_model_version(TWIN, "1").current_stage == "Staging"
    assert alias_version(TWIN, "champion") == "1"

    with pytest.raises(InvalidInputError, match="stage must be one of"):
        promote(1, stage="Prod")
    with pytest.raises(InvalidInputError, match="alias= or stage="):
        promote(1, alias=None)


# --------------------------------------------------------------------------- failure paths
@pytest.fixture
def promoted(tracking_uri, mixed_frame, mixed_target):
    """churn v1 promoted (churn-onnx v1 @champion); failure tests then break v2."""
    model = forest().fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))
    promote(1, sample=mixed_frame)
    return model


def assert_failed_cleanly(error, version: str, *names_in_message: str) -> None:
    """An MlflowException with a code naming the thing; source tagged; nothing registered/moved."""
    assert isinstance(error, MlflowException) and error.error_code
    for name in names_in_message:
        assert name in error.message
    tags = version_tags(NAME, version)
    assert tags[tag_keys.STATUS] == tag_keys.STATUS_FAILED
    for name in names_in_message:
        assert name in tags[tag_keys.ERROR]
    assert onnx_versions(TWIN) == ["1"]
    assert alias_version(TWIN, "champion") == "1"


def test_unknown_registered_model(tracking_uri):
    with pytest.raises(ModelNotFoundError, match="'nobody' does not exist") as err:
        mlflow_deploy_plugins.promote("nobody", 1)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert onnx_versions("nobody-onnx") == []


def test_missing_version(promoted):
    with pytest.raises(ModelNotFoundError, match=f"'{NAME}' has no version 7") as err:
        promote(7)
    assert err.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert onnx_versions(TWIN) == ["1"] and alias_version(TWIN, "champion") == "1"


@pytest.mark.parametrize("version", ["champion", "1.5", ""])
def test_non_numeric_version(promoted, version):
    with pytest.raises(InvalidInputError, match="version must be a model version number") as err:
        promote(version)
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert onnx_versions(TWIN) == ["1"] and alias_version(TWIN, "champion") == "1"


def test_unsupported_estimator(promoted, mixed_frame, mixed_target):
    model = forest()
    model.steps.insert(1, ("clip", ClipTransformer()))
    model.fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5), serialization_format="cloudpickle")

    with pytest.raises(UnsupportedModelError) as err:
        promote(2, sample=mixed_frame)

    assert_failed_cleanly(err.value, "2", "ClipTransformer")


def test_sample_missing_a_column(promoted, mixed_frame):
    register_sklearn(promoted, NAME, mixed_frame.head(5))
    with pytest.raises(InvalidInputError) as err:
        promote(2, sample=mixed_frame.drop(columns=["city"]))
    assert_failed_cleanly(err.value, "2", "['city']")


def test_string_where_a_number_was_logged(promoted, mixed_frame):
    register_sklearn(promoted, NAME, mixed_frame.head(5))
    sample = mixed_frame.astype({"income": object})
    sample.loc[3, "income"] = "a lot"
    with pytest.raises(InvalidInputError) as err:
        promote(2, sample=sample)
    assert_failed_cleanly(err.value, "2", "'income'", "'a lot'")


def _logistic(imputer: bool):
    return mixed_pipeline(LogisticRegression(max_iter=500), imputer=imputer)


def test_nan_without_imputer_is_an_error(promoted, mixed_frame, mixed_target):
    model = _logistic(imputer=False).fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))
    sample = mixed_frame.copy()
    sample.loc[::7, "age"] = np.nan

    with pytest.raises(InvalidInputError) as err:
        promote(2, sample=sample)

    assert_failed_cleanly(err.value, "2", "['age']", "NaN", "no imputer")


def test_nan_with_imputer_works(tracking_uri, mixed_frame, mixed_target):
    import mlflow

    model = _logistic(imputer=True).fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))
    sample = mixed_frame.copy()
    sample.loc[::7, "age"] = np.nan

    result = promote(1, sample=sample)

    assert result.parity["passed"] is True and version_tags(NAME, 1)[tag_keys.STATUS] == "converted"
    loaded = mlflow.pyfunc.load_model(result.model_uri)
    np.testing.assert_array_equal(loaded.predict(sample), model.predict(sample))


def test_parity_failure(promoted, mixed_frame, mixed_target):
    """Tree probabilities are float32 in ONNX: tiny errors, refused by a zero tolerance."""
    model = mixed_pipeline(GradientBoostingClassifier(n_estimators=20, random_state=0))
    model.fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME, mixed_frame.head(5))

    with pytest.raises(ParityError) as err:
        promote(2, sample=mixed_frame, atol=0, rtol=0, min_label_agreement=1.0)

    assert err.value.error_code == "INVALID_PARAMETER_VALUE"
    assert err.value.report is not None and not err.value.report.passed
    assert_failed_cleanly(err.value, "2", "'probabilities'", "atol=0")
    tags = version_tags(NAME, 2)
    assert tags[tag_keys.PARITY_PREFIX + "passed"] == "false"
    assert float(tags[tag_keys.PARITY_PREFIX + "probabilities.max_abs_error"]) > 0


def test_reserved_alias_is_refused_before_any_work(promoted, mixed_frame):
    register_sklearn(promoted, NAME, mixed_frame.head(5))
    with pytest.raises(InvalidInputError, match="'latest' is not allowed"):
        promote(2, alias="latest", sample=mixed_frame)
    assert tag_keys.STATUS not in version_tags(NAME, "2")
    assert onnx_versions(TWIN) == ["1"] and alias_version(TWIN, "champion") == "1"


def test_failure_after_the_version_exists_deletes_it(promoted, mixed_frame, monkeypatch):
    """The alias is set last; when that fails the new ONNX version is deleted again.

    The registry server refusing the alias write is injected: a real store does not fail on cue.
    """

    def refuse(self, name, alias, version):
        raise MlflowException("registry unavailable: alias write refused")

    register_sklearn(promoted, NAME, mixed_frame.head(5))
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(MlflowException) as err:
        promote(2, sample=mixed_frame)
    monkeypatch.undo()
    assert_failed_cleanly(err.value, "2", "alias write refused")


def test_recovery_after_a_failure(promoted, mixed_frame):
    """A failed version can be promoted once the cause is fixed; the error tag goes away."""
    register_sklearn(promoted, NAME, mixed_frame.head(5))
    with pytest.raises(InvalidInputError):
        promote(2, sample=mixed_frame.drop(columns=["age"]))
    result = promote(2, sample=mixed_frame)
    tags = version_tags(NAME, 2)
    assert tags[tag_keys.STATUS] == tag_keys.STATUS_CONVERTED and tag_keys.ERROR not in tags
    assert result.onnx_version == "2" and alias_version(TWIN, "champion") == "2"


# --------------------------------------------------------------------------- the parity sample
def _training_dataset(frame: pd.DataFrame, target, path):
    import mlflow

    frame.assign(churned=target).to_csv(path, index=False)
    return mlflow.data.from_pandas(frame.assign(churned=target), source=str(path), name="train")


def _sample_origin(result) -> str:
    return MlflowClient().get_run(result.run_id).data.params["sample_origin"]


def test_sample_resolution_order(tracking_uri, tmp_path, mixed_frame, mixed_target):
    model = forest().fit(mixed_frame, mixed_target)
    dataset = _training_dataset(mixed_frame, mixed_target, tmp_path / "train.csv")
    example = mixed_frame.head(5)
    for _ in range(2):  # v1, v2: logged dataset + input example
        log_sklearn(model, example, registered_model_name=NAME, dataset=dataset)
    log_sklearn(model, example, registered_model_name=NAME)  # v3: input example only

    explicit = promote(1, sample=mixed_frame.head(150))
    assert _sample_origin(explicit) == "caller"
    assert explicit.parity["rows"] == 150 + explicit.parity["missing_value_rows"]

    from_run = promote(2)
    assert _sample_origin(from_run) == "run dataset train"
    assert from_run.parity["rows"] == len(mixed_frame) + from_run.parity["missing_value_rows"]
    assert tag_keys.PARITY_SMALL_SAMPLE not in version_tags(TWIN, from_run.onnx_version)

    from_example = promote(3)
    # only a 5-row example: a 1000-row sample is synthesized from it, and the run says so
    assert _sample_origin(from_example) == "synthesized from the input example (5 rows)"
    assert from_example.parity["rows"] == 1000 + from_example.parity["missing_value_rows"]
    assert tag_keys.PARITY_SMALL_SAMPLE not in version_tags(TWIN, from_example.onnx_version)


def test_unloadable_run_dataset_falls_back_to_input_example(
    tracking_uri, tmp_path, mixed_frame, mixed_target
):
    model = forest().fit(mixed_frame, mixed_target)
    csv = tmp_path / "gone.csv"
    dataset = _training_dataset(mixed_frame, mixed_target, csv)
    log_sklearn(model, mixed_frame.head(8), registered_model_name=NAME, dataset=dataset)
    csv.unlink()

    result = promote(1)

    assert _sample_origin(result) == "synthesized from the input example (8 rows)"


def test_no_rows_is_refused_with_how_to_pass_a_sample(tracking_uri, mixed_frame, mixed_target):
    model = forest().fit(mixed_frame, mixed_target)
    register_sklearn(model, NAME)  # no input example, no dataset
    register_sklearn(model, NAME, mixed_frame.head(5))

    with pytest.raises(InvalidInputError) as err:
        promote(1)
    assert "no loadable logged dataset and no input example" in err.value.message
    assert "pass sample=" in err.value.message
    assert version_tags(NAME, 1)[tag_keys.STATUS] == tag_keys.STATUS_FAILED

    with pytest.raises(InvalidInputError) as err:
        promote(2, sample=mixed_frame.head(0))
    assert "zero rows" in err.value.message and "pass sample=" in err.value.message
    assert onnx_versions(TWIN) == []

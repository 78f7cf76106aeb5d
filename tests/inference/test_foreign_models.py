"""Models as clients really log them, through POST /api/v1/models/{id}/predict: scikit-learn
models in MLflow 3's default skops format and in cloudpickle serve; models saved by a client with
another scikit-learn are refused with a 409 or 422 that names the mismatch, never a 500, and a
version that cannot load is not fetched again on every request."""

from __future__ import annotations

import time
from importlib.metadata import version as installed
from types import SimpleNamespace

import pytest
import sklearn

from inference import model_cache
from tests.inference.test_predict import (
    BODIES,
    fresh_serving_state,  # noqa: F401 (autouse: nothing loaded, versions looked up afresh)
    log_models,
    logged_rows,
    predict,
    registered,
)

pytestmark = pytest.mark.django_db

# What the "other client" pinned; our own versions are read from the installed packages.
THEIR_SKLEARN, THEIR_NUMPY = "1.0.2", "1.21.0"
OURS = {name: installed(name) for name in ("scikit-learn", "numpy", "cloudpickle", "skops")}

# Logged once per module by the stock client, in a process of its own. The "foreign" models are
# what a client on scikit-learn 1.0.2 leaves behind: estimators stamped with that version, a
# GradientBoosting `loss_` from `sklearn.ensemble._gb_losses` (a module since removed), a
# SimpleImputer from before `keep_empty_features` existed (1.2), and requirements pinning 1.0.2.
LOG_MODELS = """
import json, sys, types
import mlflow, pandas as pd, sklearn, sklearn.base
from importlib.metadata import version
from mlflow.models import infer_signature
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from skops.io import _trusted_types

features = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "b": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]})
labels = [0, 0, 1, 1, 1, 1]
ours = [f"{name}=={version(name)}" for name in ("scikit-learn", "numpy", "cloudpickle", "skops")]
theirs = ["scikit-learn==1.0.2", "numpy==1.21.0"]

# The module scikit-learn 1.0.2 pickled GradientBoosting losses from, gone from ours.
gb_losses = types.ModuleType("sklearn.ensemble._gb_losses")
class BinomialDeviance:
    def __init__(self, n_classes):
        self.K = 1
BinomialDeviance.__module__ = gb_losses.__name__
gb_losses.BinomialDeviance = BinomialDeviance
sys.modules[gb_losses.__name__] = gb_losses
# skops trusted it by default where the model was saved; ours does not know it.
_trusted_types.SKLEARN_INTERNAL_TYPE_NAMES.append("sklearn.ensemble._gb_losses.BinomialDeviance")

def fitted(estimator):
    estimator.fit(features, labels)
    return estimator, infer_signature(features, estimator.predict(features))

logged = {}
with mlflow.start_run() as run:
    model, signature = fitted(LogisticRegression())
    for form in ("skops", "cloudpickle"):
        logged[form] = mlflow.sklearn.log_model(
            model, name=form, signature=signature, serialization_format=form,
            pip_requirements=ours,
        ).model_id

    sklearn.__version__ = sklearn.base.__version__ = "1.0.2"  # stamped into what is saved
    model, signature = fitted(GradientBoostingClassifier(n_estimators=3))
    model.loss_ = BinomialDeviance(2)
    # skops does not trust a tree's node arrays unless told, so the client lists them.
    logged["foreign_skops"] = mlflow.sklearn.log_model(
        model, name="foreign_skops", signature=signature, serialization_format="skops",
        skops_trusted_types=["sklearn.tree._tree.Tree"], pip_requirements=theirs + ["skops==0.6.0"],
    ).model_id
    logged["foreign_cloudpickle"] = mlflow.sklearn.log_model(
        model, name="foreign_cloudpickle", signature=signature, serialization_format="cloudpickle",
        pip_requirements=theirs + ["cloudpickle==2.0.0"],
    ).model_id

    model, signature = fitted(make_pipeline(SimpleImputer(), LogisticRegression()))
    del model[0].keep_empty_features, model[0]._fill_dtype
    logged["foreign_imputer"] = mlflow.sklearn.log_model(
        model, name="foreign_imputer", signature=signature, serialization_format="cloudpickle",
        pip_requirements=theirs + ["cloudpickle==2.0.0"],
    ).model_id
logged["run_id"] = run.info.run_id
print(json.dumps(logged))
"""


@pytest.fixture(scope="module")
def logged(mlflow_server) -> dict:
    return log_models(mlflow_server, LOG_MODELS)


@pytest.fixture
def predictor(owner, issue_key):
    _, key = issue_key(owner, ["predict"])
    return key


def counting_downloads(monkeypatch) -> list[tuple[str, str]]:
    """The (name, version) of every model download the cache starts from now on."""
    started: list[tuple[str, str]] = []
    download = model_cache.registry_mlflow.download_model

    def counted(name: str, version: str, destination: str) -> str:
        started.append((name, version))
        return download(name, version, destination)

    monkeypatch.setattr(model_cache.registry_mlflow, "download_model", counted)
    return started


# --- What serves -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["skops", "cloudpickle"])
def test_sklearn_models_in_skops_and_cloudpickle_serve(
    client, predictor, mlflow_server, logged, form
):
    model = registered(mlflow_server, logged, form)
    response = predict(client, predictor, model, BODIES["dataframe_split"])
    assert response.status_code == 200, response.content
    assert response.json()["predictions"] == [0, 1, 1]
    local = model_cache.get((model.name, "1"))
    saved_as = local.model.metadata.flavors["sklearn"]["serialization_format"]
    assert saved_as == form  # what was logged is what was loaded


# --- What another scikit-learn saved -----------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "loader_error"),
    [
        ("cloudpickle", "No module named 'sklearn.ensemble._gb_losses'"),
        ("skops", "sklearn.ensemble._gb_losses.BinomialDeviance"),
    ],
)
def test_a_model_from_another_sklearn_is_409_naming_the_versions(
    client, predictor, mlflow_server, logged, form, loader_error
):
    model = registered(mlflow_server, logged, f"foreign_{form}")
    response = predict(client, predictor, model, BODIES["inputs"])
    assert response.status_code == 409, response.content
    problem = response.json()
    assert problem["code"] == "model_load_failed"
    assert loader_error in problem["detail"]
    assert f"scikit-learn {THEIR_SKLEARN}, here {OURS['scikit-learn']}" in problem["detail"]
    assert f"numpy {THEIR_NUMPY}, here {OURS['numpy']}" in problem["detail"]
    assert "Traceback" not in response.content.decode()
    (row,) = logged_rows(model)
    assert (row.status, row.error_code) == (409, "model_load_failed")


def test_a_model_that_loads_but_predicts_with_another_sklearn_is_422(
    client, predictor, mlflow_server, logged
):
    model = registered(mlflow_server, logged, "foreign_imputer")
    response = predict(client, predictor, model, BODIES["inputs"])
    assert response.status_code == 422, response.content
    problem = response.json()
    assert problem["code"] == "model_error"
    assert "AttributeError" in problem["detail"]
    assert "keep_empty_features" in problem["detail"]
    assert f"scikit-learn 1.0.2, here {sklearn.__version__}" in problem["detail"]
    assert "Traceback" not in response.content.decode()
    (row,) = logged_rows(model)
    assert (row.status, row.error_code, row.model_version) == (422, "model_error", "1")


def test_a_failed_load_is_not_retried_on_every_request(
    client, predictor, mlflow_server, logged, settings, monkeypatch
):
    settings.MODEL_SERVING_LOAD_RETRY_SECONDS = 60
    model = registered(mlflow_server, logged, "foreign_cloudpickle")
    downloads = counting_downloads(monkeypatch)
    first = predict(client, predictor, model, BODIES["inputs"])
    assert (first.status_code, first.json()["code"]) == (409, "model_load_failed")
    assert downloads == [(model.name, "1")]
    reason = model_cache.load_failure((model.name, "1"))
    assert reason is not None and reason in first.json()["detail"]

    # when: asked again within the retry period
    second = predict(client, predictor, model, BODIES["inputs"])
    # then: the same answer, from memory
    assert (second.status_code, second.json()["code"]) == (409, "model_load_failed")
    assert second.json()["detail"] == first.json()["detail"]
    assert len(downloads) == 1

    # when: asked once the period is over, it is tried again
    later = time.monotonic() + 61
    monkeypatch.setattr(
        model_cache, "time", SimpleNamespace(monotonic=lambda: later, time=time.time)
    )
    assert predict(client, predictor, model, BODIES["inputs"]).status_code == 409
    assert len(downloads) == 2
    assert [row.status for row in logged_rows(model)] == [409, 409, 409]

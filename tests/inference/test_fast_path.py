"""The fast path against MLflow's own functions: what `read` builds is the array of the DataFrame
MLflow's path enforces, for any body it accepts, and estimators given it answer as pyfunc does;
models it cannot serve exactly keep MLflow's path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlflow.models import infer_signature
from mlflow.models.utils import _enforce_schema
from mlflow.pyfunc import PythonModel
from mlflow.pyfunc import load_model as load_pyfunc
from mlflow.pyfunc import save_model as save_pyfunc
from mlflow.pyfunc.scoring_server import infer_and_parse_data
from mlflow.sklearn import save_model as save_sklearn
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    BaggingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from inference import fast_path

COLUMNS = ["a", "b", "c"]
FEATURES = pd.DataFrame(
    {"a": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "b": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0], "c": [3.0] * 6}
)
LABELS = [0, 0, 1, 1, 1, 1]
DTYPES = {"double": "float64", "float": "float32", "long": "int64", "integer": "int32"}


def saved(tmp_path_factory, estimator, features=FEATURES, signed=None, **options):
    """`estimator` fitted on `features`, saved by MLflow with the signature of `signed` (by
    default the same features) and loaded back."""
    estimator.fit(features, LABELS)
    path = tmp_path_factory.mktemp("model") / "model"
    signed = features if signed is None else signed
    signature = infer_signature(signed, estimator.predict(signed[list(features.columns)]))
    # Requirements given: inferring them costs seconds a model.
    save_sklearn(estimator, path, signature=signature, pip_requirements=["scikit-learn"], **options)
    return load_pyfunc(str(path))


@pytest.fixture(scope="module")
def by_type(tmp_path_factory) -> dict:
    """A logistic regression per signature type, each fitted on columns of that dtype."""
    return {
        name: saved(tmp_path_factory, LogisticRegression(), FEATURES.astype(dtype))
        for name, dtype in DTYPES.items()
    }


def mlflows_array(model, inputs: dict) -> np.ndarray:
    """What MLflow's path hands the estimator, as its array."""
    schema = model.metadata.get_input_schema()
    return np.asarray(_enforce_schema(infer_and_parse_data(inputs, schema), schema))


# --- read: the same array as MLflow's path, or MLflow's path --------------------------------

JSON_VALUES = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**24, 2**24 + 1, 2**31, 2**53, 2**53 + 1, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.5, -2.25, 1e39, 3.4e38, 1e-50]),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
CLEAN_VALUES = st.one_of(
    st.integers(min_value=-100, max_value=100),
    st.floats(min_value=-100, max_value=100, allow_nan=False).map(lambda value: round(value, 2)),
)


@st.composite
def bodies(draw, values):
    """A dataframe_split (columns in any order, sometimes one too many or too few) or a
    dataframe_records body."""
    columns = draw(st.permutations(COLUMNS))
    if draw(st.integers(0, 9)) == 0:
        columns = columns[:-1] if draw(st.booleans()) else [*columns, "extra"]
    rows = draw(
        st.lists(st.lists(values, min_size=len(columns), max_size=len(columns)), max_size=4)
    )
    if draw(st.booleans()):
        return {"dataframe_split": {"columns": columns, "data": rows}}
    return {"dataframe_records": [dict(zip(columns, row, strict=True)) for row in rows]}


@pytest.mark.parametrize("type_name", DTYPES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=bodies(JSON_VALUES))
def test_what_read_accepts_is_mlflows_own_array(by_type, type_name, inputs):
    model = by_type[type_name]
    fast = fast_path.plan_for(model).read(inputs)
    if fast is not None:
        expected = mlflows_array(model, inputs)
        assert fast.dtype == expected.dtype
        assert fast.flags.f_contiguous == expected.flags.f_contiguous
        assert np.array_equal(fast, expected)


@pytest.mark.parametrize("type_name", ["double", "float"])
@settings(max_examples=100, deadline=None)
@given(inputs=bodies(CLEAN_VALUES))
def test_clean_numbers_take_the_fast_path(by_type, type_name, inputs):
    model = by_type[type_name]
    if "dataframe_split" in inputs:
        columns, rows = inputs["dataframe_split"]["columns"], inputs["dataframe_split"]["data"]
    else:
        rows = inputs["dataframe_records"]
        columns = list(rows[0]) if rows else COLUMNS
    fast = fast_path.plan_for(model).read(inputs)
    assert (fast is not None) == (bool(rows) and sorted(columns) == COLUMNS)
    if fast is not None:
        assert np.array_equal(fast, mlflows_array(model, inputs))


@pytest.mark.parametrize(
    "inputs",
    [
        {"dataframe_split": {"columns": COLUMNS, "data": [[1.0, 2.0, None]]}},
        {"dataframe_split": {"columns": COLUMNS, "data": [[1.0, 2.0, float("nan")]]}},
        {"dataframe_split": {"columns": COLUMNS, "data": [[1.0, 2.0, "3"]]}},
        {"dataframe_split": {"columns": COLUMNS, "data": [[1.0, 2.0, True]]}},
        {"dataframe_split": {"columns": COLUMNS, "data": [[1.0, 2.0]]}},
        {"dataframe_split": {"columns": COLUMNS, "index": [7], "data": [[1.0, 2.0, 3.0]]}},
        {"dataframe_split": {"columns": COLUMNS, "data": []}},
        {"dataframe_split": {"columns": COLUMNS, "data": [[1.0, 2.0, 3.0]]}, "params": {"x": 1}},
        {"dataframe_records": [{"a": 1.0, "b": 2.0}]},
        {"instances": [[1.0, 2.0, 3.0]]},
        {"inputs": {"a": [1.0], "b": [2.0], "c": [3.0]}},
    ],
)
def test_anything_unusual_takes_mlflows_path(by_type, inputs):
    assert fast_path.plan_for(by_type["double"]).read(inputs) is None


def test_integers_beyond_a_columns_range_take_mlflows_path(by_type):
    plan = fast_path.plan_for(by_type["integer"])
    too_big = {"dataframe_split": {"columns": COLUMNS, "data": [[2**31, 0, 0]]}}
    assert plan.read(too_big) is None
    fractional = {"dataframe_split": {"columns": COLUMNS, "data": [[1.5, 0, 0]]}}
    assert plan.read(fractional) is None
    fits = {"dataframe_split": {"columns": COLUMNS, "data": [[2**31 - 1, 0, 0]]}}
    assert plan.read(fits).tolist() == [[2**31 - 1, 0, 0]]


# --- plan_for: estimators that answer the same on the array --------------------------------


@pytest.mark.parametrize(
    ("estimator", "options"),
    [
        (LogisticRegression(), {}),
        (LogisticRegression(), {"pyfunc_predict_fn": "predict_proba"}),
        # skops refuses to load trees and KD-trees it has not been told to trust.
        (RandomForestClassifier(n_estimators=5), {"serialization_format": "cloudpickle"}),
        (HistGradientBoostingClassifier(max_iter=5), {"serialization_format": "cloudpickle"}),
        (KNeighborsRegressor(n_neighbors=2), {"serialization_format": "cloudpickle"}),
        (LinearRegression(), {"serialization_format": "cloudpickle"}),
    ],
    ids=lambda value: type(value).__name__ if not isinstance(value, dict) else str(value),
)
def test_estimators_answer_as_pyfunc_does(tmp_path_factory, estimator, options):
    model = saved(tmp_path_factory, estimator, **options)
    plan = fast_path.plan_for(model)
    assert plan is not None
    inputs = {
        "dataframe_split": {
            "columns": ["c", "a", "b"],
            "data": [[3, 0.5, 1], [1.5, 4.5, 0], [3.0, 2.25, 1.0], [0, -7, 2]],
        }
    }
    ours = plan.predict(plan.read(inputs))
    theirs = model.predict(infer_and_parse_data(inputs, model.metadata.get_input_schema()))
    assert np.asarray(ours).dtype == np.asarray(theirs).dtype
    assert np.array_equal(ours, theirs)


class Echo(PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


def test_models_that_may_read_names_or_types_keep_mlflows_path(tmp_path_factory):
    keeps = [
        saved(tmp_path_factory, make_pipeline(StandardScaler(), LogisticRegression())),
        saved(
            tmp_path_factory,
            make_pipeline(
                ColumnTransformer([("a", StandardScaler(), ["a"])]), LogisticRegression()
            ),
        ),
        saved(tmp_path_factory, BaggingClassifier(LogisticRegression(), n_estimators=2)),
        # Fitted on c, a, b, while its signature says a, b, c.
        saved(tmp_path_factory, LogisticRegression(), FEATURES[["c", "a", "b"]], FEATURES),
        saved(tmp_path_factory, LogisticRegression(), FEATURES.astype({"a": "int64"})),
    ]
    path = tmp_path_factory.mktemp("pyfunc") / "model"
    save_pyfunc(
        path,
        python_model=Echo(),
        signature=infer_signature(FEATURES),
        pip_requirements=["mlflow"],
    )
    keeps.append(load_pyfunc(str(path)))
    assert [fast_path.plan_for(model) for model in keeps] == [None] * len(keeps)

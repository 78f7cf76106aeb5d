"""The fast path for the commonest model: one of scikit-learn's own estimators whose signature is
named columns of one numeric type, called with `dataframe_split` or `dataframe_records`.

MLflow's path builds a pandas DataFrame from the JSON, enforces the signature on it, and hands it
to the estimator, which turns it back into the array it computes on: about 3 ms for one row. Here
the JSON rows go straight into that array, in a tenth of the time. The answer is the same:

- `Plan.read` returns exactly `numpy.asarray` of the DataFrame MLflow's path would hand the
  estimator (same values, same dtype, columns in signature order, same memory layout), or None
  for anything unusual (a string, a missing value, an extra column, params…), which then takes
  MLflow's path and gets MLflow's own answer or refusal;
- an estimator with no estimator inside it computes on that array whether it is given the
  DataFrame or the array, once the columns are in the order it was fitted with (`plan_for`
  checks that order). A Pipeline or ColumnTransformer may select columns by name, so they, and
  estimators that take functions, keep MLflow's path.

tests/inference/test_fast_path.py checks both halves against MLflow's own functions.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# MLflow's signature types read here, with the dtype MLflow's enforcement gives each.
DTYPES = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32}
# Integers a float type holds exactly: MLflow converts an integer column as a whole, numpy each
# value, and only these cannot round differently.
EXACT_INTEGERS = {np.float64: 2**53, np.float32: 2**24}

# scikit-learn notes that an array lacks the feature names the estimator was fitted with;
# plan_for has checked the columns against those names.
warnings.filterwarnings(
    "ignore", message="X does not have valid feature names", category=UserWarning
)


@dataclass(frozen=True)
class Plan:
    columns: tuple[str, ...]  # in signature order
    dtype: type
    accepts: Callable[[object], bool]  # whether one JSON value takes the fast path
    predict: Callable[[np.ndarray], object]  # the estimator's method that pyfunc calls

    def read(self, inputs: dict) -> np.ndarray | None:
        """The rows as the array MLflow's path would hand the estimator, or None to take that
        path."""
        if "params" in inputs:
            return None
        if "dataframe_split" in inputs:
            rows = _split_rows(self, inputs["dataframe_split"])
        elif "dataframe_records" in inputs:
            rows = _records_rows(self, inputs["dataframe_records"])
        else:
            return None
        if not rows:
            return None
        accepts = self.accepts
        for row in rows:
            for value in row:
                if not accepts(value):
                    return None
        # Column-major, as pandas lays a DataFrame out: sums of products (BLAS) may add up in
        # another order, and differ in the last bit, on a row-major copy.
        return np.array(rows, dtype=self.dtype, order="F")


def plan_for(model) -> Plan | None:
    """How a loaded pyfunc `model` takes the fast path, or None when it cannot."""
    metadata = model.metadata
    if model.loader_module != "mlflow.sklearn" or metadata.signature is None:
        return None
    if (
        metadata.get_params_schema() is not None
        or metadata._is_signature_from_type_hint()
        or metadata._is_type_hint_from_example()
    ):
        return None
    schema = metadata.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    type_names = {getattr(spec.type, "name", None) for spec in schema.inputs}
    if len(type_names) != 1 or not all(spec.required for spec in schema.inputs):
        return None
    dtype = DTYPES.get(type_names.pop())
    estimator = model.get_raw_model()
    try:
        if dtype is None or not _reads_only_the_array(estimator):
            return None
    except Exception:  # e.g. pickled by another scikit-learn: MLflow's path says what is wrong
        return None
    columns = tuple(schema.input_names())
    fitted_names = getattr(estimator, "feature_names_in_", None)
    if fitted_names is not None and tuple(fitted_names) != columns:
        return None
    predict_fn = metadata.flavors["python_function"].get("predict_fn", "predict")
    return Plan(columns, dtype, _acceptor(dtype), getattr(estimator, predict_fn))


def _split_rows(plan: Plan, split: object) -> list | None:
    if not isinstance(split, dict) or split.keys() != {"columns", "data"}:
        return None
    columns, data = split["columns"], split["data"]
    if not isinstance(columns, list) or not isinstance(data, list):
        return None
    if len(columns) != len(plan.columns) or set(columns) != set(plan.columns):
        return None
    width = len(columns)
    if not all(isinstance(row, list) and len(row) == width for row in data):
        return None
    if tuple(columns) == plan.columns:
        return data
    order = [columns.index(name) for name in plan.columns]
    return [[row[i] for i in order] for row in data]


def _records_rows(plan: Plan, records: object) -> list | None:
    if not isinstance(records, list):
        return None
    names = set(plan.columns)
    if not all(isinstance(record, dict) and record.keys() == names for record in records):
        return None
    return [[record[name] for name in plan.columns] for record in records]


def _acceptor(dtype: type) -> Callable[[object], bool]:
    """JSON values that convert to `dtype` as MLflow converts them: numbers (never booleans,
    which are ints to Python) in the type's range; the comparisons also refuse NaN."""
    if dtype in EXACT_INTEGERS:
        largest_float = float(np.finfo(dtype).max)
        exact = EXACT_INTEGERS[dtype]

        def accepts(value: object) -> bool:
            kind = type(value)
            if kind is float:
                return -largest_float <= value <= largest_float
            return kind is int and -exact <= value <= exact

        return accepts
    limits = np.iinfo(dtype)
    smallest, largest = int(limits.min), int(limits.max)
    return lambda value: type(value) is int and smallest <= value <= largest


def _reads_only_the_array(estimator: object) -> bool:
    """One of scikit-learn's own estimators, with no estimator or function inside it."""
    from sklearn.base import BaseEstimator

    if not isinstance(estimator, BaseEstimator):
        return False
    if not type(estimator).__module__.startswith("sklearn."):
        return False
    parameters = estimator.get_params(deep=True)
    return not any("__" in name or callable(value) for name, value in parameters.items())

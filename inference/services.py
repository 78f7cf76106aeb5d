"""Predictions from registered models: which version serves, the input read as MLflow's scoring
server reads it (its own parsing functions, against the model's signature), and the answer
encoded as that server encodes it, so `predictions` are exactly what `mlflow models serve`
returns for the same model and input."""

from __future__ import annotations

import functools
import gc
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from io import StringIO

from django import db
from django.conf import settings

from hokusai_site.errors import ApplicationError
from inference import model_cache
from registry import mlflow
from registry.models import Model

logger = logging.getLogger(__name__)

# MLflow's scoring protocol (mlflow.pyfunc.scoring_server.SUPPORTED_FORMATS); MLflow's serving
# modules themselves are imported by the code that predicts, as they pull in pandas and more.
SUPPORTED_FORMATS = ("dataframe_records", "dataframe_split", "instances", "inputs")
# The alias that names the version to serve, when a model has it.
CHAMPION = "champion"
READY = "READY"

# Loads, predictions and version look-ups run here, so a request can give up on one that runs
# too long (504) while it finishes in the background (a thread cannot be stopped).
_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="predict")
# What model ids and version requests resolved to, per process: (expires, value).
_models: dict[str, tuple[float, ServedModel]] = {}
_versions: dict[tuple[str, str | None], tuple[float, str]] = {}
_refreshing: set[tuple[str, str | None]] = set()
_refreshing_lock = threading.Lock()


@dataclass(frozen=True)
class ServedModel:
    model_id: str
    name: str  # the MLflow registered model


@dataclass(frozen=True)
class PredictionRequest:
    inputs: dict  # exactly one of MLflow's input formats, and `params` if given
    model_version: str | None  # options.model_version


@dataclass(frozen=True)
class Prediction:
    model_version: str
    rows: int
    raw: object  # what model.predict returned


def read_request(body: bytes) -> PredictionRequest:
    """The body checked for shape: a JSON object with exactly one input format."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApplicationError("malformed_json", "The body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise ApplicationError("invalid_body", "The body must be a JSON object.")
    formats = [name for name in SUPPORTED_FORMATS if name in document]
    if len(formats) != 1:
        raise ApplicationError(
            "input_format",
            f"The body must have exactly one of {', '.join(SUPPORTED_FORMATS)}; "
            f"it has {', '.join(formats) if formats else 'none'}.",
        )
    options = document.get("options") or {}
    if not isinstance(options, dict):
        raise ApplicationError("invalid_options", "options must be an object.")
    version = options.get("model_version")
    if version is not None and not (isinstance(version, int | str) and str(version).isdigit()):
        raise ApplicationError(
            "invalid_options", 'options.model_version must be a version number, such as "3".'
        )
    inputs = {formats[0]: document[formats[0]]}
    if "params" in document:
        if not isinstance(document["params"], dict):
            raise ApplicationError("invalid_params", "params must be an object.")
        inputs["params"] = document["params"]
    return PredictionRequest(inputs, None if version is None else str(version))


def served_model(model_id: str) -> ServedModel:
    """The registered model `model_id` names (404 when none does), read from the database at
    most every MODEL_SERVING_VERSION_CACHE_SECONDS."""
    model_id = model_id.lower()
    cached = _models.get(model_id)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    name = Model.objects.filter(model_id=model_id).values_list("name", flat=True).first()
    if name is None:
        raise ApplicationError("not_found", f"No model has the id {model_id!r}.", status=404)
    served = ServedModel(model_id, name)
    _models[model_id] = (time.monotonic() + settings.MODEL_SERVING_VERSION_CACHE_SECONDS, served)
    return served


def serving_version(model: ServedModel, requested: str | None) -> str:
    """`requested` if it exists and is READY; else the `champion` alias's version; else the
    latest READY version. Looked up in MLflow on first use, then again in the background
    every MODEL_SERVING_VERSION_CACHE_SECONDS; meanwhile, and while MLflow is out of reach,
    the version last seen keeps serving."""
    key = (model.name, requested)
    cached = _versions.get(key)
    if cached is None:
        return _look_up(key)
    expires, version = cached
    if expires <= time.monotonic():
        _refresh_in_background(key, version)
    return version


def _look_up(key: tuple[str, str | None]) -> str:
    try:
        version = _resolve(*key)
    except mlflow.MlflowUnavailable:
        raise ApplicationError(
            "mlflow_unavailable", "MLflow cannot be reached to find the version.", status=503
        ) from None
    except mlflow.MlflowError as exc:
        raise ApplicationError(
            "mlflow_refused",
            f"MLflow refused to say which version serves: {exc.message}",
            status=502,
        ) from None
    _versions[key] = (time.monotonic() + settings.MODEL_SERVING_VERSION_CACHE_SECONDS, version)
    return version


def _refresh_in_background(key: tuple[str, str | None], last_version: str) -> None:
    with _refreshing_lock:
        if key in _refreshing:
            return
        _refreshing.add(key)
    _executor.submit(_refresh, key, last_version)


def _refresh(key: tuple[str, str | None], last_version: str) -> None:
    try:
        _look_up(key)
    except ApplicationError as exc:
        logger.warning("serving version of %s: %s", key[0], exc.message)
        if exc.status in (502, 503):  # MLflow out of reach: asked again after a while
            expires = time.monotonic() + settings.MODEL_SERVING_VERSION_CACHE_SECONDS
            _versions[key] = (expires, last_version)
        else:  # the version is gone or no longer ready: the next request is told why
            _versions.pop(key, None)
    finally:
        with _refreshing_lock:
            _refreshing.discard(key)


def _resolve(name: str, requested: str | None) -> str:
    if requested is not None:
        found = mlflow.get_model_version(name, requested)
        if found is None:
            raise ApplicationError(
                "version_not_found", f"The model has no version {requested}.", status=404
            )
        if found.get("status") != READY:
            raise _not_ready(f"Version {requested} is {found.get('status', 'not ready')}.")
        return requested
    champion = mlflow.get_model_version_by_alias(name, CHAMPION)
    if champion is not None and champion.get("status") == READY:
        return str(champion["version"])
    ready = [
        int(found["version"])
        for found in mlflow.search_model_versions(f"name='{name}'")
        if found.get("status") == READY
    ]
    if not ready:
        raise _not_ready("The model has no READY version to serve.")
    return str(max(ready))


def _not_ready(message: str) -> ApplicationError:
    return ApplicationError("no_ready_version", message, status=409)


def predict(model: ServedModel, version: str, request: PredictionRequest) -> Prediction:
    """`version` (from serving_version) of the model on the request's input."""
    future = _executor.submit(_load_and_predict, (model.name, version), request.inputs)
    try:
        raw, rows = future.result(timeout=settings.MODEL_SERVING_PREDICTION_TIMEOUT_SECONDS)
    except FutureTimeout:
        raise ApplicationError(
            "prediction_timeout",
            f"Loading or running the model took longer than "
            f"{settings.MODEL_SERVING_PREDICTION_TIMEOUT_SECONDS:g} s.",
            status=504,
        ) from None
    return Prediction(version, rows, raw)


def _load_and_predict(key: model_cache.Key, inputs: dict) -> tuple[object, int]:
    from mlflow.exceptions import MlflowException

    try:
        loaded = model_cache.get(key)
    except model_cache.ModelLoadFailed as exc:
        raise ApplicationError(
            "model_load_failed", f"Version {key[1]} cannot be loaded here: {exc}", status=409
        ) from None
    plan = loaded.fast_path
    data = plan.read(inputs) if plan is not None else None
    if data is not None:
        predict = plan.predict
    else:
        data = _parse(loaded.model, inputs)
        predict = functools.partial(_pyfunc_predict, loaded.model, inputs.get("params"))
    rows = _row_count(data)
    if rows > settings.MODEL_SERVING_MAX_ROWS:
        raise ApplicationError(
            "too_many_rows",
            f"{rows} rows; at most {settings.MODEL_SERVING_MAX_ROWS} per request.",
            status=413,
        )
    try:
        return predict(data), rows
    except MlflowException as exc:
        # Chiefly the signature: a missing column, a type that does not convert.
        raise ApplicationError("invalid_input", _schema_problem(exc.message), status=422) from None
    except Exception as exc:  # the model's own code refused the input
        raise ApplicationError(
            "model_error",
            f"The model raised {type(exc).__name__}: {_first_line(str(exc))}"
            + model_cache.saved_with_note(loaded.saved_with),
            status=422,
        ) from None


def _parse(model, inputs: dict) -> object:
    """The input as MLflow's scoring server reads it, against the model's signature."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    try:
        return infer_and_parse_data(
            {k: v for k, v in inputs.items() if k != "params"},
            model.metadata.get_input_schema(),
        )
    except MlflowException as exc:
        raise ApplicationError("invalid_input", _first_line(exc.message), status=422) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise ApplicationError(
            "invalid_input", f"{type(exc).__name__}: {_first_line(str(exc))}", status=422
        ) from None


def _pyfunc_predict(model, params: dict | None, data: object) -> object:
    return model.predict(data, params=params) if params else model.predict(data)


def encode(prediction: Prediction, **metadata: object) -> str:
    """The answer's JSON, predictions encoded by MLflow's scoring server's own function."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    out = StringIO()
    predictions_to_json(prediction.raw, out, metadata=metadata)
    return out.getvalue()


def _row_count(data: object) -> int:
    shape = getattr(data, "shape", None)
    if shape:
        return int(shape[0])
    if isinstance(data, dict):
        return max((_row_count(value) for value in data.values()), default=0)
    if isinstance(data, list):
        return len(data)
    return 1


def _schema_problem(message: str) -> str:
    """MLflow's "Failed to enforce schema of data '<the whole input>' with schema '…'. Error:
    <the problem>", without the input (it may be large, and it is the caller's own)."""
    _, found, problem = message.rpartition("Error: ")
    return _first_line(problem if found else message)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0][:500] if message.strip() else "invalid input"


def start_worker() -> None:
    """Readies a serving worker as it starts: loads the serving version of each
    MODEL_SERVING_PRELOAD model, off the request path, and freezes what the process holds.

    What a serving process holds once started and preloaded (Django, MLflow, scikit-learn, the
    models: ~350,000 objects) lives as long as the process, so it is frozen out of the cyclic
    garbage collector's reach: each full collection walked all of it, ~150 ms in which the
    process answered nothing, which was most of the prediction server's p99.
    """
    gc.freeze()
    if settings.MODEL_SERVING_PRELOAD:
        threading.Thread(target=_preload, name="preload-models", daemon=True).start()


def _preload() -> None:
    for model_id in settings.MODEL_SERVING_PRELOAD:
        try:
            model = served_model(model_id)
            model_cache.get((model.name, serving_version(model, None)))
        except (ApplicationError, model_cache.ModelLoadFailed) as exc:
            logger.warning("could not preload %s: %s", model_id, exc)
    db.connection.close()  # this thread's own
    gc.freeze()

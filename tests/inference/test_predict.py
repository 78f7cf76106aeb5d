"""POST /api/v1/models/{id}/predict against a real MLflow server with models logged by the stock
client: answers equal to `mlflow models serve`, version choice, every refusal, the model cache
and the prediction log."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import time
import uuid

import pytest
import urllib3
from mlflow import MlflowClient

from inference import model_cache, prediction_log, services
from inference.models import PredictionLog
from registry.models import Model
from tests.conftest import VENV_BIN, free_port, stop_process, subprocess_env, wait_for_http

pytestmark = pytest.mark.django_db

# Logged once per test module by the stock client, in a process of its own.
LOG_MODELS = """
import json, time
import mlflow, pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

features = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], "b": [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]})
labels = [0, 0, 1, 1, 1, 1]

class Raising(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        raise ZeroDivisionError("the model divided by zero")

class Sleeping(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        time.sleep(3)
        return [0] * len(model_input)

logged = {}
with mlflow.start_run() as run:
    for name, c in (("first", 1.0), ("second", 0.01)):
        fitted = LogisticRegression(C=c).fit(features, labels)
        signature = infer_signature(features, fitted.predict(features))
        logged[name] = mlflow.sklearn.log_model(fitted, name=name, signature=signature).model_id
    for name, model in (("raising", Raising()), ("sleeping", Sleeping())):
        # Requirements given: inferring them loads the model in a subprocess, for seconds.
        logged[name] = mlflow.pyfunc.log_model(
            name=name, python_model=model, pip_requirements=["mlflow"]
        ).model_id
logged["run_id"] = run.info.run_id
print(json.dumps(logged))
"""

ROWS = {"a": [0.5, 4.5, 2.0], "b": [1.0, 0.0, 1.0]}
BODIES = {
    "dataframe_split": {
        "dataframe_split": {"columns": ["a", "b"], "data": [[0.5, 1.0], [4.5, 0.0], [2.0, 1.0]]}
    },
    "dataframe_records": {
        "dataframe_records": [{"a": 0.5, "b": 1.0}, {"a": 4.5, "b": 0.0}, {"a": 2.0, "b": 1.0}]
    },
    # Columns in another order, and integers for doubles (as JavaScript writes 1.0).
    "dataframe_split, b before a": {
        "dataframe_split": {"columns": ["b", "a"], "data": [[1, 0.5], [0, 4.5], [1, 2]]}
    },
    "instances": {"instances": [{"a": 0.5, "b": 1.0}, {"a": 4.5, "b": 0.0}, {"a": 2.0, "b": 1.0}]},
    "inputs": {"inputs": ROWS},
}


def log_models(mlflow_server, script: str) -> dict:
    """Runs `script` (the stock client logging models) against `mlflow_server`; what it prints
    last, as JSON."""
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env=subprocess_env(MLFLOW_TRACKING_URI=mlflow_server.url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def logged(mlflow_server) -> dict:
    return log_models(mlflow_server, LOG_MODELS)


@pytest.fixture(autouse=True)
def fresh_serving_state(settings):
    """Each test starts with nothing loaded and versions looked up afresh."""
    settings.MODEL_SERVING_VERSION_CACHE_SECONDS = 0.001
    model_cache.clear()
    services._models.clear()
    services._versions.clear()
    yield
    model_cache.clear()
    prediction_log.flush()  # while this test may still use the database


def registered(mlflow_server, logged, *sources: str) -> Model:
    """A model in MLflow with a version per logged source, and its registry row."""
    client = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    name = f"serve-{uuid.uuid4().hex[:10]}"
    client.create_registered_model(name)
    for source in sources:
        client.create_model_version(
            name, f"models:/{logged[source]}", run_id=logged["run_id"], model_id=logged[source]
        )
    token = f"T{uuid.uuid4().hex[:8]}".upper()
    return Model.objects.create(
        model_id=token.lower(),
        token_symbol=token,
        name=name,
        metric_name="accuracy",
        metric_direction="higher",
        baseline_value=0.5,
    )


@pytest.fixture
def predictor(owner, issue_key):
    _, key = issue_key(owner, ["predict"])
    return key


def predict(client, key, model: Model | str, body, **headers):
    model_id = model if isinstance(model, str) else model.model_id
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(
        f"/api/v1/models/{model_id}/predict",
        data,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        **headers,
    )


def served(model: Model, body: dict) -> services.Prediction:
    """The prediction for `body`, through the services, without HTTP."""
    request = services.read_request(json.dumps(body).encode())
    version = services.serving_version(model, request.model_version)
    return services.predict(model, version, request)


def served_version_soon(client, key, model: Model, body: dict, wanted: str) -> str:
    """The version serving `body`, once it is `wanted` or after a few seconds: a change in
    MLflow is picked up by a look-up in the background, answers meanwhile keep the last one."""
    deadline = time.monotonic() + 10
    while True:
        version = predict(client, key, model, body).json()["model_version"]
        if version == wanted or time.monotonic() > deadline:
            return version
        time.sleep(0.05)


def logged_rows(model: Model) -> list[PredictionLog]:
    """The model's log rows (the writer commits them outside the test's transaction)."""
    prediction_log.flush()
    return list(PredictionLog.objects.filter(model_id=model.model_id).order_by("created_at"))


# --- Answers ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_predictions_equal_mlflow_models_serve_for_every_input_format(
    client, predictor, running_mlflow, logged, tmp_path
):
    model = registered(running_mlflow, logged, "first")
    port = free_port()
    with open(tmp_path / "serve.log", "wb") as log:
        serve = subprocess.Popen(
            [
                str(VENV_BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{model.name}/1",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=subprocess_env(MLFLOW_TRACKING_URI=running_mlflow.url),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=120, process=serve)
        http = urllib3.PoolManager()
        for name, body in BODIES.items():
            theirs = http.request(
                "POST",
                f"http://127.0.0.1:{port}/invocations",
                body=json.dumps(body),
                headers={"Content-Type": "application/json"},
            )
            ours = predict(client, predictor, model, body)
            assert (theirs.status, ours.status_code) == (200, 200), (name, ours.content)
            assert ours.json()["predictions"] == json.loads(theirs.data)["predictions"], name
    finally:
        stop_process(serve)
    # The dataframe bodies took inference.fast_path, the others MLflow's own path.
    assert model_cache.get((model.name, "1")).fast_path is not None


def test_the_answer_names_the_version_and_its_log_row(client, predictor, mlflow_server, logged):
    model = registered(mlflow_server, logged, "first")
    response = predict(client, predictor, model, BODIES["dataframe_split"], HTTP_X_REQUEST_ID="r-1")
    assert response.status_code == 200, response.content
    answer = response.json()
    assert list(answer) == [
        "predictions",
        "model_id",
        "model_version",
        "inference_log_id",
        "request_id",
    ]
    assert (answer["model_id"], answer["model_version"], answer["request_id"]) == (
        model.model_id,
        "1",
        "r-1",
    )
    assert answer["predictions"] == [0, 1, 1]
    (row,) = logged_rows(model)
    assert str(row.id) == answer["inference_log_id"]
    assert (row.status, row.model_version, row.rows, row.caller_kind) == (200, "1", 3, "api_key")
    assert row.payload == ""
    assert len(row.input_sha256) == 64


# --- Which version -----------------------------------------------------------------------------


def test_latest_ready_then_explicit_then_champion(client, predictor, mlflow_server, logged):
    model = registered(mlflow_server, logged, "first", "second")
    body = BODIES["inputs"]
    assert predict(client, predictor, model, body).json()["model_version"] == "2"
    explicit = {**body, "options": {"model_version": "1"}}
    assert predict(client, predictor, model, explicit).json()["model_version"] == "1"

    client_ = MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)
    client_.set_registered_model_alias(model.name, "champion", "1")
    assert served_version_soon(client, predictor, model, body, "1") == "1"


def test_a_new_version_is_picked_up(client, predictor, mlflow_server, logged):
    model = registered(mlflow_server, logged, "first")
    assert predict(client, predictor, model, BODIES["inputs"]).json()["model_version"] == "1"
    MlflowClient(tracking_uri=mlflow_server.url).create_model_version(
        model.name,
        f"models:/{logged['second']}",
        run_id=logged["run_id"],
        model_id=logged["second"],
    )
    assert served_version_soon(client, predictor, model, BODIES["inputs"], "2") == "2"


def test_while_mlflow_is_out_of_reach_the_last_version_keeps_serving(
    client, predictor, mlflow_server, logged, settings
):
    model = registered(mlflow_server, logged, "first")
    assert predict(client, predictor, model, BODIES["inputs"]).status_code == 200
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for _ in range(20):  # each one past the version's cache time: looked up again, and again
        time.sleep(0.01)
        response = predict(client, predictor, model, BODIES["inputs"])
        assert (response.status_code, response.json()["model_version"]) == (200, "1")
    # A model never served here cannot be: which version is unknown.
    other = registered(mlflow_server, logged)
    response = predict(client, predictor, other, BODIES["inputs"])
    assert (response.status_code, response.json()["code"]) == (503, "mlflow_unavailable")


# --- Refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"[1, 2]", "invalid_body"),
        ({"inputs": ROWS, "instances": [[1, 2]]}, "input_format"),
        ({"params": {}}, "input_format"),
        ({"inputs": ROWS, "options": {"model_version": "latest"}}, "invalid_options"),
    ],
)
def test_malformed_bodies_are_400(client, predictor, mlflow_server, logged, body, code):
    model = registered(mlflow_server, logged, "first")
    response = predict(client, predictor, model, body)
    assert response.status_code == 400
    assert response.json()["code"] == code


def test_unknown_model_and_version(client, predictor, mlflow_server, logged):
    assert predict(client, predictor, "nosuchmodel", BODIES["inputs"]).status_code == 404
    model = registered(mlflow_server, logged, "first")
    response = predict(
        client, predictor, model, {**BODIES["inputs"], "options": {"model_version": 9}}
    )
    assert (response.status_code, response.json()["code"]) == (404, "version_not_found")


def test_no_ready_version_is_409(client, predictor, mlflow_server, logged):
    model = registered(mlflow_server, logged)
    response = predict(client, predictor, model, BODIES["inputs"])
    assert (response.status_code, response.json()["code"]) == (409, "no_ready_version")


def test_input_against_the_signature_is_422_naming_the_column(
    client, predictor, mlflow_server, logged
):
    model = registered(mlflow_server, logged, "first")
    response = predict(client, predictor, model, {"dataframe_records": [{"a": 1.0}]})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert "b" in response.json()["detail"]
    wrong_type = {"dataframe_records": [{"a": "x", "b": 1.0}]}
    response = predict(client, predictor, model, wrong_type)
    assert response.status_code == 422
    assert "Traceback" not in response.content.decode()


def test_a_model_raising_is_422_with_the_error_class(client, predictor, mlflow_server, logged):
    model = registered(mlflow_server, logged, "raising")
    response = predict(client, predictor, model, BODIES["inputs"])
    assert response.status_code == 422
    assert response.json()["code"] == "model_error"
    assert "ZeroDivisionError" in response.json()["detail"]
    assert "Traceback" not in response.content.decode()


def test_too_many_rows_and_too_large_a_body_are_413(
    client, predictor, mlflow_server, logged, settings
):
    model = registered(mlflow_server, logged, "first")
    settings.MODEL_SERVING_MAX_ROWS = 2
    response = predict(client, predictor, model, BODIES["inputs"])
    assert (response.status_code, response.json()["code"]) == (413, "too_many_rows")
    settings.MODEL_SERVING_MAX_BODY_BYTES = 100
    response = predict(client, predictor, model, {"inputs": {"a": [1.0] * 100, "b": [0.0] * 100}})
    assert (response.status_code, response.json()["code"]) == (413, "request_too_large")
    assert [(row.status, row.error_code) for row in logged_rows(model)] == [
        (413, "too_many_rows"),
        (413, "request_too_large"),
    ]


def test_a_prediction_past_the_timeout_is_504(client, predictor, mlflow_server, logged, settings):
    model = registered(mlflow_server, logged, "sleeping")
    settings.MODEL_SERVING_PREDICTION_TIMEOUT_SECONDS = 60
    served(model, {"inputs": [[1]]})  # loaded, not timed
    settings.MODEL_SERVING_PREDICTION_TIMEOUT_SECONDS = 0.5
    response = predict(client, predictor, model, {"inputs": [[1]]})
    assert (response.status_code, response.json()["code"]) == (504, "prediction_timeout")


def test_refused_callers_are_logged_too(client, owner, issue_key, mlflow_server, logged):
    model = registered(mlflow_server, logged, "first")
    _, reader = issue_key(owner, ["models:read"])
    assert predict(client, reader, model, BODIES["inputs"]).status_code == 403
    _, limited = issue_key(owner, ["predict"], rate_limit_per_minute=1)
    assert predict(client, limited, model, BODIES["inputs"]).status_code == 200
    assert predict(client, limited, model, BODIES["inputs"]).status_code == 429
    statuses = [(row.status, row.error_code, row.caller_label[:8]) for row in logged_rows(model)]
    assert [status for status, _, _ in statuses] == [403, 200, 429]
    assert statuses[0][1] == "insufficient_scope"
    assert all(label.startswith("hk_") for _, _, label in statuses)


# --- The model cache ---------------------------------------------------------------------------


def test_concurrent_first_requests_load_once(mlflow_server, logged):
    model = registered(mlflow_server, logged, "first")
    loads_before = model_cache.metrics.LOADS._value.get()
    results, errors = [], []

    def call():
        try:
            results.append(served(model, BODIES["inputs"]).model_version)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == ["1"] * 8
    assert model_cache.metrics.LOADS._value.get() - loads_before == 1


def test_eviction_by_count(mlflow_server, logged, settings):
    settings.MODEL_SERVING_CACHE_MAX_MODELS = 1
    model = registered(mlflow_server, logged, "first", "second")
    for version in ("1", "2"):
        served(model, {**BODIES["inputs"], "options": {"model_version": version}})
    assert not model_cache.is_loaded((model.name, "1"))
    assert model_cache.is_loaded((model.name, "2"))


def test_health_says_whether_the_serving_version_is_loaded(
    client, owner, issue_key, mlflow_server, logged
):
    model = registered(mlflow_server, logged, "first")
    _, key = issue_key(owner, ["predict"])
    url = f"/api/v1/models/{model.model_id}/health"
    before = client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert (before["model_version"], before["loaded"]) == ("1", False)
    predict(client, key, model, BODIES["inputs"])
    after = client.get(url, HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert (after["loaded"], after["ready"]) == (True, True)


@pytest.mark.slow
@pytest.mark.parametrize("server_factory", ["web_server_factory", "prediction_server_factory"])
def test_a_preloaded_model_is_loaded_before_its_first_prediction(
    request, server_factory, transactional_db, mlflow_server, logged, owner, issue_key
):
    model = registered(mlflow_server, logged, "first")
    _, key = issue_key(owner, ["predict"])
    base_url = request.getfixturevalue(server_factory)(
        MODEL_SERVING_PRELOAD=model.model_id, MLFLOW_TRACKING_URI=mlflow_server.url
    )
    http = urllib3.PoolManager(headers={"Authorization": f"Bearer {key}"})
    deadline = time.monotonic() + 60
    while True:
        health = json.loads(
            http.request("GET", f"{base_url}/api/v1/models/{model.model_id}/health").data
        )
        assert "loaded" in health, health
        if health["loaded"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (health["loaded"], health["model_version"]) == (True, "1")
    answer = http.request(
        "POST",
        f"{base_url}/api/v1/models/{model.model_id}/predict",
        body=json.dumps(BODIES["dataframe_split"]),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert (answer.status, json.loads(answer.data)["predictions"]) == (200, [0, 1, 1])


def test_preloading_freezes_what_the_process_holds_out_of_the_garbage_collector(
    transactional_db, settings, mlflow_server, logged
):
    model = registered(mlflow_server, logged, "first")
    settings.MODEL_SERVING_PRELOAD = [model.model_id]
    gc.unfreeze()
    try:
        services.start_worker()
        frozen_at_start = gc.get_freeze_count()
        (preloading,) = (t for t in threading.enumerate() if t.name == "preload-models")
        preloading.join(timeout=60)
        assert model_cache.is_loaded((model.name, "1"))
        # The start-up's objects, then the model's too.
        assert 0 < frozen_at_start < gc.get_freeze_count()
    finally:
        gc.unfreeze()


@pytest.mark.slow
def test_the_prediction_server_answers_only_the_prediction_routes(
    prediction_server_factory, client, mlflow_server, logged, owner, staff, issue_key
):
    model = registered(mlflow_server, logged, "first")
    _, key = issue_key(owner, ["predict"])
    base_url = prediction_server_factory(MLFLOW_TRACKING_URI=mlflow_server.url)
    http = urllib3.PoolManager()
    url = f"{base_url}/api/v1/models/{model.model_id}/predict"
    body = json.dumps(BODIES["dataframe_split"])
    json_body = {"Content-Type": "application/json"}

    answer = http.request(
        "POST",
        url,
        body=body,
        headers={**json_body, "Authorization": f"Bearer {key}", "X-Request-ID": "pserver-1"},
    )
    assert (answer.status, json.loads(answer.data)["predictions"]) == (200, [0, 1, 1])
    # The same headers as from the web server: request id, rate limit, security.
    assert answer.headers["X-Request-ID"] == "pserver-1"
    assert int(answer.headers["X-RateLimit-Limit"]) > 0
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["X-Frame-Options"] == "DENY"

    # The rest of the platform is the web server's.
    for path in ("/api/v1/keys", "/api/v1/models", "/api/2.0/mlflow/experiments/get"):
        refused = http.request("GET", base_url + path, headers={"Authorization": f"Bearer {key}"})
        assert (refused.status, json.loads(refused.data)["code"]) == (404, "not_found"), path
    assert http.request("GET", f"{base_url}/admin/").status == 404  # an HTML page, as on web

    # Staff sessions are for the admin and the MLflow UI, not for predictions.
    client.force_login(staff)
    session = f"sessionid={client.cookies['sessionid'].value}"
    by_session = http.request("POST", url, body=body, headers={**json_body, "Cookie": session})
    assert by_session.status == 401

    metrics = http.request("GET", f"{base_url}/metrics").data.decode()
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("hokusai_predictions_total{") and f'"{model.model_id}"' in line
    ]
    assert sorted(line.rsplit(" ", 1)[1] for line in counted) == ["1.0", "1.0"], counted
    assert any('status="200"' in line for line in counted)
    assert any('status="401"' in line for line in counted)

"""Registration, the read API, the original SDK's route and sync, against a real MLflow server.

MLflow's rows live in the test database but outside Django's test transaction, so each test
uses model names of its own.
"""

import json
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from mlflow import MlflowClient

from hokusai_site.models import IdempotencyRecord
from registry import mlflow as registry_mlflow
from registry import services
from registry.attempts import registration_attempt
from registry.models import AuditLog, Model, ModelVersion, RegistrationAttempt
from tests.conftest import free_port, subprocess_env
from webhooks.models import Event

pytestmark = pytest.mark.django_db

REGISTER_URL = "/api/v1/models/register"
COMPAT_URL = "/api/models/tokenized-registration-events"


LOG_MODEL = """
import json
import mlflow
from sklearn.linear_model import LogisticRegression
with mlflow.start_run() as run:
    fitted = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    info = mlflow.sklearn.log_model(fitted, name="model")
print(json.dumps({"run_id": run.info.run_id, "model_id": info.model_id}))
"""


def log_model(tracking_uri: str) -> dict:
    """A scikit-learn model logged in a run of the test MLflow server (MLflow 3: a logged
    model), by the stock client in a process of its own: the fluent API's tracking URI is
    process-wide (and an environment variable every later subprocess would inherit)."""
    completed = subprocess.run(
        [sys.executable, "-c", LOG_MODEL],
        env=subprocess_env(MLFLOW_TRACKING_URI=tracking_uri),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def logged_model(mlflow_server):
    return log_model(mlflow_server.url)


@pytest.fixture(scope="module")
def another_logged_model(mlflow_server):
    return log_model(mlflow_server.url)


@pytest.fixture
def mlflow_client(running_mlflow):
    return MlflowClient(tracking_uri=running_mlflow.url, registry_uri=running_mlflow.url)


def unique(prefix: str = "m") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def writer(owner, issue_key):
    _, key = issue_key(owner, ["models:read", "models:write"])
    return key


def body(logged_model, **overrides) -> dict:
    return {
        "model_name": unique("Churn "),
        "token_symbol": unique("TK"),
        "model_uri": f"runs:/{logged_model['run_id']}/model",
        "metric_name": "accuracy",
        "baseline_value": 0.8,
        "current_value": 0.85,
        "proposal_identifier": "prop-1",
        "tags": {"team": "growth"},
        **overrides,
    }


def register(client, key, payload, **headers):
    return client.post(
        REGISTER_URL, payload, content_type="application/json", **bearer(key), **headers
    )


def mlflow_versions(client: MlflowClient, name: str) -> list:
    return client.search_model_versions(f"name='{name}'")


def problem(response) -> tuple[int, str]:
    assert response["Content-Type"] == "application/problem+json"
    return response.status_code, response.json()["code"]


# --- registration -------------------------------------------------------------------------------


def test_a_registration_creates_the_version_in_mlflow_and_records_it_with_its_events(
    client, writer, logged_model, mlflow_client
):
    payload = body(logged_model)
    response = register(client, writer, payload)

    assert response.status_code == 201, response.content
    data = response.json()
    token = payload["token_symbol"].upper()
    assert data["model_id"] == token.lower()
    assert data["token_symbol"] == token
    assert data["owner"] == "owner"  # the key's owner
    assert data["status"] == "ready_to_deploy"
    assert data["latest_version"]["version"] == 1
    assert data["latest_version"]["source"] == f"models:/{logged_model['model_id']}"
    (version,) = mlflow_versions(mlflow_client, payload["model_name"])
    assert version.status == "READY"
    assert version.tags["hokusai_token_id"] == token
    assert version.tags["benchmark_metric"] == "accuracy"
    assert version.tags["benchmark_value"] == "0.8"
    assert version.tags["hokusai_proposal_identifier"] == "prop-1"
    row = ModelVersion.objects.get(model__token_symbol=token)
    assert (row.version, row.current_value, row.run_id) == (1, 0.85, logged_model["run_id"])
    events = {e.event_type: e.payload for e in Event.objects.all()}
    assert set(events) == {"model_registered", "model_ready_to_deploy"}
    ready = events["model_ready_to_deploy"]
    assert ready["model"]["token_symbol"] == token and ready["model"]["version"] == "1"
    assert ready["data"]["improvement_percentage"] == pytest.approx(6.25)
    assert ready["source"] == "hokusai" and ready["timestamp"].endswith("Z")
    assert AuditLog.objects.filter(action="model.version_registered", target_id=token.lower())


def test_a_version_that_does_not_beat_its_baseline_is_only_registered(client, writer, logged_model):
    response = register(client, writer, body(logged_model, current_value=0.7))
    assert response.json()["status"] == "registered"
    assert list(Event.objects.values_list("event_type", flat=True)) == ["model_registered"]


def test_a_lower_is_better_metric_beats_its_baseline_by_going_down(client, writer, logged_model):
    response = register(
        client,
        writer,
        body(logged_model, metric_name="rmse", baseline_value=2.0, current_value=1.5),
    )
    assert response.json()["status"] == "ready_to_deploy"
    event = Event.objects.get(event_type="model_ready_to_deploy")
    assert event.payload["data"]["improvement_percentage"] == pytest.approx(25.0)


def test_run_id_and_artifact_path_work_like_a_runs_uri(client, writer, logged_model):
    payload = body(logged_model)
    del payload["model_uri"]
    payload |= {"run_id": logged_model["run_id"], "artifact_path": "model"}
    assert register(client, writer, payload).status_code == 201


def test_a_second_version_goes_under_the_same_model(client, writer, logged_model, mlflow_client):
    first = body(logged_model)
    assert register(client, writer, first).status_code == 201
    second = {**first, "model_uri": f"models:/{logged_model['model_id']}", "current_value": 0.9}
    # Same run and source as the first: that version is registered already.
    assert problem(register(client, writer, second)) == (409, "version_already_registered")
    assert len(mlflow_versions(mlflow_client, first["model_name"])) == 1


def test_a_repeated_registration_changes_nothing(client, writer, logged_model):
    first = body(logged_model)
    assert register(client, writer, first).status_code == 201
    repeat = register(client, writer, {**first, "baseline_value": 0.1, "description": "new"})
    assert problem(repeat) == (409, "version_already_registered")
    model = Model.objects.get(name=first["model_name"])
    assert (model.baseline_value, model.description) == (0.8, "")


def test_a_registration_keeps_what_the_owner_changed_while_mlflow_worked(
    client, writer, logged_model, another_logged_model, monkeypatch
):
    first = body(logged_model)
    assert register(client, writer, first).status_code == 201
    wait = services.wait_until_ready

    def owner_edits_meanwhile(name, version):
        Model.objects.filter(name=name).update(
            description="edited meanwhile", tags={"team": "growth", "stage": "edited"}
        )
        return wait(name, version)

    monkeypatch.setattr(services, "wait_until_ready", owner_edits_meanwhile)
    second = {
        **first,
        "model_uri": f"models:/{another_logged_model['model_id']}",
        "current_value": 0.7,
        "tags": {"team": "ml"},
    }
    response = register(client, writer, second)

    assert response.status_code == 201, response.content
    model = Model.objects.get(name=first["model_name"])
    assert (model.description, model.status) == ("edited meanwhile", "registered")
    # The registration's tag over the tags as edited meanwhile, not as loaded before.
    assert model.tags == {"team": "ml", "stage": "edited"}
    assert response.json()["tags"] == model.tags


def test_a_token_taken_while_mlflow_worked_is_409_not_a_crash(
    client, writer, outsider, logged_model, monkeypatch
):
    payload = body(logged_model)
    token = payload["token_symbol"].upper()
    check = services.check_ownership

    def someone_else_registers_meanwhile(**kwargs):
        found = check(**kwargs)
        Model.objects.create(
            model_id=token.lower(),
            token_symbol=token,
            name=unique("Theirs "),
            owner_user=outsider,
            metric_name="accuracy",
            metric_direction="higher",
            baseline_value=0.5,
        )
        return found

    monkeypatch.setattr(services, "check_ownership", someone_else_registers_meanwhile)
    response = register(client, writer, payload)
    assert problem(response) == (409, "token_symbol_taken")
    assert Model.objects.get(token_symbol=token).owner_user == outsider
    assert not Event.objects.exists()


def test_a_twin_request_of_the_same_owner_creating_the_model_meanwhile_is_fine(
    client, writer, owner, logged_model, monkeypatch
):
    payload = body(logged_model)
    token = payload["token_symbol"].upper()
    check = services.check_ownership
    calls = []

    def twin_creates_the_model_meanwhile(**kwargs):
        found = check(**kwargs)
        if not calls:
            Model.objects.create(
                model_id=token.lower(),
                token_symbol=token,
                name=payload["model_name"],
                owner_user=owner,
                metric_name="accuracy",
                metric_direction="higher",
                baseline_value=0.5,
            )
        calls.append(found)
        return found

    monkeypatch.setattr(services, "check_ownership", twin_creates_the_model_meanwhile)
    response = register(client, writer, payload)
    assert response.status_code == 201, response.content
    assert calls[0] is None and calls[1].token_symbol == token  # the twin's row, found again
    assert Model.objects.get(token_symbol=token).versions.count() == 1


def test_a_retry_with_the_same_idempotency_key_returns_the_first_answer(
    client, writer, logged_model, mlflow_client
):
    payload = body(logged_model)
    first = register(client, writer, payload, HTTP_IDEMPOTENCY_KEY="reg-1")
    again = register(client, writer, payload, HTTP_IDEMPOTENCY_KEY="reg-1")
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert len(mlflow_versions(mlflow_client, payload["model_name"])) == 1
    assert Event.objects.filter(event_type="model_registered").count() == 1

    other = register(client, writer, body(logged_model), HTTP_IDEMPOTENCY_KEY="reg-1")
    assert problem(other) == (422, "idempotency_key_reused")


@pytest.mark.slow
def test_mlflow_stopping_mid_way_then_a_retry_finishes_without_a_second_version(
    client, writer, logged_model, running_mlflow, mlflow_client, monkeypatch
):
    payload = body(logged_model)
    create = registry_mlflow.create_model_version

    def create_then_stop_mlflow(**kwargs):
        # MLflow made the version, then died before its answer reached us.
        create(**kwargs)
        running_mlflow.stop()
        raise registry_mlflow.MlflowUnavailable("connection reset by peer")

    monkeypatch.setattr(registry_mlflow, "create_model_version", create_then_stop_mlflow)
    failed = register(client, writer, payload, HTTP_IDEMPOTENCY_KEY="mid-way")
    assert problem(failed) == (503, "mlflow_unavailable")
    assert not Model.objects.exists() and not Event.objects.exists()
    assert IdempotencyRecord.objects.get(key="mid-way").response_status is None

    monkeypatch.setattr(registry_mlflow, "create_model_version", create)
    running_mlflow.start()
    retried = register(client, writer, payload, HTTP_IDEMPOTENCY_KEY="mid-way")
    assert retried.status_code == 201
    assert len(mlflow_versions(mlflow_client, payload["model_name"])) == 1
    assert ModelVersion.objects.count() == 1
    assert Event.objects.filter(event_type="model_registered").count() == 1


def test_a_failure_after_mlflow_created_the_version_is_finished_by_a_plain_retry(
    writer, owner, logged_model, mlflow_client, monkeypatch
):
    actor = services.Caller(
        kind="user", label="owner", scopes=frozenset({"admin"}), user_id=owner.pk
    )
    payload = body(logged_model)
    facts = services.VersionFacts(
        model_name=payload["model_name"],
        token_symbol=payload["token_symbol"].upper(),
        metric_name="accuracy",
        baseline_value=0.8,
        current_value=0.85,
    )

    def fail(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(services, "record_version", fail)
    with pytest.raises(RuntimeError):
        services.model_register(actor=actor, facts=facts, model_uri=payload["model_uri"])
    monkeypatch.undo()
    assert not Model.objects.exists()

    version = services.model_register(actor=actor, facts=facts, model_uri=payload["model_uri"])
    assert version.version == 1
    assert len(mlflow_versions(mlflow_client, payload["model_name"])) == 1


def test_a_first_registration_of_a_logged_model_is_one_mlflow_call(
    client, writer, logged_model, another_logged_model, monkeypatch
):
    first = body(logged_model, model_uri=f"models:/{logged_model['model_id']}")
    assert register(client, writer, first).status_code == 201
    calls = []
    call = registry_mlflow.call

    def counted(method, endpoint, **kwargs):
        calls.append(endpoint)
        return call(method, endpoint, **kwargs)

    monkeypatch.setattr(registry_mlflow, "call", counted)
    second = {**first, "model_uri": f"models:/{another_logged_model['model_id']}"}
    response = register(client, writer, second)

    assert response.status_code == 201, response.content
    assert calls == ["model-versions/create"]
    assert response.json()["latest_version"]["run_id"] == another_logged_model["run_id"]
    assert not RegistrationAttempt.objects.exists()


def test_a_retry_finishing_an_older_version_answers_with_the_newest(
    client, writer, logged_model, another_logged_model, mlflow_client, monkeypatch
):
    first = body(logged_model)
    assert register(client, writer, first).status_code == 201
    older = {**first, "model_uri": f"models:/{another_logged_model['model_id']}"}

    def fail(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(services, "record_version", fail)
    with pytest.raises(RuntimeError):
        register(client, writer, older)  # version 2 is in MLflow only
    monkeypatch.undo()
    run = mlflow_client.create_run("0")
    newest = mlflow_client.create_logged_model("0", name="model", source_run_id=run.info.run_id)
    newer = {**first, "model_uri": f"models:/{newest.model_id}"}
    assert register(client, writer, newer).json()["latest_version"]["version"] == 3

    retried = register(client, writer, older)

    assert retried.status_code == 201, retried.content
    assert retried.json()["latest_version"]["version"] == 3
    recorded = ModelVersion.objects.filter(model__name=first["model_name"])
    assert sorted(recorded.values_list("version", "announced")) == [(1, True), (2, True), (3, True)]
    assert len(mlflow_versions(mlflow_client, first["model_name"])) == 3


def test_a_registration_holding_its_source_makes_a_twin_409(writer, owner, logged_model):
    uri = f"models:/{logged_model['model_id']}"
    with registration_attempt("Twin model", uri) as attempt:
        assert attempt.first
        with (
            pytest.raises(services.ApplicationError) as twin,
            registration_attempt("Twin model", uri),
        ):
            pass
        assert (twin.value.status, twin.value.code) == (409, "registration_in_progress")
        # The twin's refusal leaves the first one's hold as it was.
        assert RegistrationAttempt.objects.get().locked_until > timezone.now()
        attempt.finish()
    assert not RegistrationAttempt.objects.exists()


def test_a_registration_whose_lease_ran_out_is_taken_over(writer, owner, logged_model):
    uri = f"models:/{logged_model['model_id']}"
    with registration_attempt("Dead model", uri) as dead:
        assert dead.first
        # Its process died holding the row: nothing gave it back, the lease runs out.
        RegistrationAttempt.objects.update(locked_until=timezone.now() - timedelta(seconds=1))
        with registration_attempt("Dead model", uri) as retry:
            assert not retry.first  # it looks in MLflow for what the dead one made
            (row,) = RegistrationAttempt.objects.all()
            assert row.locked_until > timezone.now()
            retry.finish()
    assert not RegistrationAttempt.objects.exists()


def test_a_refused_registration_leaves_no_attempt_and_a_failed_one_is_taken_over(
    client, writer, logged_model, settings
):
    unknown = body(logged_model, model_uri=f"models:/m-{'0' * 32}")
    assert problem(register(client, writer, unknown)) == (422, "mlflow_resource_not_found")
    assert not RegistrationAttempt.objects.exists()

    payload = body(logged_model)
    mlflow_url = settings.MLFLOW_TRACKING_URI
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    assert problem(register(client, writer, payload)) == (503, "mlflow_unavailable")
    (left,) = RegistrationAttempt.objects.all()
    assert (left.model_name, left.locked_until) == (payload["model_name"], None)

    settings.MLFLOW_TRACKING_URI = mlflow_url
    with registration_attempt(payload["model_name"], payload["model_uri"]) as retry:
        assert not retry.first  # the retry looks in MLflow before creating
        retry.finish()


def test_sync_forgets_failed_attempts_after_a_day(running_mlflow):
    now = timezone.now()
    held, dead = now + timedelta(minutes=1), now - timedelta(minutes=1)
    attempts = [("old failed", None), ("old dead", dead), ("old held", held), ("new failed", None)]
    for name, locked_until in attempts:
        RegistrationAttempt.objects.create(
            key=name, model_name=name, model_uri="models:/m-1", locked_until=locked_until
        )
    RegistrationAttempt.objects.exclude(model_name="new failed").update(
        created_at=now - timedelta(days=2)
    )
    services.registry_sync()
    assert sorted(RegistrationAttempt.objects.values_list("model_name", flat=True)) == [
        "new failed",
        "old held",
    ]


def test_a_registration_claims_the_version_sync_found_for_its_source(
    client, writer, logged_model, another_logged_model, mlflow_client
):
    payload = body(logged_model, model_uri=f"models:/{logged_model['model_id']}")
    assert register(client, writer, payload).status_code == 201
    other_source = f"models:/{another_logged_model['model_id']}"
    made_directly = mlflow_client.create_model_version(
        payload["model_name"], source=other_source, model_id=another_logged_model["model_id"]
    )
    services.registry_sync()

    claimed = register(client, writer, {**payload, "model_uri": other_source})

    assert claimed.status_code == 201, claimed.content
    version = ModelVersion.objects.get(
        model__name=payload["model_name"], version=int(made_directly.version)
    )
    assert version.announced and version.registered_by == "sync"
    assert len(mlflow_versions(mlflow_client, payload["model_name"])) == 2
    assert Event.objects.filter(payload__model__version=made_directly.version).exists()


def test_mlflow_down_is_503_and_nothing_is_written(client, writer, logged_model, settings):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    response = register(client, writer, body(logged_model))
    assert problem(response) == (503, "mlflow_unavailable")
    assert not Model.objects.exists()
    assert not Event.objects.exists()
    assert not AuditLog.objects.filter(action="model.version_registered").exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model_uri": f"runs:/{'0' * 32}/model"}, "model_uri"),
        ({"model_uri": f"models:/m-{'0' * 32}"}, "model_uri"),
        ({"model_uri": None, "run_id": "0" * 32, "artifact_path": "model"}, "run_id"),
    ],
)
def test_an_unknown_run_or_model_is_422_naming_the_field(
    client, writer, logged_model, overrides, field
):
    payload = {k: v for k, v in (body(logged_model) | overrides).items() if v is not None}
    response = register(client, writer, payload)
    assert problem(response) == (422, "mlflow_resource_not_found")
    assert response.json()["field"] == field
    assert not Model.objects.exists()


def test_an_artifact_path_without_a_model_is_422(client, writer, logged_model):
    payload = body(logged_model, model_uri=f"runs:/{logged_model['run_id']}/elsewhere")
    response = register(client, writer, payload)
    assert problem(response) == (422, "mlflow_resource_not_found")
    assert response.json()["field"] == "model_uri"


def test_someone_elses_token_symbol_is_409_and_mlflow_is_not_touched(
    client, writer, outsider, issue_key, logged_model, mlflow_client
):
    payload = body(logged_model)
    assert register(client, writer, payload).status_code == 201
    _, theirs = issue_key(outsider, ["models:write"])
    taken = body(logged_model, token_symbol=payload["token_symbol"].lower())
    assert problem(register(client, theirs, taken)) == (409, "token_symbol_taken")
    assert mlflow_versions(mlflow_client, taken["model_name"]) == []


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"token_symbol": "-bad-"}, "token_symbol"),
        ({"token_symbol": "a" * 65}, "token_symbol"),
        ({"token_symbol": "register"}, "token_symbol"),
        ({"metric_name": "vibes"}, "metric_name"),
        ({"baseline_value": 1.5}, "baseline_value"),
        ({"current_value": -0.1}, "current_value"),
        ({"baseline_value": "high"}, "baseline_value"),
        ({"tags": {"team": 3}}, "tags"),
        ({"tags": ["a"]}, "tags"),
        ({"tags": {f"k{i}": "v" for i in range(51)}}, "tags"),
        ({"model_uri": "file:///etc/passwd"}, "model_uri"),
        ({"model_uri": f"runs:/{'a' * 32}/../../secrets"}, "model_uri"),
        ({"model_name": "x/../y"}, "model_name"),
        ({"contributor_address": "0x123"}, "contributor_address"),
        ({"description": "d" * 5001}, "description"),
    ],
)
def test_bad_input_is_400_naming_the_field(client, writer, logged_model, overrides, field):
    response = register(client, writer, body(logged_model, **overrides))
    assert problem(response) == (400, "validation_error")
    assert field in response.json()["errors"]


def test_model_uri_and_run_id_together_are_refused(client, writer, logged_model):
    payload = body(logged_model, run_id=logged_model["run_id"], artifact_path="model")
    assert problem(register(client, writer, payload)) == (400, "validation_error")


def test_registering_needs_models_write(client, owner, issue_key, logged_model):
    _, reader = issue_key(owner, ["models:read"])
    assert problem(register(client, reader, body(logged_model))) == (403, "insufficient_scope")


# --- reading and changing -----------------------------------------------------------------------


def test_anyone_may_read_the_registry_but_only_the_owner_sees_runs_and_sources(
    client, writer, outsider, issue_key, logged_model
):
    payload = body(logged_model)
    model_id = register(client, writer, payload).json()["model_id"]
    _, reader = issue_key(outsider, ["models:read"])

    theirs = client.get(f"/api/v1/models/{model_id}", **bearer(reader)).json()
    mine = client.get(f"/api/v1/models/{model_id}", **bearer(writer)).json()

    assert theirs["token_symbol"] == mine["token_symbol"]
    assert theirs["owner"] == mine["owner"] == "owner"
    assert "run_id" not in theirs["latest_version"] and "source" not in theirs["latest_version"]
    assert mine["latest_version"]["run_id"] == logged_model["run_id"]
    versions = client.get(f"/api/v1/models/{model_id}/versions", **bearer(reader)).json()
    assert versions["count"] == 1 and "source" not in versions["results"][0]


def test_the_list_filters_by_token_owner_name_and_status(client, writer, logged_model):
    first = body(logged_model, current_value=0.9)
    second = body(logged_model, current_value=0.1, model_uri=f"models:/{logged_model['model_id']}")
    for payload in (first, second):
        assert register(client, writer, payload).status_code == 201

    def listed(**query) -> list[str]:
        response = client.get("/api/v1/models", query, **bearer(writer))
        return [m["token_symbol"] for m in response.json()["results"]]

    tokens = sorted(p["token_symbol"].upper() for p in (first, second))
    assert listed() == tokens
    assert listed(token_symbol=first["token_symbol"].lower()) == [first["token_symbol"].upper()]
    assert listed(owner="owner") == tokens
    assert listed(owner="nobody") == []
    assert listed(search=second["model_name"][-6:]) == [second["token_symbol"].upper()]
    assert listed(status="ready_to_deploy") == [first["token_symbol"].upper()]
    bad = client.get("/api/v1/models", {"status": "nope"}, **bearer(writer))
    assert problem(bad) == (400, "validation_error")


def test_the_owner_shown_is_the_owners_name_whoever_asks(
    owner, identity, staff, django_assert_num_queries
):
    from authkeys.principals import Caller, caller_from_user
    from registry.api.views import owner_shown

    owners_key = Caller(kind="api_key", label="hk_1", user_id=owner.pk, key_owner="owner")
    with django_assert_num_queries(0):  # the owner asking carries the name
        assert owner_shown(Model(owner_user_id=owner.pk), owners_key) == "owner"
        assert owner_shown(Model(owner_user_id=owner.pk), caller_from_user(owner)) == "owner"
    assert owner_shown(Model(owner_user_id=owner.pk), caller_from_user(staff)) == "owner"
    assert owner_shown(Model(owner_user_id=owner.pk), None) == "owner"
    # A wallet's caller label is its address; the model shows the wallet's own label.
    wallet = Caller(kind="eth", label=identity.address, identity_id=identity.pk)
    assert owner_shown(Model(owner_identity_id=identity.pk), wallet) == "wallet"


def test_an_unknown_model_is_404(client, writer):
    assert problem(client.get("/api/v1/models/nope", **bearer(writer))) == (404, "not_found")


def test_the_owner_changes_description_and_tags_and_others_may_not(
    client, writer, outsider, issue_key, logged_model
):
    model_id = register(client, writer, body(logged_model)).json()["model_id"]
    url = f"/api/v1/models/{model_id}"
    change = {"description": "Predicts churn.", "tags": {"team": "retention"}}

    response = client.patch(url, change, content_type="application/json", **bearer(writer))
    assert response.status_code == 200
    assert response.json()["description"] == "Predicts churn."
    assert response.json()["tags"] == {"team": "retention"}
    assert AuditLog.objects.get(action="model.updated").details["changes"]["description"] == {
        "old": "",
        "new": "Predicts churn.",
    }

    _, theirs = issue_key(outsider, ["models:write"])
    refused = client.patch(
        url, {"description": "mine"}, content_type="application/json", **bearer(theirs)
    )
    assert problem(refused) == (403, "not_model_owner")
    assert Model.objects.get(model_id=model_id).description == "Predicts churn."


# --- the original SDK's route ---------------------------------------------------------------------


def test_the_original_sdks_event_records_a_version_it_created_itself(
    client, writer, logged_model, mlflow_client
):
    name, token = unique("Sdk "), unique("SDK").upper()
    mlflow_client.create_registered_model(name)
    created = mlflow_client.create_model_version(
        name,
        source=f"models:/{logged_model['model_id']}",
        run_id=logged_model["run_id"],
        model_id=logged_model["model_id"],
    )
    payload = {
        "model_name": name,
        "version": created.version,
        "token_id": token,
        "proposal_identifier": "PR-7",
        "metric_name": "auroc",
        "baseline_value": 0.7,
        "current_value": 0.75,
        "mlflow_run_id": logged_model["run_id"],
        "tags": {"user_id": "someone-else", "team": "sdk"},
    }

    first = client.post(COMPAT_URL, payload, content_type="application/json", **bearer(writer))
    again = client.post(COMPAT_URL, payload, content_type="application/json", **bearer(writer))

    expected = {
        "status": "ok",
        "model_id": f"{name}/{created.version}/{token}",
        "model_name": name,
        "version": str(created.version),
        "event_emitted": True,
        "detail": None,
    }
    assert first.json() == expected and again.json() == expected
    assert ModelVersion.objects.get(model__token_symbol=token).proposal_identifier == "PR-7"
    assert Model.objects.get(token_symbol=token).tags["user_id"] == "owner"
    tags = mlflow_client.get_model_version(name, created.version).tags
    assert tags["user_id"] == "owner" and tags["hokusai_token_id"] == token
    assert Event.objects.filter(event_type="model_registered").count() == 1
    assert Event.objects.filter(event_type="model_ready_to_deploy").count() == 1


def test_the_original_sdks_event_for_a_version_mlflow_lacks_is_422(client, writer):
    payload = {
        "model_name": unique("Sdk "),
        "version": "3",
        "token_id": unique("SDK"),
        "metric_name": "auroc",
        "baseline_value": 0.7,
    }
    response = client.post(COMPAT_URL, payload, content_type="application/json", **bearer(writer))
    assert problem(response) == (422, "mlflow_resource_not_found")
    assert response.json()["field"] == "version"


# --- sync -----------------------------------------------------------------------------------------


def test_sync_brings_in_versions_made_in_mlflow_and_changes_nothing_the_second_time(
    client, writer, logged_model, mlflow_client
):
    registered = body(logged_model)
    assert register(client, writer, registered).status_code == 201
    direct = mlflow_client.create_model_version(
        registered["model_name"],
        source=f"models:/{logged_model['model_id']}",
        model_id=logged_model["model_id"],
    )
    orphan_name, orphan_token = unique("Direct "), unique("DIR").upper()
    mlflow_client.create_registered_model(orphan_name)
    mlflow_client.create_model_version(
        orphan_name,
        source=f"models:/{logged_model['model_id']}",
        model_id=logged_model["model_id"],
        tags={"hokusai_token_id": orphan_token, "benchmark_metric": "f1", "benchmark_value": "0.5"},
    )
    untagged = unique("Untagged ")
    mlflow_client.create_registered_model(untagged)
    mlflow_client.create_model_version(
        untagged, source=f"models:/{logged_model['model_id']}", model_id=logged_model["model_id"]
    )
    before = len(mlflow_client.search_model_versions())

    report = services.registry_sync()

    assert report.versions_created >= 2
    mine = Model.objects.get(name=registered["model_name"])
    assert sorted(mine.versions.values_list("version", flat=True)) == [1, int(direct.version)]
    synced = ModelVersion.objects.get(model=mine, version=int(direct.version))
    assert synced.registered_by == "sync" and not synced.announced
    orphan = Model.objects.get(token_symbol=orphan_token)
    assert (orphan.status, orphan.owner_label, orphan.metric_name) == ("unclaimed", "", "f1")
    assert not Model.objects.filter(name=untagged).exists()
    assert not Event.objects.filter(payload__model__version=direct.version).exists()

    again = services.registry_sync()
    assert (again.models_created, again.versions_created, again.versions_updated) == (0, 0, 0)
    assert len(mlflow_client.search_model_versions()) == before


def test_sync_runs_from_the_command_and_every_five_minutes_from_beat(settings, running_mlflow):
    from django.core.management import call_command

    from hokusai_site.celery import app

    call_command("sync_registry")
    app.loader.import_default_modules()  # what a worker does at start: finds the tasks
    assert settings.CELERY_BEAT_SCHEDULE["sync-registry"] == {
        "task": "registry.sync",
        "schedule": 300.0,
    }
    assert "registry.sync" in app.tasks


# --- audit log ------------------------------------------------------------------------------------


def test_the_audit_log_needs_audit_read_and_filters(client, owner, writer, issue_key, logged_model):
    register(client, writer, body(logged_model))
    _, auditor = issue_key(owner, ["audit:read"])
    assert problem(client.get("/api/v1/audit-logs", **bearer(writer))) == (
        403,
        "insufficient_scope",
    )

    everything = client.get("/api/v1/audit-logs", **bearer(auditor)).json()
    registered = client.get(
        "/api/v1/audit-logs", {"action": "model.version_registered"}, **bearer(auditor)
    ).json()
    assert everything["count"] >= 3  # the keys created, the registration
    assert [e["action"] for e in registered["results"]] == ["model.version_registered"]
    assert registered["results"][0]["actor_label"] == writer[:16]
    bad = client.get("/api/v1/audit-logs", {"since": "yesterday"}, **bearer(auditor))
    assert problem(bad) == (400, "validation_error")


# --- admin ----------------------------------------------------------------------------------------


def test_operators_see_models_versions_and_events_read_only(client, writer, staff, logged_model):
    payload = body(logged_model)
    model_id = register(client, writer, payload).json()["model_id"]
    model = Model.objects.get(model_id=model_id)
    client.force_login(staff)

    listing = client.get("/admin/registry/model/").content.decode()
    page = client.get(f"/admin/registry/model/{model.pk}/change/").content.decode()
    events = client.get("/admin/webhooks/event/").content.decode()

    assert model.token_symbol in listing
    assert logged_model["run_id"] in page  # the version inline
    assert 'name="description"' not in page  # read-only
    assert "model_ready_to_deploy" in events
    refused = client.post(f"/admin/registry/model/{model.pk}/change/", {"description": "x"})
    assert refused.status_code == 403
    assert Model.objects.get(pk=model.pk).description == ""


def test_a_concurrent_twin_is_409_and_a_failed_claim_is_given_back(owner):
    from hokusai_site.idempotency import idempotent

    actor = services.Caller(kind="user", label="owner", user_id=owner.pk)
    claim_on = {"operation": "op", "caller": actor, "key": "k-1", "payload": {"a": 1}}
    with idempotent(**claim_on) as first:
        assert first.replay is None
        with pytest.raises(services.ApplicationError) as twin, idempotent(**claim_on):
            pass
        assert twin.value.code == "idempotency_key_in_progress"
    # The first one stopped without an answer: a retry claims the key at once.
    with idempotent(**claim_on) as retry:
        assert retry.replay is None
        retry.answer(201, {"done": True})
    with idempotent(**claim_on) as later:
        assert later.replay == (201, {"done": True})


def test_the_list_loads_only_each_models_newest_version(
    client, writer, owner, django_assert_max_num_queries
):
    for token in ("AAA", "BBB"):
        model = Model.objects.create(
            model_id=token.lower(),
            token_symbol=token,
            name=f"{token} model",
            owner_user=owner,
            metric_name="accuracy",
            metric_direction="higher",
            baseline_value=0.5,
        )
        for number in range(1, 6):
            ModelVersion.objects.create(
                model=model, version=number, source="s", mlflow_status="READY", registered_by="t"
            )
    client.get("/api/v1/models", **bearer(writer))  # the key's facts are cached from here on
    with django_assert_max_num_queries(3):  # count, page, newest versions
        listed = client.get("/api/v1/models", **bearer(writer)).json()["results"]
    assert [(m["token_symbol"], m["latest_version"]["version"]) for m in listed] == [
        ("AAA", 5),
        ("BBB", 5),
    ]

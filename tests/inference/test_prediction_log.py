"""The prediction log: a row per attempt, written in the background without costing the request
a query, nothing lost on a clean stop, pruned after the retention period, read in the admin.

Rows are written by another thread (or process), on its own connection: those tests are
transactional, so the rows it commits are visible here. Each test uses model ids of its own, so
rows another test left behind never change its counts."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import urllib3
from django.db import OperationalError
from django.utils import timezone

from inference import prediction_log
from inference.models import PredictionLog
from inference.tasks import prune_prediction_log
from registry.models import Model
from tests.conftest import (
    REPO_ROOT,
    VENV_BIN,
    free_port,
    prediction_server_command,
    stop_process,
    subprocess_env,
    wait_for_http,
)
from tests.conftest import (
    test_database_url as database_url,
)

LOG_ADMIN = "/admin/inference/predictionlog/"
BODY = b'{"inputs": [[1.0, 2.0]]}'
writes_in_background = pytest.mark.django_db(transaction=True)


def record(model_id: str, **fields) -> uuid.UUID:
    values = {
        "caller_kind": "api_key",
        "caller_label": "hk_live_ab12",
        "model_id": model_id,
        "model_version": "3",
        "rows": 1,
        "latency_ms": 12.5,
        "status": 200,
        "error_code": "",
        "request_id": "req-1",
        "body": BODY,
    }
    values.update(fields)
    return prediction_log.record(**values)


def make_rows(model_id: str, count: int, **fields) -> list[PredictionLog]:
    """Rows written straight to the database (for the admin, usage and prune tests)."""
    values = {
        "created_at": timezone.now(),
        "caller_kind": "api_key",
        "caller_label": "hk_live_ab12",
        "model_id": model_id,
        "model_version": "1",
        "rows": 2,
        "latency_ms": 10.0,
        "status": 200,
    }
    values.update(fields)
    return PredictionLog.objects.bulk_create([PredictionLog(**values) for _ in range(count)])


class FailingInsert:
    """Stands in for prediction_log._insert (the writer's one way to the database) while the
    database is 'down'."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        raise OperationalError("connection refused (simulated)")


@pytest.fixture(autouse=True)
def _nothing_left_queued():
    """Rows a test queued but did not write would land in a later test's database."""
    yield
    assert not prediction_log._writer(start=False).pending


# --- Recording ---------------------------------------------------------------------------------


@writes_in_background
def test_a_recorded_prediction_is_a_row_with_every_field_after_flush():
    created_at = timezone.now() - timedelta(seconds=5)

    log_id = record(
        "plog-fields",
        caller_kind="eth",
        caller_label="0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        model_version="7",
        rows=3,
        latency_ms=42.25,
        status=504,
        error_code="prediction_timeout",
        request_id="req-fields",
        created_at=created_at,
    )
    prediction_log.flush()

    row = PredictionLog.objects.get(pk=log_id)
    assert isinstance(log_id, uuid.UUID)
    assert (row.created_at, row.caller_kind, row.caller_label) == (
        created_at,
        "eth",
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    )
    assert (row.model_id, row.model_version, row.rows) == ("plog-fields", "7", 3)
    assert (row.latency_ms, row.status, row.error_code) == (42.25, 504, "prediction_timeout")
    assert row.request_id == "req-fields"


@writes_in_background
def test_the_time_of_a_row_is_when_the_request_started_not_when_it_was_written():
    before = timezone.now()

    log_id = record("plog-time", latency_ms=2000.0)
    time.sleep(0.2)
    prediction_log.flush()

    created_at = PredictionLog.objects.get(pk=log_id).created_at
    assert before - timedelta(seconds=2.1) < created_at < before


@writes_in_background
def test_the_input_is_kept_as_its_sha256_and_no_payload_by_default():
    log_id = record("plog-hash", body=BODY)
    prediction_log.flush()

    row = PredictionLog.objects.get(pk=log_id)
    assert row.input_sha256 == hashlib.sha256(BODY).hexdigest()
    assert row.payload == ""


@writes_in_background
def test_the_payload_is_stored_when_payload_logging_is_on(settings):
    settings.HOKUSAI_LOG_PREDICTION_PAYLOADS = True
    odd = b'{"inputs": "caf\xc3\xa9 \xff \x00"}'  # invalid UTF-8 and a NUL, as clients may send

    plain, mangled = record("plog-payload", body=BODY), record("plog-payload", body=odd)
    prediction_log.flush()

    assert PredictionLog.objects.get(pk=plain).payload == BODY.decode()
    row = PredictionLog.objects.get(pk=mangled)
    assert row.payload == '{"inputs": "café \ufffd \ufffd"}'
    assert row.input_sha256 == hashlib.sha256(odd).hexdigest()


@writes_in_background
def test_a_caller_chosen_id_is_the_rows_id_and_long_values_are_cut_to_fit():
    log_id = uuid.uuid4()

    returned = record("plog-" + "x" * 100, log_id=log_id, request_id="r" * 200, model_version=12)
    prediction_log.flush()

    row = PredictionLog.objects.get(pk=log_id)
    assert returned == log_id
    assert (len(row.model_id), len(row.request_id), row.model_version) == (64, 128, "12")


@writes_in_background
def test_recording_costs_no_query_and_well_under_a_millisecond(django_assert_num_queries):
    record("plog-cost")  # starts the writer thread

    with django_assert_num_queries(0):
        started = time.perf_counter()
        for index in range(400):
            record("plog-cost", request_id=f"cost-{index}")
        per_record = (time.perf_counter() - started) / 400

    assert per_record < 0.0005, f"{per_record * 1e6:.0f} µs per record"
    prediction_log.flush()
    assert PredictionLog.objects.filter(model_id="plog-cost").count() == 401


@writes_in_background
def test_records_from_many_threads_are_all_written():
    def work(thread: int) -> None:
        for index in range(300):
            record("plog-threads", request_id=f"t{thread}-{index}")

    threads = [threading.Thread(target=work, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    prediction_log.flush()

    rows = PredictionLog.objects.filter(model_id="plog-threads")
    assert rows.count() == 2400
    assert rows.values("request_id").distinct().count() == 2400


@writes_in_background
def test_rows_are_written_in_the_background_without_a_flush(settings):
    settings.PREDICTION_LOG_FLUSH_SECONDS = 0.1
    prediction_log._writer(start=False).wake.set()  # let a sleeping writer see the new interval

    log_id = record("plog-timer")

    deadline = time.monotonic() + 10
    while not PredictionLog.objects.filter(pk=log_id).exists():
        assert time.monotonic() < deadline, "the writer thread did not write the row"
        time.sleep(0.05)


# --- When the database fails -------------------------------------------------------------------


@writes_in_background
def test_rows_survive_a_database_failure_and_are_written_by_the_next_flush(monkeypatch, caplog):
    failing = FailingInsert()
    monkeypatch.setattr(prediction_log, "_insert", failing)
    ids = [record("plog-outage", request_id=f"outage-{index}") for index in range(3)]

    with caplog.at_level(logging.WARNING, logger="inference.prediction_log"):
        assert prediction_log.flush() == 0

    assert failing.calls >= 1
    assert "kept for the next try" in caplog.text
    assert not PredictionLog.objects.filter(pk__in=ids).exists()

    monkeypatch.undo()
    prediction_log.flush()
    assert PredictionLog.objects.filter(pk__in=ids).count() == 3


@writes_in_background
def test_beyond_max_pending_the_oldest_rows_are_dropped_and_counted(monkeypatch, caplog, settings):
    settings.PREDICTION_LOG_MAX_PENDING = 5
    monkeypatch.setattr(prediction_log, "_insert", FailingInsert())
    ids = [record("plog-overflow", request_id=f"overflow-{index}") for index in range(8)]
    prediction_log.flush()

    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="inference.prediction_log"):
        prediction_log.flush()

    written = set(
        PredictionLog.objects.filter(model_id="plog-overflow").values_list("pk", flat=True)
    )
    assert written == set(ids[3:])
    assert "dropped the 3 oldest rows" in caplog.text


@writes_in_background
def test_a_row_the_database_refuses_does_not_hold_back_the_others(caplog):
    good = record("plog-refused", request_id="good-1")
    bad = record("plog-refused", request_id="bad", rows=-1)  # fails the rows >= 0 check
    other = record("plog-refused", request_id="good-2")

    with caplog.at_level(logging.ERROR, logger="inference.prediction_log"):
        prediction_log.flush()

    written = set(
        PredictionLog.objects.filter(model_id="plog-refused").values_list("pk", flat=True)
    )
    assert written == {good, other}
    assert f"dropped row {bad}" in caplog.text


# --- Stopping ------------------------------------------------------------------------------------

EXIT_SCRIPT = """
from inference import prediction_log

for index in range({count}):
    prediction_log.record(
        caller_kind="api_key", caller_label="hk_exit", model_id="{model_id}", model_version="1",
        rows=1, latency_ms=1.0, status=200, error_code="", request_id=f"exit-{{index}}",
        body=b"{{}}",
    )
"""


@pytest.mark.parametrize("count", [10, 1000])
@writes_in_background
def test_a_clean_exit_loses_no_rows(count):
    # given a process whose writer would wait a minute before writing
    model_id = f"plog-exit-{count}"

    # when it records and exits without a flush
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            EXIT_SCRIPT.format(count=count, model_id=model_id),
        ],
        cwd=REPO_ROOT,
        env=subprocess_env(DATABASE_URL=database_url(), PREDICTION_LOG_FLUSH_SECONDS="60"),
        capture_output=True,
        text=True,
        timeout=120,
    )

    # then every row is in the database
    assert result.returncode == 0, result.stderr
    assert PredictionLog.objects.filter(model_id=model_id).count() == count


GUNICORN_APP = """
import pathlib
import time

from django.core.wsgi import get_wsgi_application

get_wsgi_application()

from inference import prediction_log

# Only gunicorn's worker_exit hook may write the rows.
prediction_log._flush_at_end.cancel()


def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        pathlib.Path(__file__).with_name("slow-started").touch()
        time.sleep(2)
    log_id = prediction_log.record(
        caller_kind="anonymous", caller_label="", model_id="plog-gunicorn", model_version="1",
        rows=1, latency_ms=1.0, status=200, error_code="",
        request_id=environ.get("HTTP_X_REQUEST_ID", ""), body=b"{}",
    )
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(log_id).encode()]
"""
GRACEFUL_TIMEOUT = 30


@pytest.mark.slow
@writes_in_background
def test_gunicorn_workers_stopped_gracefully_write_their_rows(tmp_path):
    (tmp_path / "plog_app.py").write_text(GUNICORN_APP)
    port = free_port()
    with open(tmp_path / "gunicorn.log", "wb") as log:
        server = subprocess.Popen(
            [
                str(VENV_BIN / "gunicorn"),
                "--config",
                "deploy/gunicorn.conf.py",
                "plog_app:application",
            ],
            cwd=REPO_ROOT,
            env=subprocess_env(
                PYTHONPATH=f"{tmp_path}:{REPO_ROOT}",
                DJANGO_SETTINGS_MODULE="hokusai_site.settings",
                DATABASE_URL=database_url(),
                HOKUSAI_BIND=f"127.0.0.1:{port}",
                GUNICORN_WORKERS="2",
                GUNICORN_GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT),
                PREDICTION_LOG_FLUSH_SECONDS="3600",
                LOG_LEVEL="warning",  # the log, shown if rows are missing: no access lines
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    requests = ThreadPoolExecutor(max_workers=1)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", timeout=60, process=server)
        # Its connection stays open, idle, through the stop: that must not hold a worker.
        kept_alive = urllib3.PoolManager()
        ids = [
            kept_alive.request(
                "GET", f"http://127.0.0.1:{port}/", headers={"X-Request-ID": f"gunicorn-{index}"}
            ).data.decode()
            for index in range(200)
        ]
        assert not PredictionLog.objects.filter(pk__in=ids).exists()  # all still in memory

        in_flight = requests.submit(urllib3.request, "GET", f"http://127.0.0.1:{port}/slow")
        deadline = time.monotonic() + 30
        while not (tmp_path / "slow-started").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stopping = time.monotonic()
        stop_process(server, timeout=GRACEFUL_TIMEOUT + 10)  # SIGTERM: a graceful stop
        stopped_in = time.monotonic() - stopping
        requests.shutdown(wait=False)
    answer = in_flight.result(timeout=10)  # the request in flight was answered

    server_log = (tmp_path / "gunicorn.log").read_text()
    assert server.returncode == 0, server_log
    # Done once the request in flight was: not at the graceful timeout, when the master kills.
    assert stopped_in < GRACEFUL_TIMEOUT / 2, server_log
    assert server_log.count("Worker exiting") == 2, server_log
    assert answer.status == 200
    logged = PredictionLog.objects.filter(pk__in=[*ids, answer.data.decode()])
    assert logged.count() == 201, server_log


@pytest.mark.slow
@writes_in_background
def test_prediction_server_workers_stopped_gracefully_write_their_rows(tmp_path):
    port = free_port()
    argv, _ = prediction_server_command(port)
    with open(tmp_path / "prediction_server.log", "wb") as log:
        server = subprocess.Popen(
            [*argv, "--workers", "2"],
            cwd=REPO_ROOT,
            env=subprocess_env(DATABASE_URL=database_url(), PREDICTION_LOG_FLUSH_SECONDS="3600"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", timeout=60, process=server)
        http = urllib3.PoolManager()
        for index in range(200):  # refused (no credentials), and logged all the same
            response = http.request(
                "POST",
                f"http://127.0.0.1:{port}/api/v1/models/plog-granian/predict",
                body=b"{}",
                headers={"X-Request-ID": f"granian-{index}", "Content-Type": "application/json"},
            )
            assert response.status == 401
        ids = [f"granian-{index}" for index in range(200)]
        logged = PredictionLog.objects.filter(request_id__in=ids)
        assert not logged.exists()  # all still in memory
    finally:
        stop_process(server, timeout=40)  # SIGTERM to the master and its workers

    server_log = (tmp_path / "prediction_server.log").read_text()
    assert server.returncode == 0, server_log
    assert logged.count() == 200, server_log


# --- Retention ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune_removes_only_rows_older_than_the_retention(
    settings, monkeypatch, django_assert_num_queries
):
    settings.PREDICTION_LOG_RETENTION_DAYS = 30
    monkeypatch.setattr(prediction_log, "PRUNE_BATCH_SIZE", 2)  # several DELETEs
    now = timezone.now()
    make_rows("plog-prune", 5, created_at=now - timedelta(days=31))
    kept = make_rows("plog-prune", 2, created_at=now - timedelta(days=29))

    with django_assert_num_queries(3):  # one DELETE per batch (2, 2, 1), no rows fetched
        assert prune_prediction_log() == 5

    remaining = PredictionLog.objects.filter(model_id="plog-prune").values_list("pk", flat=True)
    assert set(remaining) == {row.pk for row in kept}
    assert prediction_log.prune(older_than_days=1) == 2


# --- Admin -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_operators_see_the_log_and_find_a_row_by_its_inference_log_id(operator_client):
    (row,) = make_rows("plog-admin", 1, status=429, error_code="rate_limited", request_id="r-9")
    make_rows("plog-admin", 2)

    page = operator_client.get(LOG_ADMIN)
    found = operator_client.get(LOG_ADMIN, {"q": str(row.pk)})
    by_request = operator_client.get(LOG_ADMIN, {"q": "r-9"})
    detail = operator_client.get(f"{LOG_ADMIN}{row.pk}/change/")

    assert page.status_code == 200
    assert "plog-admin" in page.content.decode()
    assert "Usage per model and caller" in page.content.decode()
    assert list(found.context["cl"].result_list) == [row]
    assert list(by_request.context["cl"].result_list) == [row]
    assert detail.status_code == 200
    assert "rate_limited" in detail.content.decode()
    assert b'name="_save"' not in detail.content  # read-only


@pytest.mark.django_db
def test_the_log_filters_by_outcome_kind_and_model(operator_client, owner):
    Model.objects.create(
        model_id="plogfilter",
        token_symbol="PLOGFILTER",
        name="plog-filter",
        owner_user=owner,
        metric_name="accuracy",
        metric_direction="higher",
        baseline_value=0.5,
    )
    make_rows("plogfilter", 2)
    (refused,) = make_rows("plogfilter", 1, status=403, caller_kind="anonymous")

    response = operator_client.get(
        LOG_ADMIN,
        {"model_id": "plogfilter", "outcome": "refused", "caller_kind__exact": "anonymous"},
    )

    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [refused]


@pytest.mark.django_db
def test_the_usage_page_counts_predictions_per_model_and_per_caller(operator_client):
    now = timezone.now()
    make_rows("plog-usage-a", 3, caller_label="hk_usage_1", latency_ms=10.0, rows=2)
    make_rows("plog-usage-a", 1, caller_label="hk_usage_1", status=500, latency_ms=30.0, rows=None)
    make_rows("plog-usage-b", 2, caller_label="hk_usage_2", latency_ms=5.0, rows=1)
    # Older than a day, within the week.
    make_rows("plog-usage-a", 4, caller_label="hk_usage_2", created_at=now - timedelta(days=3))

    day = prediction_log.usage(now - timedelta(hours=24))
    week = prediction_log.usage(now - timedelta(days=7))
    response = operator_client.get(f"{LOG_ADMIN}usage/")

    models = {group["model_id"]: group for group in day["by_model"]}
    assert {key: models["plog-usage-a"][key] for key in ("requests", "errors", "rows")} == {
        "requests": 4,
        "errors": 1,
        "rows": 6,
    }
    assert models["plog-usage-a"]["mean_latency_ms"] == pytest.approx(15.0)
    assert models["plog-usage-a"]["p50_latency_ms"] == pytest.approx(10.0)
    callers = {group["caller_label"]: group for group in day["by_caller"]}
    assert (callers["hk_usage_1"]["requests"], callers["hk_usage_2"]["requests"]) == (4, 2)
    week_callers = {group["caller_label"]: group for group in week["by_caller"]}
    assert week_callers["hk_usage_2"]["requests"] == 6

    assert response.status_code == 200
    page = response.content.decode()
    assert "Last 24 hours" in page and "Last 7 days" in page
    assert "plog-usage-a" in page and "hk_usage_2" in page
    assert [w["by_model"] for w in response.context["windows"]] == [
        day["by_model"],
        week["by_model"],
    ]


@pytest.mark.django_db
def test_people_without_staff_access_cannot_see_the_log_or_usage(client, outsider):
    client.force_login(outsider)

    for url in (LOG_ADMIN, f"{LOG_ADMIN}usage/"):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]

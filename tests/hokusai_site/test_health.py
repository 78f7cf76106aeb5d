import socket
import threading
import time
from collections.abc import Iterator

import pytest

from hokusai_site import dns
from hokusai_site.dns import DnsResolver

pytestmark = pytest.mark.django_db

ALL_CHECKS = {"database", "redis", "mlflow", "dns", "celery"}


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback TCP server that accepts connections and never answers: a hung dependency."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_forever() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    listener.close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_liveness_answers_without_touching_dependencies(client, settings, closed_port):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{closed_port}"
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_names_every_check_and_is_200_with_mlflow_up(client, running_mlflow):
    response = client.get("/api/v1/health")
    body = response.json()
    assert response.status_code == 200
    assert set(body["checks"]) == ALL_CHECKS
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["mlflow"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"
    assert body["checks"]["dns"]["address"] == "127.0.0.1"
    assert body["checks"]["database"]["critical"] is True
    assert body["checks"]["celery"]["critical"] is False
    assert all(check["latency_ms"] >= 0 for check in body["checks"].values())
    # No worker runs in this test: the platform is up but degraded.
    assert body["checks"]["celery"]["status"] == "down"
    assert body["checks"]["celery"]["workers"] == 0
    assert body["status"] == "degraded"


@pytest.mark.slow
def test_readiness_goes_503_naming_mlflow_when_it_stops_and_recovers_after_restart(
    client, running_mlflow
):
    # given a healthy platform
    assert client.get("/api/v1/health").json()["checks"]["mlflow"]["status"] == "ok"

    # when the MLflow server stops
    running_mlflow.stop()
    response = client.get("/api/v1/health")

    # then readiness fails and says which part is down
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "down"
    assert body["checks"]["mlflow"]["status"] == "down"
    assert "Connection" in body["checks"]["mlflow"]["detail"]
    assert body["checks"]["database"]["status"] == "ok"

    # and after a restart it is ready again
    running_mlflow.start()
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json()["checks"]["mlflow"]["status"] == "ok"


def test_a_hung_mlflow_fails_its_check_in_about_the_timeout(client, settings, silent_server):
    settings.MLFLOW_TRACKING_URI = f"http://{silent_server}"
    settings.HEALTH_CHECK_TIMEOUT_SECONDS = 1.0
    started = time.monotonic()
    response = client.get("/api/v1/health")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["checks"]["mlflow"]["status"] == "down"
    assert elapsed < 2.5


def test_a_hung_redis_degrades_without_hanging(client, settings, running_mlflow, silent_server):
    from hokusai_site import health

    settings.REDIS_URL = f"redis://{silent_server}/0"
    settings.HEALTH_CHECK_TIMEOUT_SECONDS = 1.0
    health._redis_client = None
    try:
        started = time.monotonic()
        response = client.get("/api/v1/health")
        elapsed = time.monotonic() - started
    finally:
        health._redis_client = None
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["status"] == "down"
    assert elapsed < 2.5


def test_failure_details_do_not_leak_secrets(client, settings, running_mlflow, closed_port):
    from hokusai_site import health

    settings.REDIS_URL = f"redis://:topsecretpassword@127.0.0.1:{closed_port}/0"
    health._redis_client = None
    try:
        response = client.get("/api/v1/health")
    finally:
        health._redis_client = None
    assert response.json()["checks"]["redis"]["status"] == "down"
    assert "topsecretpassword" not in response.content.decode()


def test_dns_fallback_in_use_is_reported_as_degraded(client, settings, running_mlflow, monkeypatch):
    # The MLflow host name no longer resolves; the configured fallback address still serves.
    def failing_lookup(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    settings.MLFLOW_TRACKING_URI = f"http://mlflow.internal:{running_mlflow.port}"
    monkeypatch.setattr(
        dns, "_resolver", DnsResolver(lookup=failing_lookup, fallback_ip="127.0.0.1")
    )
    response = client.get("/api/v1/health")
    body = response.json()
    assert response.status_code == 200
    assert body["checks"]["mlflow"]["status"] == "ok"
    assert body["checks"]["dns"]["fallback_in_use"] is True
    assert body["checks"]["dns"]["status"] == "degraded"
    assert body["checks"]["dns"]["counters"]["fallbacks_used"] >= 1
    assert body["status"] == "degraded"


def test_unresolvable_mlflow_without_fallback_is_down(client, settings, monkeypatch):
    def failing_lookup(host: str) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    settings.MLFLOW_TRACKING_URI = "http://mlflow.internal:5000"
    monkeypatch.setattr(dns, "_resolver", DnsResolver(lookup=failing_lookup))
    body = client.get("/api/v1/health").json()
    assert body["checks"]["dns"]["status"] == "down"
    assert "mlflow.internal" in body["checks"]["dns"]["detail"]
    assert body["checks"]["mlflow"]["status"] == "down"


@pytest.mark.slow
def test_celery_check_counts_a_live_worker_and_notices_it_is_gone(
    client, settings, running_mlflow, celery_worker_process
):
    settings.CELERY_WORKER_HEARTBEAT_SECONDS = 0.5
    deadline = time.monotonic() + 60
    body = client.get("/api/v1/health").json()
    while body["checks"]["celery"]["workers"] == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        body = client.get("/api/v1/health").json()
    assert body["checks"]["celery"]["status"] == "ok"
    assert body["checks"]["celery"]["workers"] == 1
    assert body["status"] == "ok"

    # A killed worker cannot remove its row; its heartbeat simply goes stale.
    celery_worker_process.kill()
    celery_worker_process.wait()
    time.sleep(2.0)
    body = client.get("/api/v1/health").json()
    assert body["checks"]["celery"]["status"] == "down"
    assert body["status"] == "degraded"

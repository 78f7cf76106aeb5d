"""The MLflow proxy served by real servers (the web server, gunicorn, and the MLflow proxy server,
granian): the stock MLflow client end to end against a real MLflow server, the UI for staff,
chunked uploads, and a 200 MB artifact round trip in bounded memory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from tests.conftest import SERVER_PROCESSES, subprocess_env
from tests.registry.stand_in import StandIn

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

MiB = 1024 * 1024

# Runs the stock client in its own process: mlflow's tracking URI and token are process-wide.
CLIENT_SCRIPT = r"""
import json
import sys

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from sklearn.linear_model import LogisticRegression

mode, name = sys.argv[1], sys.argv[2]
features = np.array([[0.0], [1.0], [2.0], [3.0]])
result = {}
if mode == "write":
    fitted = LogisticRegression().fit(features, [0, 0, 1, 1])
    experiment_id = mlflow.create_experiment(name)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params({"C": 1.0, "solver": "lbfgs"})
        mlflow.log_metric("accuracy", 0.75, step=0)
        mlflow.log_metric("accuracy", 1.0, step=1)
        info = mlflow.sklearn.log_model(fitted, name="model", registered_model_name=name)
    result = {
        "run_id": run.info.run_id,
        "version": info.registered_model_version,
        "expected": fitted.predict(features).tolist(),
    }
else:
    experiment = mlflow.get_experiment_by_name(name)
    result["runs"] = len(mlflow.search_runs([experiment.experiment_id], output_format="list"))
    try:
        mlflow.create_experiment(name + "-by-a-reader")
        result["write"] = "succeeded"
    except MlflowException as exc:
        result["write"] = str(exc)
loaded = mlflow.pyfunc.load_model(f"models:/{name}/1")
result["predictions"] = loaded.predict(features).tolist()
print(json.dumps(result))
"""


def run_mlflow_client(mode: str, name: str, *, tracking_uri: str, key: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, mode, name],
        env=subprocess_env(
            MLFLOW_TRACKING_URI=tracking_uri,
            MLFLOW_TRACKING_TOKEN=key,
            # Fail at once instead of retrying with backoff.
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
            MLFLOW_HTTP_REQUEST_TIMEOUT="60",
            # Loopback only: no usage reports to MLflow's telemetry service.
            MLFLOW_DISABLE_TELEMETRY="true",
        ),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def mlflow_get(mlflow_url: str, endpoint: str, **params: str) -> dict:
    """Straight to MLflow, not through the proxy: what really got stored."""
    response = urllib3.request("GET", f"{mlflow_url}/api/2.0/mlflow/{endpoint}", fields=params)
    assert response.status == 200, response.data
    return response.json()


@pytest.fixture
def http() -> Iterator[urllib3.PoolManager]:
    # Closed at the end: gunicorn's graceful stop waits for open keep-alive connections.
    manager = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=120))
    yield manager
    manager.clear()


# Both answer the proxy's routes: a deployment sends them to the proxy server (deploy/nginx.conf).
SERVER_FACTORIES = ["web_server_factory", "mlflow_proxy_server_factory"]


@pytest.fixture(params=SERVER_FACTORIES)
def server_factory(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def proxy_to_mlflow(server_factory, running_mlflow) -> str:
    return server_factory(MLFLOW_TRACKING_URI=running_mlflow.url)


@pytest.mark.parametrize("mount", ["", "/api/mlflow"])
def test_the_stock_mlflow_client_tracks_registers_and_loads_a_model_through_the_proxy(
    proxy_to_mlflow, running_mlflow, owner, issue_key, mount
):
    _, key = issue_key(owner, ["mlflow:read", "mlflow:write"])
    name = f"proxy-e2e-{uuid.uuid4().hex[:8]}"

    result = run_mlflow_client("write", name, tracking_uri=proxy_to_mlflow + mount, key=key)

    assert result["predictions"] == result["expected"] == [0, 0, 1, 1]
    run = mlflow_get(running_mlflow.url, "runs/get", run_id=result["run_id"])["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params == {"C": "1.0", "solver": "lbfgs"}
    history = mlflow_get(
        running_mlflow.url, "metrics/get-history", run_id=result["run_id"], metric_key="accuracy"
    )
    assert [(m["step"], m["value"]) for m in history["metrics"]] == [(0, 0.75), (1, 1.0)]
    version = mlflow_get(running_mlflow.url, "model-versions/get", name=name, version="1")
    assert version["model_version"]["run_id"] == result["run_id"]
    assert result["version"] == "1"


def test_a_read_only_key_reads_and_loads_but_cannot_write(
    proxy_to_mlflow, running_mlflow, owner, issue_key
):
    _, writer = issue_key(owner, ["mlflow:read", "mlflow:write"])
    _, reader = issue_key(owner, ["mlflow:read"])
    name = f"proxy-reader-{uuid.uuid4().hex[:8]}"
    written = run_mlflow_client("write", name, tracking_uri=proxy_to_mlflow, key=writer)

    result = run_mlflow_client("read", name, tracking_uri=proxy_to_mlflow, key=reader)

    assert result["runs"] == 1
    assert result["predictions"] == written["expected"]
    assert "403" in result["write"] and "insufficient_scope" in result["write"]
    missing = urllib3.request(
        "GET",
        f"{running_mlflow.url}/api/2.0/mlflow/experiments/get-by-name",
        fields={"experiment_name": name + "-by-a-reader"},
    )
    assert missing.status == 404


def test_staff_use_the_mlflow_web_ui_through_the_proxy(client, running_mlflow, staff):
    client.force_login(staff)

    page = client.get("/mlflow/", HTTP_ACCEPT="text/html")
    html = b"".join(page.streaming_content).decode()
    script = re.search(r'src="(static-files/static/js/main[^"]+)"', html)[1]
    asset = client.get(f"/mlflow/{script}")
    name = f"proxy-ui-{uuid.uuid4().hex[:8]}"
    created = client.post(
        "/mlflow/ajax-api/2.0/mlflow/experiments/create",
        {"name": name},
        content_type="application/json; charset=utf-8",
        HTTP_ORIGIN="http://testserver",
        HTTP_SEC_FETCH_SITE="same-origin",
    )

    assert page.status_code == 200
    assert asset.status_code == 200
    assert asset["Content-Type"].startswith("text/javascript")
    assert len(b"".join(asset.streaming_content)) == int(asset["Content-Length"]) > 100_000
    assert created.status_code == 200
    experiment_id = json.loads(b"".join(created.streaming_content))["experiment_id"]
    stored = mlflow_get(running_mlflow.url, "experiments/get-by-name", experiment_name=name)
    assert stored["experiment"]["experiment_id"] == experiment_id


def test_the_mlflow_proxy_server_answers_the_proxy_and_the_ui_and_nothing_else(
    mlflow_proxy_server_factory, running_mlflow, client, owner, staff, issue_key, http
):
    base_url = mlflow_proxy_server_factory(MLFLOW_TRACKING_URI=running_mlflow.url)
    _, key = issue_key(owner, ["mlflow:read", "models:read"])
    auth = {"Authorization": f"Bearer {key}", "X-Request-ID": "proxy-server-1"}

    found = http.request(
        "GET",
        f"{base_url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default",
        headers=auth,
    )
    assert found.status == 200, found.data
    assert found.json()["experiment"]["experiment_id"] == "0"
    # The same headers as from the web server: request id, rate limit, security.
    assert found.headers["X-Request-ID"] == "proxy-server-1"
    assert int(found.headers["X-RateLimit-Limit"]) > 0
    assert found.headers["X-Content-Type-Options"] == "nosniff"

    # The rest of the platform is the web server's.
    for path in ("/api/v1/models", "/api/v1/keys", "/api/v1/health"):
        refused = http.request("GET", base_url + path, headers=auth)
        assert (refused.status, refused.json()["code"]) == (404, "not_found"), path
    assert http.request("GET", f"{base_url}/admin/").status == 404

    # A browser without a session is sent to the web server's login page, and back after it.
    html = {"Accept": "text/html"}
    anonymous = http.request("GET", f"{base_url}/mlflow/", headers=html, redirect=False)
    assert anonymous.status == 302
    assert anonymous.headers["Location"] == "/admin/login/?next=/mlflow/"
    client.force_login(staff)
    session = {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}
    page = http.request("GET", f"{base_url}/mlflow/", headers={**html, **session})
    assert page.status == 200
    assert b"static-files/static/js/main" in page.data
    name = f"proxy-server-ui-{uuid.uuid4().hex[:8]}"
    ajax = {**session, "Content-Type": "application/json", "Sec-Fetch-Site": "same-origin"}
    created = http.request(
        "POST",
        f"{base_url}/mlflow/ajax-api/2.0/mlflow/experiments/create",
        body=json.dumps({"name": name}),
        headers={**ajax, "Origin": base_url},
    )
    assert created.status == 200, created.data
    stored = mlflow_get(running_mlflow.url, "experiments/get-by-name", experiment_name=name)
    assert stored["experiment"]["experiment_id"] == created.json()["experiment_id"]
    # Another site's page cannot use the session.
    forged = http.request(
        "POST",
        f"{base_url}/mlflow/ajax-api/2.0/mlflow/experiments/create",
        body=json.dumps({"name": name + "-forged"}),
        headers={**ajax, "Origin": "https://elsewhere.example"},
    )
    assert forged.status == 403
    assert forged.json()["code"] == "csrf_failed"


def test_mlflows_own_errors_reach_the_client_byte_for_byte(
    client, running_mlflow, owner, issue_key
):
    _, key = issue_key(owner, ["mlflow:read"])
    path = "/api/2.0/mlflow/runs/get?run_id=0123456789abcdef0123456789abcdef"
    direct = urllib3.request("GET", running_mlflow.url + path)

    proxied = client.get(path, HTTP_AUTHORIZATION=f"Bearer {key}")

    assert proxied.status_code == direct.status == 404
    assert b"".join(proxied.streaming_content) == direct.data
    assert json.loads(direct.data)["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert proxied["Content-Type"] == direct.headers["Content-Type"]


# --- Streaming through the servers ------------------------------------------------------------


def server_pids(base_url: str) -> list[int]:
    """The processes serving `base_url`: its server's process group."""
    group = SERVER_PROCESSES[base_url].pid
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(int(entry.name)) == group:
                    pids.append(int(entry.name))
    assert pids, f"no process serves {base_url}"
    return pids


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples the RSS of each process every 20 ms; `growth` is the largest rise of any one."""

    def __init__(self, pids: list[int]) -> None:
        self.baseline = {pid: rss_bytes(pid) for pid in pids}
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for pid in self.peak:
                self.peak[pid] = max(self.peak[pid], rss_bytes(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return max(self.peak[pid] - self.baseline[pid] for pid in self.peak)


def pattern_chunks(total: int, chunk: int = MiB) -> Iterator[bytes]:
    """`total` bytes that differ from chunk to chunk (so a reordering or a repeat shows)."""
    block = bytes(range(256)) * (chunk // 256)
    for index in range(total // chunk):
        yield index.to_bytes(8, "big") + block[8:]


def test_a_200_mb_artifact_goes_up_and_down_in_bounded_memory(
    proxy_to_mlflow, running_mlflow, owner, issue_key, http
):
    _, key = issue_key(owner, ["mlflow:read", "mlflow:write"])
    auth = {"Authorization": f"Bearer {key}"}
    relative = f"proxy-stream/{uuid.uuid4().hex}/big.bin"
    url = f"{proxy_to_mlflow}/api/2.0/mlflow-artifacts/artifacts/{relative}"
    size = 200 * MiB
    expected = hashlib.sha256()
    for piece in pattern_chunks(size):
        expected.update(piece)
    # Warm up: the worker imports the proxy and opens its pool before the baseline is taken.
    warm = http.request("PUT", url + ".warm", body=b"warm", headers=auth)
    assert warm.status == 200, warm.data
    assert http.request("GET", url + ".warm", headers=auth).data == b"warm"
    pids = server_pids(proxy_to_mlflow)

    with PeakRss(pids) as upload_memory:
        uploaded = http.request(
            "PUT",
            url,
            body=pattern_chunks(size),
            headers={**auth, "Content-Length": str(size)},
            preload_content=True,
        )
    assert uploaded.status == 200, uploaded.data
    stored = running_mlflow.artifacts / relative
    assert stored.stat().st_size == size
    with open(stored, "rb") as file:
        assert hashlib.file_digest(file, "sha256").hexdigest() == expected.hexdigest()

    downloaded = hashlib.sha256()
    received = 0
    with PeakRss(pids) as download_memory:
        response = http.request("GET", url, headers=auth, preload_content=False)
        assert response.status == 200
        for piece in response.stream(MiB):
            downloaded.update(piece)
            received += len(piece)
        response.release_conn()
    assert received == size
    assert downloaded.hexdigest() == expected.hexdigest()

    assert upload_memory.growth < 64 * MiB, f"upload grew RSS by {upload_memory.growth / MiB} MiB"
    assert download_memory.growth < 64 * MiB, (
        f"download grew RSS by {download_memory.growth / MiB} MiB"
    )


@pytest.fixture
def proxy_to_stand_in(server_factory) -> Iterator[tuple[str, StandIn]]:
    stand_in = StandIn()
    try:
        yield (
            server_factory(
                MLFLOW_TRACKING_URI=stand_in.url, MLFLOW_PROXY_MAX_UPLOAD_BYTES=str(MiB)
            ),
            stand_in,
        )
    finally:
        stand_in.stop()


def chunked_put(http: urllib3.PoolManager, url: str, key: str, size: int):
    # A body of unknown length: urllib3 sends it chunked.
    return http.request(
        "PUT",
        url,
        body=pattern_chunks(size, chunk=64 * 1024),
        headers={"Authorization": f"Bearer {key}"},
    )


def test_a_chunked_upload_without_content_length_streams_to_mlflow(
    proxy_to_stand_in, owner, issue_key, http
):
    base_url, stand_in = proxy_to_stand_in
    _, key = issue_key(owner, ["mlflow:write"])
    size = 640 * 1024

    response = chunked_put(
        http, f"{base_url}/api/2.0/mlflow-artifacts/artifacts/1/c.bin", key, size
    )

    assert response.status == 200, response.data
    [received] = stand_in.received
    assert received.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in received.headers
    assert received.body == b"".join(pattern_chunks(size, chunk=64 * 1024))


def test_a_chunked_upload_is_cut_off_with_413_once_it_passes_the_limit(
    proxy_to_stand_in, owner, issue_key, http
):
    base_url, stand_in = proxy_to_stand_in
    _, key = issue_key(owner, ["mlflow:write"])

    response = chunked_put(
        http, f"{base_url}/api/2.0/mlflow-artifacts/artifacts/1/c.bin", key, 3 * MiB
    )

    assert response.status == 413
    assert response.json()["code"] == "request_too_large"
    time.sleep(0.2)  # the stand-in notices the aborted request
    assert stand_in.received == []


def test_an_upload_declaring_more_than_the_limit_is_413_before_mlflow_hears_of_it(
    proxy_to_stand_in, owner, issue_key, http
):
    base_url, stand_in = proxy_to_stand_in
    _, key = issue_key(owner, ["mlflow:write"])

    response = http.request(
        "PUT",
        f"{base_url}/api/2.0/mlflow-artifacts/artifacts/1/c.bin",
        body=b"x" * (MiB + 1),
        headers={"Authorization": f"Bearer {key}"},
    )

    assert response.status == 413
    assert response.json()["code"] == "request_too_large"
    assert stand_in.received == []

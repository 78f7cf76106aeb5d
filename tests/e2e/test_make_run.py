"""`make run` on the embedded default: every process starts, readiness is 200 with every check
named, and Ctrl-C stops everything."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import urllib3

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "ENVIRONMENT", "MLFLOW_TRACKING_URI", "DEBUG")


def processes_with_env(key: str, value: str) -> list[int]:
    """Every process whose environment has key=value: all that `make run` started inherit it."""
    wanted = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def manage(env: dict, *arguments: str) -> str:
    return subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "manage.py", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout


def register_a_model(http: urllib3.PoolManager, base_url: str, mlflow_port: int, env: dict) -> str:
    """The registry on the embedded default (SQLite, local MLflow store): a model logged with
    the MLflow client, registered through the API with a key made by the management command,
    which is returned."""
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User; User.objects.create_user('e2e')",
    )
    printed = manage(
        env,
        "create_api_key",
        "--name",
        "e2e",
        "--scopes",
        "models:read,models:write,mlflow:read",
        "--user",
        "e2e",
    )
    key = re.search(r"hk_live_\w+", printed).group(0)
    logged = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", LOG_MODEL],
        env={**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}"},
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    run_id = logged.stdout.split()[-1]
    payload = {
        "model_name": "E2E churn",
        "token_symbol": "E2E",
        "model_uri": f"runs:/{run_id}/model",
        "metric_name": "accuracy",
        "baseline_value": 0.5,
        "current_value": 0.75,
    }
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "e2e-1"}
    created = http.request(
        "POST", f"{base_url}/api/v1/models/register", json=payload, headers=headers
    )
    assert created.status == 201, created.data
    again = http.request(
        "POST", f"{base_url}/api/v1/models/register", json=payload, headers=headers
    )
    assert again.json() == created.json()
    model = http.request("GET", f"{base_url}/api/v1/models/e2e", headers=headers).json()
    assert (model["status"], model["latest_version"]["version"]) == ("ready_to_deploy", 1)
    return key


LOG_MODEL = """
import mlflow
from sklearn.linear_model import LogisticRegression
with mlflow.start_run() as run:
    mlflow.sklearn.log_model(LogisticRegression().fit([[0], [1]], [0, 1]), name="model")
print(run.info.run_id)
"""


def test_make_run_serves_health_and_stops_cleanly_on_ctrl_c(tmp_path):
    web_port, mlflow_port, proxy_port = free_port(), free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
    env.update(
        HOKUSAI_VAR_DIR=str(tmp_path / "var"),
        HOKUSAI_BIND=f"127.0.0.1:{web_port}",
        MLFLOW_PROXY_SERVER_BIND=f"127.0.0.1:{proxy_port}",
        MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}",
        ENV_FILE="/nonexistent",
    )
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        make = subprocess.Popen(
            ["make", "run"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    http = urllib3.PoolManager()
    health_url = f"http://127.0.0.1:{web_port}/api/v1/health"
    body: dict = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and make.poll() is None:
            try:
                response = http.request(
                    "GET", health_url, headers={"X-Request-ID": "smoke-test-1"}, retries=False
                )
                body = response.json()
                if response.status == 200 and body["status"] == "ok":
                    break
            except (urllib3.exceptions.HTTPError, ValueError):
                pass
            time.sleep(1)
        output = log_path.read_text(errors="replace")
        assert body.get("status") == "ok", f"health never became ok: {body}\n{output[-4000:]}"
        assert set(body["checks"]) == {"database", "redis", "mlflow", "dns", "celery"}
        assert body["checks"]["database"]["vendor"] == "sqlite"
        assert body["checks"]["redis"]["status"] == "not_configured"
        assert body["checks"]["celery"]["workers"] == 1
        assert (tmp_path / "var" / "hokusai.sqlite3").exists()

        not_found = http.request("GET", f"http://127.0.0.1:{web_port}/api/v1/nope")
        assert not_found.status == 404
        assert not_found.headers["Content-Type"] == "application/problem+json"
        assert not_found.json()["code"] == "not_found"

        key = register_a_model(http, f"http://127.0.0.1:{web_port}", mlflow_port, env)
        # The MLflow proxy server, on the same embedded defaults, shows what was registered.
        registered = http.request(
            "GET",
            f"http://127.0.0.1:{proxy_port}/api/2.0/mlflow/registered-models/get",
            fields={"name": "E2E churn"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert registered.status == 200, registered.data
        assert registered.json()["registered_model"]["latest_versions"][0]["version"] == "1"

        # gunicorn's workers share their counters through the multiprocess directory.
        metrics = http.request("GET", f"http://127.0.0.1:{web_port}/metrics").data.decode()
        assert "django_http_requests_total_by_view_transport_method_total{" in metrics
        assert 'view="api-v1:health"' in metrics
    finally:
        # Ctrl-C in a terminal signals the whole foreground process group.
        os.killpg(make.pid, signal.SIGINT)
        make.wait(timeout=60)

    output = log_path.read_text(errors="replace")
    assert processes_with_env("HOKUSAI_VAR_DIR", env["HOKUSAI_VAR_DIR"]) == [], output[-3000:]
    assert "killing it" not in output, output[-3000:]
    assert "[smoke-test-1] hokusai.access: GET /api/v1/health 200" in output
    for name in ("mlflow", "web", "proxy", "worker", "beat"):
        assert f"{name} stopped" in output
    for port in (web_port, mlflow_port, proxy_port):
        with pytest.raises(urllib3.exceptions.HTTPError):
            http.request("GET", f"http://127.0.0.1:{port}/health", retries=False, timeout=2)

"""`make run` on the embedded default: every process starts, readiness is 200 with every check
named, and Ctrl-C stops everything."""

import os
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


def test_make_run_serves_health_and_stops_cleanly_on_ctrl_c(tmp_path):
    web_port, mlflow_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in NOT_INHERITED}
    env.update(
        HOKUSAI_VAR_DIR=str(tmp_path / "var"),
        HOKUSAI_BIND=f"127.0.0.1:{web_port}",
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
    for name in ("mlflow", "web", "worker", "beat"):
        assert f"{name} stopped" in output
    for port in (web_port, mlflow_port):
        with pytest.raises(urllib3.exceptions.HTTPError):
            http.request("GET", f"http://127.0.0.1:{port}/health", retries=False, timeout=2)

"""The cast and the live parts every test can ask for: the test database (PostgreSQL, created by
pytest-django through our `migrate`, MLflow's tables included), a real `mlflow server` subprocess
on that database, and a real Celery worker process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import urllib3
from django.conf import settings
from django.db import connection

from hokusai_site.dns import reset_resolver
from migrations import mlflow_schema
from registry import mlflow

# Tests talk to loopback only: the MLflow client in this process and every subprocess inherit it.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, *, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Polls `url` until it answers 200; fails early if `process` has exited."""
    deadline = time.monotonic() + timeout
    http = urllib3.PoolManager()
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if http.request("GET", url, timeout=1.0, retries=False).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def stop_process(process: subprocess.Popen, *, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


def subprocess_env(**overrides: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.update(overrides)
    return env


def test_database_url() -> str:
    """DATABASE_URL of the test database, for processes the tests start."""
    config = connection.settings_dict
    auth = config["USER"] + (f":{config['PASSWORD']}" if config["PASSWORD"] else "")
    return f"postgres://{auth}@{config['HOST']}:{config['PORT']}/{config['NAME']}"


class MlflowServer:
    """A real `mlflow server` on the test database, stoppable and restartable on the same port."""

    def __init__(self, *, backend_store_uri: str, artifacts: Path, log_path: Path):
        self.backend_store_uri = backend_store_uri
        self.artifacts = artifacts
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = mlflow.server_command(
            backend_store_uri=self.backend_store_uri,
            artifacts_destination=str(self.artifacts),
            host="127.0.0.1",
            port=self.port,
            workers=1,
        )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=subprocess_env(**mlflow.SERVER_ENVIRONMENT),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_http(f"{self.url}/health", timeout=90, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    yield
    from inference import prediction_log

    with django_db_blocker.unblock():
        prediction_log.flush()  # before the database goes, not at exit after it
    # Threads and processes outside the test's own connection (health checks, servers) may still
    # hold connections; PostgreSQL refuses to drop a database that is in use.
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(scope="session")
def mlflow_server(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[MlflowServer]:
    with django_db_blocker.unblock():
        backend_store_uri = mlflow_schema.sqlalchemy_url(connection.settings_dict)
    workdir = tmp_path_factory.mktemp("mlflow")
    server = MlflowServer(
        backend_store_uri=backend_store_uri,
        artifacts=workdir / "artifacts",
        log_path=workdir / "server.log",
    )
    server.start()
    previous_uri = settings.MLFLOW_TRACKING_URI
    settings.MLFLOW_TRACKING_URI = server.url
    reset_resolver()
    yield server
    server.stop()
    settings.MLFLOW_TRACKING_URI = previous_uri
    reset_resolver()


@pytest.fixture
def running_mlflow(mlflow_server) -> MlflowServer:
    """The live MLflow server, restarted first if an earlier test stopped it."""
    if mlflow_server.process is None:
        mlflow_server.start()
    return mlflow_server


@pytest.fixture
def celery_worker_process(transactional_db, tmp_path) -> Iterator[subprocess.Popen]:
    """A real Celery worker on the test database and the test Redis broker."""
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(VENV_BIN / "celery"),
                "--app",
                "hokusai_site",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "INFO",
                "--hostname",
                f"test-worker-{os.getpid()}@%h",
            ],
            cwd=REPO_ROOT,
            env=subprocess_env(
                DATABASE_URL=test_database_url(), CELERY_WORKER_HEARTBEAT_SECONDS="0.5"
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield process
    stop_process(process)


@pytest.fixture(autouse=True)
def _fresh_cache(request):
    """Each database test starts with an empty cache and no rate-limit state (Redis db 15)."""
    if request.node.get_closest_marker("django_db") is None and not {
        "db",
        "transactional_db",
    } & set(request.fixturenames):
        return
    from django.core.cache import cache

    from authkeys.gate import local_cache

    cache.clear()
    local_cache().clear()


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", "owner@example.com", "pw-owner-123")


@pytest.fixture
def outsider(django_user_model):
    return django_user_model.objects.create_user("outsider", "out@example.com", "pw-out-123")


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user(
        "operator", "op@example.com", "pw-staff-123", is_staff=True
    )


# A checksummed address (EIP-55) for Ethereum identities in tests.
WALLET_ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


@pytest.fixture
def identity():
    from authkeys.models import EthIdentity

    return EthIdentity.objects.create(
        address=WALLET_ADDRESS, label="wallet", scopes=["models:read"]
    )


@pytest.fixture
def operator_client(client, staff):
    """A client with a staff session (every scope)."""
    client.force_login(staff)
    return client


@pytest.fixture
def issue_key():
    """Issues a key through the service, as the system would: `issue_key(owner, scopes)`."""
    from authkeys import services
    from authkeys.principals import SYSTEM

    def issue(user, scopes=("models:read",), **options):
        return services.api_key_create(
            actor=SYSTEM, owner_user_id=user.pk, scopes=list(scopes), name="test key", **options
        )

    return issue


# Each running test server's first process, by base URL: its process group holds the server's
# processes (gunicorn's master and workers, granian's), each started in a session of its own.
SERVER_PROCESSES: dict[str, subprocess.Popen] = {}


@contextmanager
def running_servers(tmp_path: Path, command) -> Iterator:
    """`start(**env)` starts `command(port)` (its argv and environment) on the test database and
    test Redis and returns its base URL once /health answers; every server started is stopped at
    the end."""
    started: list[str] = []

    def start(**env: str) -> str:
        port = free_port()
        argv, command_env = command(port)
        with open(tmp_path / f"server-{port}.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=subprocess_env(
                    DATABASE_URL=test_database_url(), LOG_LEVEL="warning", **command_env, **env
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base_url = f"http://127.0.0.1:{port}"
        SERVER_PROCESSES[base_url] = process
        started.append(base_url)
        wait_for_http(f"{base_url}/health", timeout=60, process=process)
        return base_url

    try:
        yield start
    finally:
        for base_url in started:
            stop_process(SERVER_PROCESSES.pop(base_url))


def gunicorn_command(port: int) -> tuple[list[str], dict[str, str]]:
    argv = [str(VENV_BIN / "gunicorn"), "--config", "deploy/gunicorn.conf.py", "hokusai_site.wsgi"]
    return argv, {"HOKUSAI_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "1"}


def granian_server_command(name: str):
    """The argv of `manage.py <name>` (a hokusai_site.granian.GranianCommand), one worker."""

    def command(port: int) -> tuple[list[str], dict[str, str]]:
        argv = [sys.executable, "manage.py", name, "--bind", f"127.0.0.1:{port}", "--workers", "1"]
        return argv, {}

    return command


prediction_server_command = granian_server_command("prediction_server")
mlflow_proxy_server_command = granian_server_command("mlflow_proxy_server")


@pytest.fixture
def web_server_factory(transactional_db, tmp_path):
    """Starts real gunicorn servers (deploy/gunicorn.conf.py): `start(**env)` returns the base
    URL."""
    with running_servers(tmp_path, gunicorn_command) as start:
        yield start


@pytest.fixture
def prediction_server_factory(transactional_db, tmp_path):
    """Starts real prediction servers (manage.py prediction_server, granian): `start(**env)`
    returns the base URL."""
    with running_servers(tmp_path, prediction_server_command) as start:
        yield start


@pytest.fixture
def mlflow_proxy_server_factory(transactional_db, tmp_path):
    """Starts real MLflow proxy servers (manage.py mlflow_proxy_server, granian): `start(**env)`
    returns the base URL."""
    with running_servers(tmp_path, mlflow_proxy_server_command) as start:
        yield start

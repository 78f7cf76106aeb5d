"""Live parts for the delivery tests: scripted receivers on 127.0.0.1 and real Celery worker
processes (with beat embedded, for the sweep) on the test database and a Redis broker."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import (
    REPO_ROOT,
    VENV_BIN,
    free_port,
    stop_process,
    subprocess_env,
    test_database_url,
)
from tests.webhooks.receiver import Receiver

# A retry schedule and breaker short enough to watch: tests never sleep out the real one.
FAST_DELIVERY_SETTINGS = {
    "WEBHOOK_RETRY_SCHEDULE": "0.5,1,1.5",
    "WEBHOOK_RETRY_JITTER": "0",
    "WEBHOOK_TIMEOUT": "1",
    "WEBHOOK_SWEEP_INTERVAL_SECONDS": "0.5",
    "WEBHOOK_REQUEUE_AFTER_SECONDS": "1",
    "WEBHOOK_BREAKER_FAILURES": "3",
    "WEBHOOK_BREAKER_COOLDOWN_SECONDS": "2",
    "HOKUSAI_WEBHOOK_ALLOW_PRIVATE": "true",
}


@pytest.fixture
def fast_delivery(settings):
    """The same short schedule in this process as in the workers the test starts."""
    settings.WEBHOOK_RETRY_SCHEDULE = (0.5, 1.0, 1.5)
    settings.WEBHOOK_RETRY_JITTER = 0.0
    settings.WEBHOOK_TIMEOUT = 1.0
    settings.WEBHOOK_REQUEUE_AFTER_SECONDS = 1.0
    settings.WEBHOOK_BREAKER_FAILURES = 3
    settings.WEBHOOK_BREAKER_COOLDOWN_SECONDS = 2.0
    settings.HOKUSAI_WEBHOOK_ALLOW_PRIVATE = True
    return settings


@pytest.fixture
def receiver() -> Iterator[type[Receiver]]:
    """`receiver(script=[...])` starts a receiver; all are closed after the test."""
    started: list[Receiver] = []

    def start(**options) -> Receiver:
        started.append(Receiver(**options))
        return started[-1]

    yield start
    for each in started:
        each.close()


@dataclass
class Worker:
    """A real `celery worker -B` process; start() again after kill() or stop()."""

    log_path: Path
    schedule_path: Path
    env: dict[str, str]
    process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(VENV_BIN / "celery"),
                    "--app",
                    "hokusai_site",
                    "worker",
                    "--beat",
                    "--schedule",
                    str(self.schedule_path),
                    "--pool",
                    "threads",
                    "--concurrency",
                    "4",
                    "--loglevel",
                    "INFO",
                    "--hostname",
                    f"webhook-test-{os.getpid()}-{time.monotonic_ns()}@%h",
                ],
                cwd=REPO_ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log_path.read_text()[-3000:]}")
            if b" ready." in self.log_path.read_bytes():
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no clean shutdown, no acks."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None
        # The next start must look for its own " ready." line.
        self.log_path.write_bytes(b"")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
            self.log_path.write_bytes(b"")


@pytest.fixture
def webhook_worker(transactional_db, tmp_path) -> Iterator:
    """`webhook_worker(**env)` starts a worker with the fast delivery settings (and `env`)."""
    workers: list[Worker] = []

    def start(**env: str) -> Worker:
        index = len(workers)
        worker = Worker(
            log_path=tmp_path / f"worker-{index}.log",
            schedule_path=tmp_path / f"beat-{index}",
            env=subprocess_env(
                **{"DATABASE_URL": test_database_url(), **FAST_DELIVERY_SETTINGS, **env}
            ),
        )
        workers.append(worker)
        worker.start()
        return worker

    yield start
    for worker in workers:
        worker.stop()


class RedisServer:
    """A redis-server of the test's own, which it may stop, restart and flush."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = tmp_path / f"redis-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""],
            stdout=open(self.log_path, "ab"),  # noqa: SIM115 (the child keeps it open)
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def private_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def run_in_django(code: str, **env: str) -> str:
    """Runs `code` with `manage.py shell` in a process of its own (its own broker settings)."""
    completed = subprocess.run(
        [str(VENV_BIN / "python"), "manage.py", "shell", "-c", code],
        cwd=REPO_ROOT,
        env=subprocess_env(
            **{"DATABASE_URL": test_database_url(), **FAST_DELIVERY_SETTINGS, **env}
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    return completed.stdout

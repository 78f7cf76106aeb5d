"""The servers granian runs for this project (`manage.py prediction_server`,
`manage.py mlflow_proxy_server`): the same Django, each with settings of its own, for the routes
where the web server's CPU per request decides throughput (README "Inference" and "MLflow
proxy")."""

import os
import shutil
import sys
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class GranianCommand(BaseCommand):
    """Replaces itself with granian serving `application`. Subclasses name the application, the
    environment variables their defaults come from, and those defaults."""

    application: str  # module:attribute of the WSGI application
    environment_prefix: str  # {prefix}_BIND, {prefix}_WORKERS, {prefix}_THREADS
    default_bind: str
    default_workers: int
    default_threads: int
    # How long a stopping worker has to finish its requests (and write what it keeps).
    kill_timeout_seconds = 30

    def add_arguments(self, parser):
        prefix = self.environment_prefix
        parser.add_argument("--bind", default=os.environ.get(f"{prefix}_BIND", self.default_bind))
        parser.add_argument(
            "--workers",
            type=int,
            default=int(os.environ.get(f"{prefix}_WORKERS", self.default_workers)),
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=int(os.environ.get(f"{prefix}_THREADS", self.default_threads)),
            help="requests each worker runs at once",
        )

    def handle(self, *args, bind: str, workers: int, threads: int, **options):
        host, _, port = bind.rpartition(":")
        if not host or not port.isdigit():
            raise CommandError(f"--bind takes host:port, not {bind!r}")
        if min(workers, threads) < 1:
            raise CommandError("--workers and --threads must be at least 1")
        # The granian beside this Python (the project's venv) even when the venv is not on PATH.
        beside_python = Path(sys.executable).parent / "granian"
        executable = str(beside_python) if beside_python.exists() else shutil.which("granian")
        if executable is None:
            raise CommandError("no granian executable beside this Python or on PATH")
        command = [
            executable,
            "--interface", "wsgi",
            "--http", "1",
            "--no-ws",
            "--host", host.strip("[]"),
            "--port", port,
            "--workers", str(workers),
            "--blocking-threads", str(threads),
            "--respawn-failed-workers",
            "--workers-kill-timeout", str(self.kill_timeout_seconds),
            self.application,
        ]  # fmt: skip
        environment = dict(os.environ)
        # Prometheus counters are per process; the workers share them through files here, so
        # /metrics on this server adds every worker's up.
        environment.setdefault(
            "PROMETHEUS_MULTIPROC_DIR",
            tempfile.mkdtemp(prefix=f"hokusai-prom-{self.environment_prefix.lower()}-"),
        )
        # Replace this process so signals from the process manager reach granian directly.
        os.execve(executable, command, environment)  # noqa: S606

import os
import shutil
import sys
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Runs the prediction server: granian serving this project (inference.wsgi) for "
        "POST /api/v1/models/{id}/predict. Defaults chosen by bench/inference.py on 2 cores "
        "(README, Inference)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--bind", default=os.environ.get("PREDICTION_SERVER_BIND", "127.0.0.1:8002")
        )
        parser.add_argument(
            "--workers", type=int, default=int(os.environ.get("PREDICTION_SERVER_WORKERS", 2))
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=int(os.environ.get("PREDICTION_SERVER_THREADS", 2)),
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
            # A worker stopping finishes its requests and writes its prediction log rows.
            "--workers-kill-timeout", "30",
            "inference.wsgi:application",
        ]  # fmt: skip
        environment = dict(os.environ)
        # Prometheus counters are per process; the workers share them through files here, so
        # /metrics on this server adds every worker's up.
        environment.setdefault(
            "PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="hokusai-prom-predict-")
        )
        # Replace this process so signals from the process manager reach granian directly.
        os.execve(executable, command, environment)  # noqa: S606

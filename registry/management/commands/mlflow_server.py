import os
import shutil
import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections

from migrations import mlflow_schema
from registry import mlflow


class Command(BaseCommand):
    help = (
        "Runs the MLflow tracking server on our database, listening on the host and port of "
        "MLFLOW_TRACKING_URI, with artifacts in MLFLOW_ARTIFACTS_DESTINATION."
    )

    def add_arguments(self, parser):
        parser.add_argument("--workers", type=int, default=int(os.environ.get("MLFLOW_WORKERS", 2)))
        parser.add_argument(
            "--host", help="interface to bind (default: MLFLOW_TRACKING_URI's host)"
        )
        parser.add_argument("--port", type=int, help="default: MLFLOW_TRACKING_URI's port")
        parser.add_argument(
            "--allowed-hosts",
            default="",
            help="Host headers MLflow accepts besides localhost's, e.g. mlflow:5000",
        )

    def handle(self, *args, workers: int, host, port, allowed_hosts: str, **options):
        target = mlflow.upstream()
        # The mlflow beside this Python (the project's venv) even when the venv is not on PATH.
        beside_python = Path(sys.executable).parent / "mlflow"
        executable = str(beside_python) if beside_python.exists() else shutil.which("mlflow")
        if executable is None:
            raise CommandError("no mlflow executable beside this Python or on PATH")
        command = mlflow.server_command(
            backend_store_uri=mlflow_schema.sqlalchemy_url(
                connections[DEFAULT_DB_ALIAS].settings_dict
            ),
            artifacts_destination=settings.MLFLOW_ARTIFACTS_DESTINATION,
            host=host or target.host,
            port=port or target.port,
            workers=workers,
            allowed_hosts=allowed_hosts,
        )
        # Replace this process so signals from the process manager reach MLflow directly.
        os.execve(executable, command, {**mlflow.SERVER_ENVIRONMENT, **os.environ})  # noqa: S606

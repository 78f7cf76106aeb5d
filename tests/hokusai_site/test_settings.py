"""Start-up refuses wrong configuration with a message naming the variable."""

import json
import os
import secrets
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

LOADS_SETTINGS = "import django; django.setup()"


def start_with(code: str = LOADS_SETTINGS, **env: str) -> subprocess.CompletedProcess:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_", "REDIS_", "MLFLOW_", "DNS_", "SECRET_"))
        and key not in ("ENVIRONMENT", "DEBUG", "ALLOWED_HOSTS")
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": "hokusai_site.settings",
            "ENV_FILE": "/nonexistent",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DATABASE_URL", "nonsense"),
        ("DATABASE_URL", "mysql://db.example/hokusai"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("MLFLOW_TRACKING_URI", "ftp://127.0.0.1"),
        ("MLFLOW_FALLBACK_IP", "not-an-ip"),
        ("DNS_CACHE_TTL", "five minutes"),
        ("DNS_CACHE_TTL", "0"),
        ("ENVIRONMENT", "prod"),
        ("DEBUG", "maybe"),
        ("WEBHOOK_TIMEOUT", "-1"),
        ("MAX_REQUEST_BODY_BYTES", "lots"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_malformed_variable_stops_start_up_naming_it(variable, value):
    result = start_with(**{variable: value})
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured")
    assert variable in last_line


@pytest.mark.parametrize("missing", ["SECRET_KEY", "ALLOWED_HOSTS"])
def test_production_without_a_required_variable_stops_start_up_naming_it(missing):
    env = {
        "ENVIRONMENT": "production",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "hokusai.example.com",
    }
    del env[missing]
    result = start_with(**env)
    assert result.returncode != 0
    assert missing in result.stderr.strip().splitlines()[-1]


def test_production_refuses_a_short_secret_key():
    result = start_with(
        ENVIRONMENT="production", SECRET_KEY="short", ALLOWED_HOSTS="hokusai.example.com"
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr.strip().splitlines()[-1]


def test_embedded_default_uses_sqlite_and_no_servers(tmp_path):
    code = (
        LOADS_SETTINGS + "; from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.DATABASES['default']['NAME'], "
        "s.CACHES['default']['BACKEND'], s.CELERY_BROKER_URL, sep='|')"
    )
    result = start_with(code, HOKUSAI_VAR_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    engine, name, cache, broker = result.stdout.strip().split("|")
    assert engine == "django.db.backends.sqlite3"
    assert name == str(tmp_path / "hokusai.sqlite3")
    assert cache.endswith("DatabaseCache")
    assert broker == f"sqla+sqlite:///{tmp_path / 'celery-broker.sqlite3'}"


@pytest.mark.parametrize(
    "settings_module",
    ["hokusai_site.settings", "hokusai_site.prediction_settings", "hokusai_site.proxy_settings"],
)
def test_production_settings_pass_djangos_deploy_checks(tmp_path, settings_module):
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": settings_module,
            "ENVIRONMENT": "production",
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "hokusai.example.com",
            "HOKUSAI_VAR_DIR": str(tmp_path),
            "ENV_FILE": "/nonexistent",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_env_example_loads_as_is(tmp_path):
    code = LOADS_SETTINGS + "; from django.conf import settings as s; print(s.DNS_CACHE_TTL)"
    result = start_with(
        code, ENV_FILE=str(REPO_ROOT / ".env.example"), HOKUSAI_VAR_DIR=str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "300"


def test_production_logs_are_json_lines_carrying_the_request_id(tmp_path):
    code = (
        LOADS_SETTINGS + "; from django.test import Client; "
        "Client().get('/health', HTTP_X_REQUEST_ID='json-log-1')"
    )
    result = start_with(
        code,
        ENVIRONMENT="production",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="testserver",
        SECURE_SSL_REDIRECT="false",
        HOKUSAI_VAR_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    access = [r for r in records if r.get("logger") == "hokusai.access"]
    assert len(access) == 1
    assert access[0]["request_id"] == "json-log-1"
    assert (access[0]["method"], access[0]["path"], access[0]["status"]) == ("GET", "/health", 200)
    assert access[0]["level"] == "INFO"

"""Readiness checks of the platform's dependencies, run in parallel with a hard time limit each.

Critical checks (database, MLflow) failing make the platform `down` (503); the others failing
make it `degraded` (still 200): requests are served, some features wait (webhooks, rate limits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connections

from hokusai_site import selectors
from hokusai_site.cache import redis_client
from hokusai_site.dns import DnsResolutionError, get_resolver
from registry import mlflow

OK, DEGRADED, DOWN, NOT_CONFIGURED = "ok", "degraded", "down", "not_configured"
CRITICAL_CHECKS = frozenset({"database", "mlflow"})

# Checks that query the database share one thread, so each process holds one extra connection
# for health checks however often they run; network checks get their own threads, so a hung
# dependency holds a thread of its own and never delays the others.
_database_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="health-db")
_network_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health-net")
_redis_client = None


def check_database() -> dict[str, Any]:
    connection = connections["default"]
    # The health thread outlives requests, so it drops a stale connection itself.
    connection.close_if_unusable_or_obsolete()
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"status": OK, "vendor": connection.vendor}


def check_redis() -> dict[str, Any]:
    global _redis_client
    if not settings.REDIS_URL:
        return {"status": NOT_CONFIGURED, "detail": "embedded mode: no Redis configured"}
    if _redis_client is None:
        _redis_client = redis_client(
            settings.REDIS_URL, timeout=settings.HEALTH_CHECK_TIMEOUT_SECONDS
        )
    _redis_client.ping()
    return {"status": OK}


def check_mlflow() -> dict[str, Any]:
    healthy = mlflow.server_is_healthy(timeout=settings.HEALTH_CHECK_TIMEOUT_SECONDS)
    return {"status": OK if healthy else DOWN}


def check_dns() -> dict[str, Any]:
    host = mlflow.upstream().host
    resolver = get_resolver()
    try:
        resolution = resolver.resolve(host)
    except DnsResolutionError as exc:
        return {"status": DOWN, "host": host, "detail": str(exc), "counters": resolver.stats()}
    using_last_resort = resolution.source in ("stale", "fallback")
    return {
        "status": DEGRADED if using_last_resort else OK,
        "host": host,
        "address": resolution.address,
        "source": resolution.source,
        "cache_age_seconds": (
            None if resolution.age_seconds is None else round(resolution.age_seconds, 1)
        ),
        "stale": resolution.source == "stale",
        "fallback_in_use": resolution.source == "fallback",
        "counters": resolver.stats(),
    }


def check_celery() -> dict[str, Any]:
    max_age = timedelta(seconds=3 * settings.CELERY_WORKER_HEARTBEAT_SECONDS)
    workers = selectors.alive_workers(max_age=max_age)
    return {
        "status": OK if workers else DOWN,
        "workers": len(workers),
        "hostnames": [worker.hostname for worker in workers],
    }


CHECKS: dict[str, tuple[Callable[[], dict[str, Any]], ThreadPoolExecutor]] = {
    "database": (check_database, _database_executor),
    "celery": (check_celery, _database_executor),
    "redis": (check_redis, _network_executor),
    "mlflow": (check_mlflow, _network_executor),
    "dns": (check_dns, _network_executor),
}


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        result = check()
    except Exception as exc:
        # The error class and message, never a traceback or a connection string.
        result = {"status": DOWN, "detail": f"{type(exc).__name__}: {_redact(str(exc))}"}
    result["latency_ms"] = round((time.perf_counter() - started) * 1000, 2)
    return result


def _redact(message: str) -> str:
    for secret in (settings.DATABASES["default"].get("PASSWORD"), settings.REDIS_URL):
        if secret:
            message = message.replace(secret, "***")
    return message[:300]


def readiness() -> dict[str, Any]:
    timeout = settings.HEALTH_CHECK_TIMEOUT_SECONDS
    futures = {name: executor.submit(_timed, check) for name, (check, executor) in CHECKS.items()}
    deadline = time.monotonic() + timeout + 0.2
    checks: dict[str, dict[str, Any]] = {}
    for name, future in futures.items():
        try:
            checks[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            checks[name] = {
                "status": DOWN,
                "detail": f"no answer within {timeout:g}s",
                "latency_ms": round(timeout * 1000, 2),
            }
        checks[name]["critical"] = name in CRITICAL_CHECKS

    if any(checks[name]["status"] != OK for name in CRITICAL_CHECKS):
        status = DOWN
    elif any(check["status"] in (DOWN, DEGRADED) for check in checks.values()):
        status = DEGRADED
    else:
        status = OK
    return {"status": status, "checks": checks}

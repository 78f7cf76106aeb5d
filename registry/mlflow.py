"""The only door to the MLflow tracking server. Every connection goes through the DNS resolver
(hokusai_site.dns), so a DNS outage falls back to the last good or the configured address."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from django.conf import settings

from hokusai_site.dns import Resolution, get_resolver

_pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
_pools_lock = threading.Lock()


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def host_header(self) -> str:
        default_port = 443 if self.scheme == "https" else 80
        return self.host if self.port == default_port else f"{self.host}:{self.port}"


def upstream() -> Upstream:
    parts = urlsplit(settings.MLFLOW_TRACKING_URI)
    scheme = parts.scheme
    return Upstream(
        scheme=scheme,
        host=parts.hostname or "",
        port=parts.port or (443 if scheme == "https" else 80),
        base_path=parts.path.rstrip("/"),
    )


def resolve_upstream() -> tuple[Upstream, Resolution]:
    target = upstream()
    return target, get_resolver().resolve(target.host)


def _pool(target: Upstream, address: str) -> urllib3.HTTPConnectionPool:
    """A keep-alive pool per resolved address; TLS still verifies the configured host name."""
    key = (target.scheme, address, target.port, target.host)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            if target.scheme == "https":
                pool = urllib3.HTTPSConnectionPool(
                    address,
                    target.port,
                    server_hostname=target.host,
                    assert_hostname=target.host,
                    maxsize=16,
                    block=False,
                )
            else:
                pool = urllib3.HTTPConnectionPool(address, target.port, maxsize=16, block=False)
            _pools[key] = pool
        return pool


def request(
    method: str, path: str, *, timeout: float, headers: dict[str, str] | None = None, **kwargs
) -> urllib3.BaseHTTPResponse:
    """One HTTP request to the tracking server; never retries and never follows redirects."""
    target, resolution = resolve_upstream()
    return _pool(target, resolution.address).urlopen(
        method,
        target.base_path + path,
        headers={"Host": target.host_header, **(headers or {})},
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=False,
        redirect=False,
        **kwargs,
    )


def server_is_healthy(*, timeout: float) -> bool:
    """MLflow's own liveness route answers 200 "OK"."""
    response = request("GET", "/health", timeout=timeout)
    return response.status == 200


# MLflow 3's server otherwise starts a job runner and several worker processes (about 2.4 GiB
# and 40 s of CPU at start-up, plus a directory left in /dev/shm) for features we do not use.
SERVER_ENVIRONMENT = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_command(
    *,
    backend_store_uri: str,
    artifacts_destination: str,
    host: str,
    port: int,
    workers: int,
    allowed_hosts: str = "",
) -> list[str]:
    """The `mlflow server` command line for a tracking server on our database.

    Artifacts are served by the tracking server itself (clients never need storage credentials);
    the schema already exists, created by `manage.py migrate`, so the server does not migrate it.
    """
    command = [
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    # MLflow refuses Host headers other than localhost's unless told which names it serves by.
    return [*command, "--allowed-hosts", allowed_hosts] if allowed_hosts else command

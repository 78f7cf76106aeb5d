"""The only door to the MLflow tracking server. Every connection goes through the DNS resolver
(hokusai_site.dns), so a DNS outage falls back to the last good or the configured address.

One HTTP client, pyreqwest (Rust's reqwest), for the registry's JSON calls (`request`, `call`)
and for what the MLflow proxy forwards (`stream`): ~0.38 ms of CPU for a small answer on the
benchmark machine against urllib3's ~0.75 ms, which a registration and every proxied request
pay on the cores MLflow shares (bench/registry.py).
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode, urlsplit

from django.conf import settings
from pyreqwest import exceptions as client_errors
from pyreqwest.client import SyncClient, SyncClientBuilder
from pyreqwest.http import HeaderMap
from pyreqwest.request import SyncRequestBuilder, SyncStreamRequest

from hokusai_site.dns import DnsResolutionError, Resolution, get_resolver

_clients: dict[tuple[str, str, int, str, float, float], SyncClient] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    base_path: str

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}{path}"


def upstream() -> Upstream:
    return _parsed_upstream(settings.MLFLOW_TRACKING_URI)


@functools.lru_cache(maxsize=8)
def _parsed_upstream(tracking_uri: str) -> Upstream:
    # Parsed once, not on every forwarded request.
    parts = urlsplit(tracking_uri)
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


@dataclass(frozen=True)
class Answer:
    status: int
    data: bytes


def request(
    method: str,
    path: str,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """One HTTP request to the tracking server, its answer read whole; never follows redirects,
    and retries only a GET whose kept-alive connection MLflow had just closed."""
    try:
        return _send(method, path, timeout=timeout, headers=headers, body=body)
    except client_errors.NetworkError:
        # MLflow's uvicorn closes connections idle for 5 s, and a pooled one can go just as it
        # is reused (reqwest calls that a connect error, sent or not): a GET goes again.
        if method != "GET":
            raise
        return _send(method, path, timeout=timeout, headers=headers, body=body)


def _send(
    method: str, path: str, *, timeout: float, headers: dict[str, str] | None, body: bytes | None
) -> Answer:
    builder = _request_builder(
        method, path, headers=headers or {}, connect_timeout=timeout, read_timeout=timeout
    )
    if body is not None:
        builder = builder.body_bytes(body)
    response = builder.build().send()
    return Answer(response.status, bytes(response.bytes()))


def _request_builder(
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    connect_timeout: float,
    read_timeout: float,
) -> SyncRequestBuilder:
    """A request to the tracking server at the resolver's address, through the pool for it."""
    target, resolution = resolve_upstream()
    client = _client(
        target, resolution.address, connect_timeout=connect_timeout, read_timeout=read_timeout
    )
    return client.request(method, target.url(path)).headers(headers)


def _client(
    target: Upstream, address: str, *, connect_timeout: float, read_timeout: float
) -> SyncClient:
    """reqwest's keep-alive pool for one resolved address: requests name the configured host (so
    Host and TLS are its) and connect to `address`."""
    key = (target.scheme, target.host, target.port, address, connect_timeout, read_timeout)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = (
                SyncClientBuilder()
                .resolve(target.host, address, target.port)
                .connect_timeout(timedelta(seconds=connect_timeout))
                .read_timeout(timedelta(seconds=read_timeout))
                .follow_redirects(False)
                .no_proxy()
                # Bodies pass as MLflow sent them, compressed or not.
                .gzip(False)
                .brotli(False)
                .zstd(False)
                .deflate(False)
                .build()
            )
            _clients[key] = client
        return client


class StreamedResponse:
    """MLflow's answer with its body unread: `chunks` reads it, `close` ends the exchange (and
    drops the connection if the body was not read to its end)."""

    def __init__(self, exchange: SyncStreamRequest) -> None:
        self._exchange = exchange
        self._response = exchange.__enter__()
        self.status: int = self._response.status
        self.headers: HeaderMap = self._response.headers

    def chunks(self, size: int) -> Iterator[bytes]:
        reader = self._response.body_reader
        while chunk := reader.read(size):
            yield bytes(chunk)

    def close(self) -> None:
        self._exchange.__exit__(None, None, None)


def stream(
    method: str,
    path: str,
    *,
    headers: dict[str, str],
    body: bytes | Iterable[bytes] | None,
    connect_timeout: float,
    read_timeout: float,
) -> StreamedResponse:
    """A request whose body is sent as it is produced and whose answer the caller reads, then
    closes. Without a Content-Length in `headers` an iterable body goes out chunked; redirects
    are returned, never followed. Errors are pyreqwest's (pyreqwest.exceptions), what the body
    iterable raises, and DnsResolutionError."""
    builder = _request_builder(
        method, path, headers=headers, connect_timeout=connect_timeout, read_timeout=read_timeout
    )
    if isinstance(body, bytes):
        builder = builder.body_bytes(body)
    elif body is not None:
        builder = builder.body_stream(body)
    return StreamedResponse(builder.build_streamed())


class MlflowUnavailable(Exception):
    """MLflow did not answer usefully: down, timed out, DNS failed, or a 5xx."""


class MlflowError(Exception):
    """MLflow answered with a client error: `error_code` is MLflow's (RESOURCE_DOES_NOT_EXIST…)."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message


def call(
    method: str, endpoint: str, *, params: dict | None = None, body: dict | None = None
) -> dict:
    """One call of MLflow's REST API (`/api/2.0/mlflow/<endpoint>`), JSON in and out."""
    path = f"/api/2.0/mlflow/{endpoint}"
    if params:
        path += "?" + urlencode(params)
    try:
        response = request(
            method,
            path,
            timeout=settings.MLFLOW_REQUEST_TIMEOUT_SECONDS,
            headers={"Content-Type": "application/json"},
            body=None if body is None else json.dumps(body).encode(),
        )
        data = json.loads(response.data or b"{}")
    except (client_errors.RequestError, DnsResolutionError, ValueError) as exc:
        raise MlflowUnavailable(f"{method} {endpoint}: {exc}") from exc
    if response.status >= 500:
        raise MlflowUnavailable(f"{method} {endpoint}: HTTP {response.status}")
    if response.status >= 400:
        raise MlflowError(response.status, data.get("error_code", ""), data.get("message", ""))
    return data


def _found(method: str, endpoint: str, key: str, **kwargs) -> dict | None:
    """`call(...)[key]`, or None when MLflow says the resource does not exist."""
    try:
        return call(method, endpoint, **kwargs)[key]
    except MlflowError as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or exc.status == 404:
            return None
        raise


def get_run(run_id: str) -> dict | None:
    return _found("GET", "runs/get", "run", params={"run_id": run_id})


def list_artifacts(run_id: str, path: str) -> list[dict]:
    return call("GET", "artifacts/list", params={"run_id": run_id, "path": path}).get("files", [])


def get_logged_model(model_id: str) -> dict | None:
    return _found("GET", f"logged-models/{model_id}", "model")


def logged_models_of_run(run: dict, name: str) -> list[dict]:
    """The run's logged models (MLflow 3) called `name`."""
    found, page_token = [], None
    while True:
        body = {
            "experiment_ids": [run["info"]["experiment_id"]],
            "filter": f"name = '{name}'",
            **({"page_token": page_token} if page_token else {}),
        }
        page = call("POST", "logged-models/search", body=body)
        found += [
            model
            for model in page.get("models", [])
            if model["info"].get("source_run_id") == run["info"]["run_id"]
        ]
        page_token = page.get("next_page_token")
        if not page_token:
            return found


def ensure_registered_model(name: str) -> None:
    try:
        call("POST", "registered-models/create", body={"name": name})
    except MlflowError as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def search_model_versions(filter_string: str = "") -> list[dict]:
    """Every version matching the filter (all versions without one)."""
    found, page_token = [], None
    while True:
        params = {"max_results": 200, **({"filter": filter_string} if filter_string else {})}
        if page_token:
            params["page_token"] = page_token
        page = call("GET", "model-versions/search", params=params)
        found += page.get("model_versions", [])
        page_token = page.get("next_page_token")
        if not page_token:
            return found


def create_model_version(
    *, name: str, source: str, run_id: str | None, model_id: str | None, tags: dict[str, str]
) -> dict:
    """Without `run_id`, MLflow takes the logged model's run."""
    body = {
        "name": name,
        "source": source,
        "tags": [{"key": k, "value": v} for k, v in tags.items()],
    }
    if run_id:
        body["run_id"] = run_id
    if model_id:
        body["model_id"] = model_id
    return call("POST", "model-versions/create", body=body)["model_version"]


def get_model_version(name: str, version: str) -> dict | None:
    params = {"name": name, "version": version}
    return _found("GET", "model-versions/get", "model_version", params=params)


def set_model_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        call(
            "POST",
            "model-versions/set-tag",
            body={"name": name, "version": version, "key": key, "value": value},
        )


def get_model_version_by_alias(name: str, alias: str) -> dict | None:
    """The version the alias points at, or None when the model has no such alias (which
    MLflow answers with 400 INVALID_PARAMETER_VALUE, not RESOURCE_DOES_NOT_EXIST)."""
    params = {"name": name, "alias": alias}
    try:
        return call("GET", "registered-models/alias", params=params)["model_version"]
    except MlflowError as exc:
        if exc.status in (400, 404):
            return None
        raise


def download_model(name: str, version: str, destination: str) -> str:
    """The files of a registered model version, fetched with MLflow's own client into
    `destination`; returns the local path. The tracking server is reached at the resolver's
    address (plain HTTP; over HTTPS the configured name, for its certificate)."""
    from mlflow.artifacts import download_artifacts

    # Asked here rather than passing models:/name/version: MLflow's client resolves that
    # against its process-wide registry URI, whatever tracking_uri it is given.
    params = {"name": name, "version": version}
    source = call("GET", "model-versions/get-download-uri", params=params)["artifact_uri"]
    target, resolution = resolve_upstream()
    host = target.host if target.scheme == "https" else resolution.address
    if ":" in host:
        host = f"[{host}]"
    tracking_uri = f"{target.scheme}://{host}:{target.port}{target.base_path}"
    return download_artifacts(artifact_uri=source, dst_path=destination, tracking_uri=tracking_uri)


def server_is_healthy(*, timeout: float) -> bool:
    """MLflow's own liveness route answers 200 "OK"."""
    response = request("GET", "/health", timeout=timeout)
    return response.status == 200


# MLflow 3's server otherwise starts a job runner and several worker processes (about 2.4 GiB
# and 40 s of CPU at start-up, plus a directory left in /dev/shm) for features we do not use.
# Its usage telemetry (calls to a host outside ours) is off as well.
SERVER_ENVIRONMENT = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


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

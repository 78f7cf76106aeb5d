"""The MLflow proxy server's fast path (registry.proxy_fast_path) against its full path: the
proxy server's own Django (its settings' middleware and URLconf) answering the same requests,
with MLflow's stand-in (tests/registry/stand_in.py) recording what reaches it."""

from __future__ import annotations

import base64
import io
import json
import sys
from dataclasses import dataclass

import pytest
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections

from authkeys import gate
from hokusai_site import proxy_settings
from hokusai_site.dns import reset_resolver
from registry.proxy_fast_path import ProxyServer
from tests.conftest import free_port
from tests.registry.stand_in import Reply

pytestmark = pytest.mark.django_db

MODEL_READ = "/api/2.0/mlflow/registered-models/get"


@dataclass
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def header_map(self) -> dict[str, str]:
        """Lower-case names; what differs from one second to the next is left out."""
        return {name.lower(): value for name, value in self.headers if name.lower() != "date"}

    def problem(self) -> dict:
        assert self.header_map["content-type"] == "application/problem+json"
        return json.loads(self.body)


class FullPath:
    """The proxy server's Django, counting the requests it is handed."""

    def __init__(self) -> None:
        self.django = WSGIHandler()
        self.calls = 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.django(environ, start_response)


@pytest.fixture(autouse=True)
def _test_transaction_kept_open():
    """As Django's test client does: a request's start and end would close the connection that
    holds the test's transaction."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def proxy_server_settings(settings):
    """The proxy server's URLconf and middleware; other settings a test changes apply to the
    servers it makes afterwards (middleware reads them when made)."""
    settings.ROOT_URLCONF = proxy_settings.ROOT_URLCONF
    settings.MIDDLEWARE = proxy_settings.MIDDLEWARE
    return settings


@pytest.fixture
def full_path(proxy_server_settings) -> FullPath:
    return FullPath()


@pytest.fixture
def fast_path(full_path) -> ProxyServer:
    return ProxyServer(full_path)


def call(
    application, method: str, path: str, *, query: str = "", body: bytes = b"", **headers: str
) -> Answer:
    """One request as a WSGI server makes it; `headers` as environ keys (HTTP_…)."""
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "testserver",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        **headers,
    }
    started: list[tuple[str, list[tuple[str, str]]]] = []
    answer = application(
        environ, lambda status, headers, exc_info=None: started.append((status, headers))
    )
    try:
        data = b"".join(answer)
    finally:
        if hasattr(answer, "close"):  # as WSGI servers do
            answer.close()
    ((status, answer_headers),) = started
    return Answer(status, answer_headers, data)


def bearer(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def basic(key: str) -> dict[str, str]:
    # What the MLflow client sends with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"someone:{key}".encode()).decode()}


def x_api_key(key: str) -> dict[str, str]:
    return {"HTTP_X_API_KEY": key}


def both_ways(fast_path, full_path, stand_in, method, path, **options):
    """The same request through the fast path and through the full path: each answer, and what
    MLflow received each time. Fails unless the first took the fast path."""
    fast = call(fast_path, method, path, **options)
    assert full_path.calls == 0, "the request took the full path"
    fast_received = [(r.method, r.target, r.headers) for r in stand_in.received]
    stand_in.received.clear()
    full = call(full_path, method, path, **options)
    full_received = [(r.method, r.target, r.headers) for r in stand_in.received]
    return fast, full, fast_received, full_received


def assert_same_headers(fast: Answer, full: Answer) -> None:
    """The same headers, but that the full path's request, sent second, was counted second."""
    fast_headers, full_headers = fast.header_map, full.header_map
    remaining = int(fast_headers.pop("x-ratelimit-remaining"))
    assert int(full_headers.pop("x-ratelimit-remaining")) == remaining - 1
    assert fast_headers == full_headers


# The client names the request, so both answers carry the same id.
SAME_ID = {"HTTP_X_REQUEST_ID": "same-request"}


def model_read_both_ways(fast_path, full_path, stand_in, key: str, **headers: str):
    """both_ways for a registered model's read with a Bearer key and a named request."""
    return both_ways(
        fast_path,
        full_path,
        stand_in,
        "GET",
        MODEL_READ,
        query="name=m",
        **bearer(key),
        **SAME_ID,
        **headers,
    )


@pytest.mark.parametrize(
    ("method", "path", "query", "credentials", "reply"),
    [
        ("GET", MODEL_READ, "name=m", bearer, Reply()),
        ("GET", MODEL_READ, "name=m", basic, Reply()),
        ("GET", MODEL_READ, "name=m", x_api_key, Reply()),
        ("HEAD", MODEL_READ, "name=m", bearer, Reply()),
        ("GET", "/api/mlflow/api/2.0/mlflow/runs/get", "run_id=abc", bearer, Reply()),
        ("GET", "/mlflow/static-files/static/js/main.js", "", bearer, Reply()),
        (
            "GET",
            "/api/2.0/mlflow-artifacts/artifacts/1/run/artifacts/model.pkl",
            "",
            bearer,
            Reply(headers=[("Content-Type", "application/octet-stream")], body=b"\x00" * 70_000),
        ),
        (
            "GET",
            "/api/2.0/mlflow/artifacts/list",
            "run_id=abc&path=model",
            bearer,
            Reply(),
        ),
        (
            "GET",
            MODEL_READ,
            "name=missing",
            bearer,
            Reply(
                status=404,
                body=b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such model"}',
            ),
        ),
        (
            "GET",
            MODEL_READ,
            "name=m",
            bearer,
            # MLflow's own security and Vary headers, and ones that never leave the proxy.
            Reply(
                headers=[
                    ("Content-Type", "application/json"),
                    ("X-Frame-Options", "SAMEORIGIN"),
                    ("X-Content-Type-Options", "nosniff"),
                    ("Vary", "Accept-Encoding"),
                    ("Set-Cookie", "session=mlflow"),
                    ("Connection", "keep-alive, X-Hop"),
                    ("X-Hop", "1"),
                    # Ours to set.
                    ("X-Request-ID", "mlflows-own"),
                    ("X-RateLimit-Limit", "7"),
                ]
            ),
        ),
    ],
)
def test_a_read_answers_as_the_full_path_does(
    fast_path, full_path, stand_in, reader, method, path, query, credentials, reply
):
    stand_in.reply = reply
    fast, full, fast_received, full_received = both_ways(
        fast_path, full_path, stand_in, method, path, query=query, **credentials(reader), **SAME_ID
    )
    assert (fast.status, fast.body) == (full.status, full.body)
    assert_same_headers(fast, full)
    assert fast_received == full_received
    # What MLflow saw: the route as it names it, our identity headers, none of the credentials.
    ((_, target, seen),) = fast_received
    assert target.startswith(path.removeprefix("/api/mlflow").removeprefix("/mlflow"))
    assert seen["x-hokusai-caller"].startswith("api_key:hk_")
    assert "authorization" not in seen and "x-api-key" not in seen
    assert [value for name, value in fast.headers if name.lower() == "x-request-id"] == [
        "same-request"
    ]
    assert fast.header_map["x-ratelimit-limit"] == "600"
    assert int(fast.header_map["x-ratelimit-remaining"]) >= 0


def test_the_site_headers_are_the_middlewares_and_an_upstreams_own_are_kept(
    fast_path, full_path, stand_in, reader
):
    stand_in.reply = Reply(headers=[("Content-Type", "text/plain"), ("Vary", "Accept")])
    answer = call(fast_path, "GET", MODEL_READ, query="name=m", **bearer(reader))
    headers = answer.header_map
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "same-origin"
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["vary"] == "Accept, origin"
    assert "strict-transport-security" not in headers  # plain HTTP
    ui = call(fast_path, "GET", "/mlflow/static-files/app.js", **bearer(reader))
    assert ui.header_map["vary"] == "Accept"  # CORS answers /api/ paths only
    assert full_path.calls == 0


def test_over_https_the_answer_carries_hsts_and_mlflow_hears_https(
    proxy_server_settings, stand_in, reader
):
    settings = proxy_server_settings
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_HSTS_PRELOAD = False
    full_path = FullPath()
    fast_path = ProxyServer(full_path)
    fast, full, fast_received, full_received = model_read_both_ways(
        fast_path, full_path, stand_in, reader, HTTP_X_FORWARDED_PROTO="https"
    )
    assert_same_headers(fast, full)
    assert fast.header_map["strict-transport-security"] == "max-age=3600; includeSubDomains"
    assert fast_received == full_received
    assert fast_received[0][2]["x-forwarded-proto"] == "https"


def test_behind_a_trusted_proxy_mlflow_hears_the_clients_address(
    settings, fast_path, full_path, stand_in, reader
):
    settings.TRUSTED_PROXY_COUNT = 1
    _, _, fast_received, full_received = model_read_both_ways(
        fast_path, full_path, stand_in, reader, HTTP_X_FORWARDED_FOR="203.0.113.9, 198.51.100.7"
    )
    assert fast_received == full_received
    assert fast_received[0][2]["x-forwarded-for"] == "198.51.100.7"


def test_mlflow_down_is_the_same_502_both_ways(settings, fast_path, full_path, reader):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    reset_resolver()
    try:
        fast = call(fast_path, "GET", MODEL_READ, query="name=m", **bearer(reader), **SAME_ID)
        assert full_path.calls == 0
        full = call(full_path, "GET", MODEL_READ, query="name=m", **bearer(reader), **SAME_ID)
    finally:
        reset_resolver()
    assert fast.status == full.status == "502 Bad Gateway"
    assert fast.body == full.body
    assert_same_headers(fast, full)
    assert fast.problem()["code"] == "mlflow_unavailable"
    assert fast.problem()["request_id"] == "same-request"


@pytest.mark.parametrize(
    ("method", "path", "query", "headers", "status"),
    [
        ("POST", "/api/2.0/mlflow/registered-models/search", "", {}, "200 OK"),
        # A GET with a body: MLflow's to judge, and only the full path sends bodies.
        ("GET", MODEL_READ, "name=m", {"body": b"{}"}, "200 OK"),
        ("GET", MODEL_READ, "name=m", {"HTTP_ORIGIN": "https://elsewhere.example"}, "200 OK"),
        ("GET", MODEL_READ, "name=m", {"HTTP_HOST": "evil.example"}, "400 Bad Request"),
        (
            "GET",
            "/api/2.0/mlflow-artifacts/artifacts/1/..%2f..%2fetc/passwd",
            "",
            {},
            "400 Bad Request",
        ),
        ("GET", "/api/2.0/mlflow/artifacts/list", "run_id=a&path=../../x", {}, "400 Bad Request"),
        ("GET", "/health", "", {}, "200 OK"),
        ("GET", "/api/v1/models", "", {}, "404 Not Found"),
    ],
)
def test_what_the_fast_path_does_not_answer_takes_the_full_path(
    fast_path, full_path, stand_in, writer, method, path, query, headers, status
):
    answer = call(fast_path, method, path, query=query, **{**bearer(writer), **headers})
    assert full_path.calls == 1
    assert answer.status == status


@pytest.mark.parametrize(
    ("credentials", "code"),
    [
        ({}, "authentication_required"),
        ({"HTTP_AUTHORIZATION": "Bearer hk_live_not-a-key"}, "api_key_malformed"),
        ({"HTTP_AUTHORIZATION": "Basic !!!"}, "api_key_malformed"),
    ],
)
def test_requests_without_a_usable_key_take_the_full_path(
    fast_path, full_path, stand_in, credentials, code
):
    answer = call(fast_path, "GET", MODEL_READ, query="name=m", **credentials)
    assert full_path.calls == 1
    assert answer.problem()["code"] == code
    assert stand_in.received == []


def test_a_key_in_the_query_string_is_refused_as_on_the_full_path(
    fast_path, full_path, stand_in, reader
):
    answer = call(fast_path, "GET", MODEL_READ, query=f"name=m&api_key={reader}", **bearer(reader))
    assert full_path.calls == 1
    assert answer.problem()["code"] == "api_key_in_query"
    assert stand_in.received == []


def test_an_unknown_key_is_refused_by_the_full_path(fast_path, full_path, stand_in):
    from authkeys import keys

    answer = call(fast_path, "GET", MODEL_READ, **bearer(keys.generate().key))
    assert full_path.calls == 1
    assert answer.status == "401 Unauthorized"
    assert answer.problem()["code"] == "api_key_unknown"
    assert stand_in.received == []


def test_a_refusal_after_the_key_check_counts_the_request_once(
    fast_path, full_path, stand_in, owner, issue_key
):
    _, key = issue_key(owner, ["mlflow:read"], rate_limit_per_minute=5)
    read = call(fast_path, "GET", MODEL_READ, query="name=m", **bearer(key))
    assert read.header_map["x-ratelimit-remaining"] == "4"
    # A GET that hands out upload URLs needs mlflow:write: checked here, refused there.
    refused = call(fast_path, "GET", "/api/2.0/mlflow-artifacts/presigned/1/a.bin", **bearer(key))
    assert full_path.calls == 1
    assert refused.status == "403 Forbidden"
    assert refused.problem()["code"] == "insufficient_scope"
    assert refused.header_map["x-ratelimit-remaining"] == "3"
    assert len(stand_in.received) == 1


def test_past_the_rate_limit_the_full_path_answers_429_counted_once(
    fast_path, full_path, stand_in, owner, issue_key
):
    _, key = issue_key(owner, ["mlflow:read"], rate_limit_per_minute=2)
    answers = [call(fast_path, "GET", MODEL_READ, query="name=m", **bearer(key)) for _ in range(3)]
    assert [answer.status for answer in answers] == ["200 OK", "200 OK", "429 Too Many Requests"]
    assert full_path.calls == 1
    assert answers[2].problem()["code"] == "rate_limited"
    assert int(answers[2].header_map["retry-after"]) >= 1
    assert answers[2].header_map["x-ratelimit-remaining"] == "0"
    assert len(stand_in.received) == 2


def test_ssl_redirect_is_left_to_the_full_path(proxy_server_settings, stand_in, reader):
    proxy_server_settings.SECURE_SSL_REDIRECT = True
    full_path = FullPath()
    answer = call(ProxyServer(full_path), "GET", MODEL_READ, query="name=m", **bearer(reader))
    assert full_path.calls == 1
    assert answer.status == "301 Moved Permanently"
    assert stand_in.received == []


def test_a_failure_in_the_fast_path_is_a_logged_500_in_the_error_shape(
    fast_path, full_path, stand_in, reader, monkeypatch, caplog
):
    def broken(**_):
        raise RuntimeError("the gate broke")

    monkeypatch.setattr(gate, "admit", broken)
    answer = call(fast_path, "GET", MODEL_READ, query="name=m", **bearer(reader))
    assert answer.status == "500 Internal Server Error"
    assert answer.problem()["code"] == "internal_error"
    assert full_path.calls == 0
    assert stand_in.received == []
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert record.levelname == "ERROR"
    assert record.exc_info[1].args == ("the gate broke",)

"""The MLflow proxy in process (Django's test client), against a stand-in for MLflow
(tests/registry/stand_in.py)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
from django.http import StreamingHttpResponse

from hokusai_site import dns
from hokusai_site.dns import DnsResolver, reset_resolver
from registry import proxy
from tests.conftest import free_port
from tests.registry.stand_in import Reply

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # The cast's users are created with passwords; the default hasher takes half a second.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def bearer(key: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def problem(response) -> dict:
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


# --- Mounts and the scope table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "mlflows"),
    [
        ("/mlflow/", "/"),
        ("/mlflow/static-files/static/js/main.js", "/static-files/static/js/main.js"),
        ("/mlflow/ajax-api/2.0/mlflow/runs/search", "/ajax-api/2.0/mlflow/runs/search"),
        ("/api/mlflow/api/2.0/mlflow/runs/get", "/api/2.0/mlflow/runs/get"),
        ("/api/2.0/mlflow/runs/get", "/api/2.0/mlflow/runs/get"),
        ("/api/2.0/preview/mlflow/runs/get", "/api/2.0/preview/mlflow/runs/get"),
        (
            "/api/2.0/mlflow-artifacts/artifacts/1/a.txt",
            "/api/2.0/mlflow-artifacts/artifacts/1/a.txt",
        ),
        ("/api/3.0/mlflow/traces/search", "/api/3.0/mlflow/traces/search"),
        ("/ajax-api/2.0/mlflow/runs/search", "/ajax-api/2.0/mlflow/runs/search"),
    ],
)
def test_the_prefix_before_mlflows_own_path_is_dropped(ours, mlflows):
    assert proxy.upstream_path(ours) == mlflows


READ, WRITE, ADMIN = "mlflow:read", "mlflow:write", "admin"

# (family, method, MLflow path, scope it needs)
ROUTES = [
    ("tracking read", "GET", "/api/2.0/mlflow/experiments/get-by-name", READ),
    ("tracking read", "GET", "/api/2.0/mlflow/runs/get", READ),
    ("tracking read", "GET", "/api/2.0/mlflow/metrics/get-history", READ),
    ("tracking POST read", "POST", "/api/2.0/mlflow/runs/search", READ),
    ("tracking POST read", "POST", "/api/2.0/mlflow/experiments/search", READ),
    ("tracking POST read", "POST", "/api/2.0/mlflow/logged-models/search", READ),
    ("tracking POST read", "POST", "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval", READ),
    ("tracking write", "POST", "/api/2.0/mlflow/experiments/create", WRITE),
    ("tracking write", "POST", "/api/2.0/mlflow/runs/log-batch", WRITE),
    ("tracking write", "POST", "/api/2.0/mlflow/runs/delete", WRITE),
    ("tracking write", "PATCH", "/api/2.0/mlflow/logged-models/m-1", WRITE),
    ("tracking 3.0", "GET", "/api/3.0/mlflow/traces/tr-1", READ),
    ("tracking 3.0", "POST", "/api/3.0/mlflow/traces/search", READ),
    ("tracking 3.0", "POST", "/api/3.0/mlflow/traces", WRITE),
    ("registry read", "GET", "/api/2.0/mlflow/registered-models/get", READ),
    ("registry read", "GET", "/api/2.0/preview/mlflow/model-versions/get", READ),
    ("registry POST read", "POST", "/api/2.0/mlflow/registered-models/search", READ),
    ("registry POST read", "POST", "/api/2.0/mlflow/model-versions/search", READ),
    ("registry POST read", "POST", "/api/2.0/mlflow/registered-models/get-latest-versions", READ),
    ("registry write", "POST", "/api/2.0/mlflow/registered-models/create", WRITE),
    ("registry write", "POST", "/api/2.0/mlflow/model-versions/create", WRITE),
    ("registry write", "PATCH", "/api/2.0/mlflow/registered-models/update", WRITE),
    ("registry write", "DELETE", "/api/2.0/mlflow/model-versions/delete", WRITE),
    ("artifacts read", "GET", "/api/2.0/mlflow-artifacts/artifacts", READ),
    ("artifacts read", "GET", "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/model.pkl", READ),
    ("artifacts read", "HEAD", "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/model.pkl", READ),
    ("artifacts read", "GET", "/api/2.0/mlflow/artifacts/list", READ),
    ("artifacts read", "POST", "/api/2.0/mlflow/artifacts/presigned-download-url", READ),
    ("artifacts write", "PUT", "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/a.bin", WRITE),
    ("artifacts write", "DELETE", "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/a", WRITE),
    ("artifacts write", "POST", "/api/2.0/mlflow/artifacts/presigned-upload-url", WRITE),
    ("multipart upload", "POST", "/api/2.0/mlflow-artifacts/mpu/create/1/r/a.bin", WRITE),
    ("multipart upload", "GET", "/api/2.0/mlflow-artifacts/presigned/1/r/a.bin", WRITE),
    ("multipart upload", "POST", "/api/2.0/mlflow-artifacts/mpu/complete/1/r/a.bin", WRITE),
    ("multipart upload", "POST", "/api/2.0/mlflow-artifacts/mpu/abort/1/r/a.bin", WRITE),
    ("ajax-api", "GET", "/ajax-api/2.0/mlflow/experiments/get", READ),
    ("ajax-api", "POST", "/ajax-api/2.0/mlflow/runs/search", READ),
    ("ajax-api", "POST", "/ajax-api/2.0/mlflow/runs/create", WRITE),
    ("ajax-api", "POST", "/ajax-api/2.0/mlflow/upload-artifact", WRITE),
    ("ajax-api", "GET", "/ajax-api/2.0/mlflow-artifacts/artifacts/1/a.txt", READ),
    ("ajax-api", "PUT", "/ajax-api/2.0/mlflow-artifacts/artifacts/1/a.txt", WRITE),
    ("ui", "GET", "/", READ),
    ("ui", "GET", "/static-files/static/js/main.js", READ),
    ("ui", "GET", "/get-artifact", READ),
    ("ui", "GET", "/model-versions/get-artifact", READ),
    ("ui", "POST", "/graphql", WRITE),
    ("ui", "POST", "/", WRITE),
    ("mlflow webhooks", "GET", "/api/2.0/mlflow/webhooks", ADMIN),
    ("mlflow webhooks", "POST", "/api/2.0/mlflow/webhooks", ADMIN),
    ("ai gateway", "GET", "/ajax-api/3.0/mlflow/gateway/secrets/get", ADMIN),
    ("ai gateway", "POST", "/ajax-api/2.0/mlflow/gateway-proxy", ADMIN),
    ("ai gateway", "POST", "/gateway/chat/mlflow/invocations", ADMIN),
    ("unknown", "GET", "/something/new", WRITE),
    ("unknown", "POST", "/api/2.0/mlflow/runs/search-and-destroy", WRITE),
]


@pytest.mark.parametrize(("family", "method", "path", "scope"), ROUTES)
def test_scope_table_names_the_scope_of_every_route_family(family, method, path, scope):
    assert proxy.required_scope(method, path) == scope


def _our_path(mlflow_path: str) -> str:
    # Top-level mounts where they exist, the /mlflow/ mount for the rest (UI, /gateway, …).
    top_level = ("/api/2.0/", "/api/3.0/mlflow/", "/ajax-api/2.0/")
    return mlflow_path if mlflow_path.startswith(top_level) else "/mlflow" + mlflow_path


def _send(client, method: str, path: str, **extra):
    return client.generic(method, path, data=b"{}", content_type="application/json", **extra)


@pytest.mark.parametrize(("family", "method", "path", "scope"), ROUTES)
def test_a_read_key_reaches_mlflow_only_on_reads(
    client, stand_in, reader, family, method, path, scope
):
    response = _send(client, method, _our_path(path), **bearer(reader))
    if scope == READ:
        assert response.status_code == 200
        assert [(r.method, r.target) for r in stand_in.received] == [(method, path)]
    else:
        assert response.status_code == 403
        assert problem(response)["code"] == "insufficient_scope"
        assert stand_in.received == []


@pytest.mark.parametrize(("family", "method", "path", "scope"), ROUTES)
def test_a_write_key_reaches_mlflow_on_all_but_operator_routes(
    client, stand_in, writer, family, method, path, scope
):
    response = _send(client, method, _our_path(path), **bearer(writer))
    if scope == ADMIN:
        assert response.status_code == 403
        assert problem(response)["code"] == "insufficient_scope"
        assert stand_in.received == []
    else:
        assert response.status_code == 200
        assert [(r.method, r.target) for r in stand_in.received] == [(method, path)]


def test_staff_reach_mlflows_operator_routes(client, stand_in, staff):
    client.force_login(staff)
    response = client.get("/api/2.0/mlflow/webhooks")
    assert response.status_code == 200
    assert [r.target for r in stand_in.received] == ["/api/2.0/mlflow/webhooks"]


def test_without_credentials_the_answer_is_401_with_a_challenge(client, stand_in):
    response = client.get("/api/2.0/mlflow/experiments/search")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="hokusai"'
    assert problem(response)["code"] == "authentication_required"
    assert stand_in.received == []


def test_the_mlflow_clients_basic_credentials_are_accepted(client, stand_in, reader):
    basic = base64.b64encode(f"anyone:{reader}".encode()).decode()
    response = client.get("/api/2.0/mlflow/experiments/search", HTTP_AUTHORIZATION=f"Basic {basic}")
    assert response.status_code == 200
    assert len(stand_in.received) == 1


def test_proxied_answers_count_against_the_keys_rate_limit(client, stand_in, owner, issue_key):
    _, key = issue_key(owner, ["mlflow:read"], rate_limit_per_minute=2)
    first = client.get("/api/2.0/mlflow/experiments/search", **bearer(key))
    client.get("/api/2.0/mlflow/experiments/search", **bearer(key))
    refused = client.get("/api/2.0/mlflow/experiments/search", **bearer(key))
    assert first["X-RateLimit-Limit"] == "2"
    assert first["X-RateLimit-Remaining"] == "1"
    assert refused.status_code == 429
    assert problem(refused)["code"] == "rate_limited"
    assert refused["Retry-After"]
    assert len(stand_in.received) == 2


# --- What MLflow receives and what comes back --------------------------------------------------


def test_credentials_and_hop_by_hop_headers_stay_here_and_identity_headers_are_ours(
    client, stand_in, owner, issue_key
):
    api_key, key = issue_key(owner, ["mlflow:read", "mlflow:write"])
    response = client.post(
        "/api/2.0/mlflow/runs/log-batch?run_id=r1&x=%20y",
        data=b'{"run_id": "r1", "metrics": []}',
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
        HTTP_X_API_KEY=key,
        HTTP_COOKIE="sessionid=abc; csrftoken=def",
        HTTP_X_ETH_ADDRESS="0xabc",
        HTTP_X_ETH_SIGNATURE="0xdef",
        HTTP_CONNECTION="keep-alive, X-Private-Hop",
        HTTP_X_PRIVATE_HOP="secret",
        HTTP_KEEP_ALIVE="timeout=5",
        HTTP_TE="trailers",
        HTTP_UPGRADE="websocket",
        HTTP_PROXY_AUTHORIZATION="Basic Zm9vOmJhcg==",
        HTTP_X_HOKUSAI_CALLER="user:admin",
        HTTP_X_FORWARDED_FOR="6.6.6.6",
        HTTP_FORWARDED="for=6.6.6.6",
        HTTP_ORIGIN="http://testserver",
        HTTP_X_CUSTOM="kept",
        HTTP_X_REQUEST_ID="req-proxy-1",
    )
    assert response.status_code == 200
    [received] = stand_in.received
    sent = received.headers
    for name in (
        "authorization",
        "x-api-key",
        "cookie",
        "x-eth-address",
        "x-eth-signature",
        "connection",
        "x-private-hop",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "forwarded",
        "origin",
    ):
        assert name not in sent, name
    assert key not in json.dumps(sent)
    assert sent["host"] == stand_in.url.removeprefix("http://")
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-host"] == "testserver"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-hokusai-caller"] == f"api_key:{api_key.current_prefix}"
    assert sent["x-request-id"] == "req-proxy-1" == response["X-Request-ID"]
    assert sent["x-custom"] == "kept"
    assert sent["content-type"] == "application/json"
    assert received.target == "/api/2.0/mlflow/runs/log-batch?run_id=r1&x=%20y"
    assert received.body == b'{"run_id": "r1", "metrics": []}'


def test_mlflows_answer_comes_back_without_its_hop_by_hop_headers(client, stand_in, reader):
    stand_in.reply = Reply(
        status=201,
        headers=[
            ("Content-Type", "text/csv; charset=utf-8"),
            ("Connection", "X-Upstream-Hop"),
            ("X-Upstream-Hop", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authenticate", "Basic"),
            ("Set-Cookie", "mlflow=1; Path=/"),
            ("X-Mlflow-Header", "kept"),
            ("Cache-Control", "no-store"),
        ],
        body=b"a,b\n1,2\n",
    )
    response = client.get("/api/2.0/mlflow/runs/get?run_id=1", **bearer(reader))
    assert response.status_code == 201
    assert response.streaming
    assert body_of(response) == b"a,b\n1,2\n"
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Length"] == "8"
    assert response["X-Mlflow-Header"] == "kept"
    assert response["Cache-Control"] == "no-store"
    for name in ("Connection", "X-Upstream-Hop", "Keep-Alive", "Proxy-Authenticate", "Set-Cookie"):
        assert not response.has_header(name), name
    assert response["X-RateLimit-Limit"]


def test_mlflows_error_bodies_pass_through_unchanged(client, stand_in, reader):
    error = b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Run \'x\' not found."}'
    stand_in.reply = Reply(status=404, body=error)
    response = client.get("/api/2.0/mlflow/runs/get?run_id=x", **bearer(reader))
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert body_of(response) == error


def test_redirects_are_passed_back_never_followed(client, stand_in, reader):
    stand_in.reply = Reply(
        status=302, headers=[("Location", "http://127.0.0.1:1/elsewhere")], body=b""
    )
    response = client.get("/mlflow/", **bearer(reader))
    assert response.status_code == 302
    assert response["Location"] == "http://127.0.0.1:1/elsewhere"
    assert len(stand_in.received) == 1


def test_large_answers_stream_in_pieces(client, stand_in, reader):
    payload = bytes(range(256)) * 4096 * 5  # 5 MiB
    stand_in.reply = Reply(headers=[("Content-Type", "application/octet-stream")], body=payload)
    response = client.get("/api/2.0/mlflow-artifacts/artifacts/1/big.bin", **bearer(reader))
    pieces = list(response.streaming_content)
    assert len(pieces) >= len(payload) // proxy.RELAY_CHUNK_BYTES
    assert max(len(piece) for piece in pieces) <= proxy.RELAY_CHUNK_BYTES
    assert b"".join(pieces) == payload


def test_any_accept_header_is_mlflows_to_answer(client, stand_in, reader):
    response = client.get(
        "/api/2.0/mlflow-artifacts/artifacts/1/a.bin",
        HTTP_ACCEPT="application/octet-stream",
        **bearer(reader),
    )
    assert response.status_code == 200
    assert stand_in.received[0].headers["accept"] == "application/octet-stream"


# --- Refused paths and locations ---------------------------------------------------------------

TRAVERSALS = [
    "/api/2.0/mlflow-artifacts/artifacts/1/../../etc/passwd",
    "/api/2.0/mlflow-artifacts/artifacts/1/%2e%2e/%2e%2e/etc/passwd",
    "/api/2.0/mlflow-artifacts/artifacts/1/%2E%2e%2Fetc%2Fpasswd",
    "/api/2.0/mlflow-artifacts/artifacts/1/..%2f..%2fetc%2fpasswd",
    "/api/2.0/mlflow-artifacts/artifacts/1/%252e%252e/%252e%252e/etc/passwd",
    "/api/2.0/mlflow-artifacts/artifacts/1/%25252e%25252e%25252fetc",
    "/api/2.0/mlflow-artifacts/artifacts/1/..%5c..%5cwindows",
    "/api/2.0/mlflow-artifacts/artifacts/1/%5cwindows",
    "/api/2.0/mlflow-artifacts/artifacts//etc/passwd",
    "/api/2.0/mlflow-artifacts/artifacts/%2Fetc%2Fpasswd",
    "/api/2.0/mlflow-artifacts/artifacts/%252Fetc%252Fpasswd",
    "/api/2.0/mlflow-artifacts/artifacts/C:%5cwindows%5cwin.ini",
    "/api/2.0/mlflow-artifacts/artifacts/1/a%00.txt",
    "/api/2.0/mlflow-artifacts/mpu/create/1/../../x.bin",
    "/api/2.0/mlflow-artifacts/presigned/%2e%2e/x.bin",
    "/ajax-api/2.0/mlflow-artifacts/artifacts/1/%2e%2e/%2e%2e/x",
    "/mlflow/ajax-api/2.0/mlflow-artifacts/artifacts/%2fetc/passwd",
    "/api/mlflow/api/2.0/mlflow-artifacts/artifacts/1/..%252f..%252fx",
    "/api/2.0/mlflow-artifacts/artifacts?path=../../etc",
    "/api/2.0/mlflow-artifacts/artifacts?path=%2e%2e%2f%2e%2e",
    "/api/2.0/mlflow-artifacts/artifacts?path=%252e%252e%252fetc",
    "/api/2.0/mlflow-artifacts/artifacts?path=/etc",
    "/api/2.0/mlflow/artifacts/list?run_id=abc&path=..%2F..%2Fsecrets",
    "/api/2.0/mlflow/artifacts/list?run_id=..%2F..&path=model",
    "/api/2.0/mlflow/artifacts/list?run_id=abc&path=a%5Cb",
    "/mlflow/get-artifact?run_uuid=abc&path=../../../etc/passwd",
    "/mlflow/get-artifact?run_uuid=abc&path=%2Fetc%2Fpasswd",
    "/mlflow/model-versions/get-artifact?name=m&version=1&path=..%2f..%2fx",
    "/mlflow/ajax-api/2.0/mlflow/upload-artifact?run_uuid=abc&path=../../x",
    "/ajax-api/2.0/mlflow/logged-models/m-1/artifacts/files?artifact_file_path=../../x",
    "/api/2.0/mlflow/runs/get/../../../etc/passwd",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_artifact_paths_that_leave_the_artifact_root_are_refused(client, stand_in, writer, path):
    response = _send(client, "GET", path, **bearer(writer))
    assert response.status_code == 400
    assert problem(response)["code"] == "mlflow_path_refused"
    assert stand_in.received == []


@pytest.mark.parametrize(
    ("path", "mlflow_target"),
    [
        (
            "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/model..v2/a%20b.pkl",
            "/api/2.0/mlflow-artifacts/artifacts/1/r/artifacts/model..v2/a%20b.pkl",
        ),
        (
            "/api/2.0/mlflow-artifacts/artifacts/1/.hidden/file",
            "/api/2.0/mlflow-artifacts/artifacts/1/.hidden/file",
        ),
        (
            "/api/2.0/mlflow/artifacts/list?run_id=abc&path=model%2Fdata",
            "/api/2.0/mlflow/artifacts/list?run_id=abc&path=model%2Fdata",
        ),
        (
            "/mlflow/get-artifact?run_uuid=abc&path=m/x.txt",
            "/get-artifact?run_uuid=abc&path=m/x.txt",
        ),
    ],
)
def test_ordinary_artifact_paths_reach_mlflow_as_sent(
    client, stand_in, reader, path, mlflow_target
):
    response = client.get(path, **bearer(reader))
    assert response.status_code == 200
    assert [r.target for r in stand_in.received] == [mlflow_target]


DANGEROUS_BODIES = [
    ("experiments/create", {"name": "e", "artifact_location": "file:///etc"}),
    ("experiments/create", {"name": "e", "artifact_location": "/var/lib/mlflow"}),
    ("experiments/create", {"name": "e", "artifact_location": "relative/dir"}),
    ("experiments/create", {"name": "e", "artifact_location": "./here"}),
    ("experiments/create", {"name": "e", "artifact_location": "../up"}),
    ("experiments/create", {"name": "e", "artifact_location": "mlflow-artifacts:/../../x"}),
    ("experiments/create", {"name": "e", "artifact_location": "mlflow-artifacts:/%252e%252e/x"}),
    ("experiments/create", {"name": "e", "artifact_location": "mlflow-artifacts://evil:80/x"}),
    ("experiments/create", {"name": "e", "artifact_location": "s3://someone-elses-bucket/x"}),
    ("experiments/create", {"name": "e", "artifact_location": "http://169.254.169.254/latest"}),
    ("experiments/create", {"name": "e", "artifact_location": "C:\\mlruns"}),
    ("experiments/create", {"name": "e", "artifactLocation": "file:///etc"}),
    ("registered-models/create", {"name": "m", "storage_location": "file:///tmp/m"}),
    ("registered-models/create", {"name": "m", "storageLocation": "hdfs://nn/x"}),
    ("model-versions/create", {"name": "m", "source": "file:///etc/passwd"}),
    ("model-versions/create", {"name": "m", "source": "/tmp/model"}),
    ("model-versions/create", {"name": "m", "source": "runs:/abc/../../../etc"}),
    ("model-versions/create", {"name": "m", "source": "runs://other-host/abc/model"}),
    ("model-versions/create", {"name": "m", "source": "models:/..%2f..%2fx"}),
    ("model-versions/create", {"name": "m", "source": "https://evil.example/model"}),
    ("model-versions/create", {"name": "m", "source": "mlflow-artifacts:/1/a\\..\\b"}),
]


@pytest.mark.parametrize(("endpoint", "body"), DANGEROUS_BODIES)
@pytest.mark.parametrize(
    "prefix", ["/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/", "/api/mlflow/api/2.0/preview/mlflow/"]
)
def test_locations_on_local_files_or_other_hosts_are_refused(
    client, stand_in, writer, prefix, endpoint, body
):
    response = client.post(
        prefix + endpoint, body, content_type="application/json", **bearer(writer)
    )
    assert response.status_code == 400
    assert problem(response)["code"] == "mlflow_location_refused"
    assert stand_in.received == []


@pytest.mark.parametrize(
    "raw",
    [
        # A repeated key: MLflow keeps the last one.
        b'{"name": "e", "artifact_location": "mlflow-artifacts:/1", "artifact_location": "file:///"}',
        # JSON inside a JSON string: MLflow decodes it twice.
        json.dumps(json.dumps({"name": "e", "artifact_location": "file:///etc"})).encode(),
        b"not json",
    ],
)
def test_location_checks_see_through_tricks_with_the_json(client, stand_in, writer, raw):
    response = client.post(
        "/api/2.0/mlflow/experiments/create", raw, content_type="application/json", **bearer(writer)
    )
    assert response.status_code == 400
    assert problem(response)["code"] == "mlflow_location_refused"
    assert stand_in.received == []


@pytest.mark.parametrize(
    ("endpoint", "body"),
    [
        ("experiments/create", {"name": "e"}),
        ("experiments/create", {"name": "e", "artifact_location": "mlflow-artifacts:/team/e"}),
        (
            "model-versions/create",
            {"name": "m", "source": "runs:/abc123/model", "run_id": "abc123"},
        ),
        ("model-versions/create", {"name": "m", "source": "models:/m-0123456789abcdef"}),
        (
            "model-versions/create",
            {"name": "m", "source": "mlflow-artifacts:/1/models/m-1/artifacts"},
        ),
        ("model-versions/create", {"name": "prompt", "source": "dummy-source"}),
        ("registered-models/create", {"name": "m", "tags": [{"key": "k", "value": "file:///x"}]}),
    ],
)
def test_safe_locations_reach_mlflow_byte_for_byte(client, stand_in, writer, endpoint, body):
    raw = json.dumps(body, indent=1).encode()
    response = client.post(
        f"/api/2.0/mlflow/{endpoint}", raw, content_type="application/json", **bearer(writer)
    )
    assert response.status_code == 200
    [received] = stand_in.received
    assert received.body == raw
    assert received.headers["content-length"] == str(len(raw))


# --- Sizes, an unreachable or slow MLflow ------------------------------------------------------


def test_an_upload_declared_too_large_is_413_before_it_is_read(client, stand_in, writer, settings):
    settings.MLFLOW_PROXY_MAX_UPLOAD_BYTES = 1000
    response = client.put(
        "/api/2.0/mlflow-artifacts/artifacts/1/a.bin",
        b"x" * 1001,
        content_type="application/octet-stream",
        **bearer(writer),
    )
    assert response.status_code == 413
    assert problem(response)["code"] == "request_too_large"
    assert stand_in.received == []
    accepted = client.put(
        "/api/2.0/mlflow-artifacts/artifacts/1/a.bin",
        b"x" * 1000,
        content_type="application/octet-stream",
        **bearer(writer),
    )
    assert accepted.status_code == 200
    assert stand_in.received[0].body == b"x" * 1000


def test_a_location_body_larger_than_a_json_body_may_be_is_413(client, stand_in, writer, settings):
    settings.MAX_REQUEST_BODY_BYTES = 100
    body = {"name": "e" * 200}
    response = client.post(
        "/api/2.0/mlflow/experiments/create",
        body,
        content_type="application/json",
        **bearer(writer),
    )
    assert response.status_code == 413
    assert problem(response)["code"] == "request_too_large"
    assert stand_in.received == []


def test_mlflow_down_is_502_within_the_connect_timeout(client, reader, settings):
    settings.MLFLOW_TRACKING_URI = f"http://127.0.0.1:{free_port()}"
    settings.MLFLOW_PROXY_CONNECT_TIMEOUT = 2.0
    reset_resolver()
    started = time.monotonic()
    response = client.get("/api/2.0/mlflow/experiments/search", **bearer(reader))
    assert time.monotonic() - started < 2.0
    assert response.status_code == 502
    assert problem(response)["code"] == "mlflow_unavailable"
    reset_resolver()


def test_mlflows_host_not_resolving_is_502(client, reader, settings, monkeypatch):
    def no_dns(host: str) -> list[str]:
        raise OSError("no DNS today")

    settings.MLFLOW_TRACKING_URI = "http://mlflow.internal:5000"
    monkeypatch.setattr(dns, "_resolver", DnsResolver(lookup=no_dns))
    response = client.get("/api/2.0/mlflow/experiments/search", **bearer(reader))
    assert response.status_code == 502
    assert problem(response)["code"] == "mlflow_unavailable"


def test_mlflow_answering_too_slowly_is_504_after_the_read_timeout(
    client, stand_in, reader, settings
):
    settings.MLFLOW_PROXY_READ_TIMEOUT = 0.5
    stand_in.reply = Reply(delay=3.0)
    started = time.monotonic()
    response = client.get("/api/2.0/mlflow/experiments/search", **bearer(reader))
    assert 0.5 <= time.monotonic() - started < 2.5
    assert response.status_code == 504
    assert problem(response)["code"] == "mlflow_timeout"
    assert len(stand_in.received) == 1


class _UnreadAnswer:
    closed = False

    def chunks(self, size: int) -> Iterator[bytes]:
        yield b"never read"

    def close(self) -> None:
        self.closed = True


def test_an_answer_whose_body_is_never_read_still_ends_the_exchange_with_mlflow():
    # given an answer relayed as a response that its server never iterated (the client left)
    upstream = _UnreadAnswer()
    response = StreamingHttpResponse(proxy.Relay(upstream))

    # when the server is done with it
    response.close()

    # then the exchange is closed, not left to the garbage collector
    assert upstream.closed


# --- The web UI with a staff session -----------------------------------------------------------


def test_staff_open_the_mlflow_ui_with_their_admin_session(client, stand_in, staff):
    stand_in.reply = Reply(headers=[("Content-Type", "text/html")], body=b"<html>MLflow</html>")
    client.force_login(staff)
    response = client.get("/mlflow/", HTTP_ACCEPT="text/html")
    assert response.status_code == 200
    assert body_of(response) == b"<html>MLflow</html>"
    [received] = stand_in.received
    assert received.target == "/"
    assert received.headers["x-hokusai-caller"] == "user:operator"
    assert "cookie" not in received.headers


def test_a_browser_without_a_session_is_sent_to_the_admin_login(client, stand_in):
    response = client.get("/mlflow/", HTTP_ACCEPT="text/html,application/xhtml+xml")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/mlflow/"
    assert stand_in.received == []


def test_mlflow_without_its_slash_redirects_so_the_uis_relative_urls_work(client):
    response = client.get("/mlflow")
    assert response.status_code == 302
    assert response["Location"] == "mlflow/"


def test_a_session_without_staff_rights_has_no_mlflow_scope(client, stand_in, outsider):
    client.force_login(outsider)
    response = client.get("/mlflow/ajax-api/2.0/mlflow/experiments/search")
    assert response.status_code == 403
    assert problem(response)["code"] == "insufficient_scope"
    assert stand_in.received == []


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_ORIGIN": "http://testserver"},
        {"HTTP_SEC_FETCH_SITE": "same-origin"},
        {"HTTP_ORIGIN": "http://testserver", "HTTP_SEC_FETCH_SITE": "same-origin"},
        {},  # an older browser: the JSON content type alone needs a preflight cross-site
    ],
)
def test_the_uis_json_calls_pass_the_csrf_check(client, stand_in, staff, headers):
    client.force_login(staff)
    response = client.post(
        "/mlflow/ajax-api/2.0/mlflow/runs/create",
        {"experiment_id": "1"},
        content_type="application/json; charset=utf-8",
        **headers,
    )
    assert response.status_code == 200
    assert len(stand_in.received) == 1


@pytest.mark.parametrize(
    ("content_type", "headers"),
    [
        ("application/x-www-form-urlencoded", {"HTTP_ORIGIN": "https://evil.example"}),
        ("application/json", {"HTTP_ORIGIN": "https://evil.example"}),
        ("application/json", {"HTTP_ORIGIN": "null"}),
        ("application/json", {"HTTP_SEC_FETCH_SITE": "cross-site"}),
        ("application/json", {"HTTP_SEC_FETCH_SITE": "same-site"}),
        ("application/x-www-form-urlencoded", {}),
        ("multipart/form-data; boundary=x", {}),
        ("text/plain", {}),
        ("", {}),
    ],
)
def test_cross_site_posts_with_the_session_cookie_are_refused(
    client, stand_in, staff, content_type, headers
):
    client.force_login(staff)
    response = client.post(
        "/mlflow/ajax-api/2.0/mlflow/experiments/delete",
        b'{"experiment_id": "1"}',
        content_type=content_type,
        **headers,
    )
    assert response.status_code == 403
    assert problem(response)["code"] == "csrf_failed"
    assert stand_in.received == []


def test_api_keys_need_no_csrf_proof(client, stand_in, writer):
    response = client.post(
        "/api/2.0/mlflow/experiments/delete",
        b'{"experiment_id": "1"}',
        content_type="text/plain",
        HTTP_ORIGIN="https://evil.example",
        **bearer(writer),
    )
    assert response.status_code == 200
    assert len(stand_in.received) == 1

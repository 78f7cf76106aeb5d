"""The authenticated MLflow proxy: MLflow's REST API, artifact service and web UI behind our
authentication, scopes, rate limits and error shape (DESIGN.md, "Routes").

    /mlflow/<rest>, /api/mlflow/<rest>       ->  /<rest>     (the web UI is /mlflow/)
    /api/2.0/mlflow/…, /api/2.0/preview/mlflow/…, /api/2.0/mlflow-artifacts/…,
    /api/3.0/mlflow/…, /ajax-api/2.0/…       ->  unchanged

Each route needs `mlflow:read`, `mlflow:write` or `admin`, as SCOPE_TABLE says. Bodies and
answers stream in pieces (CHUNK_BYTES, RELAY_CHUNK_BYTES), so artifacts of any size pass without
being held in memory;
only the JSON bodies of the few routes that name storage locations are read whole and checked.
Requests are forwarded through registry.mlflow (the DNS resolver, one keep-alive pool), with our
credentials removed and the caller named in X-Hokusai-Caller; redirects are passed back, never
followed. MLflow's own answers, errors included, pass through unchanged; when MLflow cannot be
reached the answer is ours: 502, or 504 on a timeout. On the proxy server, reads with an API key
skip Django's request cycle through this module's functions (registry.proxy_fast_path).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, QueryDict, StreamingHttpResponse
from django.urls import re_path, reverse
from django.utils.encoding import escape_uri_path
from django.views.generic import RedirectView
from pyreqwest import exceptions as client_errors
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.views import APIView

from authkeys import scopes
from authkeys.authentication import ApiKeyAuthentication, EthSignatureAuthentication
from authkeys.permissions import HasScopes
from authkeys.principals import Caller, caller_of
from hokusai_site.dns import DnsResolutionError
from hokusai_site.errors import ApplicationError
from hokusai_site.middleware import SettingValue
from registry import mlflow

logger = logging.getLogger(__name__)

# Large enough that a fast upload costs little Python per byte, small enough that a few
# dozen transfers at once stay a few MiB.
CHUNK_BYTES = 256 * 1024
# Answers are read as pyreqwest buffers them (64 KiB): larger reads are allocated past glibc's
# mmap threshold, and each worker's RSS rose by ~20 MiB on its first large download and stayed.
RELAY_CHUNK_BYTES = 64 * 1024

# --- Which scope each route needs ------------------------------------------------------------

_REST = r"/(?:ajax-)?api/[23]\.0/(?:preview/)?mlflow"
_ARTIFACTS = r"/(?:ajax-)?api/2\.0/mlflow-artifacts"
_ANY_METHOD = "GET HEAD POST PUT PATCH DELETE"
# MLflow's reads sent as POST: searches and bulk reads whose arguments do not fit a URL.
_POST_READS = (
    "experiments/search",
    "experiments/search-datasets",
    "runs/search",
    "logged-models/search",
    "registered-models/search",
    "registered-models/get-latest-versions",
    "model-versions/search",
    "metrics/get-history-bulk-interval",
    "artifacts/presigned-download-url",
    "traces/search",
    "traces/batchGetInfos",
    "traces/metrics",
    "traces/calculate-filter-correlation",
    "datasets/search",
    "issues/search",
    "prompt-optimization/jobs/search",
)


@dataclass(frozen=True)
class RouteRule:
    family: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    scope: str


def _rule(family: str, methods: str, pattern: str, scope: str) -> RouteRule:
    return RouteRule(family, frozenset(methods.split()), re.compile(pattern), scope)


READ, WRITE, ADMIN = scopes.MLFLOW_READ, scopes.MLFLOW_WRITE, scopes.ADMIN

# The MLflow path (prefix dropped) and method decide; the first matching rule wins and a route
# no rule names needs mlflow:write.
SCOPE_TABLE: tuple[RouteRule, ...] = (
    # MLflow's own webhooks and AI gateway make the tracking server call hosts of the caller's
    # choosing with secrets it stores: operators only.
    _rule("mlflow webhooks", _ANY_METHOD, rf"{_REST}/webhooks(?:/.*)?", ADMIN),
    _rule("ai gateway", _ANY_METHOD, rf"{_REST}/gateway(?:-proxy|/.*)?|/gateway/.*", ADMIN),
    # A GET, but it hands out URLs to upload the parts of a multipart upload.
    _rule("artifacts: multipart", "GET HEAD", rf"{_ARTIFACTS}/presigned/.+", WRITE),
    _rule("artifacts: download, list", "GET HEAD", rf"{_ARTIFACTS}/artifacts(?:/.*)?", READ),
    _rule("artifacts: upload, delete", "PUT DELETE", rf"{_ARTIFACTS}/artifacts/.+", WRITE),
    _rule("artifacts: multipart", "POST", rf"{_ARTIFACTS}/mpu/(?:create|complete|abort)/.+", WRITE),
    _rule("rest: POST reads", "POST", rf"{_REST}/(?:{'|'.join(_POST_READS)})", READ),
    _rule("rest: reads", "GET HEAD", rf"{_REST}/.+", READ),
    _rule("rest: writes", "POST PUT PATCH DELETE", rf"{_REST}/.+", WRITE),
    _rule(
        "ui: pages and downloads",
        "GET HEAD",
        r"/|/static-files/.+|/get-artifact|/model-versions/get-artifact|/health|/version",
        READ,
    ),
    # Read-only today, but its schema may grow mutations; the UI's staff session has every scope.
    _rule("ui: graphql", "GET POST", r"/graphql", WRITE),
)


def required_scope(method: str, path: str) -> str:
    for rule in SCOPE_TABLE:
        if method in rule.methods and rule.pattern.fullmatch(path):
            return rule.scope
    return WRITE


# --- Mounts ------------------------------------------------------------------------------------

# Where our paths lead to MLflow (a path without its leading slash starts with one of these).
MOUNTS = (
    r"(?:mlflow|api/mlflow|api/2\.0/(?:preview/)?mlflow|api/2\.0/mlflow-artifacts"
    r"|api/3\.0/mlflow|ajax-api/2\.0)/"
)

_DROPPED_PREFIX = re.compile(r"^/(?:api/)?mlflow(?=/)")


def upstream_path(path: str) -> str:
    """MLflow's path for one of ours: /mlflow and /api/mlflow are dropped, the rest is kept."""
    return _DROPPED_PREFIX.sub("", path, count=1)


# --- Refused paths and locations ---------------------------------------------------------------

_ARTIFACT_PATH = re.compile(_ARTIFACTS + r"/(?:artifacts|mpu/\w+|presigned)/(?P<path>.*)")
# Query parameters of artifact routes that name an artifact path, or the run or trace whose
# artifact directory the path is resolved in.
_PATH_PARAMETERS = (
    "path",
    "artifact_path",
    "artifact_file_path",
    "artifact_directory_path",
    "run_id",
    "run_uuid",
    "request_id",
)
# JSON bodies that name a storage location: small, so read whole, checked and re-sent.
_LOCATION_ROUTES = re.compile(
    _REST + r"/(?:experiments/create|registered-models/create|model-versions/create)"
)
# Field names with underscores removed and lower-cased: protobuf's JSON parser also accepts
# the camelCase spelling (artifactLocation).
_LOCATION_FIELDS = frozenset({"source", "artifactlocation", "storagelocation"})
# Locations on MLflow's own artifact service, by run or by logged model.
_LOCATION_SCHEMES = frozenset({"runs", "models", "mlflow-artifacts"})
# What MLflow's senders put in `source` of a prompt version, which has no artifacts.
_PROMPT_SOURCES = frozenset({"dummy-source", "prompt-template"})


def _fully_decoded(value: str) -> str:
    # %252e%252e is %2e%2e is "..": decode until nothing changes, as hardened MLflow does.
    while (decoded := unquote(value)) != value:
        value = decoded
    return value


def _traverses(value: str) -> bool:
    decoded = _fully_decoded(value)
    return "\\" in decoded or "\x00" in decoded or ".." in decoded.split("/")


def _unsafe_artifact_path(value: str) -> bool:
    """`..` (in any encoding), backslashes, NUL, absolute paths and drive letters."""
    decoded = _fully_decoded(value)
    return _traverses(decoded) or decoded.startswith("/") or bool(re.match(r"[A-Za-z]:", decoded))


def refused_path(path: str, query_string: str) -> str | None:
    """Why MLflow must not see this path or query, or None."""
    if _traverses(path):
        return "The path contains '..', a backslash or a NUL byte."
    match = _ARTIFACT_PATH.fullmatch(path)
    if match and _unsafe_artifact_path(match["path"]):
        return "The artifact path must be relative and stay inside the artifact root."
    # Every route that addresses artifacts says so in its path: mlflow-artifacts/…,
    # artifacts/list, get-artifact, upload-artifact, get-trace-artifact, logged-models/…/artifacts.
    if "artifact" in path:
        query = QueryDict(query_string)
        for name in _PATH_PARAMETERS:
            if any(_unsafe_artifact_path(value) for value in query.getlist(name)):
                return f"The {name} parameter must be a relative path inside the artifact root."
    return None


def _unsafe_location(value: Any) -> bool:
    if not isinstance(value, str) or value in _PROMPT_SOURCES or value == "":
        return False  # MLflow refuses non-strings itself; empty means its default location
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return True
    return parts.scheme not in _LOCATION_SCHEMES or bool(parts.netloc) or _traverses(value)


class _Pairs(list):
    """A JSON object as its (key, value) pairs: a repeated key must not hide a value."""


def refused_location(body: bytes) -> str | None:
    """Why a JSON body's storage location is refused: a local file, another host, or `..`."""
    try:
        document = json.loads(body, object_pairs_hook=_Pairs)
        if isinstance(document, str):
            # MLflow decodes a JSON string holding JSON a second time (old clients sent that).
            document = json.loads(document, object_pairs_hook=_Pairs)
    except ValueError:
        return "The body is not JSON."
    if not isinstance(document, _Pairs):
        return None  # not an object: MLflow refuses it itself
    for key, value in document:
        if key.replace("_", "").lower() in _LOCATION_FIELDS and _unsafe_location(value):
            return (
                f"{key} must be a runs:/, models:/ or mlflow-artifacts:/ URI without a host or "
                f"'..'; got {value!r}."
            )
    return None


# --- Headers -----------------------------------------------------------------------------------

# Hop-by-hop headers (RFC 9110, 7.6.1) describe one connection, never the next one.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Our credentials stay with us; Host, framing and forwarding headers are ours to set; Origin was
# checked here (MLflow would refuse ours as cross-origin); Expect is answered by our server.
_NOT_FORWARDED = _HOP_BY_HOP | {
    "host",
    "content-length",
    "authorization",
    "cookie",
    "x-api-key",
    "origin",
    "expect",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
    "x-request-id",
}
# Ethereum credentials, and our own identity headers, which only we may set.
_NOT_FORWARDED_PREFIXES = ("x-eth-", "x-hokusai-")
# MLflow sets no cookies; any it did would land on our domain beside the session cookie.
_NOT_RETURNED = _HOP_BY_HOP | {"set-cookie"}


def _connection_named(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",") if name.strip()}


def forwarded_headers(
    meta: dict, *, caller: Caller, client_ip: str | None, host: str, scheme: str, request_id: str
) -> dict[str, str]:
    """The headers MLflow gets: the client's (request.META or a WSGI environ) without ours,
    our identity and forwarding headers added."""
    dropped = _NOT_FORWARDED | _connection_named(meta.get("HTTP_CONNECTION", ""))
    headers = {}
    for key, value in meta.items():
        if key.startswith("HTTP_"):
            name = key[5:].replace("_", "-").lower()
        elif key == "CONTENT_TYPE" and value:
            name = "content-type"
        else:
            continue
        if name not in dropped and not name.startswith(_NOT_FORWARDED_PREFIXES):
            headers[name] = value
    headers.update(
        {
            "x-forwarded-for": client_ip or "",
            "x-forwarded-host": host,
            "x-forwarded-proto": scheme,
            # Percent-encoded: a username may hold characters a header cannot.
            "x-hokusai-caller": quote(f"{caller.kind}:{caller.label}", safe=":@.+-_"),
            "x-request-id": request_id,
        }
    )
    return headers


def returned_headers(upstream: mlflow.StreamedResponse) -> dict[str, str]:
    headers = upstream.headers
    dropped = _NOT_RETURNED | _connection_named(", ".join(headers.getall("connection")))
    # A name repeats once per value; its values are joined.
    return {
        name: ", ".join(headers.getall(name))
        for name in dict.fromkeys(headers)
        if name.lower() not in dropped
    }


# --- Bodies ------------------------------------------------------------------------------------


class BodyTooLarge(ApplicationError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            "request_too_large",
            f"The request body is larger than {limit} bytes, the most this route accepts.",
            status=413,
        )


class BodyIncomplete(ApplicationError):
    def __init__(self) -> None:
        super().__init__("body_incomplete", "The request body ended before its declared length.")


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...


def _chunks(stream: _Readable, *, length: int | None, limit: int) -> Iterator[bytes]:
    """The body as it arrives; stops one that grows past `limit` or ends before `length`."""
    received = 0
    while True:
        try:
            chunk = stream.read(CHUNK_BYTES)
        except OSError as exc:  # the client went away mid-body
            raise BodyIncomplete() from exc
        if not chunk:
            break
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(limit)
        yield chunk
    if length is not None and received < length:
        raise BodyIncomplete()


class Relay:
    """MLflow's answer as our response's body. Django closes every response once its server is
    done with it, and that ends the exchange with MLflow: also for a body never read (a client
    gone before the first byte), where a generator's `finally` would not run."""

    def __init__(self, upstream: mlflow.StreamedResponse) -> None:
        self._upstream = upstream

    def __iter__(self) -> Iterator[bytes]:
        return self._upstream.chunks(RELAY_CHUNK_BYTES)

    def close(self) -> None:
        self._upstream.close()


# --- Authentication for the web UI -------------------------------------------------------------

# Bodies a cross-site page may POST without a CORS preflight (which we never grant).
_FORM_CONTENT_TYPES = frozenset(
    {"", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain"}
)


def csrf_refusal(request) -> str | None:
    """Why an unsafe request with a session cookie may come from another site, or None.

    MLflow's UI sends no CSRF token, so its requests prove their origin otherwise: browsers set
    Origin and Sec-Fetch-Site and pages cannot forge them. Without either (old browsers), only
    requests a cross-site page cannot send without a preflight pass: methods other than POST, or
    a POST whose Content-Type is not a form's (the UI's ajax calls send JSON).
    """
    origin = request.META.get("HTTP_ORIGIN")
    fetch_site = request.META.get("HTTP_SEC_FETCH_SITE")
    own_origin = f"{request.scheme}://{request.get_host()}"
    if origin is not None and origin not in (own_origin, *settings.CSRF_TRUSTED_ORIGINS):
        return f"Origin {origin} is not this site."
    if fetch_site is not None and fetch_site != "same-origin":
        return f"Sec-Fetch-Site is {fetch_site}."
    if origin is not None or fetch_site is not None:
        return None  # the browser says the request comes from our own pages
    content_type = request.META.get("CONTENT_TYPE", "").partition(";")[0].strip().lower()
    if request.method == "POST" and content_type in _FORM_CONTENT_TYPES:
        return "A POST with a session but without Origin must not have a form's Content-Type."
    return None


class ProxySessionAuthentication(SessionAuthentication):
    """The admin session (for the MLflow UI), with csrf_refusal in place of Django's token."""

    def enforce_csrf(self, request) -> None:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return
        reason = csrf_refusal(request)
        if reason is not None:
            raise exceptions.PermissionDenied(f"CSRF failed: {reason}", code="csrf_failed")


# --- The view ----------------------------------------------------------------------------------


class MlflowProxyApi(APIView):
    authentication_classes = [
        ApiKeyAuthentication,
        EthSignatureAuthentication,
        ProxySessionAuthentication,
    ]
    permission_classes = [HasScopes]
    http_method_names = ["get", "head", "post", "put", "patch", "delete"]
    max_body_bytes = SettingValue("MLFLOW_PROXY_MAX_UPLOAD_BYTES")
    # MLflow documents its own API; ours (OpenAPI) leaves it out.
    schema = None

    def initial(self, request, *args, **kwargs) -> None:
        self.upstream_path = upstream_path(request.path_info)
        self.required_scopes = {request.method: required_scope(request.method, self.upstream_path)}
        super().initial(request, *args, **kwargs)

    def perform_content_negotiation(self, request, force: bool = False):
        # MLflow answers whatever Accept says; only our own errors are rendered here, as JSON.
        renderer = self.get_renderers()[0]
        return renderer, renderer.media_type

    @property
    def default_response_headers(self) -> dict[str, str]:
        return {}  # MLflow's Allow and Vary pass through as it sent them

    def handle_exception(self, exc: Exception):
        if isinstance(exc, exceptions.NotAuthenticated) and _opens_ui_page(self.request):
            # The login page is the web server's, also when the proxy server (proxy_urls) asks.
            login_url = reverse("admin:login", urlconf="hokusai_site.urls")
            return redirect_to_login(self.request.get_full_path(), login_url)
        return super().handle_exception(exc)

    def forward(self, request, *args, **kwargs) -> StreamingHttpResponse:
        django_request = request._request
        refusal = refused_path(self.upstream_path, django_request.META.get("QUERY_STRING", ""))
        if refusal is not None:
            raise ApplicationError("mlflow_path_refused", refusal)
        headers = forwarded_headers(
            django_request.META,
            caller=caller_of(request),
            client_ip=django_request.client_ip,
            host=django_request.get_host(),
            scheme=django_request.scheme,
            request_id=django_request.request_id,
        )
        body = self._body(django_request, headers)
        target = upstream_target(self.upstream_path, django_request.META.get("QUERY_STRING"))
        upstream = open_upstream(django_request.method, target, headers=headers, body=body)
        return relayed(upstream)

    get = head = post = put = patch = delete = forward

    def _body(
        self, request: HttpRequest, headers: dict[str, str]
    ) -> bytes | Iterable[bytes] | None:
        """The body to send on, streamed; sets its Content-Length when known (else chunked)."""
        length = int(request.META.get("CONTENT_LENGTH") or 0) or None
        stream: _Readable
        if length is not None:
            stream = request
        elif request.META.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            if not request.environ.get("wsgi.input_terminated"):
                raise ApplicationError(
                    "length_required", "This server needs a Content-Length.", status=411
                )
            # Django reads nothing without a Content-Length; the server de-chunks this stream.
            stream = request.environ["wsgi.input"]
        else:
            return None
        if _LOCATION_ROUTES.fullmatch(self.upstream_path):
            limit = settings.MAX_REQUEST_BODY_BYTES
            body = b"".join(_chunks(stream, length=length, limit=limit))
            refusal = refused_location(body)
            if refusal is not None:
                raise ApplicationError("mlflow_location_refused", refusal)
            headers["content-length"] = str(len(body))
            return body
        if length is not None:
            headers["content-length"] = str(length)
        return _chunks(stream, length=length, limit=self.max_body_bytes)


def relayed(upstream: mlflow.StreamedResponse) -> StreamingHttpResponse:
    """MLflow's answer as our response, its body streamed."""
    # reqwest keeps no reason phrase: Django gives the status code's own.
    response = StreamingHttpResponse(Relay(upstream), status=upstream.status)
    del response["Content-Type"]
    for name, value in returned_headers(upstream).items():
        response[name] = value
    return response


def upstream_target(path: str, query: str | None) -> str:
    """What the request line to MLflow names: the MLflow path, percent-encoded, and the query."""
    target = escape_uri_path(path)
    return f"{target}?{query}" if query else target


def open_upstream(
    method: str, target: str, *, headers: dict[str, str], body: bytes | Iterable[bytes] | None
) -> mlflow.StreamedResponse:
    """MLflow's answer, or ours when it cannot give one. BodyTooLarge and BodyIncomplete, raised
    while the body is being sent, pass through as they are."""
    try:
        return mlflow.stream(
            method,
            target,
            headers=headers,
            body=body,
            connect_timeout=settings.MLFLOW_PROXY_CONNECT_TIMEOUT,
            read_timeout=settings.MLFLOW_PROXY_READ_TIMEOUT,
        )
    except client_errors.RequestTimeoutError as exc:
        logger.warning("MLflow timed out on %s %s: %s", method, target, exc)
        raise ApplicationError(
            "mlflow_timeout", "MLflow did not answer in time.", status=504
        ) from None
    # Refused, reset, unreachable, or not HTTP.
    except (client_errors.RequestError, DnsResolutionError) as exc:
        logger.warning("MLflow is unreachable for %s %s: %s", method, target, exc)
        raise ApplicationError(
            "mlflow_unavailable", "MLflow cannot be reached.", status=502
        ) from None


def _opens_ui_page(request) -> bool:
    """A browser opening a page of the UI, better sent to the login page than answered 401."""
    return (
        request.method == "GET"
        and request.path_info.startswith("/mlflow/")
        and "text/html" in request.META.get("HTTP_ACCEPT", "")
    )


# Included by hokusai_site/urls.py ahead of its catch-all.
urlpatterns = [
    # The UI's relative URLs need the trailing slash.
    re_path(r"^mlflow$", RedirectView.as_view(url="mlflow/")),
    re_path(rf"^{MOUNTS}", MlflowProxyApi.as_view(), name="mlflow-proxy"),
]

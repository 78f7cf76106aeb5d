"""The MLflow proxy server's front door (registry.wsgi): the request that is nearly all of its
traffic, an MLflow client reading with an API key, forwarded without Django's request cycle.

That cycle (handler, middleware, URL resolver, DRF's view, signals) cost more CPU than the rest of
the forwarding, and on two cores shared with MLflow every millisecond of ours is one MLflow does
not get (bench/registry.py (b), README "Registry and proxy"). The answer is the one the full path
gives (registry.proxy.MlflowProxyApi through hokusai_site.proxy_settings' middleware), built from
the same functions; tests send the same requests both ways and compare.

Everything else takes the full path: other methods, bodies, other credentials, an Origin (CORS),
a host Django would refuse, plain HTTP where HTTPS is required, and every refusal (bad key, rate
limit, scope, path). A key checked here and then refused is handed on with its admission
(authkeys.authentication.ADMISSION_ENVIRON_KEY), so the request is counted once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.client import responses

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.db import close_old_connections
from django.http import HttpResponse
from django.utils.log import log_response
from rest_framework.renderers import JSONRenderer

from authkeys import gate, keys, services
from authkeys.authentication import (
    ADMISSION_ENVIRON_KEY,
    KeyAdmission,
    MalformedCredentials,
    caller_for_key,
    key_from_headers,
    key_in_query,
)
from authkeys.ratelimit import headers as rate_limit_headers
from hokusai_site.errors import (
    PROBLEM_CONTENT_TYPE,
    ApplicationError,
    handle_500,
    problem_body,
)
from hokusai_site.middleware import log_request, request_context
from hokusai_site.request_id import client_ip, request_id_from_header
from registry import proxy

WsgiApplication = Callable[[dict, Callable], Iterable[bytes]]

_READ_METHODS = frozenset({"GET", "HEAD"})
_MOUNTED = re.compile(f"/{proxy.MOUNTS}")


@dataclass(frozen=True)
class FastRead:
    request: WSGIRequest
    host: str
    key: keys.ParsedKey
    upstream_path: str
    scope: str


class ProxyServer:
    """A WSGI application: fast reads here, the rest through `full_path` (Django's), under the
    settings in force when it is made."""

    def __init__(self, full_path: WsgiApplication) -> None:
        self.full_path = full_path
        self.site_headers = SiteHeaders()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        read = _fast_read(environ)
        if read is None:
            return self.full_path(environ, start_response)
        try:
            return self._fast(read, environ, start_response)
        except Exception as exc:
            return _internal_error(read.request, exc, start_response)

    def _fast(self, read: FastRead, environ: dict, start_response: Callable) -> Iterable[bytes]:
        request_id = request_id_from_header(environ.get("HTTP_X_REQUEST_ID"))
        ip = client_ip(environ, trusted_proxies=settings.TRUSTED_PROXY_COUNT)
        # What Django's handler does at the start and end of every request that matters here:
        # database connections past their age or broken are closed (a key's facts may come from
        # the database).
        close_old_connections()
        with request_context(request_id, ip):
            started = time.perf_counter()
            digest = services.key_digest(read.key.key)
            admission = gate.admit(prefix=read.key.prefix, digest=digest, ip=ip)
            if _admitted(admission, read.scope):
                status, headers, body = self._answer(read, admission, request_id, ip)
                _log(read.request, status, started)
                # Last: after it, an exception could no longer be answered with a 500.
                start_response(_status_line(status), list(headers.items()))
                return _Finished(body)
        close_old_connections()
        environ[ADMISSION_ENVIRON_KEY] = KeyAdmission(digest, admission)
        return self.full_path(environ, start_response)

    def _answer(
        self, read: FastRead, admission: gate.Admission, request_id: str, ip: str | None
    ) -> tuple[int, dict[str, str], Iterable[bytes]]:
        """MLflow's answer (ours when it cannot give one), with the headers the proxy server's
        middleware puts on every answer."""
        request = read.request
        forwarded = proxy.forwarded_headers(
            request.META,
            caller=caller_for_key(admission.info),
            client_ip=ip,
            host=read.host,
            scheme=request.scheme,
            request_id=request_id,
        )
        target = proxy.upstream_target(read.upstream_path, request.META.get("QUERY_STRING"))
        try:
            upstream = proxy.open_upstream(request.method, target, headers=forwarded, body=None)
        except ApplicationError as error:
            problem = problem_body(status=error.status, code=error.code, detail=error.message)
            status, headers = error.status, {"Content-Type": PROBLEM_CONTENT_TYPE}
            body: Iterable[bytes] = [JSONRenderer().render(problem)]
        else:
            status, headers = upstream.status, proxy.returned_headers(upstream)
            body = proxy.Relay(upstream)
        self.site_headers.add_to(headers, request)
        for name, value in [
            *rate_limit_headers(admission.rate_limit).items(),
            ("X-Request-ID", request_id),
        ]:
            # Ours replace MLflow's (whose names reqwest gives in lower case), as on the full path.
            headers.pop(name.lower(), None)
            headers[name] = value
        return status, headers, body


def _fast_read(environ: dict) -> FastRead | None:
    """What the fast path needs of a request it answers; None sends it the full path."""
    if environ["REQUEST_METHOD"] not in _READ_METHODS or environ.get("SCRIPT_NAME"):
        return None
    if environ.get("CONTENT_LENGTH", "0") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ:
        return None
    if "HTTP_ORIGIN" in environ or key_in_query(environ.get("QUERY_STRING", "")):
        return None
    request = WSGIRequest(environ)
    if not _MOUNTED.match(request.path_info):
        return None
    try:
        host = request.get_host()
    except DisallowedHost:
        return None
    if settings.SECURE_SSL_REDIRECT and not request.is_secure():
        return None
    try:
        raw = key_from_headers(environ)
        key = keys.parse(raw) if raw is not None else None
    except (MalformedCredentials, keys.MalformedKey):
        return None
    if key is None:
        return None
    upstream_path = proxy.upstream_path(request.path_info)
    if proxy.refused_path(upstream_path, environ.get("QUERY_STRING", "")) is not None:
        return None
    scope = proxy.required_scope(request.method, upstream_path)
    return FastRead(request, host, key, upstream_path, scope)


def _admitted(admission: gate.Admission, scope: str) -> bool:
    """A known, usable key within its rate limit, with the scope the route needs."""
    return (
        admission.info is not None
        and admission.rate_limit is not None
        and admission.rate_limit.allowed
        and caller_for_key(admission.info).has_scope(scope)
    )


def _status_line(status: int) -> str:
    return f"{status} {responses.get(status, 'Unknown Status Code')}"


def _log(request: WSGIRequest, status: int, started: float) -> None:
    """The access log's line, and for errors django.request's, as on the full path."""
    log_request(request.method, request.path, status, started)
    if status >= 400:
        response = HttpResponse(status=status)
        log_response(
            "%s: %s", response.reason_phrase, request.path, response=response, request=request
        )


def _internal_error(
    request: WSGIRequest, exc: Exception, start_response: Callable
) -> Iterable[bytes]:
    """As Django's handler answers an exception: logged with its traceback, a 500 in the error
    shape."""
    response = handle_500(request)
    log_response(
        "%s: %s",
        response.reason_phrase,
        request.path,
        response=response,
        request=request,
        exception=exc,
    )
    start_response(_status_line(response.status_code), list(response.items()))
    return [response.content]


class SiteHeaders:
    """What the proxy server's response middleware adds to every answer, from the settings:
    XFrameOptionsMiddleware, corsheaders (Vary: origin on its paths) and SecurityMiddleware.
    Like those, it keeps a value the answer already has."""

    def __init__(self) -> None:
        self.cors_paths = re.compile(settings.CORS_URLS_REGEX)
        defaults = {"X-Frame-Options": settings.X_FRAME_OPTIONS.upper()}
        if settings.SECURE_CONTENT_TYPE_NOSNIFF:
            defaults["X-Content-Type-Options"] = "nosniff"
        if policy := settings.SECURE_REFERRER_POLICY:
            defaults["Referrer-Policy"] = policy if isinstance(policy, str) else ",".join(policy)
        if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
            defaults["Cross-Origin-Opener-Policy"] = settings.SECURE_CROSS_ORIGIN_OPENER_POLICY
        self.defaults = defaults
        self.hsts = None
        if settings.SECURE_HSTS_SECONDS:
            self.hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
            if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
                self.hsts += "; includeSubDomains"
            if settings.SECURE_HSTS_PRELOAD:
                self.hsts += "; preload"

    def add_to(self, headers: dict[str, str], request: WSGIRequest) -> None:
        present = {name.lower(): name for name in headers}
        defaults = dict(self.defaults)
        if self.hsts and request.is_secure():
            defaults["Strict-Transport-Security"] = self.hsts
        for name, value in defaults.items():
            if name.lower() not in present:
                headers[name] = value
        if self.cors_paths.match(request.path_info):
            vary_name = present.get("vary", "Vary")
            values = [value.strip() for value in headers.get(vary_name, "").split(",")]
            values = [value for value in values if value]
            if "*" not in values and "origin" not in {value.lower() for value in values}:
                headers[vary_name] = ", ".join([*values, "origin"])


class _Finished:
    """The answer's body: closing it ends the exchange with MLflow, then the request, as
    Django's handler would."""

    def __init__(self, body: Iterable[bytes]) -> None:
        self._body = body

    def __iter__(self):
        return iter(self._body)

    def close(self) -> None:
        try:
            if isinstance(self._body, proxy.Relay):
                self._body.close()
        finally:
            close_old_connections()

"""The MLflow proxy server's front door (registry.wsgi): the request that is nearly all of its
traffic, an MLflow client reading with an API key, forwarded without Django's request cycle.

That cycle (handler, the middleware's request side, URL resolver, DRF's view) cost more CPU than
the rest of the forwarding, and on two cores shared with MLflow every millisecond of ours is one
MLflow does not get (bench/registry.py (b), README "Registry and proxy"). The answer is the one
the full path gives (registry.proxy.MlflowProxyApi through hokusai_site.proxy_settings'
middleware), built from the same functions, the same response object and the response side of
the same middleware; tests send the same requests both ways and compare.

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

from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.core import signals
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse
from django.http.response import HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
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
from authkeys.principals import Caller
from authkeys.throttling import add_rate_limit_headers
from hokusai_site.errors import PROBLEM_CONTENT_TYPE, ApplicationError, handle_500, problem_body
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
        # The response side of the proxy server's middleware (hokusai_site.proxy_settings) that
        # adds headers, Django's and corsheaders' own code, innermost first as Django runs it.
        # Their request side has nothing to do for these reads (_fast_read leaves the SSL
        # redirect and CORS preflights to the full path).
        self.add_site_headers = (
            XFrameOptionsMiddleware(_never_called).process_response,
            CorsMiddleware(_never_called).add_response_headers,
            SecurityMiddleware(_never_called).process_response,
        )

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        read = _fast_read(environ)
        if read is None:
            return self.full_path(environ, start_response)
        try:
            response = self._fast(read, environ)
        except Exception as exc:
            response = _internal_error(read.request, exc)
        if response is None:
            return self.full_path(environ, start_response)
        # As Django's WSGIHandler: closing the response ends the exchange with MLflow and sends
        # request_finished.
        response._handler_class = self.__class__
        start_response(f"{response.status_code} {response.reason_phrase}", [*response.items()])
        return response

    def _fast(self, read: FastRead, environ: dict) -> HttpResponseBase | None:
        """The answer, or None for the full path (with the key's admission in `environ`)."""
        request = read.request
        request_id = request_id_from_header(environ.get("HTTP_X_REQUEST_ID"))
        ip = client_ip(environ, trusted_proxies=settings.TRUSTED_PROXY_COUNT)
        signals.request_started.send(sender=self.__class__, environ=environ)
        with request_context(request_id, ip):
            started = time.perf_counter()
            digest = services.key_digest(read.key.key)
            admission = gate.admit(prefix=read.key.prefix, digest=digest, ip=ip)
            caller = _admitted_caller(admission, read.scope)
            if caller is None:
                signals.request_finished.send(sender=self.__class__)
                environ[ADMISSION_ENVIRON_KEY] = KeyAdmission(digest, admission)
                return None
            forwarded = proxy.forwarded_headers(
                request.META,
                caller=caller,
                client_ip=ip,
                host=read.host,
                scheme=request.scheme,
                request_id=request_id,
            )
            response = _mlflows_answer(read, forwarded)
            for add_headers in self.add_site_headers:
                add_headers(request, response)
            add_rate_limit_headers(response, admission.rate_limit)
            response["X-Request-ID"] = request_id
            log_request(request.method, request.path, response.status_code, started)
            if response.status_code >= 400:
                log_response(
                    "%s: %s",
                    response.reason_phrase,
                    request.path,
                    response=response,
                    request=request,
                )
            return response


def _never_called(request):
    raise AssertionError("the fast path runs only the middleware's response side")


def _admitted_caller(admission: gate.Admission, scope: str) -> Caller | None:
    """The caller of a known, usable key within its rate limit, with the scope the route needs;
    else None."""
    if admission.info is None or admission.rate_limit is None or not admission.rate_limit.allowed:
        return None
    caller = caller_for_key(admission.info)
    return caller if caller.has_scope(scope) else None


def _mlflows_answer(read: FastRead, forwarded: dict[str, str]) -> HttpResponseBase:
    """MLflow's answer, or ours (in the error shape, as DRF renders it) when it cannot give one."""
    target = proxy.upstream_target(read.upstream_path, read.request.META.get("QUERY_STRING"))
    try:
        upstream = proxy.open_upstream(read.request.method, target, headers=forwarded, body=None)
    except ApplicationError as error:
        problem = problem_body(status=error.status, code=error.code, detail=error.message)
        return HttpResponse(
            JSONRenderer().render(problem), status=error.status, content_type=PROBLEM_CONTENT_TYPE
        )
    return proxy.relayed(upstream)


def _internal_error(request: WSGIRequest, exc: Exception) -> HttpResponseBase:
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
    return response


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

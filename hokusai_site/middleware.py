import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from hokusai_site.errors import ApplicationError, problem_response
from hokusai_site.request_id import (
    client_ip,
    current_client_ip,
    current_request_id,
    request_id_from_header,
)

access_logger = logging.getLogger("hokusai.access")


class RequestIdMiddleware:
    """Gives every request an id (the client's X-Request-ID if acceptable), echoes it in the
    response, puts it on every log line written while the request runs, and logs the request."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.request_id = request_id_from_header(request.META.get("HTTP_X_REQUEST_ID"))
        request.client_ip = client_ip(request.META, trusted_proxies=settings.TRUSTED_PROXY_COUNT)
        with request_context(request.request_id, request.client_ip):
            started = time.perf_counter()
            response = self.get_response(request)
            response["X-Request-ID"] = request.request_id
            log_request(request.method, request.path, response.status_code, started)
            return response


@contextmanager
def request_context(request_id: str, ip: str | None) -> Iterator[None]:
    """The request's id and client address for every log line and audit row written inside."""
    id_token = current_request_id.set(request_id)
    ip_token = current_client_ip.set(ip)
    try:
        yield
    finally:
        current_request_id.reset(id_token)
        current_client_ip.reset(ip_token)


def log_request(method: str, path: str, status: int, started: float) -> None:
    """The access log's line for a request answered `started` (perf_counter) ago. `path`
    without the query string: query strings can carry secrets."""
    duration_ms = (time.perf_counter() - started) * 1000
    access_logger.info(
        "%s %s %s %.1fms",
        method,
        path,
        status,
        duration_ms,
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 2),
        },
    )


class SettingValue:
    """A class attribute read from settings on each access, for a view's `max_body_bytes`
    (which RequestBodyLimitMiddleware reads from the view class)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner) -> Any:
        return getattr(settings, self.name)


class RequestBodyLimitMiddleware:
    """Answers 413 before reading a body larger than its view accepts.

    A view (or DRF view class) may set `max_body_bytes`; the default is MAX_REQUEST_BODY_BYTES,
    and None leaves the check to the view (body_too_large). DRF reads JSON straight from the
    stream, bypassing DATA_UPLOAD_MAX_MEMORY_SIZE, so the declared Content-Length is checked here
    for every other route.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Checked before anything else reads the header (django-prometheus would raise on it).
        if _content_length(request) is None:
            return problem_response(
                status=400, code="bad_content_length", detail="Content-Length is not a number."
            )
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs):
        length = _content_length(request)
        view = getattr(view_func, "cls", view_func)
        limit = getattr(view, "max_body_bytes", settings.MAX_REQUEST_BODY_BYTES)
        if limit is not None and length > limit:
            problem = body_too_large(length, limit)
            return problem_response(
                status=problem.status, code=problem.code, detail=problem.message
            )
        return None


def body_too_large(length: int, limit: int) -> ApplicationError:
    return ApplicationError(
        "request_too_large",
        f"The request body is {length} bytes; this route accepts at most {limit}.",
        status=413,
    )


def content_length(request) -> int:
    """The declared body size (the middleware has refused a malformed one)."""
    return _content_length(request) or 0


def _content_length(request) -> int | None:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    return length if length >= 0 else None

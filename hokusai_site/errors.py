"""The one error shape of the API (RFC 9457 problem details plus a stable machine `code`).

    {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "…",
     "code": "not_found", "request_id": "…", "errors": {"field": ["message"]}}

`errors` appears only for validation failures. DRF exceptions, Django's 404/403/400/500 handlers,
the body-size guard and our own `ApplicationError` all come out through `problem_response`.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import bad_request, page_not_found, permission_denied, server_error
from rest_framework import exceptions
from rest_framework.response import Response

from hokusai_site.request_id import current_request_id

logger = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"

# Pages a person reads in a browser keep Django's HTML error pages.
HTML_PATH_PREFIXES = ("/admin/", "/mlflow/")

# DRF's codes are stable already; these few get names that say more to an API client.
_CODE_NAMES = {
    "parse_error": "malformed_body",
    "not_authenticated": "authentication_required",
    "throttled": "rate_limited",
}


class ApplicationError(Exception):
    """A failure the client can act on: `code` is stable, `message` is for people."""

    def __init__(
        self, code: str, message: str, *, status: int = 400, extra: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.extra = extra or {}


def problem_body(
    *,
    status: int,
    code: str,
    detail: str,
    errors: dict[str, list[str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": current_request_id.get(),
    }
    if errors is not None:
        body["errors"] = errors
    if extra:
        body.update({key: value for key, value in extra.items() if key not in body})
    return body


def problem_response(
    *,
    status: int,
    code: str,
    detail: str,
    errors: dict[str, list[str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    """The error shape as a plain Django response, for code that runs outside DRF views."""
    response = JsonResponse(
        problem_body(status=status, code=code, detail=detail, errors=errors),
        status=status,
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def _validation_errors(detail: Any) -> dict[str, list[str]]:
    """Flatten DRF's nested error detail into {"field.sub": ["message", …]}."""
    flat: dict[str, list[str]] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        elif isinstance(node, list) and node and all(isinstance(item, str) for item in node):
            flat.setdefault(prefix or "non_field_errors", []).extend(str(item) for item in node)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(f"{prefix}.{index}" if prefix else str(index), value)
        else:
            flat.setdefault(prefix or "non_field_errors", []).append(str(node))

    walk("", detail)
    return flat


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every API error in the documented shape."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionError):
        exc = exceptions.PermissionDenied()

    headers: dict[str, str] = {}
    if isinstance(exc, ApplicationError):
        body = problem_body(status=exc.status, code=exc.code, detail=exc.message, extra=exc.extra)
    elif isinstance(exc, exceptions.ValidationError):
        body = problem_body(
            status=exc.status_code,
            code="validation_error",
            detail="The request has invalid fields.",
            errors=_validation_errors(exc.detail),
        )
    elif isinstance(exc, exceptions.APIException):
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None) is not None:
            headers["Retry-After"] = str(int(exc.wait))
        code = exc.get_codes()
        code = code if isinstance(code, str) else exc.default_code
        body = problem_body(
            status=exc.status_code, code=_CODE_NAMES.get(code, code), detail=str(exc.detail)
        )
    else:
        # Not ours to describe: Django's handler500 answers it (logged with its traceback).
        return None
    return Response(body, status=body["status"], headers=headers, content_type=PROBLEM_CONTENT_TYPE)


def _wants_html(request: HttpRequest) -> bool:
    return request.path.startswith(HTML_PATH_PREFIXES)


def handle_400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_html(request):
        return bad_request(request, exception)
    return problem_response(status=400, code="bad_request", detail="The request was malformed.")


def handle_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_html(request):
        return permission_denied(request, exception)
    return problem_response(status=403, code="permission_denied", detail="Permission denied.")


def handle_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _wants_html(request):
        return page_not_found(request, exception)
    return problem_response(
        status=404, code="not_found", detail=f"No route matches {request.path!r}."
    )


def handle_500(request: HttpRequest) -> HttpResponse:
    if _wants_html(request):
        return server_error(request)
    return problem_response(
        status=500,
        code="internal_error",
        detail="The server failed to handle this request; quote the request_id when reporting it.",
    )

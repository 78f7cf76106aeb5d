"""Rate limits for every API request, atomic across processes (authkeys.ratelimit, in Redis):
per API key at the key's own limit, per Ethereum address, per signed-in user, and per client
IP for anonymous calls and for failed credentials (so keys cannot be guessed at speed)."""

from __future__ import annotations

from django.conf import settings
from rest_framework import exceptions
from rest_framework.throttling import BaseThrottle

from authkeys.principals import caller_of
from authkeys.ratelimit import RateLimitResult, get_rate_limiter, headers


def _subject_and_limit(request) -> tuple[str, int]:
    # Ethereum sign-ins carry their own subject and limit.
    credentials = request.auth
    if credentials is not None and hasattr(credentials, "rate_limit_subject"):
        return credentials.rate_limit_subject, credentials.rate_limit_per_minute
    caller = caller_of(request)
    if caller is not None:
        return f"user:{caller.user_id}", settings.HOKUSAI_API_KEY_DEFAULT_RATE_LIMIT
    return f"ip:{request._request.client_ip}", settings.HOKUSAI_ANONYMOUS_RATE_LIMIT


class CallerRateThrottle(BaseThrottle):
    def allow_request(self, request, view) -> bool:
        # An API key was counted while it was checked; other callers are counted here.
        self.result = getattr(request.auth, "rate_limit_result", None)
        if self.result is None:
            subject, limit = _subject_and_limit(request)
            self.result = get_rate_limiter().hit(subject, limit=limit)
        # Read by RateLimitHeadersMiddleware, which puts the headers on whatever the response is.
        request._request.rate_limit = self.result
        return self.result.allowed

    def wait(self) -> float:
        return self.result.retry_after_seconds


def refuse_credentials(request, code: str, detail: str) -> exceptions.APIException:
    """The error for bad credentials, counted against the client's IP: past the limit, 429."""
    result = get_rate_limiter().hit(
        f"authfail:{request.client_ip}", limit=settings.HOKUSAI_AUTH_FAILURE_RATE_LIMIT
    )
    if not result.allowed:
        request.rate_limit = result
        return exceptions.Throttled(
            wait=result.retry_after_seconds, detail="Too many failed sign-in attempts."
        )
    return exceptions.AuthenticationFailed(detail=detail, code=code)


class RateLimitHeadersMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        result: RateLimitResult | None = getattr(request, "rate_limit", None)
        if result is not None:
            add_rate_limit_headers(response, result)
        return response


def add_rate_limit_headers(response, result: RateLimitResult) -> None:
    for name, value in headers(result).items():
        response[name] = value

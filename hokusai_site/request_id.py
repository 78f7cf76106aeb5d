"""The current request's id and client address, for log lines, error bodies and audit rows."""

import logging
import re
import uuid
from contextvars import ContextVar

current_request_id: ContextVar[str] = ContextVar("current_request_id", default="-")
current_client_ip: ContextVar[str | None] = ContextVar("current_client_ip", default=None)

# A client-sent id is echoed only if it is short and plain, so it cannot forge log lines.
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_from_header(value: str | None) -> str:
    if value and _ACCEPTABLE_ID.match(value):
        return value
    return uuid.uuid4().hex


def client_ip(meta: dict, *, trusted_proxies: int) -> str | None:
    """REMOTE_ADDR, or behind `trusted_proxies` proxies the address the outermost one saw.

    Only the entries our own proxies appended to X-Forwarded-For are believed: a client can
    put anything at the start of the header.
    """
    if trusted_proxies > 0:
        forwarded = [part.strip() for part in meta.get("HTTP_X_FORWARDED_FOR", "").split(",")]
        if len(forwarded) >= trusted_proxies and forwarded[-trusted_proxies]:
            return forwarded[-trusted_proxies]
    return meta.get("REMOTE_ADDR") or None


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # django.request logs after the middleware has finished, but passes the request along.
        request = getattr(record, "request", None)
        record.request_id = getattr(request, "request_id", None) or current_request_id.get()
        return True

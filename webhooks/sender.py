"""One HTTP POST to a receiver, on the address the SSRF guard approved.

The URL's host is resolved and checked on every send (webhooks.ssrf) and the connection goes to
that checked address, with the host name in Host and in TLS (SNI, certificate check), so a DNS
answer that changes between the check and the connection cannot point us inside. Redirects are
never followed; connections are kept alive in one pool per (address, host) in each process.
"""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import urllib3
from django.conf import settings

from webhooks.ssrf import Receiver, ReceiverLookupFailed, WebhookUrlRefused, receiver_for

USER_AGENT = "Hokusai-Webhooks/1.0"
# What an attempt keeps of the receiver's answer, for people debugging it.
RESPONSE_BODY_KEPT = 2048
# Read at most this much of an answer; a longer one costs us its connection instead.
RESPONSE_BODY_READ = 64 * 1024
# A Retry-After beyond this is treated as this.
RETRY_AFTER_MAX_SECONDS = 86400.0

# Keep-alive connections per (address, port, host name); the least recently used pools close
# beyond this many, so thousands of endpoints do not mean thousands of idle sockets.
_pools = urllib3.PoolManager(num_pools=100, maxsize=4, block=False)


@dataclass(frozen=True)
class SendResult:
    status_code: int | None  # None: no HTTP answer (refused, unreachable, timed out)
    response_body: str
    error: str
    retry_after: float | None  # seconds, when the receiver asked for it

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, *, body: bytes, headers: dict[str, str]) -> SendResult:
    try:
        receiver = receiver_for(url)
    except WebhookUrlRefused as exc:
        return SendResult(None, "", f"refused: {exc}", None)
    except ReceiverLookupFailed as exc:
        return SendResult(None, "", f"DNS lookup failed: {exc}", None)
    timeout = urllib3.Timeout(connect=settings.WEBHOOK_TIMEOUT, read=settings.WEBHOOK_TIMEOUT)
    request_headers = {
        "Host": receiver.host_header,
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        **headers,
    }
    error = ""
    # Each address in turn until one takes the connection; the answer of the first that does.
    for address in receiver.addresses:
        try:
            response = _pool(receiver, address).urlopen(
                "POST",
                receiver.target,
                body=body,
                headers=request_headers,
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=False,
            )
        except urllib3.exceptions.NewConnectionError as exc:
            error = f"cannot connect to {address}: {_reason(exc)}"
            continue
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return SendResult(None, "", _describe(exc), None)
        return _result(response)
    return SendResult(None, "", error, None)


def _result(response: urllib3.BaseHTTPResponse) -> SendResult:
    try:
        body = response.read(RESPONSE_BODY_READ + 1, decode_content=False)
    except (urllib3.exceptions.HTTPError, OSError):
        body = b""
        response.close()
    if len(body) > RESPONSE_BODY_READ:
        response.close()  # the rest is not worth reading; the connection goes with it
    response.release_conn()
    status = response.status
    error = ""
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        error = f"redirect to {location!r} not followed" if location else "redirect not followed"
    elif not 200 <= status < 300:
        error = f"HTTP {status}"
    return SendResult(
        status_code=status,
        response_body=body[:RESPONSE_BODY_KEPT].decode("utf-8", errors="replace"),
        error=error,
        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
    )


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds from now (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


def _pool(receiver: Receiver, address: str) -> urllib3.HTTPConnectionPool:
    # TLS checks the certificate against the host name, not the address connected to.
    tls = {"server_hostname": receiver.host, "assert_hostname": receiver.host}
    return _pools.connection_from_host(
        address,
        receiver.port,
        receiver.scheme,
        pool_kwargs=tls if receiver.scheme == "https" else None,
    )


def _reason(exc: Exception) -> str:
    return str(exc).rpartition(": ")[2] or type(exc).__name__


def _describe(exc: Exception) -> str:
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return f"timed out after {settings.WEBHOOK_TIMEOUT:g}s"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return f"connection broken: {_reason(exc)}"
    return f"{type(exc).__name__}: {_reason(exc)}"

"""Cached DNS resolution for the MLflow tracking server's host.

Only for the MLflow host. Webhook receivers must never go through this cache: their addresses
have to be resolved (and checked) on every delivery, while for MLflow we would rather keep
talking to the last known address than fail every request while DNS is unavailable.

Pure module: Django is imported only inside ``get_resolver`` so the resolver can be used and
tested without settings.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, TypedDict

logger = logging.getLogger(__name__)

Source = Literal["literal", "dns", "cache", "stale", "fallback"]
Lookup = Callable[[str], list[str]]
Clock = Callable[[], float]

DEFAULT_TTL_SECONDS = 300.0
COUNTER_NAMES = ("lookups", "hits", "failures", "stale_served", "fallbacks_used")


@dataclass(frozen=True)
class Resolution:
    host: str
    address: str
    addresses: tuple[str, ...]
    source: Source
    # None when no cache entry was involved (literal, fallback).
    age_seconds: float | None


class HostSnapshot(TypedDict):
    address: str | None
    age_seconds: float | None
    stale: bool
    fallback_in_use: bool
    last_error: str | None


class DnsResolutionError(Exception):
    """No address at all for the host: the lookup failed, nothing cached, no fallback set."""

    def __init__(self, host: str, reason: str) -> None:
        # Both values go to Exception.__init__ so the error survives pickling (Celery results).
        super().__init__(host, reason)
        self.host = host
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"Could not resolve host {self.host!r}: {self.reason} "
            "(no previously resolved address and MLFLOW_FALLBACK_IP is not set)"
        )


def _prefer_ipv4(addresses: Iterable[str]) -> tuple[str, ...]:
    # Our servers bind 127.0.0.1 while "localhost" may answer ::1 first. The sort is stable, so
    # the resolver's order is kept within each family; dict.fromkeys drops duplicates in order.
    return tuple(sorted(dict.fromkeys(addresses), key=lambda address: ":" in address))


def system_lookup(host: str) -> list[str]:
    """Default lookup: the system resolver (honours /etc/hosts), unique addresses, IPv4 first."""
    # SOCK_STREAM only, otherwise getaddrinfo repeats every address once per socket type.
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    families = (socket.AF_INET, socket.AF_INET6)
    return list(_prefer_ipv4(str(info[4][0]) for info in infos if info[0] in families))


def _ip_literal(host: str) -> str | None:
    # URLs write IPv6 hosts in brackets; accept both spellings.
    candidate = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return None
    return candidate


@dataclass
class _Entry:
    addresses: tuple[str, ...]
    resolved_at: float


@dataclass
class _HostState:
    # Held for the whole lookup so there is at most one query in flight per host; other hosts
    # have their own lock and are never blocked by a slow lookup of this one.
    lookup_lock: threading.Lock = field(default_factory=threading.Lock)
    entry: _Entry | None = None
    # Bumped after every completed lookup. A caller that waited for the lookup lock compares it
    # with the value it saw before waiting to know whether it can reuse that lookup's outcome.
    attempts: int = 0
    last_error: str | None = None
    fallback_in_use: bool = False


class DnsResolver:
    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL_SECONDS,
        fallback_ip: str | None = None,
        lookup: Lookup = system_lookup,
        clock: Clock = time.monotonic,
    ) -> None:
        if ttl < 0:
            raise ValueError(f"DNS_CACHE_TTL must be >= 0 seconds; got {ttl!r}")
        fallback = (fallback_ip or "").strip() or None
        if fallback is not None:
            try:
                ipaddress.ip_address(fallback)
            except ValueError:
                raise ValueError(
                    f"MLFLOW_FALLBACK_IP must be an IP address; got {fallback_ip!r}"
                ) from None
        self.ttl = float(ttl)
        self.fallback_ip = fallback
        self._lookup = lookup
        self._clock = clock
        # Guards _hosts, every _HostState field except lookup_lock, and _counters. Never held
        # while a lookup runs.
        self._lock = threading.Lock()
        self._hosts: dict[str, _HostState] = {}
        self._counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)

    def resolve(self, host: str) -> Resolution:
        """Address to connect to for ``host``; raises DnsResolutionError if there is none."""
        if not host:
            raise ValueError("host must be a non-empty string")
        literal = _ip_literal(host)
        if literal is not None:
            return Resolution(host, literal, (literal,), "literal", None)

        key = host.lower()
        with self._lock:
            state = self._hosts.setdefault(key, _HostState())
            entry = state.entry
            if entry is not None:
                age = self._clock() - entry.resolved_at
                if age < self.ttl:
                    self._counters["hits"] += 1
                    return Resolution(key, entry.addresses[0], entry.addresses, "cache", age)
            seen_attempts = state.attempts

        with state.lookup_lock:
            with self._lock:
                if state.attempts != seen_attempts:
                    # A lookup finished while we waited: reuse its outcome rather than
                    # querying again (and, if DNS is down, waiting out another timeout).
                    served = self._serve_last_outcome(key, state)
                    if served is None:
                        raise DnsResolutionError(key, state.last_error or "lookup failed")
                    return served
            return self._lookup_and_record(key, state)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def snapshot(self, host: str) -> HostSnapshot | None:
        """State of ``host`` for the health check, without any lookup; None if never resolved.

        ``stale`` means the last refresh failed and the older address is what is being served,
        not merely that the entry is past its TTL (an idle entry is refreshed on next use).
        """
        literal = _ip_literal(host)
        if literal is not None:
            return HostSnapshot(
                address=literal,
                age_seconds=None,
                stale=False,
                fallback_in_use=False,
                last_error=None,
            )
        with self._lock:
            state = self._hosts.get(host.lower())
            if state is None:
                return None
            entry = state.entry
            address: str | None = None
            age: float | None = None
            if entry is not None:
                address = entry.addresses[0]
                age = self._clock() - entry.resolved_at
            elif state.fallback_in_use:
                address = self.fallback_ip
            return HostSnapshot(
                address=address,
                age_seconds=age,
                stale=entry is not None and state.last_error is not None,
                fallback_in_use=state.fallback_in_use,
                last_error=state.last_error,
            )

    def clear(self) -> None:
        with self._lock:
            # A lookup still in flight writes into its (now detached) old state, which is harmless.
            self._hosts = {}
            self._counters = dict.fromkeys(COUNTER_NAMES, 0)

    def _lookup_and_record(self, key: str, state: _HostState) -> Resolution:
        # Caller holds state.lookup_lock (but not self._lock).
        with self._lock:
            self._counters["lookups"] += 1
        cause: BaseException | None = None
        addresses: tuple[str, ...] = ()
        try:
            addresses = _prefer_ipv4(self._lookup(key))
        # OSError covers gaierror/herror/timeout; UnicodeError is what IDNA encoding of a
        # malformed name raises. Anything else is a bug in the lookup and should propagate.
        except (OSError, UnicodeError) as exc:
            cause = exc
            error = f"{type(exc).__name__}: {exc}"
        else:
            error = "" if addresses else "lookup returned no addresses"

        with self._lock:
            state.attempts += 1
            if not error:
                state.entry = _Entry(addresses, self._clock())
                state.last_error = None
                state.fallback_in_use = False
                return Resolution(key, addresses[0], addresses, "dns", 0.0)
            self._counters["failures"] += 1
            state.last_error = error
            served = self._serve_degraded(key, state)

        if served is None:
            raise DnsResolutionError(key, error) from cause
        logger.warning(
            "DNS lookup for %s failed (%s); serving %s address %s",
            key,
            error,
            served.source,
            served.address,
        )
        return served

    def _serve_last_outcome(self, key: str, state: _HostState) -> Resolution | None:
        # Caller holds self._lock.
        entry = state.entry
        if state.last_error is None and entry is not None:
            self._counters["hits"] += 1
            age = self._clock() - entry.resolved_at
            return Resolution(key, entry.addresses[0], entry.addresses, "cache", age)
        return self._serve_degraded(key, state)

    def _serve_degraded(self, key: str, state: _HostState) -> Resolution | None:
        # Caller holds self._lock. An old address beats the fallback: it was right at some point
        # for this very host, the fallback is only an operator's guess.
        entry = state.entry
        if entry is not None:
            self._counters["stale_served"] += 1
            age = self._clock() - entry.resolved_at
            return Resolution(key, entry.addresses[0], entry.addresses, "stale", age)
        if self.fallback_ip is not None:
            self._counters["fallbacks_used"] += 1
            state.fallback_in_use = True
            return Resolution(key, self.fallback_ip, (self.fallback_ip,), "fallback", None)
        return None


_resolver: DnsResolver | None = None
_resolver_lock = threading.Lock()


def get_resolver() -> DnsResolver:
    """The process-wide resolver, built from Django settings on first use."""
    global _resolver
    resolver = _resolver
    if resolver is None:
        with _resolver_lock:
            if _resolver is None:
                from django.conf import settings

                _resolver = DnsResolver(
                    ttl=float(getattr(settings, "DNS_CACHE_TTL", DEFAULT_TTL_SECONDS)),
                    fallback_ip=getattr(settings, "MLFLOW_FALLBACK_IP", "") or None,
                )
            resolver = _resolver
    return resolver


def reset_resolver() -> None:
    """Forget the process-wide resolver so the next get_resolver() rebuilds it from settings."""
    global _resolver
    with _resolver_lock:
        _resolver = None

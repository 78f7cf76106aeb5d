"""Rate limits per API key, Ethereum address and client IP, shared by every process through Redis.

Algorithm: GCRA (generic cell rate algorithm, the token bucket stored as one timestamp).
A limit of N requests per window W spaces requests one emission interval T = W / N apart and
tolerates a burst of N back to back. Each subject has one Redis key holding its "theoretical
arrival time" (TAT): the instant at which its bucket will be full again. A request of cost c is
allowed when `max(TAT, now) + c*T - now <= N*T`; then TAT moves forward by c*T.

Why GCRA and not a fixed window (one INCR + EXPIRE):
- same price: one round trip (EVALSHA of a small Lua script, atomic in Redis), one key of a few
  bytes per active subject, expiring on its own when the bucket is full again;
- no double burst at a window edge (a fixed window lets 2N through in a few milliseconds
  around the boundary) and no synchronised herd of clients all retrying at the window's end;
- an exact `Retry-After`: the time until one request's worth of quota is back (T at most),
  not the time until a whole window ends.
Honest limit of the model: N is both the burst size and the sustained rate per window, so over
any stretch of W seconds a subject can send up to N (burst) plus what refills during W (just
under N), the same worst case as a fixed window, but only after being idle for a full window.
What is stored is time, not a count: when a key's limit changes, the share of the window it has
used carries over (half of 100 used becomes half of 10 used).

Clock: the script reads Redis's own clock (`TIME`), so processes on hosts with skewed clocks
agree. Tests may inject a wall clock instead (`clock=`), passed to the script as an argument.

Headers (`headers()`): `X-RateLimit-Reset` and `Retry-After` are delta-seconds (seconds from
now, rounded up), as in the IETF RateLimit header draft and HTTP's `Retry-After`; a Unix epoch
(GitHub's style) is NOT used. `X-RateLimit-Reset` is the time until the full limit is available.

Fail open: when Redis errors or times out, the request is allowed with `enforced=False` and a
warning is logged (at most one per 10 s per process). A small circuit then skips Redis for
`backoff_seconds` (1 s) so a dead Redis does not cost a connect timeout on every request; after
the back-off one caller probes Redis again while the others keep failing open. Build the client
with `hokusai_site.cache.redis_client()` (or, by hand, short socket timeouts of about 0.1-0.25 s
and no retries: redis-py retries 10 times with back-off by default).

Embedded mode (no REDIS_URL): `get_rate_limiter()` returns a `LocalRateLimiter`, the same
algorithm in this process's memory. It enforces the limit (`enforced=True`), but per process:
with several worker processes each one grants the full limit. Fine for the single-process
development server; production sets REDIS_URL.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from hokusai_site import cache

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "hokusai:rl"
DEFAULT_WINDOW_SECONDS = 60
DEFAULT_REDIS_TIMEOUT_SECONDS = 0.25
# After a Redis failure, requests skip Redis (and fail open) for this long before one probes it.
DEFAULT_BACKOFF_SECONDS = 1.0
# At most one "Redis unreachable" warning per this many seconds per process.
WARNING_INTERVAL_SECONDS = 10.0

_MICROS = 1_000_000
# A subject's readable kind ("key", "eth", "ip") is kept in the Redis key; the rest is hashed, so
# an attacker-chosen header value can neither make a huge key nor collide with another subject.
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,15}")

# gcra(key, limit N, emission interval T in µs, cost c, now in µs or "" for Redis's clock)
# returns {allowed, remaining, µs until the bucket is full, µs until retry}. A Lua function so
# that other scripts (authkeys.gate) rate-limit in the same round trip. Mirrors `_gcra()` below;
# keep the two in step. Cost 0 is a peek: nothing is written.
GCRA_LUA = """
local function gcra(key, limit, interval, cost, now_arg)
  local now
  if now_arg == '' then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  else
    now = tonumber(now_arg)
  end
  local tolerance = limit * interval
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  if new_tat - now <= tolerance then
    if cost > 0 then
      -- The key disappears when the bucket is full again: an absent key means a full bucket.
      redis.call('SET', key, string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
    end
    return {1, math.floor((tolerance - (new_tat - now)) / interval), new_tat - now, 0}
  end
  return {0, math.floor((tolerance - (tat - now)) / interval), tat - now,
          new_tat - now - tolerance}
end
"""
# KEYS[1]: the subject's key. ARGV: limit, interval, cost, now (see `RateLimiter._call`).
_GCRA_SCRIPT = (
    GCRA_LUA
    + "return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])"
)


@dataclass(frozen=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    # Seconds (rounded up) until the full limit is available again: `X-RateLimit-Reset`.
    reset_seconds: int
    # 0 when allowed; otherwise seconds (>= 1, rounded up) until this request would pass.
    retry_after_seconds: int
    # False when Redis was unreachable and the request was let through unchecked.
    enforced: bool = True


class Limiter(Protocol):
    def hit(self, subject: str, *, limit: int, cost: int = 1) -> RateLimitResult: ...

    def peek(self, subject: str, *, limit: int) -> RateLimitResult: ...

    def reset(self, subject: str) -> None: ...


def headers(result: RateLimitResult) -> dict[str, str]:
    """Response headers for a result: delta-seconds, never an epoch (see the module docstring)."""
    values = {
        "X-RateLimit-Limit": str(result.limit),
        "X-RateLimit-Remaining": str(result.remaining),
        "X-RateLimit-Reset": str(result.reset_seconds),
    }
    if not result.allowed:
        values["Retry-After"] = str(result.retry_after_seconds)
    return values


@functools.lru_cache(maxsize=4096)
def subject_key(prefix: str, subject: str) -> str:
    """`<prefix>:<kind>:<hash>`: bounded length whatever the subject, kind kept for operators."""
    kind, sep, _ = subject.partition(":")
    if not (sep and _KIND.fullmatch(kind)):
        kind = "x"
    # surrogatepass: a lone surrogate smuggled into a header must not raise here.
    digest = hashlib.blake2b(subject.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return f"{prefix}:{kind}:{digest}"


def _check_arguments(limit: int, cost: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1; got {limit}")
    if cost < 1:
        raise ValueError(f"cost must be at least 1; got {cost}")


def _window_micros(window_seconds: float) -> int:
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be positive; got {window_seconds}")
    return round(window_seconds * _MICROS)


def _interval(window_us: int, limit: int) -> int:
    # Rounded down, so a full burst of `limit` always fits (tolerance = limit * interval).
    return max(1, window_us // limit)


def _gcra(tat: int | None, now: int, limit: int, interval: int, cost: int) -> tuple[int, ...]:
    """The script's arithmetic in Python (for `LocalRateLimiter`): returns
    (allowed, remaining, reset µs, retry µs, new TAT)."""
    tolerance = limit * interval
    tat = now if tat is None or tat < now else tat
    new_tat = tat + cost * interval
    if new_tat - now <= tolerance:
        return 1, (tolerance - (new_tat - now)) // interval, new_tat - now, 0, new_tat
    return 0, (tolerance - (tat - now)) // interval, tat - now, new_tat - now - tolerance, tat


def _result(
    raw: tuple[int, ...] | list[int], *, limit: int, cost: int, window_us: int, interval: int
) -> RateLimitResult:
    allowed, remaining, reset_us, retry_us = (int(value) for value in raw[:4])
    if cost == 0:
        # A peek: would a request of cost 1 pass now?
        allowed = int(remaining >= 1)
        retry_us = 0 if allowed else reset_us - (limit - 1) * interval
    elif cost > limit:
        # Can never pass; point the client at the end of a window rather than at "soon".
        retry_us = max(retry_us, window_us) if not allowed else 0
    return RateLimitResult(
        allowed=bool(allowed),
        limit=limit,
        remaining=max(0, min(limit, remaining)),
        reset_seconds=max(0, math.ceil(reset_us / _MICROS)),
        retry_after_seconds=0 if allowed else max(1, math.ceil(retry_us / _MICROS)),
        enforced=True,
    )


class _WarningThrottle:
    """Logs at most one warning per interval per process; counts what it held back."""

    def __init__(self, interval: float = WARNING_INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last: float | None = None
        self._suppressed = 0

    def warn(self, message: str, *args: object) -> None:
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last < self._interval:
                self._suppressed += 1
                return
            self._last, suppressed, self._suppressed = now, self._suppressed, 0
        if suppressed:
            message += f" ({suppressed} similar warnings held back)"
        logger.warning(message, *args)


_warnings = _WarningThrottle()


class _GcraLimiter:
    """hit/peek for both limiters; each supplies `_call(subject, limit=, cost=)`."""

    def hit(self, subject: str, *, limit: int, cost: int = 1) -> RateLimitResult:
        """Takes `cost` from `subject`'s allowance if it fits; a refused request takes nothing."""
        _check_arguments(limit, cost)
        return self._call(subject, limit=limit, cost=cost)

    def peek(self, subject: str, *, limit: int) -> RateLimitResult:
        """What a request of cost 1 would get now, without consuming anything."""
        _check_arguments(limit, 1)
        return self._call(subject, limit=limit, cost=0)

    def _call(self, subject: str, *, limit: int, cost: int) -> RateLimitResult:
        raise NotImplementedError


class RateLimiter(_GcraLimiter):
    """GCRA limits in Redis, atomic across processes (one Lua script call per request).

    Circuit, two states:
    - CLOSED (`_retry_at is None`): every call goes to Redis.
    - OPEN (`_retry_at` set): calls fail open without touching Redis until `_retry_at`; the first
      call after it moves `_retry_at` one back-off ahead and probes Redis (the others keep failing
      open). A probe that succeeds closes the circuit; one that fails keeps it open.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.window_seconds = window_seconds
        self.backoff_seconds = backoff_seconds
        # Wall-clock seconds (time.time-like); None = Redis's clock, shared by every process.
        self._clock = clock
        self._window_us = _window_micros(window_seconds)
        self._script = cache.ThreadScript(client, _GCRA_SCRIPT)
        self._lock = threading.Lock()
        self._retry_at: float | None = None

    @property
    def degraded(self) -> bool:
        """True while the circuit is open: the last Redis call failed, limits are not enforced."""
        return self._retry_at is not None

    def reset(self, subject: str) -> None:
        """Gives `subject` its full allowance back (an operator action; errors propagate)."""
        self.client.delete(subject_key(self.prefix, subject))

    def _call(self, subject: str, *, limit: int, cost: int) -> RateLimitResult:
        raw = self.run(
            self._script,
            keys=[self.subject_key(subject)],
            args=[limit, _interval(self._window_us, limit), cost, self.now_argument()],
        )
        if raw is None:
            return unenforced(limit)
        return self.result(raw, limit=limit, cost=cost)

    def subject_key(self, subject: str) -> str:
        return subject_key(self.prefix, subject)

    @property
    def window_micros(self) -> int:
        return self._window_us

    def now_argument(self) -> str:
        """`gcra()`'s now: "" for Redis's own clock, else the injected clock in µs."""
        return "" if self._clock is None else str(int(self._clock() * _MICROS))

    def result(self, raw: list, *, limit: int, cost: int) -> RateLimitResult:
        """The result of `gcra()`'s reply."""
        interval = _interval(self._window_us, limit)
        return _result(raw, limit=limit, cost=cost, window_us=self._window_us, interval=interval)

    def run(self, script, *, keys: list, args: list) -> list | None:
        """Runs a script of this limiter's client behind the circuit; None when Redis was
        skipped or failed, and the caller fails open."""
        if not self._may_call_redis():
            return None
        try:
            raw = script(keys=keys, args=args)
        except (redis.exceptions.RedisError, OSError) as exc:
            self._record_failure()
            _warnings.warn("Rate limits not enforced: Redis unavailable (%s)", exc)
            return None
        self._record_success()
        return raw

    def _may_call_redis(self) -> bool:
        if self._retry_at is None:  # CLOSED: the common path takes no lock
            return True
        with self._lock:
            now = time.monotonic()
            if self._retry_at is None:
                return True
            if now < self._retry_at:  # OPEN: within the back-off, skip Redis
                return False
            # OPEN -> probing: this caller tries Redis; others skip for another back-off.
            self._retry_at = now + self.backoff_seconds
            return True

    def _record_failure(self) -> None:
        with self._lock:  # CLOSED or probing -> OPEN
            self._retry_at = time.monotonic() + self.backoff_seconds

    def _record_success(self) -> None:
        if self._retry_at is not None:
            with self._lock:  # probing -> CLOSED
                self._retry_at = None


def unenforced(limit: int) -> RateLimitResult:
    # Nothing is known about usage: report the full allowance, nothing to wait for.
    return RateLimitResult(
        allowed=True,
        limit=limit,
        remaining=limit,
        reset_seconds=0,
        retry_after_seconds=0,
        enforced=False,
    )


class LocalRateLimiter(_GcraLimiter):
    """The same GCRA in this process's memory, for the embedded (no Redis) mode.

    Thread-safe, but NOT shared across processes: each worker process grants the full limit.
    Entries are dropped once their bucket is full again, so memory follows the active subjects.
    """

    _PRUNE_EVERY = 1024

    def __init__(
        self,
        *,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self.degraded = False
        self._window_us = _window_micros(window_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._tats: dict[str, int] = {}
        self._calls = 0

    def reset(self, subject: str) -> None:
        with self._lock:
            self._tats.pop(subject_key("", subject), None)

    def _call(self, subject: str, *, limit: int, cost: int) -> RateLimitResult:
        key = subject_key("", subject)
        interval = _interval(self._window_us, limit)
        with self._lock:
            now = int(self._clock() * _MICROS)
            raw = _gcra(self._tats.get(key), now, limit, interval, cost)
            if raw[0] and cost > 0:
                self._tats[key] = raw[4]
            self._calls += 1
            if self._calls % self._PRUNE_EVERY == 0:
                self._tats = {k: tat for k, tat in self._tats.items() if tat > now}
        return _result(raw, limit=limit, cost=cost, window_us=self._window_us, interval=interval)


@functools.cache
def get_rate_limiter() -> RateLimiter | LocalRateLimiter:
    """The process-wide limiter, built from Django settings on first use.

    Redis when `REDIS_URL` is set; otherwise the per-process `LocalRateLimiter` (embedded mode).
    Tests that change the settings call `get_rate_limiter.cache_clear()`.
    """
    from django.conf import settings

    window = getattr(settings, "RATE_LIMIT_WINDOW_SECONDS", DEFAULT_WINDOW_SECONDS)
    url = getattr(settings, "REDIS_URL", "")
    if not url:
        return LocalRateLimiter(window_seconds=window)
    timeout = getattr(settings, "RATE_LIMIT_REDIS_TIMEOUT_SECONDS", DEFAULT_REDIS_TIMEOUT_SECONDS)
    return RateLimiter(cache.redis_client(url, timeout=timeout), window_seconds=window)

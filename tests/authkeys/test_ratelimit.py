"""Rate limiter behaviour against the real Redis (test db 15), one key prefix per test."""

from __future__ import annotations

import logging
import multiprocessing
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from uuid import uuid4

import pytest
import redis
from django.conf import settings

from authkeys import ratelimit
from authkeys.ratelimit import (
    LocalRateLimiter,
    RateLimiter,
    RateLimitResult,
    get_rate_limiter,
    headers,
    subject_key,
)
from hokusai_site.cache import redis_client

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeClock:
    """Wall-clock seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def redis_url() -> str:
    return settings.REDIS_URL or DEFAULT_TEST_REDIS_URL


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url, timeout=0.25)
    yield client
    client.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    prefix = f"test-rl:{uuid4().hex}"
    yield prefix
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


LimiterFactory = Callable[..., RateLimiter | LocalRateLimiter]


@pytest.fixture(params=["redis", "local"])
def make_limiter(request, client: redis.Redis, prefix: str, clock: FakeClock) -> LimiterFactory:
    """Both implementations, on a fake clock: the Lua script and its Python mirror must agree."""

    def make(window_seconds: float = 60) -> RateLimiter | LocalRateLimiter:
        if request.param == "redis":
            return RateLimiter(client, prefix=prefix, window_seconds=window_seconds, clock=clock)
        return LocalRateLimiter(window_seconds=window_seconds, clock=clock)

    return make


@pytest.fixture
def dead_redis_url() -> str:
    """A loopback port nothing listens on."""
    return f"redis://127.0.0.1:{free_port()}/0"


def count_redis_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the commands this process tries to send to any Redis, reachable or not."""
    calls: list[int] = []
    send_command = redis.connection.AbstractConnection.send_command

    def counting(connection, *args, **kwargs):
        calls.append(1)
        return send_command(connection, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", counting)
    return calls


# --- the limit itself ------------------------------------------------------------------------


def test_requests_are_allowed_up_to_the_limit_then_refused(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()

    results = [limiter.hit("key:hk_live_ab12", limit=5) for _ in range(6)]

    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.remaining for r in results] == [4, 3, 2, 1, 0, 0]
    refused = results[-1]
    assert refused.retry_after_seconds >= 1
    assert refused.enforced is True
    assert all(r.retry_after_seconds == 0 for r in results[:5])


def test_refused_request_consumes_nothing(make_limiter: LimiterFactory, clock: FakeClock) -> None:
    limiter = make_limiter(window_seconds=60)  # one request back every 12 s
    for _ in range(5):
        limiter.hit("ip:10.0.0.1", limit=5)
    for _ in range(10):
        assert not limiter.hit("ip:10.0.0.1", limit=5).allowed

    clock.advance(12)

    assert limiter.hit("ip:10.0.0.1", limit=5).allowed


def test_retry_after_is_when_one_request_is_back_and_reset_when_all_are(
    make_limiter: LimiterFactory,
) -> None:
    limiter = make_limiter(window_seconds=60)
    for _ in range(4):
        limiter.hit("key:a", limit=4)

    refused = limiter.hit("key:a", limit=4)

    assert refused.retry_after_seconds == 15  # one emission interval: 60 s / 4
    assert refused.reset_seconds == 60  # the whole allowance


def test_requests_pass_again_once_the_window_has_rolled_over(
    make_limiter: LimiterFactory, clock: FakeClock
) -> None:
    limiter = make_limiter(window_seconds=2)
    assert all(limiter.hit("eth:0xabc", limit=4).allowed for _ in range(4))
    refused = limiter.hit("eth:0xabc", limit=4)
    assert not refused.allowed

    clock.advance(refused.retry_after_seconds)
    assert limiter.hit("eth:0xabc", limit=4).allowed

    clock.advance(2)
    assert limiter.peek("eth:0xabc", limit=4).remaining == 4


def test_window_rolls_over_on_the_redis_clock(client: redis.Redis, prefix: str) -> None:
    # given a limiter on Redis's own clock: 2 per second, so one request back every 0.5 s
    limiter = RateLimiter(client, prefix=prefix, window_seconds=1)
    assert limiter.hit("ip:1.2.3.4", limit=2).allowed
    assert limiter.hit("ip:1.2.3.4", limit=2).allowed
    assert not limiter.hit("ip:1.2.3.4", limit=2).allowed

    # when half a window passes
    time.sleep(0.55)

    # then exactly one more request fits
    assert limiter.hit("ip:1.2.3.4", limit=2).allowed
    assert not limiter.hit("ip:1.2.3.4", limit=2).allowed


def test_subjects_are_limited_independently(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    for _ in range(3):
        limiter.hit("key:one", limit=3)

    assert not limiter.hit("key:one", limit=3).allowed
    assert limiter.hit("key:two", limit=3).allowed
    assert limiter.hit("eth:one", limit=3).allowed


def test_a_costly_request_takes_several_units(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()

    assert limiter.hit("key:batch", limit=10, cost=4).remaining == 6
    assert limiter.hit("key:batch", limit=10, cost=4).remaining == 2
    too_costly = limiter.hit("key:batch", limit=10, cost=4)
    assert not too_costly.allowed
    assert too_costly.remaining == 2
    assert too_costly.retry_after_seconds >= 1
    last = limiter.hit("key:batch", limit=10, cost=2)
    assert last.allowed
    assert last.remaining == 0


def test_a_cost_above_the_limit_is_refused_with_a_full_window_to_wait(
    make_limiter: LimiterFactory,
) -> None:
    limiter = make_limiter(window_seconds=60)

    result = limiter.hit("key:greedy", limit=5, cost=6)

    assert not result.allowed
    assert result.remaining == 5
    assert result.retry_after_seconds == 60


def test_invalid_limit_or_cost_is_a_programming_error(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    with pytest.raises(ValueError, match="limit"):
        limiter.hit("key:x", limit=0)
    with pytest.raises(ValueError, match="cost"):
        limiter.hit("key:x", limit=5, cost=0)


def test_peek_reports_without_consuming(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    assert limiter.peek("key:p", limit=2).remaining == 2
    limiter.hit("key:p", limit=2)
    limiter.hit("key:p", limit=2)

    peeked = [limiter.peek("key:p", limit=2) for _ in range(3)]

    assert all(not p.allowed and p.remaining == 0 for p in peeked)
    assert peeked[0].retry_after_seconds == 30


def test_reset_gives_the_full_allowance_back(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter()
    for _ in range(3):
        limiter.hit("key:r", limit=3)

    limiter.reset("key:r")

    assert limiter.hit("key:r", limit=3).remaining == 2


def test_a_changed_limit_keeps_the_share_of_the_window_already_used(
    make_limiter: LimiterFactory,
) -> None:
    # given half the allowance used under a limit of 100
    limiter = make_limiter()
    for _ in range(50):
        limiter.hit("key:downgraded", limit=100)

    # when the key's limit drops to 10
    result = limiter.hit("key:downgraded", limit=10)

    # then half of the new allowance is used too (5), and this request takes one more
    assert result.allowed
    assert result.remaining == 4


# --- headers -----------------------------------------------------------------------------------


def test_headers_of_an_allowed_request_carry_limit_remaining_and_reset() -> None:
    result = RateLimitResult(
        allowed=True, limit=60, remaining=59, reset_seconds=1, retry_after_seconds=0
    )

    assert headers(result) == {
        "X-RateLimit-Limit": "60",
        "X-RateLimit-Remaining": "59",
        "X-RateLimit-Reset": "1",
    }


def test_headers_of_a_refused_request_add_retry_after(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(window_seconds=60)
    limiter.hit("key:h", limit=1)

    values = headers(limiter.hit("key:h", limit=1))

    # delta-seconds, not an epoch
    assert values == {
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "60",
        "Retry-After": "60",
    }


# --- storage -----------------------------------------------------------------------------------


def test_keys_expire_when_the_allowance_is_full_again(client: redis.Redis, prefix: str) -> None:
    limiter = RateLimiter(client, prefix=prefix, window_seconds=60)

    limiter.hit("key:ttl", limit=10)  # 6 s of the allowance used

    ttl_ms = client.pttl(subject_key(prefix, "key:ttl"))
    assert 5_000 < ttl_ms <= 6_000


def test_peek_and_refusals_write_nothing(client: redis.Redis, prefix: str) -> None:
    limiter = RateLimiter(client, prefix=prefix)

    limiter.peek("key:none", limit=10)
    limiter.hit("key:none", limit=1, cost=1)
    stored = client.get(subject_key(prefix, "key:none"))
    limiter.hit("key:none", limit=1, cost=1)

    assert client.get(subject_key(prefix, "key:none")) == stored
    assert limiter.peek("key:never", limit=3).remaining == 3
    assert client.exists(subject_key(prefix, "key:never")) == 0


@pytest.mark.parametrize(
    "subject",
    [
        "ip:" + "9" * 1_000_000,
        "",
        ":",
        "ip:\x00\r\nSET evil 1",
        "eth:0x" + "ü" * 5000,
        "key:\ud800",  # a lone surrogate
        "{hash-tag}:*?[]",
        "IP:Upper",
    ],
)
def test_huge_or_odd_subjects_make_short_keys_and_still_limit(
    client: redis.Redis, prefix: str, subject: str
) -> None:
    limiter = RateLimiter(client, prefix=prefix)

    assert limiter.hit(subject, limit=1).allowed
    assert not limiter.hit(subject, limit=1).allowed

    keys = list(client.scan_iter(match=f"{prefix}:*"))
    assert len(keys) == 1
    assert len(keys[0]) <= len(prefix) + 52


def test_subject_keys_keep_the_kind_and_never_collide() -> None:
    assert subject_key("p", "key:hk_live_ab12").startswith("p:key:")
    assert subject_key("p", "eth:0xabc").startswith("p:eth:")
    assert subject_key("p", "no kind here").startswith("p:x:")
    assert subject_key("p", "ip:1.2.3.4") != subject_key("p", "ip:1.2.3.5")
    assert subject_key("p", "key:a") != subject_key("p", "eth:a")


# --- atomic across processes ---------------------------------------------------------------------


def _hammer(
    redis_url: str, prefix: str, barrier, results, *, threads: int, hits_per_thread: int
) -> None:
    """One OS process: its own Redis client, `threads` threads hitting one subject together."""
    client = redis_client(redis_url, timeout=5)
    # An hour-long window: nothing refills while the test runs.
    limiter = RateLimiter(client, prefix=prefix, window_seconds=3600)
    allowed = 0
    enforced = True
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker() -> None:
        nonlocal allowed, enforced
        start.wait()
        for _ in range(hits_per_thread):
            result = limiter.hit("key:contended", limit=50)
            with lock:
                allowed += result.allowed
                enforced = enforced and result.enforced

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    barrier.wait()  # every process is ready before any thread starts
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    results.put((allowed, enforced))


def test_concurrent_processes_never_get_more_than_the_limit(redis_url: str, prefix: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    results = context.Queue()
    processes = [
        context.Process(
            target=_hammer,
            args=(redis_url, prefix, barrier, results),
            kwargs={"threads": 25, "hits_per_thread": 4},
        )
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert sum(allowed for allowed, _ in outcomes) == 50
    assert all(enforced for _, enforced in outcomes)


# --- Redis unreachable: fail open, back off, recover ---------------------------------------------


def test_unreachable_redis_fails_open(dead_redis_url: str) -> None:
    limiter = RateLimiter(redis_client(dead_redis_url, timeout=0.1))

    result = limiter.hit("key:k", limit=1)
    second = limiter.hit("key:k", limit=1)

    assert result == RateLimitResult(
        allowed=True, limit=1, remaining=1, reset_seconds=0, retry_after_seconds=0, enforced=False
    )
    assert second.allowed
    assert not second.enforced
    assert limiter.degraded
    assert limiter.peek("key:k", limit=1).enforced is False


def test_after_a_failure_redis_is_skipped_for_the_back_off(
    dead_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_client(dead_redis_url, timeout=0.1)
    calls = count_redis_calls(monkeypatch)
    limiter = RateLimiter(client, backoff_seconds=0.2)

    limiter.hit("key:k", limit=5)
    for _ in range(20):
        limiter.hit("key:k", limit=5)
    assert len(calls) == 1  # only the first request paid for the dead connection

    time.sleep(0.25)
    limiter.hit("key:k", limit=5)  # the back-off is over: this one probes
    limiter.hit("key:k", limit=5)  # the probe failed: back off again
    assert len(calls) == 2


def test_only_one_request_probes_when_the_back_off_ends(
    dead_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = redis_client(dead_redis_url, timeout=0.1)
    limiter = RateLimiter(client, backoff_seconds=0.2)
    limiter.hit("key:k", limit=5)
    time.sleep(0.25)
    calls = count_redis_calls(monkeypatch)
    start = threading.Barrier(10)

    def request() -> None:
        start.wait()
        limiter.hit("key:k", limit=5)

    threads = [threading.Thread(target=request) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(calls) == 1


def test_an_outage_logs_one_warning_not_one_per_request(
    dead_redis_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ratelimit, "_warnings", ratelimit._WarningThrottle())
    limiter = RateLimiter(redis_client(dead_redis_url, timeout=0.1), backoff_seconds=0)

    with caplog.at_level(logging.WARNING, logger="authkeys.ratelimit"):
        for _ in range(5):
            limiter.hit("key:k", limit=5)

    warnings = [r for r in caplog.records if r.name == "authkeys.ratelimit"]
    assert len(warnings) == 1
    assert "not enforced" in warnings[0].getMessage()


class ThrowawayRedis:
    """A loopback port with no Redis until `start()` runs a private redis-server on it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        self.server = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=self.port, socket_connect_timeout=0.1)
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        probe.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=10)


@pytest.fixture
def throwaway_redis() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    yield server
    server.stop()


def test_limits_are_enforced_again_once_redis_is_back(throwaway_redis: ThrowawayRedis) -> None:
    # given Redis is down
    client = redis_client(throwaway_redis.url, timeout=0.1)
    limiter = RateLimiter(client, backoff_seconds=0.1)
    assert limiter.hit("key:k", limit=1).enforced is False

    # when it comes back and the back-off is over
    throwaway_redis.start()
    time.sleep(0.15)

    # then the next request is counted again, script loaded afresh on the new server
    assert limiter.hit("key:k", limit=1) == RateLimitResult(
        allowed=True, limit=1, remaining=0, reset_seconds=60, retry_after_seconds=0, enforced=True
    )
    assert not limiter.degraded
    assert not limiter.hit("key:k", limit=1).allowed


# --- the process-wide limiter ------------------------------------------------------------------


@pytest.fixture
def fresh_rate_limiter() -> Iterator[None]:
    get_rate_limiter.cache_clear()
    yield
    get_rate_limiter.cache_clear()


def test_process_limiter_uses_redis_when_configured(
    settings, fresh_rate_limiter, redis_url
) -> None:
    settings.REDIS_URL = redis_url
    settings.RATE_LIMIT_WINDOW_SECONDS = 30

    limiter = get_rate_limiter()

    assert isinstance(limiter, RateLimiter)
    assert limiter.window_seconds == 30
    assert get_rate_limiter() is limiter
    pool_kwargs = limiter.client.connection_pool.connection_kwargs
    assert pool_kwargs["socket_timeout"] == pool_kwargs["socket_connect_timeout"] == 0.25
    assert limiter.client.get_retry().get_retries() == 0  # one short timeout, not ten


def test_process_limiter_is_in_memory_without_redis(settings, fresh_rate_limiter) -> None:
    settings.REDIS_URL = ""

    limiter = get_rate_limiter()

    assert isinstance(limiter, LocalRateLimiter)
    assert limiter.window_seconds == 60
    assert limiter.hit("key:k", limit=1).enforced is True
    assert not limiter.hit("key:k", limit=1).allowed


def test_local_limiter_forgets_subjects_whose_allowance_is_full(clock: FakeClock) -> None:
    limiter = LocalRateLimiter(window_seconds=1, clock=clock)
    for n in range(LocalRateLimiter._PRUNE_EVERY - 1):
        limiter.hit(f"ip:10.0.{n // 256}.{n % 256}", limit=10)

    clock.advance(1)
    limiter.hit("ip:127.0.0.1", limit=10)

    assert len(limiter._tats) == 1

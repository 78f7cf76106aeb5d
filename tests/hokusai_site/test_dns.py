import pickle
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from hokusai_site import dns
from hokusai_site.dns import DnsResolutionError, DnsResolver

HOST = "mlflow.internal"
WAIT = 5.0  # seconds; only a bound so a broken implementation fails instead of hanging


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.callers: set[int] = set()

    def __call__(self) -> float:
        self.callers.add(threading.get_ident())
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeLookup:
    """Answers from a table; records every call; can be switched to failing."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers if answers is not None else {HOST: ["10.0.0.1"]}
        self.calls: list[str] = []
        self.fail = False
        self.calls_lock = threading.Lock()

    def __call__(self, host: str) -> list[str]:
        with self.calls_lock:
            self.calls.append(host)
        if self.fail:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.answers[host])


def make_resolver(
    lookup: FakeLookup, clock: FakeClock, *, ttl: float = 300.0, fallback_ip: str | None = None
) -> DnsResolver:
    return DnsResolver(ttl=ttl, fallback_ip=fallback_ip, lookup=lookup, clock=clock)


def test_first_resolution_queries_dns():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)

    result = resolver.resolve(HOST)

    assert (result.address, result.addresses, result.source) == ("10.0.0.1", ("10.0.0.1",), "dns")
    assert result.age_seconds == 0.0
    assert lookup.calls == [HOST]


def test_fresh_entry_is_served_from_cache_without_lookup():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock, ttl=300)
    resolver.resolve(HOST)
    clock.advance(299)

    result = resolver.resolve(HOST)

    assert result.source == "cache"
    assert result.address == "10.0.0.1"
    assert result.age_seconds == pytest.approx(299)
    assert lookup.calls == [HOST]


def test_host_names_are_cached_case_insensitively():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)
    resolver.resolve(HOST)

    assert resolver.resolve(HOST.upper()).source == "cache"
    assert lookup.calls == [HOST]


def test_entry_older_than_ttl_triggers_new_lookup():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock, ttl=300)
    resolver.resolve(HOST)
    clock.advance(300)
    lookup.answers[HOST] = ["10.0.0.2"]

    result = resolver.resolve(HOST)

    assert (result.source, result.address) == ("dns", "10.0.0.2")
    assert lookup.calls == [HOST, HOST]


def test_zero_ttl_disables_caching():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock, ttl=0)

    sources = [resolver.resolve(HOST).source for _ in range(3)]

    assert sources == ["dns", "dns", "dns"]
    assert len(lookup.calls) == 3


def test_failed_refresh_serves_last_good_address_as_stale():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock, ttl=300, fallback_ip="192.0.2.9")
    resolver.resolve(HOST)
    clock.advance(1000)
    lookup.fail = True

    result = resolver.resolve(HOST)

    assert (result.source, result.address) == ("stale", "10.0.0.1")
    assert result.age_seconds == pytest.approx(1000)
    assert resolver.stats()["stale_served"] == 1
    assert resolver.stats()["fallbacks_used"] == 0


def test_stale_entry_is_retried_on_every_call_while_dns_is_down():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)
    resolver.resolve(HOST)
    clock.advance(301)
    lookup.fail = True

    for _ in range(3):
        assert resolver.resolve(HOST).source == "stale"

    assert len(lookup.calls) == 4
    assert resolver.stats()["failures"] == 3


def test_fallback_ip_used_when_no_lookup_ever_succeeded():
    lookup, clock = FakeLookup(), FakeClock()
    lookup.fail = True
    resolver = make_resolver(lookup, clock, fallback_ip="192.0.2.9")

    result = resolver.resolve(HOST)

    assert result.source == "fallback"
    assert result.address == "192.0.2.9"
    assert result.addresses == ("192.0.2.9",)
    assert result.age_seconds is None
    assert resolver.stats()["fallbacks_used"] == 1


def test_error_names_host_and_cause_when_no_entry_and_no_fallback():
    lookup, clock = FakeLookup(), FakeClock()
    lookup.fail = True
    resolver = make_resolver(lookup, clock, fallback_ip="")

    with pytest.raises(DnsResolutionError) as excinfo:
        resolver.resolve(HOST)

    message = str(excinfo.value)
    assert HOST in message
    assert "Name or service not known" in message
    assert excinfo.value.host == HOST
    assert isinstance(excinfo.value.__cause__, socket.gaierror)
    assert not isinstance(excinfo.value, OSError)
    assert resolver.stats()["failures"] == 1


def test_resolution_error_survives_pickling():
    error = DnsResolutionError(HOST, "gaierror: boom")

    restored = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes

    assert (restored.host, restored.reason, str(restored)) == (HOST, error.reason, str(error))


def test_empty_lookup_answer_counts_as_failure():
    lookup, clock = FakeLookup({HOST: []}), FakeClock()
    resolver = make_resolver(lookup, clock)

    with pytest.raises(DnsResolutionError, match="no addresses"):
        resolver.resolve(HOST)
    assert resolver.stats()["failures"] == 1


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("[::1]", "::1"), ("10.1.2.3", "10.1.2.3")],
)
def test_ip_literal_is_returned_without_lookup(host, expected):
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)

    result = resolver.resolve(host)

    assert (result.address, result.addresses, result.source) == (expected, (expected,), "literal")
    assert result.age_seconds is None
    assert lookup.calls == []
    assert resolver.stats() == dict.fromkeys(dns.COUNTER_NAMES, 0)


def test_ipv4_preferred_over_ipv6_keeping_order_within_family():
    lookup = FakeLookup({"localhost": ["::1", "127.0.0.1", "fe80::1", "127.0.0.2", "127.0.0.1"]})
    resolver = make_resolver(lookup, FakeClock())

    result = resolver.resolve("localhost")

    assert result.address == "127.0.0.1"
    assert result.addresses == ("127.0.0.1", "127.0.0.2", "::1", "fe80::1")


def test_success_after_failure_refreshes_entry_and_clears_stale_state():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)
    resolver.resolve(HOST)
    clock.advance(400)
    lookup.fail = True
    assert resolver.resolve(HOST).source == "stale"
    assert resolver.snapshot(HOST)["stale"] is True

    lookup.fail = False
    lookup.answers[HOST] = ["10.0.0.7"]
    refreshed = resolver.resolve(HOST)
    clock.advance(10)
    cached = resolver.resolve(HOST)

    assert (refreshed.source, refreshed.address) == ("dns", "10.0.0.7")
    assert (cached.source, cached.address) == ("cache", "10.0.0.7")
    assert resolver.snapshot(HOST) == {
        "address": "10.0.0.7",
        "age_seconds": pytest.approx(10),
        "stale": False,
        "fallback_in_use": False,
        "last_error": None,
    }


def test_success_after_fallback_stops_using_fallback():
    lookup, clock = FakeLookup(), FakeClock()
    lookup.fail = True
    resolver = make_resolver(lookup, clock, fallback_ip="192.0.2.9")
    resolver.resolve(HOST)
    assert resolver.snapshot(HOST)["fallback_in_use"] is True

    lookup.fail = False
    result = resolver.resolve(HOST)

    assert (result.source, result.address) == ("dns", "10.0.0.1")
    assert resolver.snapshot(HOST)["fallback_in_use"] is False


def test_counters_track_each_outcome():
    lookup, clock = FakeLookup({HOST: ["10.0.0.1"], "other": ["10.0.0.2"]}), FakeClock()
    resolver = make_resolver(lookup, clock, ttl=60, fallback_ip="192.0.2.9")

    resolver.resolve(HOST)  # lookup
    resolver.resolve(HOST)  # hit
    resolver.resolve(HOST)  # hit
    resolver.resolve("127.0.0.1")  # literal: counts nothing
    clock.advance(60)
    lookup.fail = True
    resolver.resolve(HOST)  # lookup + failure + stale
    resolver.resolve("other")  # lookup + failure + fallback

    assert resolver.stats() == {
        "lookups": 3,
        "hits": 2,
        "failures": 2,
        "stale_served": 1,
        "fallbacks_used": 1,
    }


def test_snapshot_reports_state_without_lookup():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)

    assert resolver.snapshot(HOST) is None
    resolver.resolve(HOST)
    clock.advance(30)
    snap = resolver.snapshot(HOST)

    assert snap == {
        "address": "10.0.0.1",
        "age_seconds": pytest.approx(30),
        "stale": False,
        "fallback_in_use": False,
        "last_error": None,
    }
    assert lookup.calls == [HOST]


def test_snapshot_shows_last_error_when_serving_stale_or_fallback_or_nothing():
    lookup, clock = FakeLookup({HOST: ["10.0.0.1"], "b": ["10.0.0.2"]}), FakeClock()
    resolver = make_resolver(lookup, clock, ttl=10, fallback_ip="192.0.2.9")
    bare = make_resolver(lookup, clock, ttl=10)
    resolver.resolve(HOST)
    clock.advance(10)
    lookup.fail = True
    resolver.resolve(HOST)
    resolver.resolve("b")
    with pytest.raises(DnsResolutionError):
        bare.resolve("b")

    stale, fallback, nothing = resolver.snapshot(HOST), resolver.snapshot("b"), bare.snapshot("b")

    assert (stale["address"], stale["stale"], stale["fallback_in_use"]) == ("10.0.0.1", True, False)
    assert "Name or service not known" in stale["last_error"]
    assert fallback["address"] == "192.0.2.9"
    assert (fallback["stale"], fallback["fallback_in_use"]) == (False, True)
    assert fallback["age_seconds"] is None
    assert nothing["address"] is None
    assert "Name or service not known" in nothing["last_error"]


def test_clear_forgets_cache_and_counters():
    lookup, clock = FakeLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)
    resolver.resolve(HOST)
    resolver.resolve(HOST)

    resolver.clear()

    assert resolver.stats() == dict.fromkeys(dns.COUNTER_NAMES, 0)
    assert resolver.snapshot(HOST) is None
    assert resolver.resolve(HOST).source == "dns"
    assert len(lookup.calls) == 2


class BlockingLookup(FakeLookup):
    """Blocks inside the lookup until released, so a test controls when a query completes."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        super().__init__(answers)
        self.blocking_hosts: set[str] = set()
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, host: str) -> list[str]:
        if host in self.blocking_hosts:
            self.entered.set()
            assert self.release.wait(WAIT), "test never released the lookup"
        return super().__call__(host)


def run_threads(count: int, target) -> tuple[list[threading.Thread], list, list]:
    results: list = []
    errors: list = []

    def worker() -> None:
        try:
            results.append(target())
        except Exception as exc:  # collected and asserted on by the test
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, results, errors


def wait_until(predicate) -> None:
    # Polls for a state the threads reach on their own; correctness never depends on timing.
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


def expire_cached_entry(resolver: DnsResolver, lookup: BlockingLookup, clock: FakeClock) -> None:
    # Every caller must then read the clock to find the entry expired, which tells the test that
    # it has gone past the cache check and is now contending for the lookup.
    resolver.resolve(HOST)
    clock.advance(301)
    lookup.blocking_hosts.add(HOST)
    lookup.calls.clear()


def resolve_from_threads(
    resolver: DnsResolver, lookup: BlockingLookup, arrived, count: int
) -> tuple[list, list]:
    """`count` threads resolve HOST; the blocked lookup is released once `arrived()` is true."""
    threads, results, errors = run_threads(count, lambda: resolver.resolve(HOST))
    wait_until(arrived)
    lookup.release.set()
    for thread in threads:
        thread.join(WAIT)
    return results, errors


def test_concurrent_callers_share_a_single_lookup():
    lookup, clock = BlockingLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)
    expire_cached_entry(resolver, lookup, clock)
    lookup.answers[HOST] = ["10.0.0.9"]
    clock.callers.clear()

    results, errors = resolve_from_threads(
        resolver, lookup, lambda: lookup.entered.is_set() and len(clock.callers) >= 20, 20
    )

    assert errors == []
    assert lookup.calls == [HOST]
    assert sorted(r.source for r in results) == ["cache"] * 19 + ["dns"]
    assert {r.address for r in results} == {"10.0.0.9"}
    assert resolver.stats()["lookups"] == 2  # the priming one and the shared one
    assert resolver.stats()["hits"] == 19


def test_concurrent_callers_share_a_failed_lookup_instead_of_retrying():
    lookup, clock = BlockingLookup(), FakeClock()
    resolver = make_resolver(lookup, clock)
    expire_cached_entry(resolver, lookup, clock)
    lookup.fail = True
    clock.callers.clear()

    results, errors = resolve_from_threads(
        resolver, lookup, lambda: lookup.entered.is_set() and len(clock.callers) >= 20, 20
    )

    assert errors == []
    assert lookup.calls == [HOST]
    assert [r.source for r in results] == ["stale"] * 20
    assert resolver.stats()["failures"] == 1
    assert resolver.stats()["stale_served"] == 20


def test_concurrent_callers_all_get_the_error_when_nothing_to_serve():
    lookup, clock = BlockingLookup(), FakeClock()
    lookup.blocking_hosts.add(HOST)
    lookup.fail = True
    resolver = make_resolver(lookup, clock)

    results, errors = resolve_from_threads(resolver, lookup, lookup.entered.is_set, 5)

    assert results == []
    assert len(errors) == 5
    assert all(isinstance(e, DnsResolutionError) and e.host == HOST for e in errors)
    # Callers that arrived before the query finished reuse its failure; at most the odd
    # late-comer (after the failure was recorded) queries again.
    assert 1 <= len(lookup.calls) <= 5


def test_slow_lookup_of_one_host_does_not_block_other_hosts():
    lookup = BlockingLookup({HOST: ["10.0.0.1"], "other.internal": ["10.0.0.2"]})
    lookup.blocking_hosts.add(HOST)
    resolver = make_resolver(lookup, FakeClock())

    slow_threads, slow_results, _ = run_threads(1, lambda: resolver.resolve(HOST))
    assert lookup.entered.wait(WAIT)
    other = resolver.resolve("other.internal")

    assert (other.source, other.address) == ("dns", "10.0.0.2")
    assert slow_threads[0].is_alive()
    assert slow_results == []
    lookup.release.set()
    slow_threads[0].join(WAIT)
    assert slow_results[0].address == "10.0.0.1"


@pytest.mark.parametrize("bad", ["not-an-ip", "10.0.0.300", "[::1]", "mlflow.internal"])
def test_invalid_fallback_ip_is_rejected_naming_the_setting(bad):
    with pytest.raises(ValueError, match="MLFLOW_FALLBACK_IP"):
        DnsResolver(fallback_ip=bad)


def test_negative_ttl_is_rejected():
    with pytest.raises(ValueError, match="DNS_CACHE_TTL"):
        DnsResolver(ttl=-1)


def test_empty_host_is_rejected():
    with pytest.raises(ValueError, match="host"):
        DnsResolver().resolve("")


@pytest.fixture
def fake_settings(monkeypatch):
    # Stands in for django.conf.settings so these tests need no configured Django.
    settings = SimpleNamespace(DNS_CACHE_TTL=42, MLFLOW_FALLBACK_IP="")
    monkeypatch.setattr("django.conf.settings", settings)
    dns.reset_resolver()
    yield settings
    dns.reset_resolver()


def test_get_resolver_builds_one_resolver_from_settings(fake_settings):
    fake_settings.MLFLOW_FALLBACK_IP = "192.0.2.9"

    resolver = dns.get_resolver()

    assert dns.get_resolver() is resolver
    assert resolver.ttl == 42.0
    assert resolver.fallback_ip == "192.0.2.9"


def test_get_resolver_treats_empty_fallback_setting_as_none(fake_settings):
    assert dns.get_resolver().fallback_ip is None


def test_reset_resolver_rebuilds_from_current_settings(fake_settings):
    first = dns.get_resolver()
    fake_settings.DNS_CACHE_TTL = 7

    dns.reset_resolver()
    second = dns.get_resolver()

    assert second is not first
    assert second.ttl == 7.0


def test_system_lookup_resolves_localhost_to_ipv4_loopback_first():
    # Real resolver, but only /etc/hosts territory: no network needed.
    addresses = dns.system_lookup("localhost")

    assert addresses[0] == "127.0.0.1"
    assert len(addresses) == len(set(addresses))
    assert DnsResolver().resolve("localhost").address == "127.0.0.1"

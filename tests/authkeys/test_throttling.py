import pytest
import urllib3

from authkeys import ratelimit, services
from authkeys.principals import SYSTEM

pytestmark = pytest.mark.django_db

KEYS_URL = "/api/v1/keys"


@pytest.fixture(autouse=True)
def _fresh_limiter():
    ratelimit.get_rate_limiter.cache_clear()
    yield
    ratelimit.get_rate_limiter.cache_clear()


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def test_authenticated_responses_carry_the_keys_own_limit(client, owner, issue_key):
    _, key = issue_key(owner, ["keys:manage"], rate_limit_per_minute=5)
    first = client.get(KEYS_URL, **bearer(key))
    second = client.get(KEYS_URL, **bearer(key))
    assert first["X-RateLimit-Limit"] == "5"
    assert first["X-RateLimit-Remaining"] == "4"
    assert second["X-RateLimit-Remaining"] == "3"
    assert 0 < int(second["X-RateLimit-Reset"]) <= 60
    assert "Retry-After" not in second


def test_over_the_limit_is_429_in_the_error_shape_with_retry_after(client, owner, issue_key):
    _, key = issue_key(owner, ["keys:manage"], rate_limit_per_minute=2)
    assert [client.get(KEYS_URL, **bearer(key)).status_code for _ in range(2)] == [200, 200]
    refused = client.get(KEYS_URL, **bearer(key))
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    assert refused["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(refused["Retry-After"]) <= 30


def test_each_key_has_its_own_budget(client, owner, issue_key):
    _, busy = issue_key(owner, ["keys:manage"], rate_limit_per_minute=1)
    _, quiet = issue_key(owner, ["keys:manage"], rate_limit_per_minute=1)
    client.get(KEYS_URL, **bearer(busy))
    assert client.get(KEYS_URL, **bearer(busy)).status_code == 429
    assert client.get(KEYS_URL, **bearer(quiet)).status_code == 200


def test_a_rotated_key_keeps_its_budget(client, owner, issue_key):
    api_key, old = issue_key(owner, ["keys:manage"], rate_limit_per_minute=2)
    client.get(KEYS_URL, **bearer(old))
    client.get(KEYS_URL, **bearer(old))
    _, new = services.api_key_rotate(actor=SYSTEM, api_key=api_key)
    assert client.get(KEYS_URL, **bearer(new)).status_code == 429


def test_anonymous_calls_are_limited_per_ip(client, settings):
    settings.HOKUSAI_ANONYMOUS_RATE_LIMIT = 2
    statuses = [client.get("/api/v1/schema").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    other_ip = client.get("/api/v1/schema", REMOTE_ADDR="127.0.0.2")
    assert other_ip.status_code == 200


def test_platform_routes_are_never_limited(client, settings):
    settings.HOKUSAI_ANONYMOUS_RATE_LIMIT = 1
    assert {client.get("/version").status_code for _ in range(3)} == {200}
    assert "X-RateLimit-Limit" not in client.get("/version")


def test_repeated_bad_credentials_from_one_ip_are_throttled(client, settings):
    settings.HOKUSAI_AUTH_FAILURE_RATE_LIMIT = 3
    bad = {"HTTP_AUTHORIZATION": "Bearer hk_live_nonsense"}
    statuses = [client.get(KEYS_URL, **bad).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert client.get(KEYS_URL, **bad)["Retry-After"]


def test_limits_fail_open_when_redis_is_unreachable(client, owner, issue_key, settings):
    _, key = issue_key(owner, ["keys:manage"], rate_limit_per_minute=1)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    ratelimit.get_rate_limiter.cache_clear()
    statuses = [client.get(KEYS_URL, **bearer(key)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]


@pytest.mark.slow
def test_the_limit_is_shared_by_two_server_processes(web_server_factory, owner):
    _, key = services.api_key_create(
        actor=SYSTEM,
        owner_user_id=owner.pk,
        name="shared",
        scopes=["keys:manage"],
        rate_limit_per_minute=10,
    )
    servers = [web_server_factory(), web_server_factory()]
    # retries=False: urllib3 would otherwise sleep out Retry-After and try again.
    http = urllib3.PoolManager(retries=False)
    statuses = [
        http.request(
            "GET", f"{server}{KEYS_URL}", headers={"Authorization": f"Bearer {key}"}
        ).status
        for _ in range(8)
        for server in servers
    ]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 6


def test_with_redis_down_keys_still_work_from_the_database(client, owner, issue_key, settings):
    _, key = issue_key(owner, ["keys:manage"])
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.CACHES = {
        "default": {
            "BACKEND": "hokusai_site.cache.RedisCache",
            "LOCATION": settings.REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 0.1, "socket_timeout": 0.1},
        }
    }
    ratelimit.get_rate_limiter.cache_clear()
    from authkeys import usage

    usage._client.cache_clear()
    try:
        statuses = [client.get(KEYS_URL, **bearer(key)).status_code for _ in range(3)]
        refused = client.get(KEYS_URL, **bearer(key[:-1] + "0"))
    finally:
        usage._client.cache_clear()
    assert statuses == [200, 200, 200]
    assert refused.status_code == 401

"""The one-round-trip key check (authkeys.gate): what a cached key costs, and that every change
still reaches every process on its next request."""

import pytest
import redis
import urllib3
from django.conf import settings
from django.utils import timezone

from authkeys import gate, ratelimit, services
from authkeys.models import ApiKey
from authkeys.principals import SYSTEM

pytestmark = pytest.mark.django_db

KEYS_URL = "/api/v1/keys"


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def redis_commands(monkeypatch):
    """The commands this process sends to Redis, by name, as they are sent."""
    sent: list[str] = []
    send_command = redis.connection.AbstractConnection.send_command

    def recording(connection, *args, **kwargs):
        sent.append(str(args[0]).lower())
        return send_command(connection, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_command", recording)
    return sent


def test_a_key_this_process_served_costs_one_redis_command_and_no_query(
    client, owner, issue_key, redis_commands, django_assert_num_queries
):
    # Without keys:manage the view refuses before it queries anything itself.
    _, key = issue_key(owner, ["models:read"])
    assert client.get(KEYS_URL, **bearer(key)).status_code == 403  # reads and keeps the facts
    redis_commands.clear()
    with django_assert_num_queries(0):
        response = client.get(KEYS_URL, **bearer(key))
    assert response.json()["code"] == "insufficient_scope"
    assert redis_commands == ["evalsha"]
    assert response["X-RateLimit-Remaining"] == str(600 - 2)


def test_after_redis_lost_its_data_the_facts_are_read_again(client, owner, issue_key, redis_client):
    api_key, key = issue_key(owner, ["keys:manage"])
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200
    # A revoke Redis never heard of (its data gone), made behind the services' back.
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    redis_client.flushdb()
    response = client.get(KEYS_URL, **bearer(key))
    assert response.status_code == 401
    assert response.json()["code"] == "api_key_revoked"


def test_a_change_whose_publication_was_lost_is_published_again_by_the_beat(
    client, owner, issue_key
):
    api_key, key = issue_key(owner, ["keys:manage"])
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200
    # This test's transaction never commits, so the on-commit publication never runs: the
    # same as Redis being unreachable when it did.
    services.api_key_revoke(actor=SYSTEM, api_key=api_key)
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200  # the window the beat closes
    assert services.republish_key_changes() == 1
    response = client.get(KEYS_URL, **bearer(key))
    assert response.status_code == 401
    assert response.json()["code"] == "api_key_revoked"


def test_old_changes_are_not_published_again(owner, issue_key):
    api_key, _ = issue_key(owner, ["keys:manage"])
    long_ago = timezone.now() - timezone.timedelta(seconds=settings.HOKUSAI_API_KEY_CACHE_SECONDS)
    ApiKey.objects.filter(pk=api_key.pk).update(changed_at=long_ago - timezone.timedelta(hours=1))
    assert services.republish_key_changes() == 0


def test_a_refused_key_is_not_counted_against_its_limit_or_usage(
    client, owner, issue_key, redis_client
):
    api_key, key = issue_key(owner, ["keys:manage"], rate_limit_per_minute=5)
    ApiKey.objects.filter(pk=api_key.pk).update(revoked_at=timezone.now())
    assert client.get(KEYS_URL, **bearer(key)).status_code == 401
    assert client.get(KEYS_URL, **bearer(key)).status_code == 401
    limiter = ratelimit.get_rate_limiter()
    assert limiter.peek(f"key:{api_key.pk}", limit=5).remaining == 5
    assert redis_client.keys("authkeys:usage:*") == []


def test_local_facts_expire_after_their_age():
    cache = gate.LocalKeyCache(max_entries=2, max_age=0)
    assert cache.get("digest") is None
    info = object()
    cache.put("a", info)
    assert cache.get("a") is None  # older than 0 s: not trusted

    cache = gate.LocalKeyCache(max_entries=2, max_age=60)
    for digest in ("a", "b", "c"):
        cache.put(digest, digest)
    assert [cache.get(d) for d in ("a", "b", "c")] == [None, "b", "c"]  # the oldest went


@pytest.mark.slow
def test_a_revoke_reaches_a_server_process_that_holds_the_key(web_server_factory, owner):
    api_key, key = services.api_key_create(
        actor=SYSTEM, owner_user_id=owner.pk, name="held", scopes=["keys:manage"]
    )
    server = web_server_factory()
    http = urllib3.PoolManager(retries=False)
    headers = {"Authorization": f"Bearer {key}"}
    assert http.request("GET", f"{server}{KEYS_URL}", headers=headers).status == 200
    assert http.request("GET", f"{server}{KEYS_URL}", headers=headers).status == 200

    services.api_key_revoke(actor=SYSTEM, api_key=api_key)  # commits: transactional_db

    response = http.request("GET", f"{server}{KEYS_URL}", headers=headers)
    assert response.status == 401
    assert response.json()["code"] == "api_key_revoked"


def test_the_beat_publishes_recent_changes_every_minute():
    from hokusai_site.celery import app

    app.loader.import_default_modules()  # what a worker does at start: finds the tasks
    entry = settings.CELERY_BEAT_SCHEDULE["republish-api-key-changes"]
    assert entry == {"task": "authkeys.republish_key_changes", "schedule": 60.0}
    assert "authkeys.republish_key_changes" in app.tasks


def test_using_a_held_key_does_not_make_its_facts_younger(client, owner, issue_key):
    _, key = issue_key(owner, ["keys:manage"])
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200
    (entry,) = gate.local_cache()._entries.values()
    assert client.get(KEYS_URL, **bearer(key)).status_code == 200
    assert gate.local_cache()._entries[next(iter(gate.local_cache()._entries))] is entry

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from authkeys import usage
from authkeys.models import ApiKeyUsageDaily
from authkeys.tasks import flush_usage

pytestmark = pytest.mark.django_db

KEYS_URL = "/api/v1/keys"


def bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}"}


def usage_of(client, key, key_id) -> dict:
    response = client.get(f"{KEYS_URL}/{key_id}/usage", **bearer(key))
    assert response.status_code == 200
    return {day["date"]: day["requests"] for day in response.json()["days"]}


def test_requests_are_counted_per_key_and_day_without_database_writes(
    client, owner, issue_key, django_assert_num_queries
):
    api_key, key = issue_key(owner, ["keys:manage"])
    client.get(KEYS_URL, **bearer(key))  # fills the key cache and records last use
    with django_assert_num_queries(0):
        client.get("/api/v1/schema", **bearer(key))
    today = timezone.now().date().isoformat()
    # Two requests above, plus the usage request itself.
    assert usage_of(client, key, api_key.pk) == {today: 3}
    assert not ApiKeyUsageDaily.objects.exists()


def test_flush_moves_counts_to_the_database_and_keeps_totals(client, owner, issue_key):
    api_key, key = issue_key(owner, ["keys:manage"])
    for _ in range(4):
        client.get(KEYS_URL, **bearer(key))

    assert flush_usage() == 4
    assert flush_usage() == 0  # nothing counted twice

    row = ApiKeyUsageDaily.objects.get(api_key=api_key)
    assert (row.day, row.requests) == (timezone.now().date(), 4)
    client.get(KEYS_URL, **bearer(key))
    today = timezone.now().date().isoformat()
    assert usage_of(client, key, api_key.pk) == {today: 6}


def test_a_batch_left_by_a_crashed_flush_is_flushed_next_time(owner, issue_key):
    api_key, _ = issue_key(owner)
    client = usage._client()
    day = timezone.now().date()
    client.hset(usage.FLUSHING_KEY.format(day=day.isoformat()), str(api_key.pk), 7)
    client.hset(usage.DAY_KEY.format(day=day.isoformat()), str(api_key.pk), 2)
    assert usage.flush_usage() == 7
    assert usage.flush_usage() == 2
    assert ApiKeyUsageDaily.objects.get(api_key=api_key).requests == 9


def test_last_used_is_written_at_most_once_a_minute(client, owner, issue_key):
    api_key, key = issue_key(owner, ["keys:manage"])
    client.get(KEYS_URL, **bearer(key))
    api_key.refresh_from_db()
    first = api_key.last_used_at
    assert first is not None
    assert api_key.last_used_ip == "127.0.0.1"
    client.get(KEYS_URL, **bearer(key), REMOTE_ADDR="127.0.0.9")
    api_key.refresh_from_db()
    assert api_key.last_used_at == first
    assert api_key.last_used_ip == "127.0.0.1"


def test_usage_covers_the_requested_days_only(client, owner, issue_key):
    api_key, key = issue_key(owner, ["keys:manage"])
    old_day = timezone.now().date() - timedelta(days=40)
    ApiKeyUsageDaily.objects.create(api_key=api_key, day=old_day, requests=5)
    assert old_day.isoformat() not in usage_of(client, key, api_key.pk)
    response = client.get(f"{KEYS_URL}/{api_key.pk}/usage?days=60", **bearer(key))
    assert {d["date"]: d["requests"] for d in response.json()["days"]}[old_day.isoformat()] == 5
    bad = client.get(f"{KEYS_URL}/{api_key.pk}/usage?days=0", **bearer(key))
    assert bad.status_code == 400
    assert "days" in bad.json()["errors"]


def test_another_owners_usage_is_404(client, owner, outsider, issue_key):
    theirs, _ = issue_key(outsider)
    _, key = issue_key(owner, ["keys:manage"])
    assert client.get(f"{KEYS_URL}/{theirs.pk}/usage", **bearer(key)).status_code == 404


def test_usage_flush_runs_every_minute_from_beat():
    schedule = settings.CELERY_BEAT_SCHEDULE["flush-api-key-usage"]
    assert schedule == {"task": "authkeys.flush_usage", "schedule": 60.0}
    assert flush_usage.name == "authkeys.flush_usage"

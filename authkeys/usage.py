"""Counting requests per API key without a database write per request.

Each authenticated request adds one to today's Redis hash (`authkeys:usage:<day>`, field =
key id) and, at most once a minute per key, records `last_used_at` / `last_used_ip` on the key
row; authkeys.gate does both in the request's one Redis round trip. `flush_usage()` (a Celery
beat task) moves the counts into ApiKeyUsageDaily. Without Redis (embedded mode) the counts go
straight to the database.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from authkeys.models import ApiKey, ApiKeyUsageDaily
from hokusai_site.cache import redis_client

DAY_KEY = "authkeys:usage:{day}"
FLUSHING_KEY = "authkeys:usage-flushing:{day}"
LAST_USED_KEY = "authkeys:last-used:{key_id}"
# Unflushed counts outlive a long worker outage, but not forever.
DAY_KEY_TTL_SECONDS = 8 * 24 * 3600
LAST_USED_EVERY_SECONDS = 60


# count_usage(today's hash, the key's last-used marker, key id, hash TTL, marker TTL) returns 1
# when last_used_at is due again. Run by authkeys.gate's script, in the request's one round trip.
COUNT_LUA = """
local function count_usage(day_key, marker_key, key_id, day_ttl, marker_ttl)
  redis.call('HINCRBY', day_key, key_id, 1)
  redis.call('EXPIRE', day_key, day_ttl)
  if redis.call('SET', marker_key, 1, 'NX', 'EX', marker_ttl) then return 1 end
  return 0
end
"""


def count_keys(key_id: int, now: datetime) -> list[str]:
    """KEYS for `count_usage()`: today's hash and the key's last-used marker."""
    return [DAY_KEY.format(day=now.date().isoformat()), LAST_USED_KEY.format(key_id=key_id)]


@cache
def _client():
    return redis_client(settings.REDIS_URL, timeout=settings.RATE_LIMIT_REDIS_TIMEOUT_SECONDS)


def _add_to_database(counts: dict[tuple[int, date], int]) -> None:
    existing_keys = set(
        ApiKey.objects.filter(pk__in={key_id for key_id, _ in counts}).values_list("pk", flat=True)
    )
    for (key_id, day), requests in counts.items():
        if key_id not in existing_keys:
            continue  # the key was deleted since
        updated = ApiKeyUsageDaily.objects.filter(api_key_id=key_id, day=day).update(
            requests=F("requests") + requests
        )
        if not updated:
            ApiKeyUsageDaily.objects.create(api_key_id=key_id, day=day, requests=requests)


def touch_last_used(key_id: int, ip: str | None, now: datetime) -> None:
    ApiKey.objects.filter(pk=key_id).update(last_used_at=now, last_used_ip=ip)


def record_in_database(*, key_id: int, ip: str | None) -> None:
    """Embedded mode (no Redis): the count and last use go straight to the database."""
    now = timezone.now()
    with transaction.atomic():
        _add_to_database({(key_id, now.date()): 1})
        touch_last_used(key_id, ip, now)


def flush_usage(*, today: date | None = None) -> int:
    """Moves the counts of today and the last week from Redis into the database; returns the
    number of requests moved.

    Each day's hash is renamed before it is read, so requests counted meanwhile go to a fresh
    hash and are never lost. A crash between the database commit and the final delete would
    count that batch twice on the next run: at least once, never silently dropped.
    """
    if not settings.REDIS_URL:
        return 0
    today = today or timezone.now().date()
    client = _client()
    moved = 0
    for offset in range(8):
        day = today - timedelta(days=offset)
        day_key = DAY_KEY.format(day=day.isoformat())
        flushing_key = FLUSHING_KEY.format(day=day.isoformat())
        # A batch left over from a crashed run is flushed first, as it is.
        if not client.exists(flushing_key):
            if not client.exists(day_key):
                continue
            client.rename(day_key, flushing_key)
        counts = {(int(k), day): int(v) for k, v in client.hgetall(flushing_key).items()}
        with transaction.atomic():
            _add_to_database(counts)
        client.delete(flushing_key)
        moved += sum(counts.values())
    return moved


def pending_counts(key_id: int) -> dict[date, int]:
    """Counts in Redis not yet flushed, so the usage API is current to the request."""
    if not settings.REDIS_URL:
        return {}
    today = timezone.now().date()
    pending: dict[date, int] = {}
    pipeline = _client().pipeline(transaction=False)
    days = [today - timedelta(days=offset) for offset in range(8)]
    for day in days:
        pipeline.hget(DAY_KEY.format(day=day.isoformat()), str(key_id))
        pipeline.hget(FLUSHING_KEY.format(day=day.isoformat()), str(key_id))
    values = pipeline.execute()
    for index, day in enumerate(days):
        count = sum(int(v) for v in values[2 * index : 2 * index + 2] if v is not None)
        if count:
            pending[day] = count
    return pending

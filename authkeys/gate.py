"""Admitting a request by API key in one Redis round trip.

A request with a key this process has seen costs one script call: it checks that the facts the
process holds about the key are current, takes one request from the key's rate limit and counts
it for usage, atomically. No cache read, no database query.

Versions. Each secret (by its public prefix) has a version in Redis, a random token. Every change
that matters to authentication (revoke, rotate, update, owner deactivated) writes new tokens when
it commits (`key_changed`). A process keeps the facts it read (`LocalKeyCache`, at most
HOKUSAI_API_KEY_LOCAL_CACHE_SECONDS old) stamped with the version they were read under, and the
script refuses to go on when the stamp differs: the process then reads the facts again. Facts are
read after their version (the version comes from the script's reply or a GET), so a change that
commits in between shows up as a new version on the next request. A missing version (Redis
restarted or flushed) counts as a change, except for facts just read from the database, which
set a new one.

Where facts come from: this process (hot path), the shared cache in Redis (selectors, 5
minutes, stamped too), the database.

Failures. When Redis fails (or the rate limiter's circuit is open), the facts come from the
database on every request, so they are current; the rate limit is not enforced and usage is not
counted, the rate limiter's fail-open. The process forgets its cached facts, so none from before
an outage are trusted after it. A change whose version could not be written (Redis unreachable
from the writer only) is published again by the `authkeys.republish_key_changes` beat task.
"""

from __future__ import annotations

import logging
import secrets
import string
import threading
import time
from dataclasses import dataclass, replace
from functools import cache

import redis
from django.conf import settings
from django.utils import timezone

from authkeys import selectors, usage
from authkeys.models import ApiKeySecret
from authkeys.ratelimit import GCRA_LUA, RateLimiter, RateLimitResult, get_rate_limiter, unenforced
from authkeys.selectors import UNKNOWN, KeyInfo
from hokusai_site.cache import ThreadScript

logger = logging.getLogger(__name__)

VERSION_KEY = "authkeys:version:{prefix}"
# Longer than any cached facts live; an expired version only costs one database read.
VERSION_TTL_SECONDS = 30 * 24 * 3600
LOCAL_CACHE_ENTRIES = 10_000
# A key changing under every attempt is not worth more round trips: read the database instead.
ATTEMPTS = 3

# KEYS: the secret's version, the rate-limit subject, today's usage hash, the last-used marker.
# ARGV: [1] the facts' version, [2] a new version to set when none is stored and the facts were
# just read from the database ("" otherwise), [3] cost (1, or 0 to only check the version),
# [4] the key's limit, [5] now for gcra ("" for Redis's clock), [6] the key id. Constants are
# written into the source ($NAMES): every argument costs CPU to send on the hot path.
# Returns {0, current version} when the facts are out of date, else {1, version} followed, for
# cost 1, by gcra's four numbers and count_usage's last-used flag.
_ADMIT_LUA = """
local version = redis.call('GET', KEYS[1])
if version == false and ARGV[1] == '' and ARGV[2] ~= '' then
  version = ARGV[2]
  redis.call('SET', KEYS[1], version, 'EX', $VERSION_TTL)
elseif version ~= ARGV[1] then
  return {0, version or ''}
end
local cost = tonumber(ARGV[3])
if cost == 0 then return {1, version} end
local limit = tonumber(ARGV[4])
local interval = math.max(1, math.floor($WINDOW_MICROS / limit))
local limited = gcra(KEYS[2], limit, interval, cost, ARGV[5])
local last_used_due = count_usage(KEYS[3], KEYS[4], ARGV[6], $DAY_TTL, $LAST_USED_TTL)
return {1, version, limited[1], limited[2], limited[3], limited[4], last_used_due}
"""


@dataclass(frozen=True)
class Admission:
    """What authentication learns about a presented key: its facts (None: never issued) and,
    when the key may be used, the rate limit the request was counted against."""

    info: KeyInfo | None
    rate_limit: RateLimitResult | None = None


class LocalKeyCache:
    """Facts of the keys this process served, by digest; thread-safe, bounded, each entry
    trusted for `max_age` seconds at most (and only while its version is current)."""

    def __init__(self, *, max_entries: int, max_age: float) -> None:
        self.max_entries = max_entries
        self.max_age = max_age
        self._entries: dict[str, tuple[KeyInfo, float]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> KeyInfo | None:
        entry = self._entries.get(digest)
        if entry is None or time.monotonic() - entry[1] > self.max_age:
            return None
        return entry[0]

    def put(self, digest: str, info: KeyInfo) -> None:
        with self._lock:
            self._entries.pop(digest, None)
            if len(self._entries) >= self.max_entries:
                # The oldest entry goes: dicts keep insertion order.
                del self._entries[next(iter(self._entries))]
            self._entries[digest] = (info, time.monotonic())

    def drop(self, digest: str) -> None:
        with self._lock:
            self._entries.pop(digest, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@cache
def local_cache() -> LocalKeyCache:
    return LocalKeyCache(
        max_entries=LOCAL_CACHE_ENTRIES, max_age=settings.HOKUSAI_API_KEY_LOCAL_CACHE_SECONDS
    )


@cache
def _script(limiter: RateLimiter):
    source = string.Template(_ADMIT_LUA).substitute(
        VERSION_TTL=VERSION_TTL_SECONDS,
        WINDOW_MICROS=limiter.window_micros,
        DAY_TTL=usage.DAY_KEY_TTL_SECONDS,
        LAST_USED_TTL=usage.LAST_USED_EVERY_SECONDS,
    )
    return ThreadScript(limiter.client, GCRA_LUA + usage.COUNT_LUA + source)


def version_key(prefix: str) -> str:
    return VERSION_KEY.format(prefix=prefix)


def admit(*, prefix: str, digest: str, ip: str | None) -> Admission:
    """The facts of the presented key and, if it may be used now, its rate-limit result, with
    the request counted for usage."""
    limiter = get_rate_limiter()
    if not isinstance(limiter, RateLimiter):
        return _admit_embedded(prefix, digest, ip, limiter)
    local = local_cache()
    held = info = local.get(digest)
    fresh = False
    if info is None:
        try:
            info, fresh = _read_shared(prefix, digest, limiter.client)
        except (redis.exceptions.RedisError, OSError):
            return _admit_from_database(prefix, digest)
        if info is None:
            return Admission(None)
    for _attempt in range(ATTEMPTS):
        now = timezone.now()
        usable = info.refusal(now) is None
        reply = limiter.run(
            _script(limiter),
            keys=[
                version_key(prefix),
                limiter.subject_key(info.rate_limit_subject),
                *usage.count_keys(info.key_id, now),
            ],
            args=[
                info.version,
                secrets.token_hex(8) if fresh and not info.version else "",
                int(usable),
                info.rate_limit_per_minute,
                limiter.now_argument(),
                info.key_id,
            ],
        )
        if reply is None:
            return _admit_from_database(prefix, digest)
        version = reply[1].decode()
        if reply[0]:
            # Kept as it is when it was this process's already: its age must keep growing.
            if info is not held or version != info.version:
                local.put(digest, replace(info, version=version))
            if not usable:
                return Admission(info)
            if reply[6]:
                usage.touch_last_used(info.key_id, ip, now)
            rate_limit = limiter.result(reply[2:6], limit=info.rate_limit_per_minute, cost=1)
            return Admission(info, rate_limit)
        info = selectors.key_info_from_database(prefix=prefix, digest=digest, version=version)
        fresh = True
        if info is None:
            local.drop(digest)
            return Admission(None)
    return _admit_from_database(prefix, digest)


def _read_shared(prefix: str, digest: str, client: redis.Redis) -> tuple[KeyInfo | None, bool]:
    """Facts from the shared cache, else from the database stamped with the version read first;
    with whether they came from the database."""
    cached = selectors.cached_key_info(digest)
    if cached == UNKNOWN:
        return None, False
    if cached is not None:
        return cached, False
    version = (client.get(version_key(prefix)) or b"").decode()
    return selectors.key_info_from_database(prefix=prefix, digest=digest, version=version), True


def _admit_from_database(prefix: str, digest: str) -> Admission:
    """Redis is failing: the database decides, the limit fails open, usage goes uncounted."""
    local_cache().clear()
    info = selectors.key_info_from_database(prefix=prefix, digest=digest)
    if info is None or info.refusal(timezone.now()) is not None:
        return Admission(info)
    return Admission(info, unenforced(info.rate_limit_per_minute))


def _admit_embedded(prefix: str, digest: str, ip: str | None, limiter) -> Admission:
    """No Redis (embedded mode): cached facts with the database, this process's rate limiter,
    usage written to the database."""
    info = selectors.key_info(prefix=prefix, digest=digest)
    if info is None or info.refusal(timezone.now()) is not None:
        return Admission(info)
    rate_limit = limiter.hit(info.rate_limit_subject, limit=info.rate_limit_per_minute)
    usage.record_in_database(key_id=info.key_id, ip=ip)
    return Admission(info, rate_limit)


def key_changed(api_key_id: int) -> None:
    """After a change to a key commits: new versions for its secrets, so every process reads the
    key again on its next request, and the new facts in the shared cache."""
    key_secrets = list(
        ApiKeySecret.objects.select_related(
            "api_key", "api_key__owner_user", "api_key__owner_identity"
        ).filter(api_key_id=api_key_id)
    )
    limiter = get_rate_limiter()
    versions = {s.prefix: "" for s in key_secrets}
    if isinstance(limiter, RateLimiter):
        versions = {prefix: secrets.token_hex(8) for prefix in versions}
        try:
            pipeline = limiter.client.pipeline(transaction=False)
            for prefix, version in versions.items():
                pipeline.set(version_key(prefix), version, ex=VERSION_TTL_SECONDS)
            pipeline.execute()
        except (redis.exceptions.RedisError, OSError):
            logger.warning(
                "could not publish a change of API key %s; the beat task will retry",
                api_key_id,
                exc_info=True,
            )
    selectors.cache_key_infos(
        {
            s.key_hash: selectors.key_info_for_secret(s, version=versions[s.prefix])
            for s in key_secrets
        }
    )

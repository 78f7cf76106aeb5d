"""Reading API keys: the facts a request needs about a key, cached by the key's digest."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from authkeys.models import ApiKey, ApiKeySecret, ApiKeyUsageDaily

CACHE_KEY_FORMAT = "authkeys:key:{digest}"
# A digest that matches no key: remembered briefly so a flood of well-formed but unknown keys
# costs cache reads, not database queries.
UNKNOWN = "unknown"
UNKNOWN_CACHE_SECONDS = 60


@dataclass(frozen=True)
class KeyInfo:
    key_id: int
    prefix: str
    environment: str
    scopes: frozenset[str]
    rate_limit_per_minute: int
    expires_at: datetime | None
    revoked: bool
    secret_valid_until: datetime | None
    owner_label: str
    owner_user_id: int | None
    owner_identity_id: int | None
    owner_is_staff: bool
    owner_active: bool
    # The key's version in Redis when these facts were read (authkeys.gate); "" if none.
    version: str = ""

    @property
    def rate_limit_subject(self) -> str:
        # The key's id, not its prefix: a rotated key keeps its budget.
        return f"key:{self.key_id}"

    def refusal(self, now: datetime) -> tuple[str, str] | None:
        """Why the key cannot be used now, as (code, message), or None if it can."""
        if self.revoked:
            return "api_key_revoked", "API key has been revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "api_key_expired", "API key has expired"
        if self.secret_valid_until is not None and now >= self.secret_valid_until:
            return "api_key_expired", "API key was rotated and its grace period has ended"
        if not self.owner_active:
            return "api_key_owner_inactive", "The owner of this API key is deactivated"
        return None


def cache_key(digest: str) -> str:
    return CACHE_KEY_FORMAT.format(digest=digest)


def key_info_for_secret(secret: ApiKeySecret, *, version: str = "") -> KeyInfo:
    api_key: ApiKey = secret.api_key
    owner = api_key.owner_user or api_key.owner_identity
    return KeyInfo(
        key_id=api_key.pk,
        prefix=secret.prefix,
        environment=api_key.environment,
        scopes=frozenset(api_key.scopes),
        rate_limit_per_minute=api_key.rate_limit_per_minute,
        expires_at=api_key.expires_at,
        revoked=api_key.revoked_at is not None,
        secret_valid_until=secret.valid_until,
        owner_label=str(owner),
        owner_user_id=api_key.owner_user_id,
        owner_identity_id=api_key.owner_identity_id,
        owner_is_staff=bool(api_key.owner_user and api_key.owner_user.is_staff),
        owner_active=owner.is_active,
        version=version,
    )


def cache_key_infos(infos: dict[str, KeyInfo]) -> None:
    """Overwrites the shared cache's facts of these digests (after a change committed)."""
    cache.set_many(
        {cache_key(digest): info for digest, info in infos.items()},
        settings.HOKUSAI_API_KEY_CACHE_SECONDS,
    )


def cached_key_info(digest: str) -> KeyInfo | str | None:
    """The shared cache's entry: the facts, UNKNOWN, or None on a miss."""
    return cache.get(cache_key(digest))


def key_info_from_database(
    *, prefix: str, digest: str, version: str | None = None
) -> KeyInfo | None:
    """The key's facts read from the database, then cached; None for a key we never issued.

    `version` (Redis mode, authkeys.gate): the key's version, read before this call. The facts
    are stamped with it and overwrite the cached entry: a stamp that is out of date is caught
    by the gate's version check, never trusted. Without versions (embedded mode) the cache is
    only added to: a revoke or rotate that committed meanwhile has already written the newer
    facts, and this older read must not replace them.
    """
    secret = (
        ApiKeySecret.objects.select_related(
            "api_key", "api_key__owner_user", "api_key__owner_identity"
        )
        .filter(prefix=prefix)
        .first()
    )
    if secret is None or not hmac.compare_digest(secret.key_hash, digest):
        cache.add(cache_key(digest), UNKNOWN, UNKNOWN_CACHE_SECONDS)
        return None
    info = key_info_for_secret(secret, version=version or "")
    if version is None:
        cache.add(cache_key(digest), info, settings.HOKUSAI_API_KEY_CACHE_SECONDS)
    else:
        cache.set(cache_key(digest), info, settings.HOKUSAI_API_KEY_CACHE_SECONDS)
    return info


def key_info(*, prefix: str, digest: str) -> KeyInfo | None:
    """The key's facts, from the cache when possible; None for a key we never issued."""
    cached = cached_key_info(digest)
    if cached is not None:
        return None if cached == UNKNOWN else cached
    return key_info_from_database(prefix=prefix, digest=digest)


def key_usage(key_id: int, *, days: int) -> list[tuple[date, int]]:
    """Requests per day over the last `days` days, flushed counts plus those still in Redis."""
    from authkeys.usage import pending_counts

    since = timezone.now().date() - timedelta(days=days - 1)
    counts: dict[date, int] = dict(
        ApiKeyUsageDaily.objects.filter(api_key_id=key_id, day__gte=since).values_list(
            "day", "requests"
        )
    )
    for day, pending in pending_counts(key_id).items():
        if day >= since:
            counts[day] = counts.get(day, 0) + pending
    return sorted(counts.items(), reverse=True)

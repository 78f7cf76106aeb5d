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


def key_info_for_secret(secret: ApiKeySecret) -> KeyInfo:
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
    )


def key_info(*, prefix: str, digest: str) -> KeyInfo | None:
    """The key's facts, from the cache when possible; None for a key we never issued."""
    cached = cache.get(cache_key(digest))
    if cached is not None:
        return None if cached == UNKNOWN else cached
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
    info = key_info_for_secret(secret)
    # add, not set: a revoke or rotate that committed meanwhile has already written the newer
    # facts, and this older read must not replace them.
    cache.add(cache_key(digest), info, settings.HOKUSAI_API_KEY_CACHE_SECONDS)
    return info


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

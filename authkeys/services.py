"""Issuing, rotating and revoking API keys: the API, the admin and `manage.py create_api_key`
all call these, so every door checks the same rules and writes the same audit entries."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from authkeys import gate, keys
from authkeys.models import ApiKey, ApiKeySecret, EthIdentity
from authkeys.principals import Caller
from authkeys.scopes import ALL_SCOPES
from hokusai_site.errors import ApplicationError
from registry import audit

# Covers the beat's period and a little clock skew.
REPUBLISH_MARGIN_SECONDS = 120


def key_digest(key: str) -> str:
    return keys.digest(key, pepper=settings.HOKUSAI_API_KEY_PEPPER.encode())


def keys_changed(**filters) -> None:
    """Marks the matching keys changed; once the transaction commits, every process sees the
    change on its next request (authkeys.gate)."""
    matching = ApiKey.objects.filter(**filters)
    key_ids = list(matching.values_list("pk", flat=True))
    matching.update(changed_at=timezone.now())

    def publish() -> None:
        for key_id in key_ids:
            gate.key_changed(key_id)

    transaction.on_commit(publish)


def republish_key_changes() -> int:
    """Publishes again the keys changed within a cache lifetime, in case Redis missed the
    first publication; returns how many. Run every minute by the beat."""
    since = timezone.now() - timedelta(
        seconds=settings.HOKUSAI_API_KEY_CACHE_SECONDS + REPUBLISH_MARGIN_SECONDS
    )
    key_ids = list(ApiKey.objects.filter(changed_at__gte=since).values_list("pk", flat=True))
    for key_id in key_ids:
        gate.key_changed(key_id)
    return len(key_ids)


def _check_scopes(*, actor: Caller, scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise ApplicationError(
            "unknown_scope", f"Unknown scopes: {', '.join(unknown)}.", extra={"scopes": unknown}
        )
    not_held = sorted(scope for scope in set(scopes) if not actor.has_scope(scope))
    if not_held:
        raise ApplicationError(
            "scope_not_held",
            f"A key cannot grant scopes its creator lacks: {', '.join(not_held)}.",
            status=403,
            extra={"scopes": not_held},
        )
    return sorted(set(scopes))


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError(
            "expiry_in_past", "expires_at must be in the future.", extra={"field": "expires_at"}
        )


def _add_secret(api_key: ApiKey) -> str:
    # A prefix collision (8 random base62 characters) is astronomically rare; try again if so.
    for _attempt in range(5):
        generated = keys.generate(api_key.environment)
        try:
            with transaction.atomic():
                ApiKeySecret.objects.create(
                    api_key=api_key, prefix=generated.prefix, key_hash=key_digest(generated.key)
                )
        except IntegrityError:
            continue
        return generated.key
    raise RuntimeError("could not find a free API key prefix")


@transaction.atomic
def api_key_create(
    *,
    actor: Caller,
    name: str,
    scopes: list[str],
    owner_user_id: int | None = None,
    owner_identity_id: int | None = None,
    environment: str = "live",
    rate_limit_per_minute: int | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Returns the key row and the key itself, which is shown once and never stored."""
    if (owner_user_id is None) == (owner_identity_id is None):
        raise ValueError("an API key has exactly one owner")
    _check_expiry(expires_at)
    api_key = ApiKey.objects.create(
        name=name,
        owner_user_id=owner_user_id,
        owner_identity_id=owner_identity_id,
        environment=environment,
        scopes=_check_scopes(actor=actor, scopes=scopes),
        rate_limit_per_minute=rate_limit_per_minute or settings.HOKUSAI_API_KEY_DEFAULT_RATE_LIMIT,
        expires_at=expires_at,
    )
    secret = _add_secret(api_key)
    audit.api_key_created(actor=actor, api_key=api_key)
    return api_key, secret


@transaction.atomic
def api_key_rotate(
    *, actor: Caller, api_key: ApiKey, grace: timedelta | None = None
) -> tuple[ApiKey, str]:
    """A new secret for the same key; the current one keeps working for the grace period."""
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.status != "active":
        raise ApplicationError(
            "api_key_not_active", f"A {api_key.status} key cannot be rotated.", status=409
        )
    if grace is None:
        grace = timedelta(seconds=settings.HOKUSAI_KEY_ROTATION_GRACE)
    valid_until = timezone.now() + grace
    old_prefix = api_key.current_prefix
    # Only the current secret gets the grace period; an older one still in its grace keeps its
    # own, earlier end.
    api_key.secrets.filter(valid_until__isnull=True).update(valid_until=valid_until)
    secret = _add_secret(api_key)
    keys_changed(pk=api_key.pk)
    audit.api_key_rotated(
        actor=actor, api_key=api_key, old_prefix=old_prefix, old_valid_until=valid_until
    )
    return api_key, secret


UPDATABLE_FIELDS = ("name", "scopes", "rate_limit_per_minute", "expires_at")


@transaction.atomic
def api_key_update(*, actor: Caller, api_key: ApiKey, **changes) -> ApiKey:
    """Changes a key's name, scopes, rate limit or expiry (any of them). Scopes stay within the
    actor's own; every process applies the change from its next request on."""
    unknown = set(changes) - set(UPDATABLE_FIELDS)
    if unknown:
        raise ValueError(f"not updatable: {', '.join(sorted(unknown))}")
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.revoked_at is not None:
        raise ApplicationError("api_key_not_active", "A revoked key cannot be changed.", status=409)
    if "scopes" in changes:
        changes["scopes"] = _check_scopes(actor=actor, scopes=changes["scopes"])
    _check_expiry(changes.get("expires_at"))
    changed = {
        field: (getattr(api_key, field), value)
        for field, value in changes.items()
        if getattr(api_key, field) != value
    }
    if not changed:
        return api_key
    for field, (_, new) in changed.items():
        setattr(api_key, field, new)
    # Only these fields: a concurrent last-used update must not be overwritten.
    api_key.save(update_fields=list(changed))
    if set(changed) != {"name"}:
        keys_changed(pk=api_key.pk)
    audit.api_key_updated(actor=actor, api_key=api_key, changes=changed)
    return api_key


@transaction.atomic
def api_key_revoke(*, actor: Caller, api_key: ApiKey) -> ApiKey:
    api_key = ApiKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit.api_key_revoked(actor=actor, api_key=api_key)
    keys_changed(pk=api_key.pk)
    return api_key


# --- Sign-In with Ethereum ---------------------------------------------------------------------

NONCE_CACHE_KEY = "authkeys:siwe-nonce:{nonce}"


def eth_nonce_issue() -> tuple[str, datetime]:
    """A single-use nonce for one EIP-4361 message; it expires unused after the TTL."""
    nonce = secrets.token_hex(16)
    ttl = settings.HOKUSAI_SIWE_NONCE_TTL
    cache.set(NONCE_CACHE_KEY.format(nonce=nonce), "issued", ttl)
    return nonce, timezone.now() + timedelta(seconds=ttl)


def eth_nonce_consume(nonce: str) -> bool:
    """True exactly once per nonce we issued: the delete is atomic, so a replay racing the
    first use still loses."""
    return bool(cache.delete(NONCE_CACHE_KEY.format(nonce=nonce)))


LAST_SEEN_EVERY = timedelta(minutes=1)


def eth_identity_seen(identity: EthIdentity) -> None:
    """Records a sign-in as `last_seen_at`, at most once a minute per identity."""
    now = timezone.now()
    if identity.last_seen_at is None or now - identity.last_seen_at >= LAST_SEEN_EVERY:
        # update(), not save(): no signal, so the identity's keys are not re-published.
        EthIdentity.objects.filter(pk=identity.pk).update(last_seen_at=now)
        identity.last_seen_at = now


def eth_identity_for_sign_in(address: str) -> EthIdentity | None:
    """The identity of a verified address; a new one gets the default scopes, unless
    registration is closed (then None)."""
    identity = EthIdentity.objects.filter(address=address).first()
    if identity is not None or not settings.HOKUSAI_ETH_OPEN_REGISTRATION:
        return identity
    identity, _ = EthIdentity.objects.get_or_create(
        address=address, defaults={"scopes": list(settings.HOKUSAI_ETH_DEFAULT_SCOPES)}
    )
    return identity

"""Audit events: one small function per event, each writing one AuditLog row with the actor,
the request id and client address of the request it happened in (when there is one)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from authkeys.principals import Caller
from hokusai_site.request_id import current_client_ip, current_request_id
from registry.models import AuditLog


def record(
    *, actor: Caller, action: str, target_type: str, target_id: Any, details: dict | None = None
) -> AuditLog:
    request_id = current_request_id.get()
    return AuditLog.objects.create(
        actor_kind=actor.kind,
        actor_label=actor.label,
        actor_user_id=actor.user_id,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        details=details or {},
        ip=current_client_ip.get(),
        request_id="" if request_id == "-" else request_id,
    )


def api_key_created(*, actor: Caller, api_key) -> AuditLog:
    return record(
        actor=actor,
        action="api_key.created",
        target_type="api_key",
        target_id=api_key.pk,
        details={
            "name": api_key.name,
            "prefix": api_key.current_prefix,
            "scopes": api_key.scopes,
            "owner": api_key.owner_label,
            "environment": api_key.environment,
            "rate_limit_per_minute": api_key.rate_limit_per_minute,
            "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
        },
    )


def api_key_rotated(*, actor: Caller, api_key, old_prefix: str, old_valid_until) -> AuditLog:
    return record(
        actor=actor,
        action="api_key.rotated",
        target_type="api_key",
        target_id=api_key.pk,
        details={
            "prefix": api_key.current_prefix,
            "old_prefix": old_prefix,
            "old_valid_until": old_valid_until.isoformat(),
        },
    )


def api_key_revoked(*, actor: Caller, api_key) -> AuditLog:
    return record(
        actor=actor,
        action="api_key.revoked",
        target_type="api_key",
        target_id=api_key.pk,
        details={"prefix": api_key.current_prefix},
    )


def api_key_updated(*, actor: Caller, api_key, changes: dict[str, tuple]) -> AuditLog:
    """`changes`: field -> (old, new)."""
    return record(
        actor=actor,
        action="api_key.updated",
        target_type="api_key",
        target_id=api_key.pk,
        details={
            "prefix": api_key.current_prefix,
            "changes": _changes(changes),
        },
    )


def model_version_registered(*, actor: Caller, version) -> AuditLog:
    return record(
        actor=actor,
        action="model.version_registered",
        target_type="model",
        target_id=version.model.model_id,
        details={
            "name": version.model.name,
            "version": version.version,
            "run_id": version.run_id,
            "source": version.source,
        },
    )


def model_updated(*, actor: Caller, model, changes: dict[str, tuple]) -> AuditLog:
    """`changes`: field -> (old, new)."""
    return record(
        actor=actor,
        action="model.updated",
        target_type="model",
        target_id=model.model_id,
        details={"changes": _changes(changes)},
    )


def model_owner_assigned(*, actor: Caller, model, owner_label: str) -> AuditLog:
    return record(
        actor=actor,
        action="model.owner_assigned",
        target_type="model",
        target_id=model.model_id,
        details={"owner": owner_label, "status": model.status},
    )


def _changes(changes: dict[str, tuple]) -> dict:
    return {
        field: {"old": _json_value(old), "new": _json_value(new)}
        for field, (old, new) in changes.items()
    }


def _json_value(value):
    return value.isoformat() if isinstance(value, datetime) else value


def eth_identity_saved(*, actor: Caller, identity, created: bool, changes: dict) -> AuditLog:
    return record(
        actor=actor,
        action="eth_identity.created" if created else "eth_identity.changed",
        target_type="eth_identity",
        target_id=identity.pk,
        details={"address": identity.address, **changes},
    )


def contribution_received(*, actor: Caller, contribution) -> AuditLog:
    return record(
        actor=actor,
        action="contribution.received",
        target_type="contribution",
        target_id=contribution.pk,
        details={
            "model": contribution.model.model_id,
            "size": contribution.size,
            "sha256": contribution.sha256,
            "content_type": contribution.content_type,
            "original_name": contribution.original_name,
            "storage_name": contribution.storage_name,
        },
    )


def webhook_endpoint_changed(
    *, actor: Caller, endpoint, action: str, details: dict | None = None
) -> AuditLog:
    """`action`: created, updated, deleted, secret_rotated, disabled, enabled, breaker_reset.
    Details never hold the secret."""
    return record(
        actor=actor,
        action=f"webhook_endpoint.{action}",
        target_type="webhook_endpoint",
        target_id=endpoint.pk,
        details={"url": endpoint.url, **(details or {})},
    )


def webhook_delivery_redelivered(*, actor: Caller, delivery) -> AuditLog:
    return record(
        actor=actor,
        action="webhook_delivery.redelivered",
        target_type="webhook_delivery",
        target_id=delivery.pk,
        details={"webhook_id": delivery.webhook_id, "endpoint": delivery.endpoint_id},
    )

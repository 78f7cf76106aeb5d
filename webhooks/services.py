"""Managing endpoints and deliveries: what the API, the admin and commands all call.

Every change is audited; a secret appears only in what endpoint_create and
endpoint_rotate_secret return.
"""

from __future__ import annotations

import functools
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from authkeys.principals import Caller
from hokusai_site.errors import ApplicationError
from registry import audit
from webhooks import delivery, queue, ssrf
from webhooks.models import EVENT_TYPES, PING, Delivery, WebhookEndpoint
from webhooks.outbox import record_event_for
from webhooks.signing import new_secret

# Re-exported: disabling is also the delivery engine's to do (410, days of failure).
endpoint_disable = delivery.endpoint_disable


def check_url(url: str) -> None:
    """ApplicationError naming `url` when the SSRF guard refuses it or its host does not resolve."""
    try:
        ssrf.receiver_for(url)
    except ssrf.WebhookUrlRefused as exc:
        raise _invalid("url", str(exc)) from None
    except ssrf.ReceiverLookupFailed:
        raise _invalid("url", "The URL's host name does not resolve.") from None


def check_event_types(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - set(EVENT_TYPES))
    if unknown or not event_types:
        raise _invalid(
            "event_types",
            f"Choose one or more of {', '.join(EVENT_TYPES)}"
            + (f"; unknown: {', '.join(unknown)}." if unknown else "."),
        )
    return sorted(set(event_types), key=EVENT_TYPES.index)


def _invalid(field: str, message: str) -> ApplicationError:
    return ApplicationError(
        "validation_error", message, status=400, extra={"errors": {field: [message]}}
    )


def endpoint_create(
    *,
    actor: Caller,
    url: str,
    event_types: list[str],
    description: str = "",
    owner_user_id: int | None = None,
    owner_identity_id: int | None = None,
) -> tuple[WebhookEndpoint, str]:
    """The new endpoint and its secret (shown once). The owner defaults to the actor."""
    check_url(url)
    event_types = check_event_types(event_types)
    if owner_user_id is None and owner_identity_id is None:
        owner_user_id = actor.user_id
        owner_identity_id = None if actor.user_id is not None else actor.identity_id
    secret = new_secret()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            owner_user_id=owner_user_id,
            owner_identity_id=owner_identity_id,
            url=url,
            description=description,
            event_types=event_types,
            secret=secret,
        )
        audit.webhook_endpoint_changed(
            actor=actor,
            endpoint=endpoint,
            action="created",
            details={"event_types": event_types, "owner": endpoint.owner_label},
        )
    return endpoint, secret


def endpoint_update(
    *,
    actor: Caller,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    description: str | None = None,
    event_types: list[str] | None = None,
    is_active: bool | None = None,
) -> WebhookEndpoint:
    """Changes what is given. Turning an endpoint off disables it (as endpoint_disable);
    turning it on enables it (as endpoint_enable)."""
    if url is not None and url != endpoint.url:
        if endpoint.from_settings:
            raise ApplicationError(
                "endpoint_from_settings",
                "This endpoint's URL is WEBHOOK_URL; change the setting instead.",
                status=409,
            )
        check_url(url)
    if event_types is not None:
        event_types = check_event_types(event_types)
    proposed = {"url": url, "description": description, "event_types": event_types}
    changes = {
        field: (getattr(endpoint, field), value)
        for field, value in proposed.items()
        if value is not None and value != getattr(endpoint, field)
    }
    with transaction.atomic():
        if changes:
            for field, (_, new) in changes.items():
                setattr(endpoint, field, new)
            saved = [*changes, "updated_at"]
            if "url" in changes:  # a new receiver: the old one's failures are not its own
                endpoint.consecutive_failures = 0
                endpoint.failing_since = endpoint.circuit_open_until = None
                saved += ["consecutive_failures", "failing_since", "circuit_open_until"]
            endpoint.save(update_fields=saved)
            audit.webhook_endpoint_changed(
                actor=actor,
                endpoint=endpoint,
                action="updated",
                details={
                    "changes": {f: {"old": old, "new": new} for f, (old, new) in changes.items()}
                },
            )
        if is_active is False and endpoint.is_active:
            endpoint_disable(actor=actor, endpoint=endpoint, reason=f"Disabled by {actor.label}.")
        elif is_active is True and not endpoint.is_active:
            endpoint_enable(actor=actor, endpoint=endpoint)
    return endpoint


def endpoint_delete(*, actor: Caller, endpoint: WebhookEndpoint) -> None:
    """Deletes the endpoint with its deliveries and their attempts (the audit log keeps the
    fact); the events stay in the outbox."""
    with transaction.atomic():
        audit.webhook_endpoint_changed(actor=actor, endpoint=endpoint, action="deleted")
        endpoint.delete()


def endpoint_rotate_secret(*, actor: Caller, endpoint: WebhookEndpoint) -> str:
    """A new secret (returned, shown once); the old one keeps signing for
    WEBHOOK_SECRET_GRACE_SECONDS, so receivers can switch without missing a delivery."""
    if endpoint.from_settings:
        raise ApplicationError(
            "endpoint_from_settings",
            "This endpoint's secret is WEBHOOK_SECRET; change the setting instead.",
            status=409,
        )
    secret = new_secret()
    grace = timedelta(seconds=settings.WEBHOOK_SECRET_GRACE_SECONDS)
    with transaction.atomic():
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = timezone.now() + grace
        endpoint.secret = secret
        endpoint.save(
            update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"]
        )
        audit.webhook_endpoint_changed(
            actor=actor,
            endpoint=endpoint,
            action="secret_rotated",
            details={"previous_valid_until": endpoint.previous_secret_expires_at.isoformat()},
        )
    return secret


def endpoint_enable(*, actor: Caller, endpoint: WebhookEndpoint) -> None:
    """Active again with a closed circuit; its waiting deliveries go out at once."""
    with transaction.atomic():
        changed = WebhookEndpoint.objects.filter(pk=endpoint.pk, is_active=False).update(
            is_active=True,
            disabled_reason="",
            consecutive_failures=0,
            failing_since=None,
            circuit_open_until=None,
            updated_at=timezone.now(),
        )
        if not changed:
            return
        endpoint.refresh_from_db()
        audit.webhook_endpoint_changed(actor=actor, endpoint=endpoint, action="enabled")
        _send_waiting_now(endpoint)


def endpoint_breaker_reset(*, actor: Caller, endpoint: WebhookEndpoint) -> None:
    """Closes the circuit by hand: held deliveries go out at once."""
    with transaction.atomic():
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
            consecutive_failures=0,
            failing_since=None,
            circuit_open_until=None,
            updated_at=timezone.now(),
        )
        endpoint.refresh_from_db()
        audit.webhook_endpoint_changed(actor=actor, endpoint=endpoint, action="breaker_reset")
        _send_waiting_now(endpoint)


def _send_waiting_now(endpoint: WebhookEndpoint) -> None:
    """Pending deliveries of the endpoint become due now, and a worker is told."""
    endpoint.deliveries.filter(status=Delivery.PENDING).update(
        next_attempt_at=timezone.now(), enqueued_at=timezone.now()
    )
    transaction.on_commit(functools.partial(queue.enqueue_endpoints, [endpoint.pk]))


def endpoint_test(*, actor: Caller, endpoint: WebhookEndpoint) -> Delivery:
    """Sends a `ping` event to the endpoint now, by the same path as every delivery (signed,
    SSRF-checked, recorded), and returns the delivery with its one attempt. A ping goes through
    an open circuit and is not retried."""
    if not endpoint.is_active:
        raise ApplicationError(
            "endpoint_disabled",
            "The endpoint is disabled; enable it before testing it.",
            status=409,
        )
    with transaction.atomic():
        event = record_event_for(
            [endpoint],
            event_type=PING,
            content={
                "endpoint": {"id": endpoint.pk, "url": endpoint.url},
                "data": {"message": "A test delivery from Hokusai.", "sent_by": actor.label},
            },
            enqueue=False,
        )
        # Claimed from the start: a worker draining the endpoint must not send it first.
        ping = Delivery.objects.select_related("event", "endpoint").get(event=event)
        ping.claimed_until = delivery.claim_lease()
        ping.save(update_fields=["claimed_until"])
    delivery.claimed_delivery_send(ping)
    ping.refresh_from_db()
    return ping


def delivery_redeliver(*, actor: Caller, delivery_id: int) -> Delivery:
    """Sends a finished (failed or delivered) delivery again with the same webhook-id and a
    fresh retry schedule."""
    with transaction.atomic():
        redelivered = (
            Delivery.objects.select_for_update(of=("self",))
            .select_related("endpoint")
            .filter(pk=delivery_id)
            .first()
        )
        if redelivered is None:
            raise ApplicationError("not_found", "No such delivery.", status=404)
        if redelivered.status == Delivery.PENDING:
            raise ApplicationError(
                "delivery_pending", "The delivery is still pending; it will be sent.", status=409
            )
        if not redelivered.endpoint.is_active:
            raise ApplicationError(
                "endpoint_disabled",
                "The endpoint is disabled; enable it before redelivering.",
                status=409,
            )
        now = timezone.now()
        redelivered.status = Delivery.PENDING
        redelivered.retry_step = 0
        redelivered.next_attempt_at = now
        redelivered.enqueued_at = now
        redelivered.delivered_at = None
        redelivered.save(
            update_fields=[
                "status",
                "retry_step",
                "next_attempt_at",
                "enqueued_at",
                "delivered_at",
                "updated_at",
            ]
        )
        audit.webhook_delivery_redelivered(actor=actor, delivery=redelivered)
        transaction.on_commit(functools.partial(queue.enqueue_endpoints, [redelivered.endpoint_id]))
    return redelivered

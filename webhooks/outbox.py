"""Writing events into the outbox, with one delivery per subscribed endpoint. Call inside the
transaction that makes the change: events and deliveries commit with it or not at all, and the
workers hear of them only once it has committed."""

from __future__ import annotations

import functools
import uuid

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from webhooks import fallback
from webhooks.models import Delivery, Event, WebhookEndpoint
from webhooks.signing import signing_key

SOURCE = "hokusai"


def record_events(*, event_types: list[str], model: dict, data: dict) -> list[Event]:
    """Stores one event per type about a model, each with its body as DESIGN.md fixes it, and
    its deliveries to every active endpoint subscribed to the type."""
    events = _store(event_types, {"model": model, "data": data})
    # The original platform's consumers hear of model events only: not of pings or of one
    # owner's endpoints.
    if settings.ENABLE_REDIS_FALLBACK:
        transaction.on_commit(functools.partial(fallback.publish, events))
    endpoints = _active_endpoints()
    plan = [
        (event, endpoint)
        for event in events
        for endpoint in endpoints
        if event.event_type in endpoint.event_types
    ]
    _create_deliveries(plan)
    return events


def record_event_for(
    endpoints: list[WebhookEndpoint], *, event_type: str, content: dict, enqueue: bool = True
) -> Event:
    """One event delivered only to `endpoints` (as given, subscribed or not: a ping, or an
    owner's notice about one of their endpoints). With enqueue=False the caller sends it."""
    (event,) = _store([event_type], content)
    _create_deliveries([(event, endpoint) for endpoint in endpoints], enqueue=enqueue)
    return event


def _store(event_types: list[str], content: dict) -> list[Event]:
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("events must be recorded inside the change's transaction")
    timestamp = timezone.now().isoformat().replace("+00:00", "Z")
    events = []
    for event_type in event_types:
        event_id = uuid.uuid4()
        payload = {
            "event_type": event_type,
            "event_id": str(event_id),
            "timestamp": timestamp,
            "source": SOURCE,
            **content,
        }
        events.append(Event(event_id=event_id, event_type=event_type, payload=payload))
    return Event.objects.bulk_create(events)


def _create_deliveries(
    plan: list[tuple[Event, WebhookEndpoint]], *, enqueue: bool = True
) -> list[Delivery]:
    if not plan:
        return []
    now = timezone.now()
    deliveries = Delivery.objects.bulk_create(
        Delivery(
            event=event,
            endpoint=endpoint,
            webhook_id=f"msg_{uuid.uuid4().hex}",
            next_attempt_at=now,
            enqueued_at=now,
        )
        for event, endpoint in plan
    )
    if enqueue:
        from webhooks import queue  # imports Celery, which the outbox need not load early

        endpoint_ids = {delivery.endpoint_id for delivery in deliveries}
        transaction.on_commit(functools.partial(queue.enqueue_endpoints, endpoint_ids))
    return deliveries


def _active_endpoints() -> list[WebhookEndpoint]:
    """Active endpoints, with the WEBHOOK_URL one brought in step with settings (which costs
    no query while it is). A changed URL or secret re-enables it: it is a new receiver."""
    url, secret = settings.WEBHOOK_URL, settings.WEBHOOK_SECRET
    # Fixed SQL: every registration asks, and the ORM would compile the query each time
    # (see registry.selectors). Any order: every one gets its deliveries.
    endpoints = list(
        WebhookEndpoint.objects.raw(
            "SELECT id, event_types, from_settings, url, secret, is_active"
            " FROM webhooks_webhookendpoint WHERE is_active OR from_settings"
        )
    )
    configured = next((endpoint for endpoint in endpoints if endpoint.from_settings), None)
    in_step = configured is not None and (configured.url, configured.secret) == (url, secret)
    if url and not in_step:
        signing_key(secret)  # a malformed whsec_ secret fails here, not at every send
        WebhookEndpoint.objects.update_or_create(
            from_settings=True,
            defaults={"url": url, "secret": secret, "is_active": True, "disabled_reason": ""},
            create_defaults={
                "url": url,
                "secret": secret,
                "event_types": list(_SETTINGS_EVENT_TYPES),
            },
        )
        return _active_endpoints()
    return [
        endpoint
        for endpoint in endpoints
        if endpoint.is_active and (url or not endpoint.from_settings)
    ]


# What the original platform's single receiver heard about.
_SETTINGS_EVENT_TYPES = ("model_registered", "model_ready_to_deploy")

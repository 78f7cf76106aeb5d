"""Writing events into the outbox. Call inside the transaction that makes the change."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from webhooks.models import Event

SOURCE = "hokusai"


def record_events(*, event_types: list[str], model: dict, data: dict) -> list[Event]:
    """Stores one event per type, about the same model and data, each with its body as
    DESIGN.md fixes it (in one INSERT); delivery reads them from here."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("record_events must run inside the change's transaction")
    timestamp = timezone.now().isoformat().replace("+00:00", "Z")
    events = []
    for event_type in event_types:
        event_id = uuid.uuid4()
        payload = {
            "event_type": event_type,
            "event_id": str(event_id),
            "timestamp": timestamp,
            "source": SOURCE,
            "model": model,
            "data": data,
        }
        events.append(Event(event_id=event_id, event_type=event_type, payload=payload))
    return Event.objects.bulk_create(events)

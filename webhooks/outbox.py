"""Writing events into the outbox. Call inside the transaction that makes the change."""

from __future__ import annotations

import uuid

from django.db import transaction
from django.utils import timezone

from webhooks.models import Event

SOURCE = "hokusai"


def record_event(*, event_type: str, model: dict, data: dict) -> Event:
    """Stores one event with its body as DESIGN.md fixes it; delivery reads it from here."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("record_event must run inside the change's transaction")
    event_id = uuid.uuid4()
    payload = {
        "event_type": event_type,
        "event_id": str(event_id),
        "timestamp": timezone.now().isoformat().replace("+00:00", "Z"),
        "source": SOURCE,
        "model": model,
        "data": data,
    }
    return Event.objects.create(event_id=event_id, event_type=event_type, payload=payload)

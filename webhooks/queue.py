"""Telling workers that an endpoint has deliveries due. A message carries only the endpoint's id
("send what is due there"): Postgres holds the deliveries, so a lost message (broker down at
commit, broker flushed) only delays them until the sweep enqueues the endpoint again, and an
extra message finds nothing left to claim.

While a message for an endpoint waits in the queue, commits for that endpoint add none (a
marker in the cache says one is waiting; the worker removes it as it starts), so a burst of
events becomes a few messages that each send many deliveries, not a message per delivery.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from django.core.cache import cache

from hokusai_site.celery import app
from webhooks.models import Delivery

logger = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.deliver"
# A marker outlives its message by at most this long (a worker killed before removing it);
# deliveries committed meanwhile still go out, through the sweep.
WAITING_MARKER_SECONDS = 30


def _waiting_marker(endpoint_id: int) -> str:
    return f"webhooks:waiting:{endpoint_id}"


def enqueue_endpoints(endpoint_ids: Iterable[int]) -> None:
    """A message for each endpoint that has none waiting."""
    for endpoint_id in set(endpoint_ids):
        if _mark_waiting(endpoint_id):
            enqueue(endpoint_id)


def enqueue(endpoint_id: int, *, eta: datetime | None = None) -> bool:
    try:
        # No publish retries: a request must not hang on a broker that is down.
        app.send_task(DELIVER_TASK, args=[endpoint_id], eta=eta, retry=False)
    except Exception:  # kombu's errors vary by transport; every one means "not queued"
        logger.warning("could not enqueue endpoint %s; the sweep will", endpoint_id, exc_info=True)
        starting(endpoint_id)
        # Due for the sweep at once, rather than after WEBHOOK_REQUEUE_AFTER_SECONDS.
        Delivery.objects.filter(endpoint_id=endpoint_id, status=Delivery.PENDING).update(
            enqueued_at=None
        )
        return False
    return True


def starting(endpoint_id: int) -> None:
    """A worker is about to claim the endpoint's due deliveries: later commits need a new
    message."""
    try:
        cache.delete(_waiting_marker(endpoint_id))
    except Exception:
        logger.warning("could not clear the waiting marker of %s", endpoint_id, exc_info=True)


def _mark_waiting(endpoint_id: int) -> bool:
    """True if no message was waiting for the endpoint (so the caller sends one)."""
    marker = _waiting_marker(endpoint_id)
    # Our cache answers an outage as a miss, so "not added" is only believed when the marker
    # is really there; in doubt a message goes (an extra one costs an empty claim).
    try:
        return cache.add(marker, 1, timeout=WAITING_MARKER_SECONDS) or cache.get(marker) is None
    except Exception:
        logger.warning("could not check the waiting marker of %s", endpoint_id, exc_info=True)
        return True

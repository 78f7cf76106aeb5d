"""Sending deliveries: claim, circuit breaker, sign, POST, record, schedule the retry.

Every step reads and writes Postgres, which is the whole truth about a delivery; the Celery task
(webhooks.tasks.deliver) and the endpoint test both call deliveries_send. A claim is a lease on
the row (`claimed_until`), taken with FOR UPDATE SKIP LOCKED, so two workers never send the same
attempt, and a worker that dies mid-send leaves a lease that simply runs out.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Coalesce
from django.dispatch import Signal
from django.utils import timezone

from authkeys.principals import SYSTEM, Caller
from registry import audit
from webhooks import queue, sender
from webhooks.models import (
    ENDPOINT_DISABLED,
    PING,
    Delivery,
    DeliveryAttempt,
    WebhookEndpoint,
)
from webhooks.outbox import record_event_for
from webhooks.signing import signature_headers, signing_key

logger = logging.getLogger(__name__)

# Sent (after commit) when an endpoint is disabled: by its owner, staff, a 410, or days of failure.
endpoint_disabled = Signal()

# A retry further off than this is left to the sweep rather than held by the broker as an ETA
# message (which Redis would hand to another worker after its visibility timeout).
ETA_LIMIT = timedelta(minutes=5)


# How many deliveries one claim (one query) takes.
CLAIM_BATCH = 50
# A worker sends one endpoint's due deliveries for at most this long, then queues the rest,
# so one busy endpoint cannot keep a worker from the others.
DRAIN_SECONDS = 30.0


def _lease(count: int) -> timedelta:
    """Long enough to send `count` deliveries one after another, each within its connect and
    read timeouts, with room to record them."""
    return timedelta(seconds=count * 2 * settings.WEBHOOK_TIMEOUT + 5)


def endpoint_deliveries_send(endpoint_id: int) -> int:
    """Sends the endpoint's due deliveries that no other worker holds, oldest first, a claimed
    batch at a time, until none is left; returns how many were attempted or held."""
    queue.starting(endpoint_id)
    handled = 0
    deadline = time.monotonic() + DRAIN_SECONDS
    while batch := _claim(Q(endpoint_id=endpoint_id)):
        _send_batch(batch)
        handled += len(batch)
        if time.monotonic() > deadline:
            queue.enqueue(endpoint_id)
            break
    return handled


def deliveries_send(delivery_ids: list[int]) -> None:
    """Sends these deliveries (of one endpoint) if they are due and no other worker holds them."""
    _send_batch(_claim(Q(pk__in=delivery_ids)))


def claimed_delivery_send(delivery: Delivery) -> None:
    """Sends a delivery its caller created already claimed (with claim_lease()), so no worker
    could take it first: the endpoint test."""
    _send_batch([delivery])


def claim_lease() -> datetime:
    return timezone.now() + _lease(1)


def _claim(which: Q) -> list[Delivery]:
    now = timezone.now()
    with transaction.atomic():
        deliveries = list(
            Delivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("event", "endpoint")
            .filter(which, status=Delivery.PENDING, next_attempt_at__lte=now)
            .filter(endpoint__is_active=True)
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by("next_attempt_at", "pk")[:CLAIM_BATCH]
        )
        if deliveries:
            Delivery.objects.filter(pk__in=[delivery.pk for delivery in deliveries]).update(
                claimed_until=now + _lease(len(deliveries))
            )
    # One endpoint object per endpoint, so what one attempt learns (the breaker's count, a
    # disabling) the next attempt in the batch sees.
    endpoints: dict[int, WebhookEndpoint] = {}
    for claimed in deliveries:
        claimed.endpoint = endpoints.setdefault(claimed.endpoint_id, claimed.endpoint)
    return deliveries


@dataclass(frozen=True)
class _Sent:
    delivery: Delivery
    result: sender.SendResult
    started_at: datetime
    duration_ms: float


def _send_batch(batch: list[Delivery]) -> None:
    """Sends a claimed batch of one endpoint's deliveries in order. Failures are recorded as
    they happen (the circuit breaker must see them at once), successes together at the end;
    once the endpoint is disabled or its circuit holds, the rest of the batch waits."""
    succeeded = []
    for index, claimed in enumerate(batch):
        endpoint = claimed.endpoint
        if not endpoint.is_active:  # disabled by an earlier attempt of this batch
            Delivery.objects.filter(pk__in=[each.pk for each in batch[index:]]).update(
                claimed_until=None
            )
            break
        # A ping is someone checking the endpoint by hand: it goes through an open circuit.
        if claimed.event.event_type != PING:
            held_until = _held_until(endpoint, timezone.now())
            if held_until is not None:
                _hold(batch[index:], held_until)
                break
        sent = _send(claimed)
        if not sent.result.succeeded:
            _record_failure(sent)
            continue
        succeeded.append(sent)
        if endpoint.consecutive_failures:  # a probe that closes the circuit: record it now
            _record_successes(succeeded)
            succeeded = []
    _record_successes(succeeded)


def _send(delivery: Delivery) -> _Sent:
    endpoint = delivery.endpoint
    body = json.dumps(delivery.event.payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = signature_headers(
        _signing_keys(endpoint),
        webhook_id=delivery.webhook_id,
        timestamp=int(time.time()),
        body=body,
    )
    headers["X-Hokusai-Idempotency-Key"] = delivery.webhook_id
    headers["X-Hokusai-Event"] = delivery.event.event_type
    started_at = timezone.now()
    started = time.perf_counter()
    result = sender.post(endpoint.url, body=body, headers=headers)
    return _Sent(delivery, result, started_at, (time.perf_counter() - started) * 1000)


def _signing_keys(endpoint: WebhookEndpoint) -> list[bytes]:
    keys = [signing_key(endpoint.secret)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > timezone.now():
        keys.append(signing_key(endpoint.previous_secret))
    return keys


# --- Circuit breaker ---------------------------------------------------------------------------


def _held_until(endpoint: WebhookEndpoint, now: datetime) -> datetime | None:
    """None when the delivery may be sent now; else when to try again.

    Closed (fewer failures in a row than WEBHOOK_BREAKER_FAILURES): send. Open (cooldown not
    over): wait. Half open (cooldown over): the one worker that moves the cooldown on sends the
    probe; everyone else waits for its outcome.
    """
    if endpoint.consecutive_failures < settings.WEBHOOK_BREAKER_FAILURES:
        return None
    open_until = endpoint.circuit_open_until
    if open_until is not None and open_until > now:
        return open_until
    next_open_until = now + timedelta(seconds=settings.WEBHOOK_BREAKER_COOLDOWN_SECONDS)
    won_probe = WebhookEndpoint.objects.filter(
        pk=endpoint.pk, circuit_open_until=open_until
    ).update(circuit_open_until=next_open_until)
    return None if won_probe else next_open_until


def _hold(deliveries: list[Delivery], until: datetime) -> None:
    """Waits out an open circuit: no attempt is recorded, the retry budget is untouched."""
    # A moment after the probe, so that they go once it has closed the circuit.
    until += timedelta(seconds=random.uniform(0, 1))  # noqa: S311 (spreading, not secrecy)
    short = until - timezone.now() <= ETA_LIMIT
    Delivery.objects.filter(pk__in=[delivery.pk for delivery in deliveries]).update(
        next_attempt_at=until, claimed_until=None, enqueued_at=until if short else None
    )
    if short:
        queue.enqueue(deliveries[0].endpoint_id, eta=until)


def _after_attempt(endpoint: WebhookEndpoint, *, succeeded: bool, gone: bool, now: datetime):
    """Moves the breaker on; disables the endpoint on 410 or after failing for too long."""
    if succeeded:
        if endpoint.consecutive_failures or endpoint.failing_since or endpoint.circuit_open_until:
            WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
                consecutive_failures=0, failing_since=None, circuit_open_until=None
            )
            endpoint.consecutive_failures = 0
            endpoint.failing_since = endpoint.circuit_open_until = None
        return
    cooldown = timedelta(seconds=settings.WEBHOOK_BREAKER_COOLDOWN_SECONDS)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        consecutive_failures=F("consecutive_failures") + 1,
        failing_since=Coalesce(F("failing_since"), Value(now)),
        circuit_open_until=Case(
            When(
                consecutive_failures__gte=settings.WEBHOOK_BREAKER_FAILURES - 1,
                then=Value(now + cooldown),
            ),
            default=F("circuit_open_until"),
        ),
    )
    endpoint.refresh_from_db(
        fields=["consecutive_failures", "failing_since", "circuit_open_until", "is_active"]
    )
    if not endpoint.is_active:
        return
    if gone:
        endpoint_disable(actor=SYSTEM, endpoint=endpoint, reason="The receiver answered 410 Gone.")
        return
    failing_for = (now - endpoint.failing_since).total_seconds()
    if failing_for >= settings.WEBHOOK_DISABLE_AFTER_SECONDS:
        endpoint_disable(
            actor=SYSTEM,
            endpoint=endpoint,
            reason=f"Every delivery failed for {_duration(failing_for)}.",
        )


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds:.0f} seconds"


# --- Recording an attempt ----------------------------------------------------------------------


def _attempt_row(sent: _Sent, number: int) -> DeliveryAttempt:
    return DeliveryAttempt(
        delivery=sent.delivery,
        number=number,
        started_at=sent.started_at,
        duration_ms=sent.duration_ms,
        status_code=sent.result.status_code,
        response_body=sent.result.response_body,
        error=sent.result.error[:500],
        succeeded=sent.result.succeeded,
    )


def _record_successes(batch: list[_Sent]) -> None:
    """One transaction for a batch of successes: their attempts, their deliveries, and a
    closed circuit for each endpoint."""
    if not batch:
        return
    now = timezone.now()
    by_status: dict[int, list[int]] = defaultdict(list)
    for sent in batch:
        by_status[sent.result.status_code].append(sent.delivery.pk)
    with transaction.atomic():
        updated = 0
        for status_code, delivery_ids in by_status.items():
            updated += Delivery.objects.filter(pk__in=delivery_ids).update(
                status=Delivery.DELIVERED,
                attempt_count=F("attempt_count") + 1,
                retry_step=0,
                last_status_code=status_code,
                last_error="",
                claimed_until=None,
                next_attempt_at=None,
                delivered_at=now,
                updated_at=now,
            )
        if updated < len(batch):  # some were deleted (with their endpoint) while being sent
            remaining = set(
                Delivery.objects.filter(pk__in=[sent.delivery.pk for sent in batch]).values_list(
                    "pk", flat=True
                )
            )
            batch = [sent for sent in batch if sent.delivery.pk in remaining]
        DeliveryAttempt.objects.bulk_create(
            _attempt_row(sent, sent.delivery.attempt_count + 1) for sent in batch
        )
        for endpoint in {sent.delivery.endpoint for sent in batch}:
            _after_attempt(endpoint, succeeded=True, gone=False, now=now)


def _record_failure(sent: _Sent) -> None:
    delivery, result = sent.delivery, sent.result
    now = timezone.now()
    number = delivery.attempt_count + 1
    retry_step = delivery.retry_step + 1
    changes = {
        "attempt_count": number,
        "retry_step": retry_step,
        "last_status_code": result.status_code,
        "last_error": result.error[:500],
        "claimed_until": None,
        "updated_at": now,
    }
    gone = result.status_code == 410
    retry_at = None
    if gone or delivery.event.event_type == PING or retry_step > len(_schedule()):
        changes |= {"status": Delivery.FAILED, "next_attempt_at": None}
    else:
        retry_at = now + timedelta(seconds=_retry_delay(retry_step, result.retry_after))
        short = retry_at - now <= ETA_LIMIT
        changes |= {"next_attempt_at": retry_at, "enqueued_at": retry_at if short else None}
    with transaction.atomic():
        if not Delivery.objects.filter(pk=delivery.pk).update(**changes):
            return  # deleted (with its endpoint) while being sent
        _attempt_row(sent, number).save()
        _after_attempt(delivery.endpoint, succeeded=False, gone=gone, now=now)
    if retry_at is not None and retry_at - now <= ETA_LIMIT:
        queue.enqueue(delivery.endpoint_id, eta=retry_at)


def _schedule() -> tuple[float, ...]:
    return settings.WEBHOOK_RETRY_SCHEDULE


def _retry_delay(retry_step: int, retry_after: float | None) -> float:
    """The schedule's wait for this retry, stretched by jitter; longer if the receiver asked."""
    jitter = random.uniform(0, settings.WEBHOOK_RETRY_JITTER)  # noqa: S311 (spreading, not secrecy)
    delay = _schedule()[retry_step - 1] * (1 + jitter)
    return max(delay, retry_after or 0.0)


# --- The sweep ---------------------------------------------------------------------------------


def deliveries_requeue_due(*, limit: int = 1000) -> int:
    """Enqueues deliveries that are due but whose message is lost (never sent, broker flushed,
    worker killed), i.e. enqueued longer than WEBHOOK_REQUEUE_AFTER_SECONDS ago and unclaimed.
    Run by beat every WEBHOOK_SWEEP_INTERVAL_SECONDS."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.WEBHOOK_REQUEUE_AFTER_SECONDS)
    with transaction.atomic():
        due = list(
            Delivery.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(status=Delivery.PENDING, next_attempt_at__lte=now, endpoint__is_active=True)
            .filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=stale))
            .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
            .order_by("next_attempt_at")
            .values_list("pk", "endpoint_id")[:limit]
        )
        Delivery.objects.filter(pk__in=[pk for pk, _ in due]).update(enqueued_at=now)
    # Past the waiting markers: these endpoints' messages are the ones that went missing.
    for endpoint_id in {endpoint_id for _, endpoint_id in due}:
        queue.enqueue(endpoint_id)
    if due:
        logger.info("sweep enqueued %d due deliveries", len(due))
    return len(due)


# --- Disabling --------------------------------------------------------------------------------


def endpoint_disable(*, actor: Caller, endpoint: WebhookEndpoint, reason: str) -> None:
    """Stops deliveries to the endpoint (pending ones wait until it is enabled again), records
    why, and tells the owner: an audit entry, an `endpoint_disabled` event to their other
    endpoints that subscribe to it, and the endpoint_disabled signal."""
    with transaction.atomic():
        changed = WebhookEndpoint.objects.filter(pk=endpoint.pk, is_active=True).update(
            is_active=False, disabled_reason=reason[:500], updated_at=timezone.now()
        )
        if not changed:
            return
        endpoint.is_active, endpoint.disabled_reason = False, reason[:500]
        audit.webhook_endpoint_changed(
            actor=actor, endpoint=endpoint, action="disabled", details={"reason": reason}
        )
        told = [
            other
            for other in _owners_endpoints(endpoint)
            if other.is_active and ENDPOINT_DISABLED in other.event_types
        ]
        if told:
            record_event_for(
                told,
                event_type=ENDPOINT_DISABLED,
                content={
                    "endpoint": {"id": endpoint.pk, "url": endpoint.url},
                    "data": {"reason": reason, "disabled_by": actor.label},
                },
            )
        transaction.on_commit(
            functools.partial(
                endpoint_disabled.send, sender=WebhookEndpoint, endpoint=endpoint, reason=reason
            )
        )
    logger.warning("webhook endpoint %s (%s) disabled: %s", endpoint.pk, endpoint.url, reason)


def _owners_endpoints(endpoint: WebhookEndpoint) -> list[WebhookEndpoint]:
    if endpoint.owner_user_id is not None:
        owned = Q(owner_user_id=endpoint.owner_user_id)
    elif endpoint.owner_identity_id is not None:
        owned = Q(owner_identity_id=endpoint.owner_identity_id)
    else:
        return []
    return list(WebhookEndpoint.objects.filter(owned).exclude(pk=endpoint.pk))

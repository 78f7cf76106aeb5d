"""`Idempotency-Key`: a retried request gets the first answer and changes nothing again.

The first request with a key claims a record with a lease and does its work outside any
database transaction (MLflow may be slow, and on the embedded SQLite an open transaction would
lock MLflow out of the shared file); it stores its answer in the transaction that writes its
result (`Claim.answer`). A concurrent twin finds the lease held and gets 409 at once. A request
that failed gives the lease back, and its retry does the work; one whose process died leaves a
lease that runs out after LEASE.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone

from authkeys.principals import Caller
from hokusai_site.errors import ApplicationError
from hokusai_site.models import IdempotencyRecord

MAX_KEY_LENGTH = 255
# Longer than any request holding a claim can run (MLflow timeouts included).
LEASE = timedelta(minutes=5)


@dataclass
class Claim:
    """What the caller does with a key: replay `replay` when it is set, else work and `answer`."""

    record: IdempotencyRecord | None
    replay: tuple[int, Any] | None = None

    def answer(self, status: int, body: Any) -> None:
        """Stores the answer; call inside the transaction that writes the result."""
        if self.record is not None:
            self.record.response_status = status
            self.record.response_body = body
            self.record.locked_until = None
            self.record.save(update_fields=["response_status", "response_body", "locked_until"])


def owner_of(caller: Caller) -> str:
    return f"user:{caller.user_id}" if caller.user_id is not None else f"eth:{caller.identity_id}"


def request_digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def idempotent(*, operation: str, caller: Caller, key: str | None, payload: Any) -> Iterator[Claim]:
    """The claim on `key` for this request (see the module); without a key, nothing to claim."""
    if key is None:
        yield Claim(record=None)
        return
    if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise ApplicationError(
            "idempotency_key_invalid",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
        )
    digest = request_digest(payload)
    record, _ = IdempotencyRecord.objects.get_or_create(
        operation=operation, owner=owner_of(caller), key=key, defaults={"request_sha256": digest}
    )
    if record.request_sha256 != digest:
        raise ApplicationError(
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request.",
            status=422,
        )
    now = timezone.now()
    claimed = (
        IdempotencyRecord.objects.filter(pk=record.pk, response_status__isnull=True)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .update(locked_until=now + LEASE)
    )
    if not claimed:
        record.refresh_from_db()
        if record.response_status is not None:
            yield Claim(record=None, replay=(record.response_status, record.response_body))
            return
        raise ApplicationError(
            "idempotency_key_in_progress",
            "A request with this Idempotency-Key is still being processed; retry shortly.",
            status=409,
        )
    try:
        yield Claim(record=record)
    finally:
        # Unanswered (the work failed): the next retry may claim it at once.
        IdempotencyRecord.objects.filter(pk=record.pk, response_status__isnull=True).update(
            locked_until=None
        )

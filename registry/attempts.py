"""Which registrations may have left a version in MLflow that we did not record.

MLflow has no idempotent create: searching it for an earlier version of the same source on
every registration costs a call as dear as the create itself. Instead each registration of a
source under an MLflow name holds a row (`RegistrationAttempt`) while it works and deletes it
in the transaction that records the version, or when it is refused. So only a registration
that finds a row left by a failed or dead one needs to look in MLflow first; one that finds
the row held gets 409.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from hokusai_site.errors import ApplicationError
from hokusai_site.idempotency import LEASE
from registry.models import RegistrationAttempt

# How long a failed registration's row outlives it (sync, every few minutes, needs one run).
ATTEMPT_MEMORY = timedelta(days=1)


@dataclass
class Attempt:
    key: str
    # False: an earlier registration stopped after it may have created a version in MLflow.
    first: bool

    def finish(self) -> None:
        """Call in the transaction that records the version."""
        RegistrationAttempt.objects.filter(key=self.key).delete()


@contextmanager
def registration_attempt(model_name: str, model_uri: str) -> Iterator[Attempt]:
    """Holds the (name, source) pair while registering; given back when the block fails."""
    key = hashlib.sha256(f"{model_name}\n{model_uri}".encode()).hexdigest()
    now = timezone.now()
    try:
        with transaction.atomic():
            RegistrationAttempt.objects.create(
                key=key, model_name=model_name, model_uri=model_uri, locked_until=now + LEASE
            )
        first = True
    except IntegrityError:
        first = False
        taken = (
            RegistrationAttempt.objects.filter(key=key)
            .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
            .update(locked_until=now + LEASE)
        )
        if not taken:
            raise ApplicationError(
                "registration_in_progress",
                f"{model_uri} is being registered as {model_name} by another request; "
                "retry shortly.",
                status=409,
            ) from None
    attempt = Attempt(key=key, first=first)
    try:
        yield attempt
    except ApplicationError as exc:
        if exc.status >= 500:  # MLflow failed: it may hold a version by now
            RegistrationAttempt.objects.filter(key=key).update(locked_until=None)
        else:  # refused: nothing was made in MLflow, or what was made is recorded
            attempt.finish()
        raise
    except BaseException:
        RegistrationAttempt.objects.filter(key=key).update(locked_until=None)
        raise


def forget_failed_attempts(*, older_than: timedelta) -> int:
    """Deletes the rows of failed or dead registrations started more than `older_than` ago."""
    now = timezone.now()
    deleted, _ = (
        RegistrationAttempt.objects.filter(created_at__lt=now - older_than)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lt=now))
        .delete()
    )
    return deleted

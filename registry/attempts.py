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

from django.db import connection
from django.db.models import Q
from django.utils import timezone

from hokusai_site.errors import ApplicationError
from hokusai_site.idempotency import LEASE
from registry.models import RegistrationAttempt

# How long a failed registration's row outlives it (sync, every few minutes, needs one run).
ATTEMPT_MEMORY = timedelta(days=1)


# Claiming and forgetting are fixed SQL, one statement each: every registration runs both, and
# the ORM's create-or-take-over (a savepoint, the INSERT, on a conflict an UPDATE) and its
# delete cost ~0.9 ms of CPU apiece (README "Registry and proxy").
# The row comes back when it is new (created now) or taken over from a failed or dead
# registration (its lease cleared or run out); no row: another registration holds it.
_CLAIM = """
    INSERT INTO registry_registrationattempt (key, model_name, model_uri, locked_until, created_at)
    VALUES (%(key)s, %(model_name)s, %(model_uri)s, %(locked_until)s, %(now)s)
    ON CONFLICT (key) DO UPDATE SET locked_until = EXCLUDED.locked_until
    WHERE registry_registrationattempt.locked_until IS NULL
       OR registry_registrationattempt.locked_until < %(now)s
    RETURNING created_at = %(now)s
"""
_FORGET = "DELETE FROM registry_registrationattempt WHERE key = %s"


@dataclass
class Attempt:
    key: str
    # False: an earlier registration stopped after it may have created a version in MLflow.
    first: bool

    def finish(self) -> None:
        """Call in the transaction that records the version."""
        with connection.cursor() as cursor:
            cursor.execute(_FORGET, [self.key])


@contextmanager
def registration_attempt(model_name: str, model_uri: str) -> Iterator[Attempt]:
    """Holds the (name, source) pair while registering; given back when the block fails."""
    key = hashlib.sha256(f"{model_name}\n{model_uri}".encode()).hexdigest()
    now = timezone.now()
    as_stored = connection.ops.adapt_datetimefield_value  # as the ORM would store them
    claim = {
        "key": key,
        "model_name": model_name,
        "model_uri": model_uri,
        "locked_until": as_stored(now + LEASE),
        "now": as_stored(now),
    }
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM, claim)
        claimed = cursor.fetchone()
    if claimed is None:
        raise ApplicationError(
            "registration_in_progress",
            f"{model_uri} is being registered as {model_name} by another request; retry shortly.",
            status=409,
        )
    attempt = Attempt(key=key, first=bool(claimed[0]))
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

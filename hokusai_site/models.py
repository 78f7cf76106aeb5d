from datetime import timedelta

from django.db import models
from django.utils import timezone


class WorkerHeartbeat(models.Model):
    """A Celery worker's proof of life, refreshed on a timer by the worker itself."""

    hostname = models.CharField(max_length=255, unique=True)
    pid = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    def is_alive(self, *, max_age: timedelta) -> bool:
        return timezone.now() - self.last_seen_at <= max_age


class IdempotencyRecord(models.Model):
    """The first answer to a request sent with an `Idempotency-Key`, per caller and operation."""

    operation = models.CharField(max_length=64)
    owner = models.CharField(max_length=64, help_text="user:<id> or eth:<id>")
    key = models.CharField(max_length=255)
    request_sha256 = models.CharField(max_length=64)
    # Null while the first request is still working.
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    # Held by the request working on it (hokusai_site.idempotency).
    locked_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["operation", "owner", "key"], name="idempotency_key_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.operation} {self.owner} {self.key}"

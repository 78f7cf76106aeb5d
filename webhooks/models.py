import uuid

from django.db import models


class Event(models.Model):
    """The outbox: one row per change receivers hear about, written in the change's own
    transaction (webhooks.outbox.record_events), so no committed change goes unannounced."""

    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event_type = models.CharField(max_length=64, db_index=True)
    payload = models.JSONField(help_text="The body receivers get")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"

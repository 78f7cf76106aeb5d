import uuid

from django.conf import settings
from django.db import models

# What receivers can subscribe to. `ping` is sent only by an endpoint's own test.
MODEL_REGISTERED = "model_registered"
MODEL_READY_TO_DEPLOY = "model_ready_to_deploy"
ENDPOINT_DISABLED = "endpoint_disabled"
PING = "ping"
EVENT_TYPES = (MODEL_REGISTERED, MODEL_READY_TO_DEPLOY, ENDPOINT_DISABLED)


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


class WebhookEndpoint(models.Model):
    """A receiver of signed event deliveries, with its circuit breaker's state."""

    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="webhook_endpoints",
    )
    owner_identity = models.ForeignKey(
        "authkeys.EthIdentity",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="webhook_endpoints",
    )
    # The receiver named by WEBHOOK_URL / WEBHOOK_SECRET: kept in step with settings, no owner.
    from_settings = models.BooleanField(default=False, editable=False)
    url = models.CharField(max_length=2048)
    description = models.CharField(max_length=500, blank=True)
    event_types = models.JSONField(default=list, help_text="Event types this endpoint receives")
    secret = models.CharField(max_length=128, editable=False)
    # The secret before the last rotation, which signs too until previous_secret_expires_at.
    previous_secret = models.CharField(max_length=128, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    is_active = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=500, blank=True)
    # Circuit breaker: failures in a row; while circuit_open_until is in the future deliveries
    # wait; failing_since is the first failure of the current run of failures.
    consecutive_failures = models.PositiveIntegerField(default=0)
    circuit_open_until = models.DateTimeField(null=True, blank=True)
    failing_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(owner_user__isnull=True) | models.Q(owner_identity__isnull=True),
                name="webhook_endpoint_at_most_one_owner",
            ),
            models.UniqueConstraint(
                fields=["from_settings"],
                condition=models.Q(from_settings=True),
                name="one_webhook_endpoint_from_settings",
            ),
        ]

    def __str__(self) -> str:
        return self.url

    @property
    def owner_label(self) -> str:
        if self.from_settings:
            return "WEBHOOK_URL"
        owner = self.owner_user or self.owner_identity
        return str(owner) if owner is not None else ""


class Delivery(models.Model):
    """One event to one endpoint. Postgres holds its whole state; a Celery message only says
    "work on delivery N now"."""

    PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
    STATUS_CHOICES = [(PENDING, "pending"), (DELIVERED, "delivered"), (FAILED, "failed")]

    event = models.ForeignKey(Event, on_delete=models.CASCADE, related_name="deliveries")
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    # webhook-id: the same for every attempt, so receivers can drop repeats.
    webhook_id = models.CharField(max_length=40, unique=True, editable=False)
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=PENDING)
    attempt_count = models.PositiveIntegerField(default=0)
    # Failed attempts since the delivery was (re)queued: its place in WEBHOOK_RETRY_SCHEDULE.
    retry_step = models.PositiveIntegerField(default=0)
    # When the next attempt is due (pending only).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # A worker's claim on the delivery while it sends: no other worker sends it before then.
    claimed_until = models.DateTimeField(null=True, blank=True)
    # When a message for it last went to the broker (the sweep re-enqueues stale ones).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="one_delivery_per_endpoint")
        ]
        indexes = [
            # The sweep: pending deliveries by due time.
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="delivery_due",
            ),
            # A worker's claim: one endpoint's pending deliveries by due time.
            models.Index(
                fields=["endpoint", "next_attempt_at"],
                condition=models.Q(status="pending"),
                name="delivery_due_per_endpoint",
            ),
            models.Index(fields=["endpoint", "status", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.webhook_id} ({self.status})"


class DeliveryAttempt(models.Model):
    """One try at sending a delivery, as the receiver answered it."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    # The start of the receiver's answer, for people debugging it.
    response_body = models.TextField(blank=True)
    error = models.CharField(max_length=500, blank=True)
    succeeded = models.BooleanField()

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="one_attempt_per_number")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"

import uuid

from django.db import models


class PredictionLog(models.Model):
    """One row per prediction attempt, answered or refused (inference.prediction_log writes them
    in the background). The input is kept as its SHA-256; the payload itself only when
    HOKUSAI_LOG_PREDICTION_PAYLOADS is on."""

    CALLER_KIND_CHOICES = [
        ("api_key", "API key"),
        ("eth", "Ethereum identity"),
        ("user", "user"),
        ("anonymous", "anonymous"),
    ]

    # Chosen before the row is written, so the response can carry it as `inference_log_id`.
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # When the request came in, not when the row was flushed.
    created_at = models.DateTimeField()
    caller_kind = models.CharField(max_length=16, choices=CALLER_KIND_CHOICES)
    caller_label = models.CharField(
        max_length=150, blank=True, help_text="Key prefix, address or username; blank if unknown"
    )
    model_id = models.CharField(max_length=64)
    model_version = models.CharField(max_length=32, blank=True)
    rows = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField()
    status = models.PositiveSmallIntegerField(help_text="The HTTP status answered")
    error_code = models.CharField(max_length=64, blank=True)
    # As long as the ids RequestIdMiddleware accepts from clients.
    request_id = models.CharField(max_length=128, blank=True)
    input_sha256 = models.CharField(max_length=64, blank=True)
    payload = models.TextField(blank=True, help_text="Only with HOKUSAI_LOG_PREDICTION_PAYLOADS")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["model_id", "-created_at"], name="plog_model_created"),
            models.Index(fields=["caller_label", "-created_at"], name="plog_caller_created"),
            # For the admin's time-ordered pages and the prune task.
            models.Index(fields=["created_at"], name="plog_created"),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} {self.status} {self.id}"

    @property
    def succeeded(self) -> bool:
        return self.status < 400

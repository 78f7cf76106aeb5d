from django.conf import settings
from django.db import models


class AuditLog(models.Model):
    """One row per change made through the API, the admin, a task or a command. Append-only."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor_kind = models.CharField(max_length=16, help_text="user, api_key, eth or system")
    actor_label = models.CharField(max_length=150, help_text="username, key prefix or address")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    details = models.JSONField(default=dict, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"])]

    def __str__(self) -> str:
        return f"{self.actor_label} {self.action} {self.target_type}:{self.target_id}"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("audit log entries are never changed")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("audit log entries are never deleted")


class Model(models.Model):
    """A model registered under a token symbol: one MLflow registered model, many versions."""

    STATUS_CHOICES = [
        ("registered", "registered"),
        ("ready_to_deploy", "ready to deploy"),
        ("unclaimed", "unclaimed (found in MLflow, no owner yet)"),
    ]
    DIRECTION_CHOICES = [("higher", "higher is better"), ("lower", "lower is better")]

    model_id = models.CharField(max_length=64, unique=True, help_text="Token symbol, lower case")
    token_symbol = models.CharField(max_length=64, unique=True, help_text="Upper case")
    name = models.CharField(max_length=256, unique=True, help_text="MLflow registered model")
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    owner_identity = models.ForeignKey(
        "authkeys.EthIdentity", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    description = models.TextField(blank=True)
    metric_name = models.CharField(max_length=32)
    metric_direction = models.CharField(max_length=6, choices=DIRECTION_CHOICES)
    baseline_value = models.FloatField()
    tags = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default="registered")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model_id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(owner_user__isnull=True) | models.Q(owner_identity__isnull=True),
                name="model_at_most_one_owner",
            )
        ]

    def __str__(self) -> str:
        return f"{self.token_symbol} ({self.name})"

    @property
    def owner_label(self) -> str:
        owner = self.owner_user or self.owner_identity
        return str(owner) if owner is not None else ""


class ModelVersion(models.Model):
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    run_id = models.CharField(max_length=64, blank=True)
    source = models.CharField(max_length=1024)
    current_value = models.FloatField(null=True, blank=True)
    mlflow_status = models.CharField(max_length=32)
    proposal_identifier = models.CharField(max_length=256, blank=True)
    contributor_address = models.CharField(max_length=42, blank=True)
    registered_by = models.CharField(max_length=150, help_text="Caller label, or sync")
    # Its events are in the outbox; versions found by sync are not announced until claimed.
    announced = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # By the column, not "model": that would join registry_model into every lookup of a
        # model's versions to sort by the model's own ordering.
        ordering = ["model_id", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="model_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"


class Contribution(models.Model):
    """Data a contributor submitted for a model: one object in the contribution storage.

    The same bytes are kept once per model (the unique sha256), whoever sends them again.
    """

    STATUS_CHOICES = [("received", "received")]

    model = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="contributions")
    contributor = models.CharField(max_length=150, help_text="Username or wallet address")
    contributor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    contributor_identity = models.ForeignKey(
        "authkeys.EthIdentity", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    storage_name = models.CharField(max_length=255, help_text="Key in the contribution storage")
    size = models.PositiveBigIntegerField(help_text="Bytes")
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=255)
    original_name = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default="received")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["model", "sha256"], name="contribution_unique_bytes"),
            models.CheckConstraint(
                condition=models.Q(contributor_user__isnull=False, contributor_identity=None)
                | models.Q(contributor_user=None, contributor_identity__isnull=False),
                name="contribution_one_contributor",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model.token_symbol} contribution {self.pk} by {self.contributor}"


class RegistrationAttempt(models.Model):
    """A registration of one source under one MLflow name that is working on MLflow now, or
    that stopped before recording what it made there.

    The row is gone once the version is recorded, so a first registration creates its version
    without searching MLflow; a retry finds the row and looks in MLflow before creating.
    """

    key = models.CharField(max_length=64, unique=True, help_text="SHA-256 of name and source")
    model_name = models.CharField(max_length=256)
    model_uri = models.CharField(max_length=1024)
    # While set and in the future, a registration holds it; None: the last one failed.
    locked_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.model_name} from {self.model_uri}"

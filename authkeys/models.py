from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class EthIdentity(models.Model):
    """An Ethereum address that signs in with EIP-4361 messages; operators set its scopes."""

    address = models.CharField(max_length=42, unique=True, help_text="EIP-55 checksummed")
    label = models.CharField(max_length=100, blank=True)
    scopes = models.JSONField(default=list, blank=True)
    rate_limit_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: the platform default"
    )
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "Ethereum identity"
        verbose_name_plural = "Ethereum identities"

    def __str__(self) -> str:
        return self.label or self.address


class ApiKey(models.Model):
    """A named credential with scopes and a rate limit. Its secrets live in ApiKeySecret rows:
    one current, plus the previous one during a rotation's grace period."""

    ENVIRONMENT_CHOICES = [("live", "live"), ("test", "test")]

    name = models.CharField(max_length=100)
    owner_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="api_keys",
    )
    owner_identity = models.ForeignKey(
        EthIdentity, null=True, blank=True, on_delete=models.CASCADE, related_name="api_keys"
    )
    environment = models.CharField(max_length=4, choices=ENVIRONMENT_CHOICES, default="live")
    scopes = models.JSONField(default=list)
    rate_limit_per_minute = models.PositiveIntegerField()
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)
    # The last change that matters to authentication; the beat publishes recent ones again.
    changed_at = models.DateTimeField(null=True, blank=True, db_index=True, editable=False)

    class Meta:
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                condition=Q(owner_user__isnull=False, owner_identity__isnull=True)
                | Q(owner_user__isnull=True, owner_identity__isnull=False),
                name="api_key_has_exactly_one_owner",
            )
        ]

    def __str__(self) -> str:
        return self.name

    def status_at(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    @property
    def status(self) -> str:
        return self.status_at(timezone.now())

    @property
    def current_prefix(self) -> str:
        # Reads the prefetched secrets when a list view prefetched them.
        current = next((s for s in self.secrets.all() if s.valid_until is None), None)
        return current.prefix if current else ""

    @property
    def owner_label(self) -> str:
        return str(self.owner_user or self.owner_identity)


class ApiKeySecret(models.Model):
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="secrets")
    prefix = models.CharField(max_length=24, unique=True, help_text="Public part of the key")
    key_hash = models.CharField(max_length=64, help_text="HMAC-SHA256 of the whole key")
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when the key is rotated: the old secret keeps working until then.
    valid_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.prefix


class ApiKeyUsageDaily(models.Model):
    """Requests made with a key per day (UTC), moved here from Redis by a periodic task."""

    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="usage_days")
    day = models.DateField()
    requests = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name = "API key usage (daily)"
        verbose_name_plural = "API key usage (daily)"
        ordering = ["-day"]
        constraints = [
            models.UniqueConstraint(fields=["api_key", "day"], name="one_usage_row_per_key_day")
        ]

    def __str__(self) -> str:
        return f"{self.api_key_id} {self.day}: {self.requests}"

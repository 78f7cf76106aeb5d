from django.contrib import admin

from authkeys.admin import ReadOnlyAdmin, ReadOnlyInline
from authkeys.scopes import AUDIT_READ, MODELS_READ
from registry.models import AuditLog, Contribution, Model, ModelVersion


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    """Read-only: entries are written by `registry.audit` and never changed or deleted."""

    view_scope = AUDIT_READ
    list_display = [
        "created_at",
        "actor_kind",
        "actor_label",
        "action",
        "target_type",
        "target_id",
        "request_id",
    ]
    list_filter = ["action", "actor_kind", "target_type"]
    search_fields = ["actor_label", "=target_id", "=request_id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    # The log only grows: skip the unfiltered COUNT(*) on every page.
    show_full_result_count = False
    fields = [
        "created_at",
        "actor_kind",
        "actor_label",
        "actor_user",
        "action",
        "target_type",
        "target_id",
        "details",
        "ip",
        "request_id",
    ]
    readonly_fields = fields


class ModelVersionInline(ReadOnlyInline):
    view_scope = MODELS_READ
    model = ModelVersion
    fields = [
        "version",
        "mlflow_status",
        "current_value",
        "run_id",
        "source",
        "proposal_identifier",
        "contributor_address",
        "registered_by",
        "announced",
        "created_at",
    ]
    readonly_fields = fields
    ordering = ["-version"]


@admin.register(Model)
class ModelAdmin(ReadOnlyAdmin):
    """Registered models; they change through the API (registration, PATCH) and sync."""

    view_scope = MODELS_READ
    list_display = ["token_symbol", "name", "owner_label", "metric_name", "status", "updated_at"]
    list_filter = ["status", "metric_name"]
    search_fields = ["token_symbol", "name", "owner_user__username", "owner_identity__address"]
    ordering = ["model_id"]
    inlines = [ModelVersionInline]
    fields = [
        "model_id",
        "token_symbol",
        "name",
        "owner_user",
        "owner_identity",
        "description",
        "metric_name",
        "metric_direction",
        "baseline_value",
        "tags",
        "status",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner_user", "owner_identity")


@admin.register(Contribution)
class ContributionAdmin(ReadOnlyAdmin):
    """Data contributions; they arrive through the API (`registry.contributions`), which keeps
    each row and its stored object together."""

    list_display = ["created_at", "model", "contributor", "size", "sha256", "status"]
    list_filter = ["status", "content_type", "model"]
    search_fields = ["contributor", "=sha256", "original_name", "=model__model_id"]
    list_select_related = ["model"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    fields = [
        "created_at",
        "model",
        "contributor",
        "contributor_user",
        "contributor_identity",
        "original_name",
        "content_type",
        "size",
        "sha256",
        "storage_name",
        "status",
    ]
    readonly_fields = fields

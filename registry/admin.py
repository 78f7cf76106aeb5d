from django.contrib import admin

from authkeys.admin import ScopedAdmin
from authkeys.scopes import AUDIT_READ
from registry.models import AuditLog


@admin.register(AuditLog)
class AuditLogAdmin(ScopedAdmin):
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

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

from django.contrib import admin

from authkeys.admin import ReadOnlyAdmin
from authkeys.scopes import WEBHOOKS_MANAGE
from webhooks.models import Event


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    """The outbox: events are written with the changes they announce, never by hand."""

    view_scope = WEBHOOKS_MANAGE
    list_display = ["created_at", "event_type", "event_id"]
    list_filter = ["event_type"]
    search_fields = ["=event_id"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    show_full_result_count = False
    fields = ["event_id", "event_type", "payload", "created_at"]
    readonly_fields = fields

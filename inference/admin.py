"""The operators' admin for serving: the prediction log, read-only, and usage per model and per
caller over the last day and week (`usage/` under the log's list)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from authkeys.admin import ReadOnlyAdmin
from authkeys.scopes import AUDIT_READ
from inference import prediction_log
from inference.models import PredictionLog
from registry.models import Model

# The usage page's windows: (title, length).
USAGE_WINDOWS = [("Last 24 hours", timedelta(hours=24)), ("Last 7 days", timedelta(days=7))]


class ModelIdFilter(admin.SimpleListFilter):
    """The registered models as choices: Django's default filter for a plain column would read
    every distinct value of the whole log on each page."""

    title = "model"
    parameter_name = "model_id"

    def lookups(self, request, model_admin):
        model_ids = Model.objects.order_by("model_id").values_list("model_id", flat=True)
        return [(model_id, model_id) for model_id in model_ids]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(model_id=self.value())
        return queryset


class StatusFilter(admin.SimpleListFilter):
    """Outcomes by status class, without reading every distinct status of the log."""

    title = "status"
    parameter_name = "outcome"
    OUTCOMES = {
        "success": ("answered (2xx)", Q(status__lt=400)),
        "refused": ("refused (401, 403, 429)", Q(status__in=[401, 403, 429])),
        "client_error": ("client errors (4xx)", Q(status__gte=400, status__lt=500)),
        "server_error": ("server errors (5xx)", Q(status__gte=500)),
    }

    def lookups(self, request, model_admin):
        return [(value, title) for value, (title, _) in self.OUTCOMES.items()]

    def queryset(self, request, queryset):
        if self.value() in self.OUTCOMES:
            return queryset.filter(self.OUTCOMES[self.value()][1])
        return queryset


@admin.register(PredictionLog)
class PredictionLogAdmin(ReadOnlyAdmin):
    """Read-only: rows are written by `inference.prediction_log` and removed only by its prune
    task."""

    view_scope = AUDIT_READ
    list_display = [
        "created_at",
        "model_id",
        "model_version",
        "caller",
        "status",
        "rows",
        "latency_ms",
        "error_code",
    ]
    list_filter = [StatusFilter, "caller_kind", ModelIdFilter]
    search_fields = ["=request_id", "=caller_label"]
    search_help_text = "An inference_log_id, a request id, or a caller (key prefix, address, user)."
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    # The log only grows: skip the unfiltered COUNT(*) on every page.
    show_full_result_count = False
    fields = [
        "id",
        "created_at",
        "caller_kind",
        "caller_label",
        "model_id",
        "model_version",
        "rows",
        "latency_ms",
        "status",
        "error_code",
        "request_id",
        "input_sha256",
        "payload",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        # Payloads can be large: only a row's own page shows one.
        match = request.resolver_match
        if match and (match.url_name or "").endswith("_changelist"):
            queryset = queryset.defer("payload")
        return queryset

    def get_search_results(self, request, queryset, search_term):
        try:
            log_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        # A response's inference_log_id: one primary-key lookup (request ids can be UUIDs too).
        return queryset.filter(Q(pk=log_id) | Q(request_id=search_term.strip())), False

    @admin.display(description="caller", ordering="caller_label")
    def caller(self, obj: PredictionLog) -> str:
        if not obj.caller_label:
            return obj.caller_kind
        return f"{obj.caller_label} ({obj.caller_kind})"

    def get_urls(self):
        usage = path(
            "usage/",
            self.admin_site.admin_view(self.usage_view),
            name="inference_predictionlog_usage",
        )
        return [usage, *super().get_urls()]

    def usage_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        now = timezone.now()
        windows = [
            {"title": title, **prediction_log.usage(now - length)}
            for title, length in USAGE_WINDOWS
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Prediction usage",
            "opts": self.opts,
            "windows": windows,
            "now": now,
        }
        return TemplateResponse(request, "admin/inference/predictionlog/usage.html", context)

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.template.response import TemplateResponse

from authkeys.admin import ReadOnlyAdmin, ReadOnlyInline, check_one_owner, holds
from authkeys.models import EthIdentity
from authkeys.principals import caller_from_user
from authkeys.scopes import AUDIT_READ, MODELS_READ, MODELS_WRITE
from hokusai_site.errors import ApplicationError
from registry import services
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


class AssignOwnerForm(forms.Form):
    """The owner `services.model_assign_owner` needs, checked here so the service never
    refuses it for want of one."""

    owner_user = forms.ModelChoiceField(
        queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
        required=False,
        label="Owner (user)",
        help_text="Exactly one owner: a user or an Ethereum identity.",
    )
    owner_identity = forms.ModelChoiceField(
        queryset=EthIdentity.objects.filter(is_active=True).order_by("address"),
        required=False,
        label="Owner (Ethereum identity)",
    )

    def clean(self):
        return check_one_owner(self, super().clean(), "model")


@admin.register(Model)
class ModelAdmin(ReadOnlyAdmin):
    """Registered models; they change through the API (registration, PATCH) and sync, and
    staff give unclaimed ones (found by sync) an owner with an action."""

    view_scope = MODELS_READ
    actions = ["assign_owner"]
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

    def has_assign_owner_permission(self, request) -> bool:
        # The scope that changes a model through the API; rows stay read-only otherwise.
        return holds(request, MODELS_WRITE)

    @admin.action(description="Assign an owner to unclaimed models", permissions=["assign_owner"])
    def assign_owner(self, request, queryset: QuerySet[Model]) -> TemplateResponse | None:
        """First the form (the changelist's POST), then one service call per model (the
        form's POST, which carries the action and the selection again)."""
        form = AssignOwnerForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "title": "Assign an owner",
                "opts": self.opts,
                "models": queryset,
                "form": form,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/registry/model/assign_owner.html", context)
        actor = caller_from_user(request.user)
        for model in queryset:
            try:
                assigned = services.model_assign_owner(
                    actor=actor, model=model, **form.cleaned_data
                )
            except ApplicationError as exc:
                self.message_user(request, f"{model.token_symbol}: {exc.message}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"{model.token_symbol} now belongs to {assigned.owner_label} "
                    f"({assigned.status}).",
                    messages.SUCCESS,
                )
        return None


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

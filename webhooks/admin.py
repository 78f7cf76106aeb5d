"""The operators' admin for webhooks: endpoints, their deliveries, and the outbox.

Every change goes through `webhooks.services`, like every other door, so the admin checks the
same rules and writes the same audit entries. A new or rotated secret is rendered once, straight
into the response to the POST that made it (as API keys are): never in the session, a message or
a URL, and no page shows it afterwards.
"""

from __future__ import annotations

import json
from datetime import datetime

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from authkeys.admin import (
    OwnedSecretAdminMixin,
    ReadOnlyAdmin,
    ReadOnlyInline,
    ScopedAdmin,
    check_one_owner,
    holds,
)
from authkeys.principals import caller_from_user
from authkeys.scopes import WEBHOOKS_MANAGE
from hokusai_site.errors import ApplicationError
from webhooks import services
from webhooks.models import EVENT_TYPES, Delivery, DeliveryAttempt, Event, WebhookEndpoint
from webhooks.selectors import CLOSED, circuit_state
from webhooks.signing import SECRET_PREFIX

EVENT_TYPE_CHOICES = [(event_type, event_type) for event_type in EVENT_TYPES]
# A test ping waits for the receiver (up to WEBHOOK_TIMEOUT to connect and again to read) inside
# the admin's request: a few at a time keep that request short.
TEST_PING_LIMIT = 5


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


# --- Endpoints ---------------------------------------------------------------------------------


class EndpointUrlMixin:
    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        if "url" in self.changed_data:
            # The service's own check (SSRF guard, DNS), so it never refuses what the form took.
            try:
                services.check_url(url)
            except ApplicationError as exc:
                raise forms.ValidationError(exc.message) from None
        return url


class WebhookEndpointCreateForm(EndpointUrlMixin, forms.ModelForm):
    """What `services.endpoint_create` needs, checked here so the service never refuses it."""

    event_types = forms.MultipleChoiceField(
        choices=EVENT_TYPE_CHOICES, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_types", "owner_user", "owner_identity"]
        labels = {
            "url": "URL",
            "owner_user": "Owner (user)",
            "owner_identity": "Owner (Ethereum identity)",
        }
        help_texts = {"owner_user": "Exactly one owner: a user or an Ethereum identity."}

    def clean(self):
        return check_one_owner(self, super().clean(), "webhook endpoint")


class WebhookEndpointChangeForm(EndpointUrlMixin, forms.ModelForm):
    """What `services.endpoint_update` accepts; on/off goes through the actions, which record
    why."""

    event_types = forms.MultipleChoiceField(
        choices=EVENT_TYPE_CHOICES, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_types"]
        labels = {"url": "URL"}


def failing_endpoint_ids(now: datetime) -> list[int]:
    """Active endpoints whose circuit is open or half open (also counted on the admin index)."""
    # Only an endpoint with a failure in a row can have a circuit that is not closed.
    candidates = WebhookEndpoint.objects.filter(is_active=True, consecutive_failures__gt=0).only(
        "id", "consecutive_failures", "circuit_open_until"
    )
    return [endpoint.pk for endpoint in candidates if circuit_state(endpoint, now) != CLOSED]


class CircuitFilter(admin.SimpleListFilter):
    title = "circuit"
    parameter_name = "circuit"

    def lookups(self, request, model_admin):
        return [("failing", "open or half open")]

    def queryset(self, request, queryset):
        if self.value() == "failing":
            return queryset.filter(pk__in=failing_endpoint_ids(timezone.now()))
        return queryset


EDITABLE_ENDPOINT_FIELDS = ("url", "description", "event_types")


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(OwnedSecretAdminMixin, ScopedAdmin):
    view_scope = WEBHOOKS_MANAGE
    change_scope = WEBHOOKS_MANAGE
    list_display = [
        "url",
        "owner",
        "is_active",
        "circuit",
        "consecutive_failures",
        "failing_since",
        "created_at",
    ]
    list_filter = ["is_active", "from_settings", CircuitFilter]
    search_fields = ["url"]
    ordering = ["-created_at", "-id"]
    actions = [
        "disable_selected",
        "enable_selected",
        "reset_breaker_selected",
        "rotate_secret_selected",
        "test_selected",
    ]
    add_form = WebhookEndpointCreateForm
    form = WebhookEndpointChangeForm
    add_title = "New webhook endpoint"
    shown_once_template = "admin/webhooks/webhookendpoint/one_time_secret.html"
    add_fieldsets = [
        (None, {"fields": ["url", "description", "event_types"]}),
        ("Owner", {"fields": ["owner_user", "owner_identity"]}),
    ]
    change_fieldsets = [
        (None, {"fields": ["url", "description", "event_types", "owner", "from_settings"]}),
        ("Secret", {"fields": ["secret_hint", "previous_secret_expires_at"]}),
        (
            "State",
            {
                "fields": [
                    "is_active",
                    "disabled_reason",
                    "circuit",
                    "consecutive_failures",
                    "failing_since",
                    "circuit_open_until",
                ]
            },
        ),
        (None, {"fields": ["created_at", "updated_at"]}),
    ]
    # Everything on the change page but the URL, description and event types is shown only.
    change_readonly_fields = [
        field
        for _, options in change_fieldsets
        for field in options["fields"]
        if field not in EDITABLE_ENDPOINT_FIELDS
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner_user", "owner_identity")

    def has_delete_permission(self, request, obj=None):
        # Deleting goes through endpoint_delete (delete_model, delete_queryset), which audits it.
        return self._holds(request, self.change_scope)

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else self.change_fieldsets

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        if obj.from_settings:  # kept in step with WEBHOOK_URL: a URL set here would not last
            return ["url", *self.change_readonly_fields]
        return self.change_readonly_fields

    # --- columns and read-only facts ---

    @admin.display(description="owner")
    def owner(self, obj: WebhookEndpoint) -> str:
        return obj.owner_label or "—"

    @admin.display(description="circuit")
    def circuit(self, obj: WebhookEndpoint) -> str:
        return circuit_state(obj, timezone.now())

    @admin.display(description="secret")
    def secret_hint(self, obj: WebhookEndpoint) -> str:
        # Enough to tell two secrets apart; a WEBHOOK_SECRET may be short, so none of it.
        if obj.secret.startswith(SECRET_PREFIX):
            return f"{SECRET_PREFIX}…{obj.secret[-4:]}"
        return "WEBHOOK_SECRET"

    # --- writes: through the services ---

    def save_model(self, request, obj, form, change):
        actor = caller_from_user(request.user)
        data = form.cleaned_data
        if change:
            changes = {field: data[field] for field in form.changed_data}
            if changes:
                # The form has already put the new values on `obj`; the service compares
                # against the stored row to decide what changed and what to audit.
                stored = WebhookEndpoint.objects.get(pk=obj.pk)
                services.endpoint_update(actor=actor, endpoint=stored, **changes)
                obj.refresh_from_db()
            return
        endpoint, secret = services.endpoint_create(
            actor=actor,
            url=data["url"],
            event_types=data["event_types"],
            description=data["description"],
            owner_user_id=data["owner_user"].pk if data["owner_user"] else None,
            owner_identity_id=data["owner_identity"].pk if data["owner_identity"] else None,
        )
        self.adopt_created(obj, endpoint, secret)

    def delete_model(self, request, obj):
        services.endpoint_delete(actor=caller_from_user(request.user), endpoint=obj)

    def delete_queryset(self, request, queryset):
        actor = caller_from_user(request.user)
        for endpoint in queryset:
            services.endpoint_delete(actor=actor, endpoint=endpoint)

    def get_deleted_objects(self, objs, request):
        """The confirmation page counts what goes with the endpoints instead of listing every
        delivery (years of them, perhaps). Deliveries and attempts are never deleted on their
        own, but endpoint_delete takes them with their endpoint."""
        endpoints = list(objs)
        counts = {
            "webhook endpoints": len(endpoints),
            "deliveries": Delivery.objects.filter(endpoint__in=endpoints).count(),
            "delivery attempts": DeliveryAttempt.objects.filter(
                delivery__endpoint__in=endpoints
            ).count(),
        }
        return [str(endpoint) for endpoint in endpoints], counts, set(), []

    def one_time_secret_context(self, request: HttpRequest, endpoint: WebhookEndpoint) -> dict:
        return {"subtitle": endpoint.url, "endpoint": endpoint}

    @admin.action(description="Disable selected endpoints", permissions=["change"])
    def disable_selected(self, request, queryset: QuerySet[WebhookEndpoint]) -> None:
        actor = caller_from_user(request.user)
        reason = f"Disabled by {actor.label} in the admin."
        disabled = 0
        for endpoint in queryset:
            was_active = endpoint.is_active
            services.endpoint_disable(actor=actor, endpoint=endpoint, reason=reason)
            disabled += was_active
        self.message_user(request, f"Disabled {_endpoints(disabled)}.", messages.SUCCESS)

    @admin.action(description="Enable selected endpoints", permissions=["change"])
    def enable_selected(self, request, queryset: QuerySet[WebhookEndpoint]) -> None:
        actor = caller_from_user(request.user)
        enabled = 0
        for endpoint in queryset:
            was_active = endpoint.is_active
            services.endpoint_enable(actor=actor, endpoint=endpoint)
            enabled += not was_active
        self.message_user(request, f"Enabled {_endpoints(enabled)}.", messages.SUCCESS)

    @admin.action(
        description="Reset the circuit breaker of selected endpoints",
        permissions=["change"],
    )
    def reset_breaker_selected(self, request, queryset: QuerySet[WebhookEndpoint]) -> None:
        actor = caller_from_user(request.user)
        endpoints = list(queryset)
        for endpoint in endpoints:
            services.endpoint_breaker_reset(actor=actor, endpoint=endpoint)
        self.message_user(
            request,
            f"Closed the circuit of {_endpoints(len(endpoints))}; held deliveries go out now.",
            messages.SUCCESS,
        )

    @admin.action(
        description="Rotate the secret of selected endpoint (one at a time)",
        permissions=["change"],
    )
    def rotate_secret_selected(
        self, request, queryset: QuerySet[WebhookEndpoint]
    ) -> TemplateResponse | None:
        if queryset.count() != 1:
            self.message_user(
                request, "Rotate one secret at a time: select exactly one.", messages.ERROR
            )
            return None
        endpoint = queryset.get()
        try:
            secret = services.endpoint_rotate_secret(
                actor=caller_from_user(request.user), endpoint=endpoint
            )
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return None
        return self.one_time_secret_response(
            request, endpoint, secret, title="New secret for a webhook endpoint"
        )

    @admin.action(description="Send a test ping to selected endpoints", permissions=["change"])
    def test_selected(self, request, queryset: QuerySet[WebhookEndpoint]) -> None:
        if queryset.count() > TEST_PING_LIMIT:
            self.message_user(
                request, f"Test at most {TEST_PING_LIMIT} endpoints at a time.", messages.ERROR
            )
            return
        actor = caller_from_user(request.user)
        for endpoint in queryset:
            try:
                sent = services.endpoint_test(actor=actor, endpoint=endpoint)
            except ApplicationError as exc:
                self.message_user(request, f"{endpoint.url}: {exc.message}", messages.ERROR)
                continue
            attempt = sent.attempts.order_by("-number").first()
            if attempt is None:  # not claimed: disabled or deleted since it was selected
                self.message_user(request, f"{endpoint.url}: not sent.", messages.WARNING)
            elif attempt.succeeded:
                self.message_user(
                    request,
                    f"{endpoint.url}: answered {attempt.status_code} "
                    f"in {attempt.duration_ms:.0f} ms.",
                    messages.SUCCESS,
                )
            else:
                outcome = attempt.error or f"HTTP {attempt.status_code}"
                self.message_user(request, f"{endpoint.url}: failed ({outcome}).", messages.ERROR)


def _endpoints(count: int) -> str:
    return f"{count} endpoint{'s' if count != 1 else ''}"


# --- Deliveries --------------------------------------------------------------------------------


class DeliveryAttemptInline(ReadOnlyInline):
    view_scope = WEBHOOKS_MANAGE
    model = DeliveryAttempt
    fields = [
        "number",
        "started_at",
        "duration_ms",
        "status_code",
        "succeeded",
        "error",
        "response_body",
    ]
    readonly_fields = fields
    ordering = ["number"]


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    """Deliveries and their attempts are written by the delivery engine; operators redeliver."""

    view_scope = WEBHOOKS_MANAGE
    actions = ["redeliver_selected"]
    list_display = [
        "webhook_id",
        "event_type",
        "endpoint",
        "status",
        "attempt_count",
        "next_attempt_at",
        "last_status_code",
        "created_at",
    ]
    list_filter = ["status", "event__event_type", "endpoint"]
    search_fields = ["=webhook_id", "=event__event_id"]
    list_select_related = ["event", "endpoint"]
    date_hierarchy = "created_at"
    ordering = ["-created_at", "-id"]
    # Deliveries only grow: skip the unfiltered COUNT(*) on every page.
    show_full_result_count = False
    inlines = [DeliveryAttemptInline]
    fields = [
        "webhook_id",
        "event",
        "event_type",
        "endpoint",
        "status",
        "attempt_count",
        "retry_step",
        "next_attempt_at",
        "claimed_until",
        "enqueued_at",
        "last_status_code",
        "last_error",
        "delivered_at",
        "created_at",
        "updated_at",
        "payload",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        # Event bodies can be large: only a delivery's own page shows one (one more query).
        return super().get_queryset(request).defer("event__payload")

    @admin.display(description="event type", ordering="event__event_type")
    def event_type(self, obj: Delivery) -> str:
        return obj.event.event_type

    @admin.display(description="payload")
    def payload(self, obj: Delivery) -> str:
        return json.dumps(obj.event.payload, ensure_ascii=False)

    def has_redeliver_permission(self, request) -> bool:
        # Rows stay read-only; sending again is what the API's redeliver asks the scope for.
        return holds(request, WEBHOOKS_MANAGE)

    @admin.action(description="Redeliver selected deliveries", permissions=["redeliver"])
    def redeliver_selected(self, request, queryset: QuerySet[Delivery]) -> None:
        actor = caller_from_user(request.user)
        redelivered = 0
        for delivery in queryset:
            try:
                services.delivery_redeliver(actor=actor, delivery_id=delivery.pk)
            except ApplicationError as exc:
                self.message_user(request, f"{delivery.webhook_id}: {exc.message}", messages.ERROR)
            else:
                redelivered += 1
        if redelivered:
            self.message_user(
                request,
                f"Queued {redelivered} deliver{'ies' if redelivered != 1 else 'y'} again.",
                messages.SUCCESS,
            )

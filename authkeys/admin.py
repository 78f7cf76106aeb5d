"""The admin for API keys and Ethereum identities.

Keys are issued, rotated and revoked only through `authkeys.services`, like every other door, so
the admin checks the same rules and writes the same audit entries. A new key (or a rotated key's
new secret) is rendered once, straight into the response to the POST that made it: it is never
put in the session, a message or a URL, and no page shows a secret or its hash afterwards.
"""

from __future__ import annotations

from datetime import datetime

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import Prefetch, Q, QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone

from authkeys import ethereum, services
from authkeys.models import ApiKey, ApiKeySecret, ApiKeyUsageDaily, EthIdentity
from authkeys.principals import caller_from_user
from authkeys.scopes import ADMIN, ALL_SCOPES
from hokusai_site.errors import ApplicationError
from registry import audit

SCOPE_CHOICES = [(scope, scope) for scope in ALL_SCOPES]


def check_one_owner(form: forms.Form, cleaned: dict, thing: str) -> dict:
    """A form's `owner_user` / `owner_identity` pair names exactly one owner of `thing`.

    Errors go on a field, which also keeps a model's one-owner constraint from adding a
    second, less readable message."""
    user, identity = cleaned.get("owner_user"), cleaned.get("owner_identity")
    if user is None and identity is None and not form.has_error("owner_user"):
        form.add_error("owner_user", "Choose the owner: a user or an Ethereum identity.")
    elif user is not None and identity is not None:
        form.add_error("owner_identity", f"A {thing} has one owner: choose a user or an identity.")
    return cleaned


def holds(request: HttpRequest, scope: str) -> bool:
    user = request.user
    return user.is_active and user.is_staff and caller_from_user(user).has_scope(scope)


class ScopedAdmin(admin.ModelAdmin):
    """Admin pages ask for the same scopes as the API, through `caller_from_user` (a staff
    session holds `admin`), instead of Django's per-model permissions: an operator who may do
    something through the API may do it here, and no one else."""

    view_scope: str = ADMIN
    change_scope: str = ADMIN

    def _holds(self, request: HttpRequest, scope: str) -> bool:
        return holds(request, scope)

    def has_module_permission(self, request):
        return self._holds(request, self.view_scope)

    def has_view_permission(self, request, obj=None):
        return self._holds(request, self.view_scope)

    def has_add_permission(self, request):
        return self._holds(request, self.change_scope)

    def has_change_permission(self, request, obj=None):
        return self._holds(request, self.change_scope)

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyAdmin(ScopedAdmin):
    """For rows written only by services and tasks: visible to operators, never edited here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    """Rows shown under their parent to whoever may view it there (by scope, as ScopedAdmin),
    never added, changed or deleted here."""

    view_scope: str = ADMIN
    extra = 0
    can_delete = False

    def has_view_permission(self, request, obj=None):
        return holds(request, self.view_scope)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def scopes_text(scopes: list[str]) -> str:
    return ", ".join(scopes) or "—"


class OwnedSecretAdminMixin:
    """For the admin of a thing with one owner and a secret shown once (an API key, a webhook
    endpoint): an add form of its own (`add_form`), owner choices limited to active users and
    Ethereum identities, and an add page that leads to the one-time secret page (titled
    `add_title`), which `one_time_secret_response` also renders for a rotation.

    On add, `save_model` creates the thing through its service and hands it over with
    `adopt_created`. The page's template extends admin/one_time_secret.html, which shows
    `secret` in the element with id `secret_id`; `one_time_secret_context` gives the rest."""

    add_form: type[forms.ModelForm]
    add_title: str
    shown_once_template: str
    shown_once_id = "one-time-secret"

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change=change, **kwargs)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "owner_user":
            kwargs["queryset"] = (
                get_user_model().objects.filter(is_active=True).order_by("username")
            )
        elif db_field.name == "owner_identity":
            kwargs["queryset"] = EthIdentity.objects.filter(is_active=True).order_by("address")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def render_change_form(self, request, context, add=False, change=False, **kwargs):
        if add:
            # Saving always leads to the one-time secret page.
            context.update(show_save_and_add_another=False, show_save_and_continue=False)
        return super().render_change_form(request, context, add=add, change=change, **kwargs)

    def adopt_created(self, obj, created, secret: str) -> None:
        """The admin goes on with the add form's unsaved copy (`obj`): make it the row the
        service `created`, and keep the secret on this request's object only, for
        `response_add` to render once."""
        obj.pk = created.pk
        obj.refresh_from_db()
        obj._state.adding = False
        obj.one_time_secret = secret

    def response_add(self, request, obj, post_url_continue=None):
        return self.one_time_secret_response(
            request, obj, obj.one_time_secret, title=self.add_title
        )

    def one_time_secret_response(
        self, request: HttpRequest, obj, secret: str, *, title: str
    ) -> TemplateResponse:
        """The page that shows a secret once, rendered into the response of the POST that made
        it (the admin adds no-store cache headers to every view)."""
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "secret": secret,
            "secret_id": self.shown_once_id,
            **self.one_time_secret_context(request, obj),
        }
        return TemplateResponse(request, self.shown_once_template, context)

    def one_time_secret_context(self, request: HttpRequest, obj) -> dict:
        """What the page shows besides the secret: its subtitle and the thing's details."""
        raise NotImplementedError


# --- API keys ---------------------------------------------------------------------------------


class FutureExpiryMixin:
    def clean_expires_at(self) -> datetime | None:
        expires_at = self.cleaned_data.get("expires_at")
        if (
            "expires_at" in self.changed_data
            and expires_at is not None
            and expires_at <= timezone.now()
        ):
            raise forms.ValidationError("Choose a time in the future.")
        return expires_at


class ApiKeyCreateForm(FutureExpiryMixin, forms.ModelForm):
    """What `services.api_key_create` needs, checked here so the service never refuses it."""

    scopes = forms.MultipleChoiceField(choices=SCOPE_CHOICES, widget=forms.CheckboxSelectMultiple)
    rate_limit_per_minute = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        label="Rate limit per minute",
        help_text=f"Empty: the platform default ({settings.HOKUSAI_API_KEY_DEFAULT_RATE_LIMIT}).",
    )

    class Meta:
        model = ApiKey
        fields = [
            "name",
            "owner_user",
            "owner_identity",
            "environment",
            "scopes",
            "rate_limit_per_minute",
            "expires_at",
        ]
        labels = {"owner_user": "Owner (user)", "owner_identity": "Owner (Ethereum identity)"}
        help_texts = {
            "owner_user": "Exactly one owner: a user or an Ethereum identity.",
            "expires_at": "Empty: the key does not expire.",
        }

    def clean(self):
        return check_one_owner(self, super().clean(), "key")


class ApiKeyChangeForm(FutureExpiryMixin, forms.ModelForm):
    """What `services.api_key_update` accepts; a staff actor holds every scope."""

    scopes = forms.MultipleChoiceField(choices=SCOPE_CHOICES, widget=forms.CheckboxSelectMultiple)
    rate_limit_per_minute = forms.IntegerField(
        min_value=1, max_value=1_000_000, label="Rate limit per minute"
    )

    class Meta:
        model = ApiKey
        fields = ["name", "scopes", "rate_limit_per_minute", "expires_at"]
        help_texts = {"expires_at": "Empty: the key does not expire."}


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "active"), ("expired", "expired"), ("revoked", "revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        expired = Q(expires_at__isnull=False, expires_at__lte=now)
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(expired, revoked_at__isnull=True)
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expired)
        return queryset


class OwnerTypeFilter(admin.SimpleListFilter):
    title = "owner type"
    parameter_name = "owner_type"

    def lookups(self, request, model_admin):
        return [("user", "user"), ("identity", "Ethereum identity")]

    def queryset(self, request, queryset):
        if self.value() == "user":
            return queryset.filter(owner_user__isnull=False)
        if self.value() == "identity":
            return queryset.filter(owner_identity__isnull=False)
        return queryset


class ApiKeySecretInline(ReadOnlyInline):
    """The key's secrets by their public prefix: during a rotation's grace period there are two.
    Never the hash."""

    model = ApiKeySecret
    fields = ["prefix", "created_at", "valid_until"]
    readonly_fields = fields
    verbose_name = "secret"
    verbose_name_plural = "secrets (public prefixes only)"

    def get_queryset(self, request):
        return super().get_queryset(request).only("api_key", "prefix", "created_at", "valid_until")


@admin.register(ApiKey)
class ApiKeyAdmin(OwnedSecretAdminMixin, ScopedAdmin):
    list_display = [
        "name",
        "prefix",
        "owner",
        "environment",
        "scopes_display",
        "status_display",
        "expires_at",
        "last_used_at",
        "created_at",
    ]
    list_filter = ["environment", StatusFilter, OwnerTypeFilter]
    search_fields = [
        "name",
        "secrets__prefix",
        "owner_user__username",
        "owner_identity__address",
        "owner_identity__label",
    ]
    ordering = ["-created_at", "-id"]
    actions = ["revoke_selected", "rotate_selected"]
    add_form = ApiKeyCreateForm
    form = ApiKeyChangeForm
    add_title = "New API key"
    shown_once_template = "admin/authkeys/apikey/one_time_secret.html"
    shown_once_id = "one-time-key"
    add_fieldsets = [
        (None, {"fields": ["name", "owner_user", "owner_identity"]}),
        (
            "Access",
            {"fields": ["environment", "scopes", "rate_limit_per_minute", "expires_at"]},
        ),
    ]
    change_fieldsets = [
        (None, {"fields": ["name", "prefix", "owner", "status_display"]}),
        (
            "Access",
            {
                "fields": [
                    "environment",
                    "scopes",
                    "rate_limit_per_minute",
                    "expires_at",
                    "revoked_at",
                ]
            },
        ),
        ("Use", {"fields": ["created_at", "last_used_at", "last_used_ip"]}),
    ]
    change_readonly_fields = [
        "prefix",
        "owner",
        "status_display",
        "environment",
        "revoked_at",
        "created_at",
        "last_used_at",
        "last_used_ip",
    ]

    def get_queryset(self, request):
        # The current prefix of every listed key in one query, without loading the hashes.
        secrets = ApiKeySecret.objects.only("api_key", "prefix", "created_at", "valid_until")
        return (
            super()
            .get_queryset(request)
            .select_related("owner_user", "owner_identity")
            .prefetch_related(Prefetch("secrets", queryset=secrets))
        )

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else self.change_fieldsets

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        if obj.revoked_at is not None:  # a revoked key is kept as it was
            return [*self.change_readonly_fields, *ApiKeyChangeForm.Meta.fields]
        return self.change_readonly_fields

    def get_inlines(self, request, obj):
        return [] if obj is None else [ApiKeySecretInline]

    # --- columns and read-only facts ---

    @admin.display(description="prefix")
    def prefix(self, obj: ApiKey) -> str:
        return obj.current_prefix or "—"

    @admin.display(description="owner")
    def owner(self, obj: ApiKey) -> str:
        return obj.owner_label

    @admin.display(description="scopes")
    def scopes_display(self, obj: ApiKey) -> str:
        return scopes_text(obj.scopes)

    @admin.display(description="status")
    def status_display(self, obj: ApiKey) -> str:
        return obj.status

    # --- writes: through the services ---

    def save_model(self, request, obj, form, change):
        actor = caller_from_user(request.user)
        if change:
            changes = {field: form.cleaned_data[field] for field in form.changed_data}
            if changes:
                services.api_key_update(actor=actor, api_key=obj, **changes)
            return
        data = form.cleaned_data
        api_key, secret = services.api_key_create(
            actor=actor,
            name=data["name"],
            scopes=data["scopes"],
            owner_user_id=data["owner_user"].pk if data["owner_user"] else None,
            owner_identity_id=data["owner_identity"].pk if data["owner_identity"] else None,
            environment=data["environment"],
            rate_limit_per_minute=data["rate_limit_per_minute"],
            expires_at=data["expires_at"],
        )
        self.adopt_created(obj, api_key, secret)

    def one_time_secret_context(self, request: HttpRequest, api_key: ApiKey) -> dict:
        api_key = self.get_queryset(request).get(pk=api_key.pk)
        previous = next(
            (s for s in api_key.secrets.all() if s.valid_until is not None), None
        )  # prefetched newest first: the secret this rotation replaced
        return {
            "subtitle": api_key.name,
            "api_key": api_key,
            "scopes": scopes_text(api_key.scopes),
            "previous": previous,
        }

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_selected(self, request, queryset: QuerySet[ApiKey]) -> None:
        actor = caller_from_user(request.user)
        revoked = 0
        for api_key in queryset:
            was_revoked = api_key.revoked_at is not None
            services.api_key_revoke(actor=actor, api_key=api_key)
            revoked += not was_revoked
        already = queryset.count() - revoked
        message = f"Revoked {revoked} API key{'s' if revoked != 1 else ''}."
        if already:
            message += f" {already} {'was' if already == 1 else 'were'} revoked already."
        self.message_user(request, message, messages.SUCCESS)

    @admin.action(description="Rotate selected API key (one at a time)", permissions=["change"])
    def rotate_selected(self, request, queryset: QuerySet[ApiKey]) -> TemplateResponse | None:
        if queryset.count() != 1:
            self.message_user(
                request, "Rotate one key at a time: select exactly one.", messages.ERROR
            )
            return None
        try:
            api_key, secret = services.api_key_rotate(
                actor=caller_from_user(request.user), api_key=queryset.get()
            )
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return None
        return self.one_time_secret_response(
            request, api_key, secret, title="New secret for an API key"
        )


# --- Ethereum identities ----------------------------------------------------------------------


class EthIdentityForm(forms.ModelForm):
    scopes = forms.MultipleChoiceField(
        choices=SCOPE_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="What a signed request from this address may do.",
    )

    class Meta:
        model = EthIdentity
        fields = ["address", "label", "scopes", "rate_limit_per_minute", "is_active"]

    def clean_address(self) -> str:
        try:
            return ethereum.decode_address(self.cleaned_data["address"].strip())
        except ethereum.EthAuthError:
            raise forms.ValidationError("An address is 0x and 40 hex digits.") from None

    def clean_scopes(self) -> list[str]:
        return sorted(set(self.cleaned_data["scopes"]))


@admin.register(EthIdentity)
class EthIdentityAdmin(ScopedAdmin):
    form = EthIdentityForm
    list_display = [
        "address",
        "label",
        "scopes_display",
        "rate_limit_per_minute",
        "is_active",
        "created_at",
        "last_seen_at",
    ]
    list_filter = ["is_active"]
    search_fields = ["address", "label"]
    ordering = ["-created_at", "-id"]
    fields = [
        "address",
        "label",
        "scopes",
        "rate_limit_per_minute",
        "is_active",
        "created_at",
        "last_seen_at",
    ]

    # No delete (ScopedAdmin): it would cascade to the identity's API keys; deactivate instead.

    def get_readonly_fields(self, request, obj=None):
        # The address is who signs: a different address is a different identity.
        base = ["created_at", "last_seen_at"]
        return base if obj is None else ["address", *base]

    @admin.display(description="scopes")
    def scopes_display(self, obj: EthIdentity) -> str:
        return scopes_text(obj.scopes)

    def save_model(self, request, obj, form, change):
        # Saving fires the signal that refreshes the cached facts of the identity's keys.
        super().save_model(request, obj, form, change)
        if change and not form.changed_data:
            return
        audit.eth_identity_saved(
            actor=caller_from_user(request.user),
            identity=obj,
            created=not change,
            changes={name: form.cleaned_data[name] for name in form.changed_data},
        )


@admin.register(ApiKeyUsageDaily)
class ApiKeyUsageDailyAdmin(ScopedAdmin):
    """Requests per key and day, as flushed from Redis every minute; read-only."""

    list_display = ("api_key", "day", "requests")
    list_select_related = ("api_key",)
    search_fields = ("api_key__name", "api_key__secrets__prefix")
    date_hierarchy = "day"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

"""Reading webhook endpoints and deliveries: which a caller may see, and the breaker's state as
people read it."""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db.models import Q, QuerySet

from authkeys.principals import Caller
from authkeys.scopes import ADMIN
from webhooks.models import Delivery, WebhookEndpoint

# The circuit breaker's states, as webhooks.delivery acts on them.
CLOSED = "closed"  # fewer failures in a row than WEBHOOK_BREAKER_FAILURES: deliveries go out
OPEN = "open"  # the cooldown is running: deliveries wait (pings still go)
HALF_OPEN = "half_open"  # the cooldown is over: the next delivery is the probe
CIRCUIT_STATES = (CLOSED, OPEN, HALF_OPEN)


def circuit_state(endpoint: WebhookEndpoint, now: datetime) -> str:
    if endpoint.consecutive_failures < settings.WEBHOOK_BREAKER_FAILURES:
        return CLOSED
    open_until = endpoint.circuit_open_until
    if open_until is not None and open_until > now:
        return OPEN
    # No open_until with enough failures (the threshold was lowered) probes too, as the sender does.
    return HALF_OPEN


def sees_every_endpoint(caller: Caller) -> bool:
    """Staff and `admin` callers manage every endpoint, as they do in the admin site."""
    return caller.is_staff or ADMIN in caller.scopes


def _owned_by(caller: Caller, prefix: str = "") -> Q:
    owned = Q(pk__in=[])  # a caller with neither a user nor an identity owns nothing
    if caller.user_id is not None:
        owned |= Q(**{f"{prefix}owner_user_id": caller.user_id})
    if caller.identity_id is not None:
        owned |= Q(**{f"{prefix}owner_identity_id": caller.identity_id})
    return owned


def endpoints_visible_to(caller: Caller) -> QuerySet[WebhookEndpoint]:
    endpoints = WebhookEndpoint.objects.select_related("owner_user", "owner_identity")
    if sees_every_endpoint(caller):
        return endpoints
    return endpoints.filter(_owned_by(caller))


def deliveries_visible_to(caller: Caller) -> QuerySet[Delivery]:
    deliveries = Delivery.objects.select_related("event")
    if sees_every_endpoint(caller):
        return deliveries
    return deliveries.filter(_owned_by(caller, prefix="endpoint__"))


def endpoint_list(*, caller: Caller, is_active: bool | None = None) -> QuerySet[WebhookEndpoint]:
    endpoints = endpoints_visible_to(caller)
    if is_active is not None:
        endpoints = endpoints.filter(is_active=is_active)
    return endpoints.order_by("-created_at", "-id")


def delivery_list(
    *, endpoint: WebhookEndpoint, status: str | None = None, event_type: str | None = None
) -> QuerySet[Delivery]:
    """The endpoint's deliveries, newest first; the event bodies are left out (only a
    delivery's own page shows one)."""
    deliveries = Delivery.objects.filter(endpoint=endpoint).select_related("event")
    if status is not None:
        deliveries = deliveries.filter(status=status)
    if event_type is not None:
        deliveries = deliveries.filter(event__event_type=event_type)
    return deliveries.defer("event__payload").order_by("-created_at", "-id")

"""The webhooks line on the admin index: what an operator should look at first."""

from __future__ import annotations

from datetime import timedelta

from django import template
from django.utils import timezone

from authkeys.admin import holds
from authkeys.scopes import WEBHOOKS_MANAGE
from webhooks.admin import failing_endpoint_ids
from webhooks.models import Delivery, WebhookEndpoint

register = template.Library()


@register.inclusion_tag("admin/webhooks/index_summary.html", takes_context=True)
def webhook_summary(context) -> dict:
    """Counts for staff who may manage webhooks; nothing for anyone else."""
    request = context.get("request")
    if request is None or not holds(request, WEBHOOKS_MANAGE):
        return {"shown": False}
    now = timezone.now()
    return {
        "shown": True,
        "failing": len(failing_endpoint_ids(now)),
        "disabled": WebhookEndpoint.objects.filter(is_active=False).count(),
        # A failed delivery is not touched again until redelivered: updated_at is when it failed.
        "failed": Delivery.objects.filter(
            status=Delivery.FAILED, updated_at__gte=now - timedelta(hours=24)
        ).count(),
    }

"""Thin adapters from Celery messages to webhooks.delivery."""

from celery import shared_task

from webhooks import delivery


@shared_task(name="webhooks.deliver", ignore_result=True)
def deliver(endpoint_id: int) -> int:
    return delivery.endpoint_deliveries_send(endpoint_id)


@shared_task(name="webhooks.sweep", ignore_result=True)
def sweep() -> int:
    return delivery.deliveries_requeue_due()

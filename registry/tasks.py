from celery import shared_task

from registry import services


@shared_task(name="registry.sync", ignore_result=True)
def sync() -> dict:
    return services.registry_sync().__dict__

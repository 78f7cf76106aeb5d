from celery import shared_task

from authkeys import services, usage


@shared_task(name="authkeys.flush_usage", ignore_result=True)
def flush_usage() -> int:
    return usage.flush_usage()


@shared_task(name="authkeys.republish_key_changes", ignore_result=True)
def republish_key_changes() -> int:
    return services.republish_key_changes()

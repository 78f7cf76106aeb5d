from celery import shared_task

from authkeys import usage


@shared_task(name="authkeys.flush_usage", ignore_result=True)
def flush_usage() -> int:
    return usage.flush_usage()

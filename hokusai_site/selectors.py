from datetime import timedelta

from django.utils import timezone

from hokusai_site.models import WorkerHeartbeat


def alive_workers(*, max_age: timedelta) -> list[WorkerHeartbeat]:
    return list(WorkerHeartbeat.objects.filter(last_seen_at__gte=timezone.now() - max_age))

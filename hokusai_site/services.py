from django.utils import timezone

from hokusai_site.models import WorkerHeartbeat


def worker_heartbeat_record(*, hostname: str, pid: int) -> None:
    now = timezone.now()
    updated = WorkerHeartbeat.objects.filter(hostname=hostname, pid=pid).update(last_seen_at=now)
    if not updated:
        # First beat of this process (or the hostname was reused by a new process).
        WorkerHeartbeat.objects.update_or_create(
            hostname=hostname, defaults={"pid": pid, "started_at": now, "last_seen_at": now}
        )


def worker_heartbeat_forget(*, hostname: str) -> None:
    WorkerHeartbeat.objects.filter(hostname=hostname).delete()

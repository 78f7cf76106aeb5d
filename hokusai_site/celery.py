"""The Celery app: configured from Django settings (CELERY_*), tasks found in each app."""

import logging
import os

from celery import Celery, bootsteps

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hokusai_site.settings")

logger = logging.getLogger(__name__)

app = Celery("hokusai")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class WorkerHeartbeatStep(bootsteps.StartStopStep):
    """Records this worker as alive every few seconds, so health checks need no broker round trip.

    Celery's own ping is a broadcast that waits out its whole timeout and does not work on the
    embedded SQLAlchemy broker; a heartbeat row works on every broker and costs one query to read.
    """

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.timer_entry = None

    def start(self, worker):
        from django.conf import settings

        self._beat(worker)
        self.timer_entry = worker.timer.call_repeatedly(
            settings.CELERY_WORKER_HEARTBEAT_SECONDS, self._beat, (worker,), priority=10
        )

    def stop(self, worker):
        from hokusai_site.services import worker_heartbeat_forget

        if self.timer_entry is not None:
            self.timer_entry.cancel()
        try:
            worker_heartbeat_forget(hostname=worker.hostname)
        except Exception:
            logger.warning("could not remove the heartbeat of %s", worker.hostname, exc_info=True)

    def _beat(self, worker):
        from hokusai_site.services import worker_heartbeat_record

        try:
            worker_heartbeat_record(hostname=worker.hostname, pid=os.getpid())
        except Exception:
            # A database blip must not stop the worker; the next beat tries again.
            logger.warning("could not record the heartbeat of %s", worker.hostname, exc_info=True)


app.steps["worker"].add(WorkerHeartbeatStep)
